"""The pytest plugin: a sample project using only its fixtures passes under pytester, the
plugin is registered once here, and it loads without pytest-asyncio."""

from __future__ import annotations

from pathlib import Path

import pytest

import neuroio.testing._pytest_plugin as plugin
from neuroio.testing import Emulator, ListenerFactory, ThreadedEmulator

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "plugin_sample" / "sample_tests.py"


def _documented_example() -> str:
    """The complete test file of docs/emulator.md."""
    docs = (ROOT / "docs" / "emulator.md").read_text()
    section = docs.split("## In your pytest suite: the fixtures", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_a_sample_project_passes_with_only_the_fixtures(pytester: pytest.Pytester) -> None:
    """A project using only the fixtures (async and plain tests, a marker, listeners left
    running), and the documented example, pass in pytest-asyncio's default (strict) mode;
    nothing leaks (warnings are errors)."""
    pytester.makepyfile(test_sample=SAMPLE.read_text(), test_documented=_documented_example())
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\ntimeout = 30\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    # A subprocess, as a project runs it: the plugin comes from the pytest11 entry point.
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=8 + 4)
    result.stdout.fnmatch_lines(["*test_documented.py::test_a_plain_test PASSED*"])


def test_registered_once_from_the_entry_point(pytestconfig: pytest.Config) -> None:
    """This suite has the plugin from its entry point, once, beside tests/conftest.py."""
    manager = pytestconfig.pluginmanager
    assert manager.get_plugin("neuroio") is plugin
    names = [name for name, p in manager.list_name_plugin() if p is plugin]
    assert names == ["neuroio"]


PLAIN = """
import pytest


def test_plain(neuroio_emulator, neuroio_listener):
    with neuroio_listener.connect() as events:
        sent = neuroio_emulator.emit()
        assert next(events).id == sent["id"]


def test_no_async_half(pytestconfig):
    assert not pytestconfig.pluginmanager.has_plugin("neuroio-asyncio")
"""


def test_plain_tests_need_no_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """Without pytest-asyncio the plugin loads (from its entry point) and plain tests get
    the fixtures."""
    pytester.makepyfile(test_plain=PLAIN)
    pytester.makeini("[pytest]\nfilterwarnings = error\ntimeout = 30\n")
    # As where it is not installed: the run's own directory comes first on its sys.path.
    hidden = pytester.path / "pytest_asyncio"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError('pytest_asyncio')\n")
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


async def test_the_fixtures_here_in_auto_mode(
    neuroio_emulator: Emulator, neuroio_listener: ListenerFactory
) -> None:
    """This suite runs pytest-asyncio in auto mode: an unmarked async test gets the
    emulator on its loop."""
    assert isinstance(neuroio_emulator, Emulator)
    async with neuroio_listener() as listener:
        sent = await neuroio_emulator.emit()
        event = await anext(aiter(listener))
    assert event.id == sent["id"]


def test_the_fixtures_here_in_a_plain_test(
    neuroio_emulator: ThreadedEmulator, neuroio_listener: ListenerFactory
) -> None:
    """A plain test gets the threaded emulator, and a stream from the factory."""
    assert isinstance(neuroio_emulator, ThreadedEmulator)
    with neuroio_listener.connect() as events:
        sent = neuroio_emulator.emit()
        assert next(events).id == sent["id"]
