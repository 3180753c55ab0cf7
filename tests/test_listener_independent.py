"""The listener against a server that is not this project's emulator (the core issue's proof)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from neuroio import AuthenticationError, EventListener

from .helpers import until
from .independent_server import IndependentServer

TOKEN = "secret-token"


async def test_thousand_events_arrive_in_order() -> None:
    """1,000 events pushed back to back reach the handler complete and in order."""
    got: list[int] = []

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])

    async with IndependentServer(TOKEN) as server:
        listener = EventListener(TOKEN, handler, url=server.url)
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        sent = await server.emit(1000)
        await until(lambda: len(got) >= 1000)
        await listener.close()
        await task
    assert got == sent


@pytest.mark.parametrize("mode", ["error", "close", "silent"])
async def test_rejected_token_raises_within_timeout(mode: str) -> None:
    """A rejected token ends listen() with AuthenticationError, in at most 3 attempts."""
    async with IndependentServer(TOKEN) as server:
        server.reject = mode
        listener = EventListener(TOKEN, url=server.url, timeout=4.0, reconnect_delay=0.05)
        start = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            await listener.listen()
        assert time.monotonic() - start < 4.0
        assert server.auth_attempts <= 3
        assert TOKEN not in str(info.value)
        # The error carries what refused the token: the close code, or the server's text.
        assert info.value.close_code == {"error": None, "close": 4001, "silent": 1000}[mode]
        assert (info.value.server_message is not None) is (mode == "error")


async def test_frozen_connection_replaced_within_3s() -> None:
    """A connection that stops answering PING is replaced within 3 s (0.2 s / 0.5 s)."""
    async with IndependentServer(TOKEN) as server:
        listener = EventListener(TOKEN, url=server.url, ping_interval=0.2, ping_timeout=0.5)
        task = asyncio.create_task(listener.listen())
        await server.wait_live(1)
        server.conns[-1].frozen = True
        frozen_at = time.monotonic()
        await server.wait_live(2, timeout=3.0)
        assert time.monotonic() - frozen_at < 3.0
        assert listener.stats.reconnects["heartbeat_timeout"] == 1
        await listener.close()
        await task


async def test_one_ping_stream_per_live_connection_after_reconnects() -> None:
    """After 5 forced reconnects only the live connection is pinged, at the set interval."""
    async with IndependentServer(TOKEN) as server:
        listener = EventListener(
            TOKEN, url=server.url, ping_interval=0.1, ping_timeout=1.0, reconnect_delay=0.01
        )
        task = asyncio.create_task(listener.listen())
        for n in range(1, 6):
            await server.wait_live(n)
            await server.drop_all()
        await server.wait_live(6)
        live = server.live()
        assert len(live) == 1
        counts = [len(c.pings) for c in server.conns]
        window_start = time.monotonic()
        await until(lambda: len(live[0].pings) >= counts[-1] + 5)
        elapsed = time.monotonic() - window_start
        after = [len(c.pings) for c in server.conns]
        # While the live connection received 5 more PINGs, no old one received any, and the
        # live one was not pinged faster than its interval.
        assert after[:-1] == counts[:-1]
        assert server.conns[-1] is live[0]
        assert elapsed >= 0.1 * 4
        await listener.close()
        await task


async def test_slow_handler_causes_no_reconnect() -> None:
    """200 events handled at 50 ms each, with ping 0.2 s / timeout 0.5 s: zero reconnects."""
    got: list[int] = []

    async def slow(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            await asyncio.sleep(0.05)
            got.append(data["id"])

    async with IndependentServer(TOKEN) as server:
        listener = EventListener(
            TOKEN, slow, url=server.url, ping_interval=0.2, ping_timeout=0.5, max_queue=16
        )
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        sent = await server.emit(200)
        await until(lambda: len(got) >= 200, timeout=30)
        assert got == sent
        assert listener.stats.total_reconnects == 0
        await listener.close()
        await task


async def test_handler_raising_on_every_other_event_gets_every_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raises is logged with its traceback and the next event still arrives."""
    got: list[int] = []

    async def flaky(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            got.append(data["id"])
            if data["id"] % 2:
                raise ValueError(f"boom {data['id']}")

    async with IndependentServer(TOKEN) as server:
        listener = EventListener(TOKEN, flaky, url=server.url)
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        sent = await server.emit(50)
        await until(lambda: len(got) >= 50)
        await listener.close()
        await task
    assert got == sent
    assert listener.stats.handler_errors == 25
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_token_absent_from_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, across every logger, no record carries the token."""
    caplog.set_level(logging.DEBUG)
    async with IndependentServer(TOKEN) as server:
        listener = EventListener(
            TOKEN, url=server.url, ping_interval=0.05, ping_timeout=0.2, reconnect_delay=0.01
        )
        task = asyncio.create_task(listener.listen())
        await server.wait_live()
        await server.emit(5)
        await server.drop_all()
        await server.wait_live(2)
        server.reject = "error"
        await server.drop_all()
        with pytest.raises(AuthenticationError) as info:
            await task
    # The test server's own logger ("websockets.server") prints frames it receives; every
    # record of the client side, aiohttp's included, must be clean.
    client = [r for r in caplog.records if not r.name.startswith("websockets")]
    assert any(r.name == "neuroio.listener" for r in client)
    for record in client:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in (record.exc_text or "")
    assert TOKEN not in repr(listener)
    assert TOKEN not in str(info.value)
