"""The pipeline's input, writer and backpressure: events in, committed, the handler waiting
for room."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from neuroio.bridge import Pipeline
from neuroio.bridge.spool import ROW_OVERHEAD, Spool
from neuroio.exceptions import (
    ConfigurationError,
    SpoolError,
)
from neuroio.sinks import MemorySink

from ..helpers import until
from ._common import feed, frame, run_pipeline


async def test_events_reach_every_sink_in_order_as_sent(spool: Spool) -> None:
    """Event frames are spooled and delivered in order with every field; other frames are not."""
    a, b = MemorySink("a", max_batch=7), MemorySink("b")
    pipeline = await run_pipeline(spool, [a, b])
    try:
        await pipeline.handle('{"auth": "ok"}')
        await pipeline.handle('{"PING": "PONG"}')
        await pipeline.handle('{"error": "nope"}')
        for i in range(1, 101):
            await pipeline.handle(frame(i, unknown_field={"x": [1, 2]}))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert a.ids == b.ids == list(range(1, 101))
    assert json.loads(a.events[0].payload) == json.loads(frame(1, unknown_field={"x": [1, 2]}))
    assert b" " not in a.events[0].payload.replace(b"2024-05-01T10:00:00Z", b"")
    assert max(len(batch) for batch in [a.events]) and a.sends >= 100 // 7
    assert pipeline.received == 100 and spool.depth == 0


async def test_repeated_and_malformed_events(spool: Spool) -> None:
    """A repeated id is delivered once; an event frame without an integer id that SQLite can
    hold is dropped (counted), and the pipeline goes on."""
    sink = MemorySink()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await pipeline.handle(frame(1))
        await pipeline.handle('{"id": "x", "data": {}}')
        await pipeline.handle('{"id": 5, "data": []}')
        await pipeline.handle(f'{{"id":{10**400},"data":{{}}}}')
        await pipeline.handle(f'{{"id":{2**63},"data":{{}}}}')
        await pipeline.handle('{"id": 3, "data": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}")
        await pipeline.handle('{"id": 2, "data": {}}')
        await pipeline.wait_delivered(timeout=5)
        await pipeline.handle(frame(1))  # after delivery and prune
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [1, 2]
    assert pipeline.duplicates == 2 and pipeline.malformed == 5
    with pytest.raises(ValueError):
        await pipeline.put(2**63, b"{}")


async def test_full_spool_blocks_the_handler_and_drops_nothing(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At the size limit the handler waits (the socket would pause) with one warning, and
    resumes once the sink drains the spool; every event arrives."""
    spool.close()
    one = len(frame(1).replace(" ", "")) + ROW_OVERHEAD
    small = Spool(tmp_path / "small.db", max_bytes=20 * one)
    sink = MemorySink()
    sink.fail()
    pipeline = await run_pipeline(small, [sink])
    feeder = asyncio.create_task(feed(pipeline, range(1, 101)))
    try:
        with caplog.at_level(logging.WARNING, logger="neuroio.bridge"):
            await until(lambda: pipeline.paused_since is not None)
            assert not feeder.done()
            assert small.depth <= 21
            sink.recover()
            await asyncio.wait_for(feeder, 10)
            await pipeline.wait_delivered(timeout=10)
        full_warnings = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full_warnings) == 1
    finally:
        feeder.cancel()
        await pipeline.close()
        small.close()
    assert sink.ids == list(range(1, 101))


async def test_close_releases_a_blocked_handler(tmp_path: Path) -> None:
    """close() while the handler waits for room ends the wait with SpoolError, not a hang."""
    spool = Spool(tmp_path / "s.db", max_bytes=1)
    sink = MemorySink()
    sink.fail()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        blocked = asyncio.create_task(pipeline.handle(frame(2)))
        await until(lambda: pipeline.paused_since is not None)
        await pipeline.close()
        with pytest.raises(SpoolError):
            await asyncio.wait_for(blocked, 5)
    finally:
        spool.close()


def test_pipeline_rejects_duplicate_sink_names(spool: Spool) -> None:
    """Each sink needs its own cursor, so names must differ."""
    with pytest.raises(ConfigurationError, match="distinct"):
        Pipeline(spool, [MemorySink("x"), MemorySink("x")])
