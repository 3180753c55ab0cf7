"""EventListener behind a fault-injecting proxy: every network fault is survived in its bound.

Timeline of a half-open connection (``ping_interval`` 0.1 s, ``ping_timeout`` 0.3 s)::

    t=0      the path goes dead (blackhole); the listener cannot know
    t<=0.1   the next PING goes out into the void
    t<=0.4   that PING is ``ping_timeout`` old: "connection is dead", reconnect
    t<=0.4+  a new connection through the same proxy authenticates

so detection is bounded by ``ping_interval + ping_timeout`` and the tests allow a small margin
for the event loop on a busy machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from neuroio import Event, EventListener, parse_message
from neuroio.emulator import Emulator
from neuroio.messages import Backfilled, Entry

from .faultproxy import Direction, FaultProxy
from .helpers import Frames, until

TOKEN = "fault-test-token"
PING_INTERVAL = 0.1
PING_TIMEOUT = 0.3
# Event-loop slack on a loaded two-core machine, on top of the documented bound.
MARGIN = 0.35


class DeathLog(logging.Handler):
    """Notes when the listener declares a connection dead (the moment of detection)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "connection is dead" in record.getMessage():
            self.times.append(time.monotonic())


@pytest.fixture
def death_log() -> Iterator[DeathLog]:
    handler = DeathLog()
    logger = logging.getLogger("neuroio.listener")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@asynccontextmanager
async def rig(
    *,
    push_while_disconnected: bool = True,
    backfill: bool = False,
    ping_interval: float = PING_INTERVAL,
    ping_timeout: float = PING_TIMEOUT,
    **listener_options: Any,
) -> AsyncIterator[tuple[Emulator, FaultProxy, EventListener, Frames]]:
    """Emulator, proxy in front of it, and a running listener connected through the proxy."""
    async with (
        Emulator(tokens=[TOKEN], seed=7, push_while_disconnected=push_while_disconnected) as emu,
        FaultProxy("127.0.0.1", emu.port) as proxy,
    ):
        got = Frames()
        listener = EventListener(
            TOKEN,
            got,
            url=proxy.url_for(),
            api_url=f"http://127.0.0.1:{proxy.port}",
            backfill=backfill,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            reconnect_delay=0.01,
            max_reconnect_delay=0.05,
            **listener_options,
        )
        task = asyncio.create_task(listener.listen())
        try:
            await emu.wait_for_clients(1)
            yield emu, proxy, listener, got
        finally:
            await listener.close()
            await asyncio.wait_for(task, 10)


def expected_event(entry: dict[str, Any]) -> Event:
    """The typed event a listener must deliver for an entry the emulator emitted."""
    return Event(id=entry["id"], entry=Entry.from_dict(entry))


async def test_latency_below_ping_timeout_keeps_order_and_connection() -> None:
    """75 ms each way (RTT 150 ms < ping_timeout 300 ms): all events in order, no reconnect."""
    async with rig() as (emu, proxy, listener, got):
        proxy.latency(0.075)
        sent: list[int] = []
        slowest = 0.0
        for _ in range(6):
            t0 = time.monotonic()
            sent.extend(e["id"] for e in await emu.burst(10))
            # Spread over several heartbeat periods so PONGs cross the slow path too.
            await got.wait(lambda: len(got.ids) >= len(sent))
            slowest = max(slowest, time.monotonic() - t0)
        assert got.ids == sent
        assert listener.stats.total_reconnects == 0
        assert listener.stats.pongs >= 3
        assert slowest >= 0.075  # the latency was really there
        assert proxy.connections == 1


async def test_reset_connection_reconnects_and_loses_nothing_sent_after(
    death_log: DeathLog,
) -> None:
    """An RST on both sides: the listener reconnects at once (reason reset/closed)."""
    async with rig() as (emu, proxy, listener, got):
        first = [e["id"] for e in await emu.burst(10)]
        await got.wait(lambda: len(got.ids) == 10)
        t0 = time.monotonic()
        assert proxy.cut() == 1
        await emu.wait_for_clients(2, timeout=2)
        recovered_after = time.monotonic() - t0
        second = [e["id"] for e in await emu.burst(10)]
        await got.wait(lambda: len(got.ids) == 20)
        assert got.ids == first + second
        assert set(listener.stats.reconnects) <= {"reset", "closed"}
        assert listener.stats.total_reconnects == 1
        assert not death_log.times, "an RST must be seen at once, not by the heartbeat"
        assert recovered_after < 1.0
        assert proxy.connections == 2


