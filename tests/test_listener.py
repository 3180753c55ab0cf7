"""EventListener against the emulator over loopback: every behaviour of the core issue."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator

import pytest

from neuroio import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    Event,
    EventListener,
    State,
)
from neuroio._protocol.backoff import Backoff
from neuroio.emulator import Emulator
from neuroio.listener import LossReason

from .helpers import Frames, until

TOKEN = "listener-test-token"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=[TOKEN], seed=1) as emulator:
        yield emulator


async def test_handler_gets_every_frame_kind_in_order(emu: Emulator) -> None:
    """The raw handler sees the auth reply, PONGs, events, malformed and binary frames."""
    got = Frames()
    listener = EventListener(TOKEN, got, url=emu.url, ping_interval=0.05)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    sent = [e["id"] for e in await emu.burst(20)]
    await emu.send_raw("this is not json")
    await emu.send_raw(b"\x00\x01binary")
    await got.wait(lambda: b"\x00\x01binary" in got.frames)
    await got.wait(lambda: any('"PING"' in f for f in got.frames if isinstance(f, str)))
    await listener.close()
    await task
    assert json.loads(got.frames[0]) == {"auth": "ok"}
    assert got.ids == sent
    assert "this is not json" in got.frames
    assert listener.stats.malformed == 2
    assert listener.stats.events == 20
    assert listener.stats.pongs >= 1 and listener.stats.last_rtt is not None


async def test_close_sends_1000_and_ends_every_task(emu: Emulator) -> None:
    """close() ends listen() with a 1000 close frame and no task left behind."""
    listener = EventListener(TOKEN, Frames(), url=emu.url)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await listener.close()
    await asyncio.wait_for(task, 2)
    await listener.close()  # idempotent
    await emu.wait_until(lambda: not emu.clients[0].open)
    assert emu.clients[0].close_code == 1000
    assert emu.clients[0].closed_by == "client"
    assert listener.state is State.CLOSED
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_cancelling_listen_closes_cleanly(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling the listen() task closes with 1000 and leaves nothing unclosed."""
    listener = EventListener(TOKEN, Frames(), url=emu.url)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await emu.wait_until(lambda: not emu.clients[0].open)
    assert emu.clients[0].close_code == 1000
    gc.collect()
    assert "Unclosed" not in caplog.text
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_typed_iterator_yields_events(emu: Emulator) -> None:
    """Without a handler, `async for` yields typed events only, in order."""
    await emu.wait_until(lambda: True)
    sent = []
    async with EventListener(TOKEN, url=emu.url) as events:
        await emu.wait_for_clients(1)
        sent = [e["id"] for e in await emu.burst(10)]
        got = []
        async for event in events:
            assert isinstance(event, Event)
            got.append(event.id)
            if len(got) == 10:
                break
    assert got == sent


async def test_typed_iterator_raises_on_rejected_token(emu: Emulator) -> None:
    """A rejected token surfaces from the iterator as AuthenticationError."""
    with pytest.raises(AuthenticationError):
        async with EventListener("wrong-token", url=emu.url) as events:
            async for _ in events:
                pass


async def test_rejected_token_is_not_retried(emu: Emulator) -> None:
    """An {"error": ...} answer to AUTH raises at once: one connection, no loop."""
    got = Frames()
    listener = EventListener("wrong-token", got, url=emu.url)
    with pytest.raises(AuthenticationError, match="rejected the API token"):
        await asyncio.wait_for(listener.listen(), 5)
    assert len(emu.clients) == 1
    assert "error" in json.loads(got.frames[0])  # the handler saw the answer first


@pytest.mark.parametrize("how", ["close_1011", "close_1001", "abort", "restart"])
async def test_reconnects_after_any_loss(emu: Emulator, how: str) -> None:
    """Close frames of any code, resets and server restarts are all followed by a reconnect."""
    got = Frames()
    listener = EventListener(TOKEN, got, url=emu.url, reconnect_delay=0.01)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    first = [e["id"] for e in await emu.burst(3)]
    await got.wait(lambda: len(got.ids) == 3)
    if how == "close_1011":
        await emu.close_clients(1011)
    elif how == "close_1001":
        await emu.close_clients(1001)
    elif how == "abort":
        await emu.abort_clients()
    else:
        await emu.restart()
    await emu.wait_for_clients(2, timeout=5)
    second = [e["id"] for e in await emu.burst(3)]
    await got.wait(lambda: len(got.ids) == 6)
    await listener.close()
    await task
    assert got.ids == first + second
    assert listener.stats.total_reconnects == 1
    assert emu.clients[1].auth_tokens == [TOKEN]  # every connection authenticates again


