"""One Connection run to its verdict against the emulator, and the Handoff's turn alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from neuroio._config import ConnectionOptions
from neuroio._connection import READER, RECOVERY, Connection, Handoff
from neuroio._inbox import Inbox
from neuroio._protocol.backoff import Backoff
from neuroio._protocol.session import LossReason, Lost, Rejected
from neuroio.emulator import Emulator
from neuroio.stats import ListenerStats, State

from .helpers import Frames, until

TOKEN = "connection-test-token"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=[TOKEN], seed=3) as emulator:
        yield emulator


def make(
    url: str, http: aiohttp.ClientSession, handler: Frames | None, token: str = TOKEN
) -> tuple[Connection, ListenerStats, asyncio.Event]:
    stats = ListenerStats()
    closing = asyncio.Event()
    states: list[State] = []
    connection = Connection(
        url=url,
        token=token,
        options=ConnectionOptions(timeout=2.0, ping_interval=0.05, ping_timeout=1.0),
        ssl=None,
        http=http,
        handoff=Handoff(handler, Inbox(16), stats, drain_timeout=1.0),
        backoff=Backoff(0.01, 0.05),
        closing=closing,
        set_state=states.append,
    )
    return connection, stats, closing


async def test_a_live_connection_ends_with_the_servers_close(emu: Emulator) -> None:
    """Accepted, frames delivered, then a close frame: lost, closed, with the code."""
    got = Frames()
    async with aiohttp.ClientSession() as http:
        connection, stats, _ = make(emu.url, http, got)
        run = asyncio.create_task(connection.run())
        await emu.wait_for_clients(1)
        sent = [e["id"] for e in await emu.burst(3)]
        await got.wait(lambda: got.ids == sent)
        await emu.close_clients(1011)
        verdict = await asyncio.wait_for(run, 5)
    assert verdict == Lost(LossReason.CLOSED, 1011, authenticated=True)
    assert stats.connects == 1 and stats.authenticated == 1 and stats.events == 3


async def test_a_refused_token_is_rejected_with_the_servers_text(emu: Emulator) -> None:
    """The server's error answer becomes a Rejected verdict, handed to the handler first."""
    got = Frames()
    async with aiohttp.ClientSession() as http:
        connection, stats, _ = make(emu.url, http, got, token="wrong")
        verdict = await asyncio.wait_for(connection.run(), 5)
    assert isinstance(verdict, Rejected)
    assert verdict.server_message == "Authentication failed: invalid token"
    assert len(got.frames) == 1 and stats.authenticated == 0


async def test_no_server_is_connect_failed_with_a_reason() -> None:
    """Nobody listening: lost before any socket, with why kept for the final error."""
    emulator = Emulator()
    await emulator.start()
    url = emulator.url
    await emulator.stop()
    async with aiohttp.ClientSession() as http:
        connection, stats, _ = make(url, http, None)
        verdict = await asyncio.wait_for(connection.run(), 5)
    assert verdict == Lost(LossReason.CONNECT_FAILED)
    assert connection.last_failure
    assert stats.connects == 0


async def test_closing_ends_a_live_connection_with_1000(emu: Emulator) -> None:
    """Setting `closing` ends the connection as `closing`, and the socket with code 1000."""
    async with aiohttp.ClientSession() as http:
        connection, _, closing = make(emu.url, http, None)
        run = asyncio.create_task(connection.run())
        await emu.wait_for_clients(1)
        closing.set()
        verdict = await asyncio.wait_for(run, 5)
    assert verdict == Lost(LossReason.CLOSING, authenticated=True)
    await emu.wait_until(lambda: emu.clients[0].close_code == 1000)


async def test_handoff_calls_the_handler_once_at_a_time_in_order() -> None:
    """Whoever delivers (reader, recovery, a hook), calls never overlap and queue in order."""
    stats = ListenerStats()
    log: list[str] = []
    running = 0
    gate = asyncio.Event()

    async def handler(message: str | bytes) -> None:
        nonlocal running
        running += 1
        assert running == 1, "two handler calls at once"
        log.append(str(message))
        if message == "first":
            await gate.wait()
        running -= 1

    async def hook() -> None:
        assert running == 0
        log.append("hook")

    handoff = Handoff(handler, Inbox(4), stats, drain_timeout=1.0)
    first = asyncio.create_task(handoff.call("first", READER))
    await until(lambda: log == ["first"])
    queued = [
        asyncio.create_task(handoff.call("recovered", RECOVERY)),
        asyncio.create_task(handoff.run_hook(hook, "on_connected")),
        asyncio.create_task(handoff.call("second", READER)),
    ]
    await until(lambda: len(handoff.turn.waiters) == 3)
    gate.set()
    await asyncio.gather(first, *queued)
    assert log == ["first", "recovered", "hook", "second"]
    assert stats.handler_errors == 0  # the overlap assertions above raised nowhere
    assert stats.queue_high_water == 3
    assert handoff.turn.owner is None


async def test_handoff_counts_and_survives_a_failing_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises is logged with its traceback and counted; the turn is released."""
    stats = ListenerStats()
    handoff = Handoff(None, Inbox(4), stats, drain_timeout=1.0)

    async def broken() -> None:
        raise ValueError("hook failure")

    await handoff.run_hook(broken, "on_connected")
    assert stats.handler_errors == 1
    assert handoff.turn.owner is None
    assert any(r.exc_info and "on_connected raised" in r.getMessage() for r in caplog.records)
