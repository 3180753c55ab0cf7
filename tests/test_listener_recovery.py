"""The listener's gap recovery against the real emulator: where a gap starts never depends on a
clock, a bogus pushed id does not disable it, and every order and shape of the REST list gives
the whole gap, in order, once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from neuroio import EventListener
from neuroio.messages import Backfilled
from neuroio.testing import Emulator
from neuroio.testing._emulator import BOGUS_ID

from .faultproxy import FaultProxy
from .helpers import Frames, until

TOKEN = "listener-recovery-token"
PING_INTERVAL = 0.1
PING_TIMEOUT = 0.3


def recovered(got: Frames) -> list[int]:
    """The ids of the Backfilled frames, in delivery order."""
    return [json.loads(f)["id"] for f in got.frames if isinstance(f, Backfilled)]


@asynccontextmanager
async def listening(
    emu: Emulator, api_url: str, url: str | None = None, **options: Any
) -> AsyncIterator[tuple[EventListener, Frames]]:
    """A running backfilling listener with a recording handler, closed on exit."""
    got = Frames()
    listener = EventListener(
        TOKEN,
        got,
        url=url or emu.url,
        api_url=api_url,
        backfill=True,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        reconnect_delay=0.01,
        max_reconnect_delay=0.05,
        **options,
    )
    task = asyncio.create_task(listener.listen())
    try:
        await emu.wait_for_clients(1)
        yield listener, got
    finally:
        await listener.close()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("clock_offset", [0.0, -300.0, -86400.0])
async def test_no_event_seen_a_half_open_gap_is_recovered_from_the_rest_apis_newest_id(
    clock_offset: float,
) -> None:
    """backfill=True, no event seen yet, 20 events sent into a half-open connection: all 20
    come back, each once, and none of the 5 older entries (the gap starts at the newest id the
    REST API gave at connection time, not at a clock time). A server clock 5 minutes or a day
    behind (the default max age is a day) changes nothing."""
    async with (
        Emulator(
            tokens=[TOKEN], seed=11, push_while_disconnected=False, clock_offset=clock_offset
        ) as emu,
        FaultProxy("127.0.0.1", emu.port) as proxy,
    ):
        older = [e["id"] for e in await emu.burst(5)]  # history only: nobody is connected
        api_url = f"http://127.0.0.1:{proxy.port}"
        async with listening(emu, api_url, url=proxy.url_for()) as (listener, got):
            # The connection's newest-entry probe (first and last of the list) was answered.
            await until_floor(listener, older[-1])
            proxy.blackhole("both")
            lost = [e["id"] for e in await emu.burst(20)]
            await emu.flush()
            await emu.wait_for_clients(2, timeout=3)
            await got.wait(lambda: set(lost) <= set(got.ids), timeout=5)
            marker = (await emu.emit())["id"]
            await got.wait(lambda: marker in got.ids)
        assert recovered(got) == lost
        assert got.ids == lost + [marker]
        assert not set(older) & set(got.ids)
        assert listener.stats.backfilled_events == 20
        assert listener.stats.reconnects["heartbeat_timeout"] == 1
        assert listener.backfill_error is None


async def until_floor(listener: EventListener, newest: int | None = None) -> None:
    """Wait until the listener's tracker knows the REST API's newest id (the floor), and
    that it is ``newest`` when given."""
    tracker = listener._tracker
    assert tracker is not None
    await until(lambda: tracker.floor is not None)
    if newest is not None:
        assert tracker.floor == newest


async def test_a_bogus_pushed_id_does_not_disable_the_next_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After one frame with id 2**62 on the socket (an id the REST API never lists), the next
    300-event gap recovers 300 of 300; the bogus event is delivered once and logged once."""
    caplog.set_level(logging.WARNING, logger="neuroio")
    async with (
        Emulator(tokens=[TOKEN], seed=12, push_while_disconnected=False) as emu,
        listening(emu, emu.api_url) as (listener, got),
    ):
        before = [e["id"] for e in await emu.burst(5)]
        await got.wait(lambda: set(before) <= set(got.ids))
        await until_floor(listener)
        await emu.push_unlisted()
        after = [e["id"] for e in await emu.burst(5)]
        await got.wait(lambda: set(after) <= set(got.ids))
        await emu.abort_clients()
        missed = [e["id"] for e in await emu.burst(300)]  # nobody connected: REST only
        await got.wait(lambda: set(missed) <= set(got.ids), timeout=10)
        marker = (await emu.emit())["id"]
        await got.wait(lambda: marker in got.ids)
    counts = Counter(got.ids)
    assert [i for i in got.ids if i in set(missed)] == missed
    assert recovered(got) == missed
    assert max(counts.values()) == 1, "an event was delivered twice"
    assert counts[BOGUS_ID] == 1
    assert got.ids == before + [BOGUS_ID] + after + missed + [marker]
    lines = [r.getMessage() for r in caplog.records if str(BOGUS_ID) in r.getMessage()]
    assert len(lines) == 1, lines
    assert "not trusted" in lines[0] or "past the trusted id" in lines[0]
    by_id = [r["id_from"] for r in emu.rest_requests if "id_from" in r]
    assert str(BOGUS_ID + 1) not in by_id
    assert by_id[0] == str(after[-1] + 1)