@pytest.mark.parametrize("direction", ["both", "up", "down"])
async def test_half_open_detected_within_bound_and_recovered(
    direction: Direction, death_log: DeathLog
) -> None:
    """Bytes silently dropped one or both ways: dead within ping_interval + ping_timeout."""
    async with rig() as (emu, proxy, listener, got):
        before = [e["id"] for e in await emu.burst(5)]
        await got.wait(lambda: len(got.ids) == 5)
        t0 = time.monotonic()
        proxy.blackhole(direction)
        bound = PING_INTERVAL + PING_TIMEOUT
        await emu.wait_for_clients(2, timeout=bound + 3)
        recovered_after = time.monotonic() - t0
        assert len(death_log.times) == 1
        detected_after = death_log.times[0] - t0
        assert detected_after <= bound + MARGIN, f"detected after {detected_after:.3f}s"
        # Detection is by the heartbeat, not earlier by luck: no PONG for ping_timeout.
        assert detected_after >= PING_TIMEOUT - 0.05
        assert recovered_after <= bound + MARGIN + 0.3, f"recovered after {recovered_after:.3f}s"
        assert listener.stats.reconnects["heartbeat_timeout"] == 1
        after = [e["id"] for e in await emu.burst(5)]
        await got.wait(lambda: set(after) <= set(got.ids))
        ids = got.ids
        assert ids[:5] == before
        assert [i for i in ids if i in after] == after
        assert len(ids) == len(set(ids))
        if direction == "up":
            # The server's side of the dead path kept receiving nothing, sending on.
            assert proxy.dropped_up > 0
        else:
            assert proxy.dropped_down > 0 or direction == "both"


async def test_throttled_burst_is_slow_but_complete() -> None:
    """40 kB/s: a 35 kB burst takes about a second, arrives whole, with no reconnect.

    PONGs queue behind the burst on the slow path, so ping_timeout is set above the burst's
    transfer time; see the next test for the heartbeat under a steady throttled stream.
    """
    rate = 40_000
    async with rig(ping_timeout=3.0) as (emu, proxy, listener, got):
        proxy.throttle(rate)
        start_bytes = proxy.bytes_down
        t0 = time.monotonic()
        sent = [e["id"] for e in await emu.burst(40)]
        await got.wait(lambda: len(got.ids) == 40, timeout=10)
        elapsed = time.monotonic() - t0
        moved = proxy.bytes_down - start_bytes
        assert got.ids == sent
        assert moved > 30_000
        # Slow: not faster than the throttle allows (10% slack for slicing).
        assert elapsed >= moved / rate * 0.9, (elapsed, moved)
        assert listener.stats.total_reconnects == 0


async def test_throttled_stream_keeps_heartbeat_and_connection() -> None:
    """A steady stream below the throttle: PONGs still get through, no false dead detection."""
    async with rig() as (emu, proxy, listener, got):
        proxy.throttle(60_000)
        emu.start_stream(25)  # about 22 kB/s of events
        try:
            await got.wait(lambda: len(got.ids) >= 40, timeout=10)
        finally:
            await emu.stop_stream()
        ids = got.ids
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        assert listener.stats.total_reconnects == 0
        assert listener.stats.pongs >= 5


@pytest.mark.parametrize("segment", [1, 7])
async def test_tiny_segments_deliver_every_event_intact_and_in_order(segment: int) -> None:
    """Frames split into 1- and 7-byte TCP segments both ways: every event intact, in order."""
    # One byte per loop turn is slow on a loaded machine: PONGs queue behind the burst, so
    # the heartbeat gets time (this test is about framing, not about detection).
    async with rig(ping_timeout=5.0) as (emu, proxy, listener, got):
        proxy.split(segment)
        bytes0, writes0, pongs0 = proxy.bytes_down, proxy.writes_down, listener.stats.pongs
        up0, up_writes0 = proxy.bytes_up, proxy.writes_up
        entries = await emu.burst(15)
        await got.wait(lambda: len(got.ids) == 15, timeout=10)
        # PINGs go up split, PONGs come down split (queued behind the burst).
        await got.wait(lambda: listener.stats.pongs >= pongs0 + 2, timeout=5)
        assert got.events() == [expected_event(e) for e in entries]
        assert listener.stats.malformed == 0
        assert listener.stats.total_reconnects == 0
        # Every write really was one segment of at most `segment` bytes.
        assert proxy.writes_down - writes0 >= (proxy.bytes_down - bytes0) / segment
        assert proxy.writes_up - up_writes0 >= (proxy.bytes_up - up0) / segment > 0


