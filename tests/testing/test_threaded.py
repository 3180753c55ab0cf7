"""ThreadedEmulator: the emulator's methods as blocking calls from plain code."""

from __future__ import annotations

import socket
import threading

import pytest

from neuroio import ConfigurationError
from neuroio.sync import connect
from neuroio.testing import ThreadedEmulator

TOKEN = "threaded-token"


def test_blocking_methods_attributes_and_errors() -> None:
    """Coroutine and plain methods run on the emulator's loop and return or raise here;
    attributes are read and set on the emulator; stop() ends the thread."""
    with ThreadedEmulator(tokens={TOKEN}, seed=1) as emu:
        assert emu.url.startswith("ws://127.0.0.1:") and emu.port > 0
        with connect(TOKEN, url=emu.url, ping_interval=0.2) as events:
            emu.wait_for_clients(1)
            sent = emu.burst(3)
            assert [next(events).id for _ in sent] == [e["id"] for e in sent]
        assert emu.emitted == 3 and len(emu.clients) == 1
        emu.push_while_disconnected = False  # set on the emulator itself
        assert emu.emulator is not None and emu.emulator.push_while_disconnected is False
        with pytest.raises(ConfigurationError):
            emu.start_stream(-1)  # a plain method's error, raised in this thread
        with pytest.raises(TimeoutError):
            emu.wait_for_clients(5, timeout=0.05)
        # From the emulator's own loop a blocking call would wait for itself: refused.
        with pytest.raises(RuntimeError, match="other threads"):
            emu.call(lambda: emu.emit())
        thread = next(t for t in threading.enumerate() if t.name == "neuroio-emulator")
    assert not thread.is_alive() and not emu.emulator.running


def test_a_port_in_use_fails_start_and_ends_the_thread() -> None:
    """start() raises the emulator's error and leaves no thread behind."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        emu = ThreadedEmulator(port=busy.getsockname()[1])
        with pytest.raises(OSError):
            emu.start()
    assert not any(t.name == "neuroio-emulator" for t in threading.enumerate())
    with pytest.raises(AttributeError, match="not been started"):
        emu.emit()