async def test_frozen_connection_is_detected_and_replaced(emu: Emulator) -> None:
    """No PONG within ping_timeout: the connection is dropped and a new one made."""
    listener = EventListener(
        TOKEN, Frames(), url=emu.url, ping_interval=0.1, ping_timeout=0.3, reconnect_delay=0.01
    )
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    emu.freeze()
    await emu.wait_for_clients(2, timeout=3)
    assert listener.stats.reconnects["heartbeat_timeout"] == 1
    await listener.close()
    await task


async def test_auth_without_answer_times_out_and_retries(emu: Emulator) -> None:
    """A server that never answers AUTH costs `timeout` seconds, then a new attempt."""
    emu.freeze(new_clients=True)
    listener = EventListener(TOKEN, Frames(), 0.2, url=emu.url, reconnect_delay=0.01)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(2, authenticated=False, timeout=3)
    emu.unfreeze()
    await listener.close()
    await task
    assert listener.stats.reconnects["auth_timeout"] >= 1


async def test_closed_port_with_max_retries_gives_up() -> None:
    """With max_retries, a port nobody listens on ends in ConnectionFailedError."""
    emulator = Emulator()
    await emulator.start()
    url = emulator.url
    await emulator.stop()
    listener = EventListener(TOKEN, url=url, max_retries=2, reconnect_delay=0.01)
    with pytest.raises(ConnectionFailedError, match="after 3 attempts"):
        await asyncio.wait_for(listener.listen(), 5)
    assert listener.stats.reconnects["connect_failed"] == 2


async def test_failed_handshake_is_retried(emu: Emulator) -> None:
    """An HTTP answer that is not a WebSocket upgrade counts as a failed attempt."""
    listener = EventListener(
        TOKEN, url=emu.url.rstrip("/") + "/v1/entries/", max_retries=1, reconnect_delay=0.01
    )
    with pytest.raises(ConnectionFailedError):
        await asyncio.wait_for(listener.listen(), 5)


async def test_backoff_grows_while_connections_never_become_healthy(emu: Emulator) -> None:
    """Accept-then-drop servers see growing delays: a handshake alone does not reset them."""
    backoff = Backoff(0.001, 1.0)
    listener = EventListener(TOKEN, Frames(), url=emu.url, ping_interval=5, backoff=backoff)
    task = asyncio.create_task(listener.listen())
    for n in range(1, 5):
        await emu.wait_for_clients(n)
        await emu.close_clients(1011)
    await emu.wait_for_clients(5)
    assert backoff.attempts == 4
    await listener.close()
    await task


async def test_backoff_resets_after_a_healthy_interval(emu: Emulator) -> None:
    """A connection that answered PING over a whole interval resets the delays."""
    backoff = Backoff(0.001, 1.0)
    backoff.attempts = 7
    listener = EventListener(TOKEN, Frames(), url=emu.url, ping_interval=0.05, backoff=backoff)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.wait_until(lambda: len(emu.clients[0].ping_times) >= 3)
    assert backoff.attempts == 0
    await listener.close()
    await task


async def test_stuck_handler_stops_reading_and_loses_nothing(emu: Emulator) -> None:
    """A handler stuck for a while: reading stops (TCP backpressure), no reconnect, no loss."""
    release = asyncio.Event()
    got: list[str | bytes] = []

    async def stuck(message: str | bytes) -> None:
        await release.wait()
        got.append(message)

    listener = EventListener(TOKEN, stuck, url=emu.url, ping_interval=0.05, ping_timeout=0.2)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    sent = [e["id"] for e in await emu.burst(20_000)]
    # The handler is stuck on the auth reply: nothing more is read while it is.
    await asyncio.wait_for(_until_stable(lambda: listener.stats.messages), 10)
    assert listener.stats.messages == 1, "the listener read on while the handler was busy"
    assert listener.stats.total_reconnects == 0
    release.set()
    while len(got) < 20_000 + 1:
        await asyncio.sleep(0.01)
    ids = [json.loads(m)["id"] for m in got if '"id"' in str(m)]
    assert ids == sent
    assert listener.stats.total_reconnects == 0
    await listener.close()
    await task