@pytest.mark.parametrize("fin", [False, True], ids=["rst", "fin"])
async def test_cut_mid_frame_never_yields_a_corrupt_event(fin: bool) -> None:
    """A connection cut inside a frame: what is delivered is whole, then the stream resumes."""
    # A long ping_interval keeps PONGs out of the way: the cut hits the burst.
    async with rig(ping_interval=5.0, ping_timeout=5.0) as (emu, proxy, listener, got):
        await got.wait(lambda: listener.stats.pongs >= 1)
        proxy.cut_mid_frame(fin=fin)
        burst = await emu.burst(30)
        await proxy.wait_until(lambda: proxy.mid_frame_cuts == 1)
        await emu.wait_for_clients(2, timeout=3)
        after = await emu.burst(10)
        await got.wait(lambda: {e["id"] for e in after} <= set(got.ids))
        by_id = {e["id"]: expected_event(e) for e in burst + after}
        delivered = []
        for frame in got.frames:
            message = parse_message(frame)  # raises on a corrupt frame
            if isinstance(message, Event):
                assert message == by_id[message.id], "an event was altered"
                delivered.append(message.id)
        burst_ids = [e["id"] for e in burst]
        cut_part = [i for i in delivered if i in set(burst_ids)]
        # Nothing half-delivered, nothing out of order: the burst's events that arrived
        # are a prefix of it, and the cut lost the rest.
        assert cut_part == burst_ids[: len(cut_part)]
        assert len(cut_part) < len(burst_ids)
        assert delivered[len(cut_part) :] == [e["id"] for e in after]
        assert listener.stats.malformed == 0
        assert listener.stats.total_reconnects == 1


async def test_backfill_recovers_events_lost_in_a_blackhole_exactly_once() -> None:
    """Events sent into a half-open connection come back from the REST API, each once."""
    async with rig(push_while_disconnected=False, backfill=True) as (emu, proxy, listener, got):
        before = [e["id"] for e in await emu.burst(10)]
        await got.wait(lambda: len(got.ids) == 10)
        proxy.blackhole("both")
        # The server still thinks the old connection is live: these go into the void.
        lost = [e["id"] for e in await emu.burst(15)]
        await emu.flush()
        await emu.wait_for_clients(2, timeout=3)
        after = [e["id"] for e in await emu.burst(10)]
        everything = before + lost + after
        await got.wait(lambda: set(everything) <= set(got.ids), timeout=5)
        # Anything still queued would show up as a duplicate: wait for it to settle.
        await emu.flush()
        counts = Counter(got.ids)
        assert sorted(counts) == sorted(everything)
        assert max(counts.values()) == 1, "an event was delivered twice"
        recovered = [json.loads(f)["id"] for f in got.frames if isinstance(f, Backfilled)]
        assert set(lost) <= set(recovered)
        assert got.ids[:10] == before
        assert proxy.dropped_down > 0
        assert listener.stats.reconnects["heartbeat_timeout"] == 1


async def test_typed_iterator_recovers_blackholed_events_exactly_once() -> None:
    """`async for` over a backfilling listener yields the events lost in a blackhole."""
    async with (
        Emulator(tokens=[TOKEN], seed=8, push_while_disconnected=False) as emu,
        FaultProxy("127.0.0.1", emu.port) as proxy,
    ):
        listener = EventListener(
            TOKEN,
            url=proxy.url_for(),
            api_url=f"http://127.0.0.1:{proxy.port}",
            backfill=True,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            reconnect_delay=0.01,
        )
        received: list[Event] = []
        async with listener as events:
            await emu.wait_for_clients(1)
            before = [e["id"] for e in await emu.burst(5)]
            async for event in events:
                received.append(event)
                if len(received) == 5:
                    break
            proxy.blackhole("both")
            lost = [e["id"] for e in await emu.burst(10)]
            await emu.flush()
            await emu.wait_for_clients(2, timeout=3)
            # Every recovered frame is queued before the marker is even emitted.
            await until(lambda: listener.stats.backfilled_events >= len(lost))
            marker = (await emu.emit())["id"]
            async for event in events:
                received.append(event)
                if event.id == marker:
                    break
        ids = [e.id for e in received]
        assert ids[:5] == before
        assert sorted(i for i in ids if i in set(lost)) == lost
        assert len(ids) == len(set(ids))
        assert all(e.backfilled for e in received if e.id in set(lost))
