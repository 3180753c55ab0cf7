"""The README's two commands stay the ones .ci/run and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _top_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("---", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", head, re.S)


def test_readme_starts_with_exactly_two_commands() -> None:
    """The top holds the demo command and the test command, nothing else to type."""
    demo, tests = _top_commands()
    assert demo.endswith("neuroio-events demo")
    assert tests.endswith("pytest")
    assert "\n" not in demo and "\n" not in tests


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run calls the README's test command verbatim."""
    _, tests = _top_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
