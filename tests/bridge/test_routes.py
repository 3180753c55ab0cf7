"""Routes in a real bridge: per-route metrics and health, cursors kept across a restart,
the cooldown judged once per batch (not again on a retry), recovered events marked, and
configuration errors."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from neuroio._routing.rules import RouteRules
from neuroio.bridge import Bridge, Pipeline, SinkStatus
from neuroio.bridge.config import CooldownConfig, FilterConfig, RouteConfig
from neuroio.bridge.delivery import SinkWorker
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, SinkError, SpoolError
from neuroio.sinks import MemorySink, SpooledEvent
from neuroio.testing import Emulator

from ..helpers import until
from ._common import TOKEN, bridge_options, frame

EXACT = RouteConfig(name="exact", to="memory:", filter=FilterConfig(result=("exact",)))
ONCE = RouteConfig(name="once", to="memory:", cooldown=CooldownConfig(key=("pid",), seconds=3600))
SLOW = RouteConfig(name="slow", to="memory:", filter=FilterConfig(result=("junk",)))


def memory(bridge: Bridge, name: str) -> MemorySink:
    sink = next(s for s in bridge.sinks if s.name == name)
    assert isinstance(sink, MemorySink)
    return sink


def entry(i: int) -> dict[str, Any]:
    return {"result": "exact" if i % 2 == 0 else "junk", "pid": f"p{i % 2}", "confidence": 90}


def metric(text: str, name: str, route: str) -> float:
    found = re.search(rf'^{name}\{{route="{route}",sink="{route}"\}} (\S+)$', text, re.M)
    assert found is not None, (name, route, text)
    return float(found.group(1))


async def test_metrics_count_per_route_and_a_restart_keeps_each_cursor(tmp_path: Path) -> None:
    """/metrics shows filtered and suppressed per route; after a restart each route goes on
    from its own cursor (a route that lagged gets what it missed, judged again from the
    spool; the others nothing twice), and the cooldown, kept in memory, lets one event per
    key out again."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        options: dict[str, Any] = {**bridge_options(emulator, tmp_path), "backfill": False}
        bridge = Bridge(TOKEN, [], routes=[EXACT, ONCE, SLOW], metrics_port=0, **options)
        memory(bridge, "slow").fail(SinkError("down for the test"))
        async with bridge, aiohttp.ClientSession() as http:
            await emulator.wait_for_clients(1)
            first = [(await emulator.emit(entry(i)))["id"] for i in range(10)]
            exact, once = memory(bridge, "exact"), memory(bridge, "once")
            await exact.wait_for(5)
            await once.wait_for(2)
            assert bridge.pipeline is not None and bridge.metrics is not None
            status = bridge.pipeline.status
            await until(lambda: status["exact"].cursor == status["once"].cursor == 10)
            async with http.get(f"http://127.0.0.1:{bridge.metrics.port}/metrics") as answer:
                text = await answer.text()
            health = bridge.health()[1]["sinks"]
        assert exact.ids == first[0::2]
        assert once.ids == first[:2]
        assert metric(text, "neuroio_route_filtered_total", "exact") == 5
        assert metric(text, "neuroio_route_suppressed_total", "exact") == 0
        assert metric(text, "neuroio_route_filtered_total", "once") == 0
        assert metric(text, "neuroio_route_suppressed_total", "once") == 8
        # Selected once although its send keeps failing: retries do not count again.
        assert metric(text, "neuroio_route_filtered_total", "slow") == 5
        assert 'neuroio_sink_delivered_total{sink="exact"} 5.0' in text
        assert 'neuroio_sink_lag_events{sink="slow"} 10.0' in text
        assert health["exact"]["filtered"] == 5 and health["once"]["suppressed"] == 8

        spool = Spool(tmp_path / "spool.db")
        assert (spool.cursor("exact"), spool.cursor("once"), spool.cursor("slow")) == (10, 10, 0)
        spool.close()

        bridge = Bridge(TOKEN, [], routes=[EXACT, ONCE, SLOW], **options)
        async with bridge:
            await emulator.wait_for_clients(2)
            second = [(await emulator.emit(entry(i)))["id"] for i in range(4)]
            slow = memory(bridge, "slow")
            await slow.wait_for(7)
            assert bridge.pipeline is not None
            await bridge.pipeline.wait_delivered(timeout=5)
            exact, once = memory(bridge, "exact"), memory(bridge, "once")
    assert slow.ids == first[1::2] + second[1::2]
    assert exact.ids == second[0::2]  # nothing of the first run again
    assert once.ids == second[:2]  # the cooldown started afresh: one per key again


