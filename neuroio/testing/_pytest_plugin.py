"""pytest fixtures for testing code against the NeuroIO emulator: ``neuroio_emulator`` and
``neuroio_listener``.

Registered through the ``pytest11`` entry point ``neuroio``, so installing neuroio-events
makes the fixtures available (``-p no:neuroio`` turns them off; with plugin autoloading
disabled, ``-p neuroio`` turns them on). See ``docs/emulator.md``.

Both fixtures follow the test that asks for them:

- an ``async def`` test (run by pytest-asyncio) gets an :class:`~neuroio.testing.Emulator`
  started on the test's own loop, so ``await neuroio_emulator.emit()`` works, and listeners
  it runs itself on that loop;
- a plain ``def`` test gets a :class:`~neuroio.testing.ThreadedEmulator`: the emulator on a
  loop in a background thread, with the same methods as blocking calls
  (``neuroio_emulator.emit()``), and listeners it runs with ``neuroio_listener.connect()``
  (a :mod:`neuroio.sync` stream) or ``listener.run()`` in a thread.

pytest loads this module in every run where neuroio-events is installed: it imports pytest
and the package (no optional dependency) and defines only its two fixtures, a marker and
``pytest_configure``. The async halves of the fixtures (``_pytest_async``) are registered
only when pytest-asyncio runs; without it, plain tests work.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from ._listeners import LISTENER_DEFAULTS, TOKEN, ListenerFactory

__all__ = [
    "LISTENER_DEFAULTS",
    "TOKEN",
    "ListenerFactory",
    "neuroio_emulator",
    "neuroio_listener",
]

_MARKER = "neuroio_emulator"
# The name the async fixtures' plugin is registered under, when pytest-asyncio runs.
_ASYNC_PLUGIN = "neuroio-asyncio"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker (so ``--strict-markers`` suites accept it), and add the async
    fixtures when pytest-asyncio runs.

    They live in a module of their own registered only then: importing pytest-asyncio here,
    before pytest loads it, would keep pytest from rewriting its asserts (a warning), and a
    run without it (not installed, or ``-p no:asyncio``) must not need it.
    """
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): options of the neuroio_emulator fixture's Emulator "
        "(rate=, seed=, push_while_disconnected=, history_size=, ...)",
    )
    manager = config.pluginmanager
    if manager.has_plugin(_ASYNC_PLUGIN):
        return
    if any(
        getattr(plugin, "__name__", "").startswith("pytest_asyncio")
        for plugin in manager.get_plugins()
    ):
        from . import _pytest_async

        manager.register(_pytest_async, _ASYNC_PLUGIN)


def _is_async(request: pytest.FixtureRequest) -> bool:
    function = getattr(request, "function", None)
    return function is not None and inspect.iscoroutinefunction(function)


def emulator_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The fixture's Emulator options: :data:`TOKEN` accepted, then the test's marker."""
    options: dict[str, Any] = {"tokens": {TOKEN}}
    marker = request.node.get_closest_marker(_MARKER)
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{_MARKER} takes keyword options only")
        options.update(marker.kwargs)
    return options


def _need_asyncio(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.has_plugin(_ASYNC_PLUGIN):
        raise pytest.UsageError(
            "an async test using neuroio_emulator needs pytest-asyncio: "
            "pip install 'neuroio-events[testing]'"
        )


@pytest.fixture
def neuroio_emulator(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A started emulator on a free port, accepting :data:`TOKEN`, stopped after the test.

    An ``Emulator`` on the test's loop for an ``async def`` test, a ``ThreadedEmulator``
    (same methods, blocking) for a plain one. Options: ``@pytest.mark.neuroio_emulator(...)``.
    """
    if _is_async(request):
        _need_asyncio(request)
        yield request.getfixturevalue("_neuroio_emulator_async")
        return
    from ._threaded import ThreadedEmulator

    with ThreadedEmulator(**emulator_options(request)) as emulator:
        yield emulator


@pytest.fixture
def neuroio_listener(request: pytest.FixtureRequest, neuroio_emulator: Any) -> Iterator[Any]:
    """A :class:`ListenerFactory` for listeners pointed at ``neuroio_emulator``; each one
    is closed after the test."""
    if _is_async(request):
        yield request.getfixturevalue("_neuroio_listener_async")
        return
    factory = ListenerFactory(neuroio_emulator.url, neuroio_emulator.api_url)
    try:
        yield factory
    finally:
        factory.close()
