"""neuroio.sync and EventListener.run(): the listener from plain threads, against the emulator
on the test's loop, and from a script interrupted with SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from neuroio import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    Event,
    EventListener,
    State,
    parse_message,
)
from neuroio.sync import EventStream, connect
from neuroio.testing import Emulator

from .helpers import until

TOKEN = "sync-test-token"
OTHER = "sync-other-token"
FAST: dict[str, Any] = {"ping_interval": 0.2, "ping_timeout": 1.0, "reconnect_delay": 0.01}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(tokens={TOKEN, OTHER}, seed=2) as emulator:
        yield emulator


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_events_arrive_in_order_and_leaving_joins(emu: Emulator) -> None:
    """A plain thread gets every event in order through a tiny queue (the thread waits, it
    never drops), and leaving the block closes (code 1000) and joins within a second."""
    sent = [e["id"] for e in await emu.burst(300)]  # pushed when it authenticates

    def consume() -> tuple[list[int], float, EventStream]:
        with connect(TOKEN, url=emu.url, queue_size=2, **FAST) as events:
            got = []
            for event in events:
                assert isinstance(event, Event)
                got.append(event.id)
                if len(got) == len(sent):
                    break
            started = time.monotonic()
        return got, time.monotonic() - started, events

    got, leaving, stream = await asyncio.to_thread(consume)
    assert got == sent
    assert leaving < 1.0
    assert not stream.running
    await emu.wait_until(lambda: not emu.clients[0].open)
    assert emu.clients[0].close_code == 1000 and emu.clients[0].closed_by == "client"
    assert not any(t.name == "neuroio-sync" for t in threading.enumerate())


def test_leaving_while_the_handshake_hangs_takes_under_a_second() -> None:
    """A server that accepts TCP but never answers: the graceful close cannot finish, so
    the listener's tasks are cancelled; the block still ends within a second."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(5.0)
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        with connect(TOKEN, url=url, timeout=30) as events:
            conn, _ = silent.accept()  # the listener is in its handshake now
            started = time.monotonic()
        leaving = time.monotonic() - started
        conn.close()
    assert leaving < 1.0
    assert not events.running and events.listener.state is State.CLOSED


async def test_live_events_reach_a_waiting_thread(emu: Emulator) -> None:
    """Events emitted while the caller blocks in next() wake it; iteration after close()
    from another thread ends."""
    stream = connect(TOKEN, url=emu.url, **FAST)
    got: list[int] = []

    def consume() -> None:
        with stream as events:
            for event in events:
                got.append(event.id)

    worker = asyncio.ensure_future(asyncio.to_thread(consume))
    await emu.wait_for_clients(1)
    sent = [(await emu.emit())["id"] for _ in range(5)]
    await until(lambda: len(got) == 5)
    await asyncio.to_thread(stream.close)
    await asyncio.wait_for(worker, 2.0)
    assert got == sent


async def test_a_bad_token_raises_in_the_callers_thread(emu: Emulator) -> None:
    """A token the platform refuses is AuthenticationError from the iteration."""

    def consume() -> BaseException | None:
        try:
            with connect("not-the-token", url=emu.url, **FAST) as events:
                for _ in events:
                    pass
        except AuthenticationError as exc:
            return exc
        return None

    error = await asyncio.wait_for(asyncio.to_thread(consume), 5.0)
    assert isinstance(error, AuthenticationError)
    assert error.server_message is not None and "not-the-token" not in str(error)


async def test_a_revoked_token_raises_after_the_events_before(emu: Emulator) -> None:
    """Events before the revocation are delivered, then AuthenticationError."""
    first = threading.Event()
    got: list[int] = []

    def consume() -> BaseException | None:
        try:
            with connect(OTHER, url=emu.url, **FAST) as events:
                for event in events:
                    got.append(event.id)
                    first.set()
        except AuthenticationError as exc:
            return exc
        return None

    worker = asyncio.ensure_future(asyncio.to_thread(consume))
    await emu.wait_for_clients(1)
    entry = await emu.emit()
    await until(first.is_set)
    await emu.revoke(OTHER)
    error = await asyncio.wait_for(worker, 5.0)
    assert isinstance(error, AuthenticationError)
    assert got == [entry["id"]]


async def test_retries_exhausted_raise_connection_failed() -> None:
    """No server: ConnectionFailedError once max_retries attempts failed."""
    url = f"ws://127.0.0.1:{_closed_port()}/"

    def consume() -> BaseException | None:
        try:
            with connect(TOKEN, url=url, max_retries=1, **FAST) as events:
                next(iter(events))
        except ConnectionFailedError as exc:
            return exc
        return None

    error = await asyncio.wait_for(asyncio.to_thread(consume), 5.0)
    assert isinstance(error, ConnectionFailedError) and error.attempts == 2


def test_bad_options_fail_at_once() -> None:
    """An invalid option is a ConfigurationError from connect(), before any thread."""
    with pytest.raises(ConfigurationError, match="queue_size"):
        connect(TOKEN, queue_size=0)
    with pytest.raises(ConfigurationError):
        connect(TOKEN, ping_interval=-1)
    with pytest.raises(ConfigurationError, match="event_handler_func"):
        connect(TOKEN, event_handler_func=None)
    with pytest.raises(RuntimeError, match="with connect"):
        next(iter(connect(TOKEN)))


async def test_run_blocks_until_the_handler_closes(emu: Emulator) -> None:
    """EventListener.run() is listen() for code without a loop; errors raise from it."""
    sent = [e["id"] for e in await emu.burst(3)]
    ids: list[int] = []

    async def handler(frame: str | bytes) -> None:
        message = parse_message(frame)  # PONGs come too: ping_interval is short
        if isinstance(message, Event):
            ids.append(message.id)
            if len(ids) == len(sent):
                await listener.close()

    listener = EventListener(TOKEN, handler, url=emu.url, **FAST)
    await asyncio.wait_for(asyncio.to_thread(listener.run), 5.0)
    assert ids == sent

    refused = EventListener("nope", handler, url=emu.url, **FAST)
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(asyncio.to_thread(refused.run), 5.0)
    with pytest.raises(RuntimeError, match="await listen"):
        EventListener(TOKEN, handler, url=emu.url).run()  # this test's loop is running
    with pytest.raises(TypeError, match="neuroio.sync"):
        EventListener(TOKEN, url=emu.url).run()


SCRIPT = """
import sys, time
from neuroio.sync import connect

url, token = sys.argv[1], sys.argv[2]
stream = connect(token, url=url, ping_interval=0.2)
try:
    with stream as events:
        try:
            for event in events:
                print(event.id, flush=True)
        except KeyboardInterrupt:
            interrupted = time.monotonic()
            raise
except KeyboardInterrupt:
    # What a script does with Ctrl-C: the block has closed the listener and joined its thread.
    print(f"closed {time.monotonic() - interrupted:.3f} running={stream.running}", flush=True)
    sys.exit(130)
"""


async def test_sigint_closes_a_script_within_a_second(emu: Emulator, tmp_path: Path) -> None:
    """Ctrl-C while iterating: KeyboardInterrupt in the caller, the block closes the listener
    within a second, the process ends with no traceback."""
    script = tmp_path / "consume.py"
    script.write_text(SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        emu.url,
        TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        entry = await emu.emit()
        line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
        assert line.decode().strip() == str(entry["id"])
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 5.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert err.decode() == ""
    closed, running = out.decode().split()[1:]
    assert float(closed) < 1.0 and running == "running=False"
    await emu.wait_until(lambda: not emu.clients[0].open)
    assert emu.clients[0].close_code == 1000