async def test_iterator_queue_is_bounded_when_nobody_iterates(emu: Emulator) -> None:
    """Without a handler, unconsumed events stop at max_queue, then all arrive in order."""
    async with EventListener(
        TOKEN, url=emu.url, max_queue=8, ping_interval=0.05, ping_timeout=0.2
    ) as events:
        await emu.wait_for_clients(1)
        sent = [e["id"] for e in await emu.burst(5_000)]
        await asyncio.wait_for(_until_stable(lambda: events.stats.messages), 10)
        assert events.stats.messages < 5_000
        assert events.stats.total_reconnects == 0
        got = []
        async for event in events:
            got.append(event.id)
            if len(got) == 5_000:
                break
    assert got == sent
    assert events.stats.queue_high_water <= 8


async def _until_stable(value: object, quiet: float = 0.3) -> None:
    """Return once ``value()`` has not changed for ``quiet`` seconds."""
    last = value()  # type: ignore[operator]
    while True:
        await asyncio.sleep(quiet)
        now = value()  # type: ignore[operator]
        if now == last:
            return
        last = now


async def test_oversized_frame_drops_the_connection_not_the_listener(emu: Emulator) -> None:
    """A frame above max_message_size ends that connection; the listener reconnects."""
    got = Frames()
    listener = EventListener(TOKEN, got, url=emu.url, max_message_size=4096, reconnect_delay=0.01)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.send_raw("x" * 10_000)
    await emu.wait_for_clients(2)
    sent = [e["id"] for e in await emu.burst(2)]
    await got.wait(lambda: got.ids == sent)
    assert listener.stats.reconnects["message_too_big"] == 1
    await listener.close()
    await task


async def test_close_from_inside_the_handler(emu: Emulator) -> None:
    """A handler may call close(); listen() then returns."""
    seen: list[int] = []
    listener: EventListener

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "id" in data:
            seen.append(data["id"])
            if len(seen) == 3:
                await listener.close()

    listener = EventListener(TOKEN, handler, url=emu.url)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.burst(3)
    await asyncio.wait_for(task, 5)
    assert len(seen) == 3


def test_token_never_in_repr_or_config_errors() -> None:
    """The token is absent from the repr; options are checked with clear errors."""
    listener = EventListener("s3cr3t-value", url="ws://127.0.0.1:9")
    assert "s3cr3t-value" not in repr(listener)
    with pytest.raises(ConfigurationError, match="ws://"):
        EventListener("t", url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError):
        EventListener("")
    with pytest.raises(ConfigurationError):
        EventListener("t", url="ws://127.0.0.1:9", ping_interval=0)


def test_url_defaults_to_environment_then_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """url=None reads NEUROIO_EVENTS_URL, else the production endpoint."""
    monkeypatch.delenv("NEUROIO_EVENTS_URL", raising=False)
    assert EventListener("t").url == "wss://events.neuroio.com"
    monkeypatch.setenv("NEUROIO_EVENTS_URL", "ws://127.0.0.1:1234")
    assert EventListener("t").url == "ws://127.0.0.1:1234"


