"""``--help`` of every command, and the hint when the ``cli`` extra is missing."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from neuroio.cli import COMMANDS, cli

from .conftest import clean_env


def test_group_help_lists_every_command() -> None:
    """The group's help lists listen, emulate, demo and doctor."""
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("listen", "emulate", "demo", "doctor"):
        assert name in result.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_shows_defaults_and_env_vars(name: str) -> None:
    """Each command's --help works and shows environment variables and defaults."""
    result = CliRunner().invoke(cli, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "env var: NEUROIO_" in result.output
    assert "default:" in result.output


def test_every_registered_command_has_help() -> None:
    """Every command the group lists (including ones added later) answers --help."""
    runner = CliRunner()
    names = cli.list_commands(click.Context(cli))
    assert {"listen", "emulate", "demo", "doctor"} <= set(names)
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_listen_help_recommends_the_token_file() -> None:
    """--token's help says it shows in ps; the env var names are the documented ones."""
    result = CliRunner().invoke(cli, ["listen", "--help"], terminal_width=200)
    for text in (
        "visible to other users in ps",
        "NEUROIO_API_TOKEN",
        "NEUROIO_EVENTS_URL",
        "NEUROIO_PING_INTERVAL",
        "--token-file",
    ):
        assert text in result.output


def test_python_dash_m_help() -> None:
    """python -m neuroio --help runs the same command line."""
    result = subprocess.run(
        [sys.executable, "-m", "neuroio", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 0
    assert "Usage: neuroio-events" in result.stdout


@pytest.mark.parametrize("module", ["click", "rich"])
def test_missing_cli_extra_prints_the_install_hint(module: str) -> None:
    """Without click or rich: the pip hint on stderr, exit 2, no traceback."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; "
        "import runpy; runpy.run_module('neuroio', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "listen"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "pip install 'neuroio-events[cli]'" in result.stderr
    assert module in result.stderr
    assert "Traceback" not in result.stderr


def test_listen_help_explains_the_result_codes() -> None:
    """``listen --help`` ends with the legend of the result codes, one per line."""
    result = CliRunner().invoke(cli, ["listen", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    legend = result.output[result.output.index("Result codes") :]
    for code in ("exact", "ha", "junk", "new", "reinit", "nm", "det"):
        assert f"\n    {code} " in legend