@pytest.mark.parametrize(
    ("rest_order", "rest_shape", "ignore_id_from"),
    [
        ("desc", "page", False),
        ("asc", "page", False),
        ("desc", "list", False),
        ("asc", "list", False),
        ("desc", "page", True),
        ("desc", "list", True),
    ],
)
async def test_every_order_and_shape_of_the_list_recovers_a_gap_in_order_once(
    rest_order: str, rest_shape: str, ignore_id_from: bool
) -> None:
    """Newest first, oldest first, a page or a bare JSON list, id_from honoured or ignored: a
    250-event gap (three pages) comes back whole, in ascending order, each event once, after
    the live ones before it."""
    async with (
        Emulator(
            tokens=[TOKEN],
            seed=13,
            push_while_disconnected=False,
            rest_order=rest_order,  # type: ignore[arg-type]
            rest_shape=rest_shape,  # type: ignore[arg-type]
            ignore_id_from=ignore_id_from,
        ) as emu,
        listening(emu, emu.api_url) as (listener, got),
    ):
        await emu.burst(40)  # history before the first gap, some of it live
        before = [e["id"] for e in await emu.burst(10)]
        await got.wait(lambda: set(before) <= set(got.ids))
        # Lost right after authenticating, often while its newest id is still being asked:
        # that answer must not end the gap before the entries missed since.
        await emu.abort_clients()
        missed = [e["id"] for e in await emu.burst(250)]
        await got.wait(lambda: set(missed) <= set(got.ids), timeout=10)
        marker = (await emu.emit())["id"]
        await got.wait(lambda: marker in got.ids)
    ids = got.ids
    assert recovered(got) == missed
    assert [i for i in ids if i in set(missed)] == missed
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids[-len(missed) - 1 :] == missed + [marker]
    assert listener.stats.backfilled_events == len(missed)


async def test_since_alone_asks_the_rest_api_only_for_its_own_gap() -> None:
    """since= without backfill: its gap is recovered at the first connection; later
    reconnects make no REST request (there is no gap recovery to serve)."""
    async with Emulator(tokens=[TOKEN], seed=14, push_while_disconnected=False) as emu:
        old = [e["id"] for e in await emu.burst(30)]
        got = Frames()
        listener = EventListener(
            TOKEN, got, url=emu.url, api_url=emu.api_url, since=old[9], reconnect_delay=0.01
        )
        task = asyncio.create_task(listener.listen())
        try:
            await got.wait(lambda: set(old[10:]) <= set(got.ids))
            requests = len(emu.rest_requests)
            await emu.abort_clients()
            await emu.wait_for_clients(2)
            live = [e["id"] for e in await emu.burst(3)]
            await got.wait(lambda: set(live) <= set(got.ids))
            assert len(emu.rest_requests) == requests
        finally:
            await listener.close()
            await asyncio.wait_for(task, 10)
    assert got.ids == old[10:] + live


@pytest.mark.parametrize("rest_order", ["desc", "asc"])
async def test_a_server_ignoring_id_from_still_gives_the_gap_in_order_once(
    rest_order: str,
) -> None:
    """When the REST API ignores id_from, the gap is asked by date_from (the last event's own
    created, server clock): the 120 missed events come back in order, once, and none of the
    300 delivered before it again."""
    async with (
        Emulator(
            tokens=[TOKEN],
            seed=15,
            push_while_disconnected=False,
            ignore_id_from=True,
            rest_order=rest_order,  # type: ignore[arg-type]
        ) as emu,
        listening(emu, emu.api_url) as (listener, got),
    ):
        before = [e["id"] for e in await emu.burst(300)]
        await got.wait(lambda: set(before) <= set(got.ids))
        await emu.abort_clients()
        missed = [e["id"] for e in await emu.burst(120)]
        await got.wait(lambda: set(missed) <= set(got.ids), timeout=10)
        marker = (await emu.emit())["id"]
        await got.wait(lambda: marker in got.ids)
    assert got.ids == before + missed + [marker]
    assert recovered(got) == missed
    assert emu.rest_request_count(has=["date_from"]) >= 1


async def test_a_burst_between_the_two_requests_of_the_newest_probe_loses_no_gap() -> None:
    """A 300-event half-open gap, then the new connection's look at the REST API is slow:
    between its two requests (the first entry, then the last) 400 events are pushed live,
    more than the list held. The newest-first list then answers a new entry where the oldest
    was asked; taken as an oldest-first list, the walk would start from the newest page
    (all delivered live), stop there and recover none of the 300. All 300 come back, once."""
    async with Emulator(tokens=[TOKEN], seed=15, push_while_disconnected=False) as emu:
        await emu.burst(5)  # history only: nobody is connected
        async with listening(emu, emu.api_url) as (listener, got):
            await until_floor(listener, 5)
            emu.hold_rest(after=1)  # the next probe: its first request only is answered
            emu.freeze()
            lost = [e["id"] for e in await emu.burst(300)]
            await emu.wait_for_clients(2, timeout=5)
            emu.unfreeze()
            await emu.wait_until(lambda: emu.rest_held == 1, what="a held REST request")
            live = [e["id"] for e in await emu.burst(400)]
            await got.wait(lambda: set(live) <= set(got.ids), timeout=5)
            emu.release_rest()
            await got.wait(lambda: set(lost) <= set(got.ids), timeout=5)
        assert recovered(got) == lost
        assert sorted(got.ids) == sorted(lost + live)
        assert listener.backfill_error is None