async def test_a_retry_does_not_judge_the_cooldown_again(tmp_path: Path) -> None:
    """A batch whose send fails and is retried carries the same selection: the cooldown
    moved once, so the retry sends what it let through instead of suppressing it all."""
    async with Emulator(tokens=[TOKEN]) as emulator:
        options: dict[str, Any] = {**bridge_options(emulator, tmp_path), "backfill": False}
        bridge = Bridge(TOKEN, [], routes=[ONCE], **options)
        once = memory(bridge, "once")
        once.fail(SinkError("down for the test"))
        async with bridge:
            await emulator.wait_for_clients(1)
            ids = [(await emulator.emit(entry(i)))["id"] for i in range(6)]
            assert bridge.pipeline is not None
            status = bridge.pipeline.status["once"]
            await until(lambda: once.sends >= 3)
            once.recover()
            await until(lambda: status.cursor == 6)
    assert once.ids == ids[:2]
    assert status.suppressed == 4 and status.failures >= 3


async def test_health_names_the_failing_route(tmp_path: Path) -> None:
    async with Emulator(tokens=[TOKEN]) as emulator:
        options: dict[str, Any] = {**bridge_options(emulator, tmp_path), "backfill": False}
        bridge = Bridge(TOKEN, [], routes=[EXACT, ONCE], health_max_sink_failure=0.05, **options)
        memory(bridge, "exact").fail(SinkError("down for the test"))
        async with bridge:
            await emulator.wait_for_clients(1)
            await emulator.emit(entry(0))
            await memory(bridge, "once").wait_for(1)
            await until(lambda: not bridge.health()[0])
            problems = bridge.health()[1]["problems"]
    assert [p for p in problems if "failing" in p and "exact" in p]
    assert not [p for p in problems if "once" in p]


async def test_recovered_events_are_marked_backfilled(tmp_path: Path) -> None:
    """Entries recovered from the REST API reach sinks with "backfilled": true and only
    routes that ask for them take them; pushed events have no mark; the spool holds each
    id once."""
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as emulator:
        options: dict[str, Any] = bridge_options(emulator, tmp_path)
        everything = MemorySink("everything")
        async with Bridge(TOKEN, [everything], **options):
            await emulator.wait_for_clients(1)
            before = [(await emulator.emit())["id"] for _ in range(2)]
            await everything.wait_for(2)
        missed = [e["id"] for e in await emulator.burst(3)]  # no client: only REST has them
        recovered = RouteConfig(
            name="recovered", to="memory:", filter=FilterConfig(backfilled=True)
        )
        pushed = RouteConfig(name="pushed", to="memory:", filter=FilterConfig(backfilled=False))
        everything = MemorySink("everything")
        bridge = Bridge(TOKEN, [everything], routes=[recovered, pushed], **options)
        async with bridge:
            await emulator.wait_for_clients(2)
            await memory(bridge, "recovered").wait_for(3)
            after = [(await emulator.emit())["id"] for _ in range(2)]
            await memory(bridge, "pushed").wait_for(2)
            assert bridge.pipeline is not None
            await bridge.pipeline.wait_delivered(timeout=5)
    assert memory(bridge, "recovered").ids == missed
    assert memory(bridge, "pushed").ids == after
    assert sorted(everything.ids) == sorted(missed + after)  # each once
    marks = {e.id: e.json().get("backfilled") for e in everything.events}
    assert all(marks[i] is True for i in missed) and all(marks[i] is None for i in after)
    assert before[-1] < missed[0]