def test_works_under_uvloop() -> None:
    """The listener runs unchanged on uvloop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        async with Emulator(tokens=[TOKEN]) as emulator:
            got = Frames()
            listener = EventListener(TOKEN, got, url=emulator.url)
            task = asyncio.create_task(listener.listen())
            await emulator.wait_for_clients(1)
            sent = [e["id"] for e in await emulator.burst(50)]
            await got.wait(lambda: len(got.ids) == 50)
            await listener.close()
            await task
            assert got.ids == sent
            return sent

    loop = uvloop.new_event_loop()
    try:
        assert len(loop.run_until_complete(main())) == 50
        assert "uvloop" in type(loop).__module__
    finally:
        loop.close()


async def test_debug_logs_hold_no_token(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, neither the listener nor aiohttp nor the emulator log the token."""
    caplog.set_level(logging.DEBUG)
    listener = EventListener(TOKEN, Frames(), url=emu.url, ping_interval=0.02)
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.burst(3)
    await emu.close_clients(1011)
    await emu.wait_for_clients(2)
    await listener.close()
    await task
    assert caplog.records
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("mode", ["handler", "iterator"])
async def test_pings_go_out_on_schedule_while_the_consumer_is_busy(
    emu: Emulator, mode: str
) -> None:
    """A slow handler (or a full inbox behind a slow iterator) does not stop the PINGs: the
    server keeps seeing one every ping_interval, and the connection is never judged dead."""
    interval = 0.05
    n = 40
    busy: list[float] = []  # monotonic time of each event taken, 20 ms of work each

    async def slow(message: str | bytes) -> None:
        if '"id"' in str(message):
            await asyncio.sleep(0.02)  # the handler's work, not a synchronisation
            busy.append(loop.time())

    loop = asyncio.get_running_loop()
    listener = EventListener(
        TOKEN,
        slow if mode == "handler" else None,
        url=emu.url,
        ping_interval=interval,
        ping_timeout=0.15,
        max_queue=2,
    )

    async def iterate() -> None:
        async with listener as events:
            async for _ in events:
                await asyncio.sleep(0.02)
                busy.append(loop.time())
                if len(busy) == n:
                    return

    task = asyncio.create_task(listener.listen() if mode == "handler" else iterate())
    await emu.wait_for_clients(1)
    await emu.burst(n)
    await until(lambda: len(busy) >= n, timeout=20)
    start, end = busy[0], busy[-1]
    pings = [t for t in emu.clients[0].ping_times if start <= t <= end]
    await listener.close()
    await task
    # About (end - start) / interval PINGs went out while the consumer was busy; allow half
    # for a loaded machine. Before the fix: none.
    assert end - start >= 0.5
    assert len(pings) >= (end - start) / interval / 2, (len(pings), end - start)
    assert listener.stats.total_reconnects == 0
    assert len(emu.clients) == 1


async def test_connection_hooks_run_in_the_handlers_turn_in_order(emu: Emulator) -> None:
    """on_connected runs right after the auth reply and before that connection's later frames
    (even those already received); on_disconnected after the last one, before reconnecting,
    with the reason; close() ends with on_disconnected(CLOSING)."""
    seen: list[object] = []
    release = asyncio.Event()

    async def handler(message: str | bytes) -> None:
        data = json.loads(message)
        if "PING" not in data:  # PONGs come whenever they come
            seen.append("auth" if "auth" in data else data["id"])

    async def on_connected() -> None:
        seen.append("connected")
        if seen.count("connected") == 1:
            await release.wait()  # the burst below is sent while this waits

    async def on_disconnected(reason: LossReason) -> None:
        seen.append(reason)

    listener = EventListener(
        TOKEN,
        handler,
        url=emu.url,
        reconnect_delay=0.01,
        on_connected=on_connected,
        on_disconnected=on_disconnected,
    )
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await until(lambda: "connected" in seen)
    first = [e["id"] for e in await emu.burst(3)]
    await emu.flush()
    assert seen == ["auth", "connected"], "a frame overtook on_connected"
    release.set()
    await until(lambda: all(i in seen for i in first))
    await emu.close_clients(1011)
    await emu.wait_for_clients(2)
    await until(lambda: seen.count("connected") == 2)
    second = [e["id"] for e in await emu.burst(2)]
    await until(lambda: all(i in seen for i in second))
    await listener.close()
    await task
    assert seen == [
        "auth",
        "connected",
        *first,
        LossReason.CLOSED,
        "auth",
        "connected",
        *second,
        LossReason.CLOSING,
    ]
    assert listener.stats.handler_errors == 0


