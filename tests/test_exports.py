"""The public surface: what ``neuroio`` exports, and that everything else is marked internal."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import neuroio

PUBLIC = {
    # the listener and what it hands out
    "EventListener", "Handler", "parse_message", "LossReason", "ListenerStats", "State",
    "token_file",
    # messages
    "Message", "AuthOk", "Pong", "ServerError", "Event", "UnknownMessage", "Backfilled",
    "Entry", "Named", "Result", "Mood", "Liveness", "Sex",
    # errors
    "NeuroIOError", "ConfigurationError", "MissingExtraError", "MessageError",
    "AuthenticationError", "ConnectionFailedError", "BackfillError", "SpoolError",
    "SpoolFullError", "SinkError", "PermanentSinkError",
    "__version__",
}  # fmt: skip

# Modules a user may import by name; every other module's name starts with an underscore.
PUBLIC_MODULES = {
    "neuroio",
    "neuroio.bridge",
    "neuroio.cli",
    "neuroio.emulator",
    "neuroio.exceptions",
    "neuroio.listener",
    "neuroio.messages",
    "neuroio.recording",
    "neuroio.sinks",
    "neuroio.stats",
    "neuroio.sync",
    "neuroio.testing",
}


def test_all_is_the_curated_surface() -> None:
    """``neuroio.__all__`` is exactly the documented surface, and every name in it exists."""
    assert set(neuroio.__all__) == PUBLIC
    for name in neuroio.__all__:
        assert getattr(neuroio, name) is not None


def test_wire_helpers_and_policies_are_not_exported() -> None:
    """Encoders and the reconnect/heartbeat policies are internals, not the API."""
    for name in ("Backoff", "Heartbeat", "encode_auth", "encode_ping", "classify"):
        assert not hasattr(neuroio, name), name


@pytest.mark.parametrize("name", sorted(PUBLIC - {"__version__", "Handler"}))
def test_every_public_name_is_documented(name: str) -> None:
    """Each exported class and function says what it is."""
    assert (getattr(neuroio, name).__doc__ or "").strip()


def test_backfilled_is_a_str_marker() -> None:
    """``neuroio.Backfilled`` (documented in the README) is the ``str`` subclass of recovered
    frames."""
    frame = neuroio.Backfilled('{"id": 1, "data": {}}')
    assert isinstance(frame, str) and isinstance(frame, neuroio.Backfilled)


def test_exceptions_form_one_tree() -> None:
    """Every exported error derives from NeuroIOError."""
    for name in PUBLIC:
        value = getattr(neuroio, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, neuroio.NeuroIOError), name


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES - {"neuroio.cli"}))
def test_public_modules_import_and_declare_all(name: str) -> None:
    """Each public module imports alone and lists its names in ``__all__``."""
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), (list, tuple))
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.{exported}"


def _modules() -> list[str]:
    names = ["neuroio"]
    for info in pkgutil.walk_packages(neuroio.__path__, "neuroio."):
        names.append(info.name)
    return names


def test_internal_modules_are_private_named() -> None:
    """Outside the public modules, every module of the package is named with an underscore
    (its own, or a package's: ``neuroio.bridge.pipeline`` is public, ``neuroio._protocol.x``
    is not), so a reader knows what may change."""
    public_prefixes = tuple(m + "." for m in ("neuroio.bridge", "neuroio.cli", "neuroio.sinks"))
    stray = []
    for name in _modules():
        if name in PUBLIC_MODULES or name.startswith(public_prefixes):
            continue
        parts = name.split(".")[1:]
        if not any(part.startswith("_") for part in parts):
            stray.append(name)
    assert stray == []