def test_route_configuration_errors_are_one_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    with pytest.raises(ConfigurationError, match="two routes are named 'exact'"):
        Bridge(TOKEN, [], routes=[EXACT, EXACT], spool=spool)
    with pytest.raises(ConfigurationError, match=r"two sinks have the same name \['exact'\]"):
        Bridge(TOKEN, [MemorySink("exact")], routes=[EXACT], spool=spool)
    bad = RouteConfig(name="doors", to="memory:", filter=FilterConfig(result=("maybe",)))
    with pytest.raises(ConfigurationError, match="route doors: filter.result: unknown value"):
        Bridge(TOKEN, [], routes=[bad], spool=spool)
    bad = RouteConfig(name="doors", to="gopher://x:secret@host/")
    with pytest.raises(ConfigurationError, match="route doors: to: ") as caught:
        Bridge(TOKEN, [], routes=[bad], spool=spool)
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="route name must be a non-empty string"):
        Bridge(TOKEN, [], routes=[RouteConfig(name=" ", to="memory:")], spool=spool)


async def test_an_id_queued_twice_is_judged_by_the_copy_the_spool_kept(spool: Spool) -> None:
    """Pushed and recovered copies of one id queued for the same commit differ (the mark):
    the spool keeps the first, and every route judges that copy, not the other."""
    recovered = RouteConfig(name="recovered", to="memory:", filter=FilterConfig(backfilled=True))
    pushed = RouteConfig(name="pushed", to="memory:", filter=FilterConfig(backfilled=False))
    rules = {r.name: RouteRules.from_config(r) for r in (recovered, pushed)}
    sinks = {name: MemorySink(name) for name in rules}
    pipeline = Pipeline(
        spool, list(sinks.values()), rules={k: v for k, v in rules.items() if v is not None}
    )
    await pipeline.start()
    try:
        # No await suspends between them: both are queued for the same commit.
        await pipeline.handle(frame(5))
        await pipeline.put_event({"id": 5, "data": {"id": 5}, "backfilled": True})
        await pipeline.put_event({"id": 6, "data": {"id": 6}, "backfilled": True})
        await pipeline.handle(frame(6))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sinks["pushed"].ids == [5]
    assert sinks["recovered"].ids == [6]
    assert pipeline.duplicates == 2


async def test_a_route_that_takes_nothing_still_recovers_from_a_failed_read() -> None:
    """A spool read that failed marks the route failing; the next batch, though its filter
    takes none of it (nothing is sent), ends the failure and is acknowledged whole."""
    rules = RouteRules.from_config(EXACT)
    assert rules is not None
    batch = [
        SpooledEvent(seq, seq, json.dumps({"id": seq, "data": {"result": "junk"}}).encode(), 0.0)
        for seq in (1, 2, 3)
    ]
    reads = 0
    acked: list[int] = []
    stopping, wake = asyncio.Event(), asyncio.Event()

    async def read(after: int, limit: int) -> list[SpooledEvent]:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise SpoolError("disk I/O error")
        return [e for e in batch if e.seq > after][:limit]

    async def ack(cursor: int) -> None:
        acked.append(cursor)

    async def dead_letter(event: SpooledEvent, reason: str) -> None:
        raise AssertionError("nothing is sent, so nothing is refused")

    sink = MemorySink("exact")
    status = SinkStatus("exact")
    worker = SinkWorker(
        sink,
        status,
        read=read,
        acked=ack,
        store_dead_letter=dead_letter,
        wake=wake,
        stopping=stopping,
        retry_delay=0.001,
        max_retry_delay=0.002,
        select=lambda events: rules.select(
            events, [rules.judge(json.loads(e.payload)) for e in events]
        ),
    )
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: acked == [3])
        assert status.failing_since is None and status.last_error is not None
        assert status.filtered == 3 and sink.sends == 0
    finally:
        stopping.set()
        wake.set()
        await task