async def test_hook_errors_are_logged_counted_and_survived(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged with its traceback and counted; the listener goes on."""

    async def on_connected() -> None:
        raise RuntimeError("connected hook broke")

    async def on_disconnected(reason: LossReason) -> None:
        raise RuntimeError(f"disconnected hook broke ({reason.value})")

    got = Frames()
    listener = EventListener(
        TOKEN,
        got,
        url=emu.url,
        reconnect_delay=0.01,
        on_connected=on_connected,
        on_disconnected=on_disconnected,
    )
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.abort_clients()
    await emu.wait_for_clients(2)
    sent = [e["id"] for e in await emu.burst(3)]
    await got.wait(lambda: got.ids == sent)
    await listener.close()
    await task
    assert listener.stats.handler_errors == 4  # two connections, two hooks each
    broke = [r for r in caplog.records if r.exc_info and "hook broke" in str(r.exc_info[1])]
    assert {str(r.exc_info[1]) for r in broke if r.exc_info} == {
        "connected hook broke",
        "disconnected hook broke (reset)",
        "disconnected hook broke (closing)",
    }
    assert any("on_connected raised" in r.getMessage() for r in broke)


async def test_iterator_gets_the_connection_hooks_too(emu: Emulator) -> None:
    """Without a handler, on_connected comes before the connection's events are yielded."""
    order: list[object] = []

    async def on_connected() -> None:
        order.append("connected")

    async def on_disconnected(reason: LossReason) -> None:
        order.append(reason)

    listener = EventListener(
        TOKEN, url=emu.url, on_connected=on_connected, on_disconnected=on_disconnected
    )
    async with listener as events:
        await emu.wait_for_clients(1)
        sent = [e["id"] for e in await emu.burst(2)]
        async for event in events:
            order.append(event.id)
            if event.id == sent[-1]:
                break
    assert order == ["connected", *sent, LossReason.CLOSING]


async def test_authentication_error_carries_the_server_message(emu: Emulator) -> None:
    """A refused token: the error holds the server's text and no close code."""
    listener = EventListener("wrong-token", url=emu.url)
    with pytest.raises(AuthenticationError) as info:
        await asyncio.wait_for(listener.listen(), 5)
    assert info.value.server_message == "Authentication failed: invalid token"
    assert info.value.close_code is None


async def test_connection_failed_error_carries_attempts_and_reason() -> None:
    """After max_retries, the error says how many attempts failed and why the last did."""
    emulator = Emulator()
    await emulator.start()
    url = emulator.url
    await emulator.stop()
    listener = EventListener(TOKEN, url=url, max_retries=1, reconnect_delay=0.01)
    with pytest.raises(ConnectionFailedError) as info:
        await asyncio.wait_for(listener.listen(), 5)
    assert info.value.attempts == 2
    assert info.value.last_reason is LossReason.CONNECT_FAILED


def test_errors_still_take_a_message_alone() -> None:
    """The data are keyword arguments with defaults: the old one-message form still works."""
    auth = AuthenticationError("refused")
    failed = ConnectionFailedError("gave up")
    assert str(auth) == "refused" and auth.close_code is None and auth.server_message is None
    assert str(failed) == "gave up" and failed.attempts is None and failed.last_reason is None


async def test_a_dead_connection_is_still_detected_after_a_busy_handler(emu: Emulator) -> None:
    """A handler busy for several ping_timeouts is not a dead connection; once it reads
    again, a connection that stopped answering is detected as dead as usual."""
    release = asyncio.Event()

    async def busy(message: str | bytes) -> None:
        if '"id"' in str(message):
            await release.wait()

    listener = EventListener(
        TOKEN, busy, url=emu.url, ping_interval=0.05, ping_timeout=0.15, reconnect_delay=0.01
    )
    task = asyncio.create_task(listener.listen())
    await emu.wait_for_clients(1)
    await emu.emit()
    pings = len(emu.clients[0].ping_times)
    # Busy for well over ping_timeout, PINGs going out meanwhile: no verdict.
    await emu.wait_until(lambda: len(emu.clients[0].ping_times) >= pings + 8)
    assert listener.stats.total_reconnects == 0
    release.set()
    await until(lambda: listener.stats.pongs >= 2)
    emu.freeze()
    await emu.wait_for_clients(2, timeout=3)
    assert listener.stats.reconnects == {"heartbeat_timeout": 1}
    await listener.close()
    await task
