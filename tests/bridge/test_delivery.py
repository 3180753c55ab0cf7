"""Delivery to each sink: retries, Retry-After, bisection into dead letters, a backlog kept
across a restart."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from neuroio.bridge.spool import Spool
from neuroio.sinks import MemorySink, SpooledEvent
from neuroio.sinks.base import sink_error

from ..helpers import until
from ._common import frame, run_pipeline


async def test_sink_down_then_up_loses_nothing(spool: Spool) -> None:
    """A failing sink is retried; the spool grows meanwhile, the other sink is not held
    back, and once the sink recovers the backlog drains completely, in order."""
    down, up = MemorySink("down"), MemorySink("up")
    down.fail()
    pipeline = await run_pipeline(spool, [down, up])
    try:
        for i in range(1, 501):
            await pipeline.handle(frame(i))
        await up.wait_for(500)
        await until(lambda: down.sends >= 3)
        assert spool.depth == 500
        assert pipeline.status["down"].failures >= 2
        assert pipeline.status["down"].failing_since is not None
        assert pipeline.lag("down") == 500 and pipeline.lag("up") == 0
        assert pipeline.lag_seconds("down") > 0
        down.recover()
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert down.ids == up.ids == list(range(1, 501))
    assert spool.depth == 0
    assert pipeline.status["down"].failing_since is None


async def test_refused_event_is_dead_lettered_and_others_delivered(spool: Spool) -> None:
    """A permanent refusal dead-letters exactly the refused events; the rest go through."""
    sink = MemorySink(max_batch=50)
    sink.refuse = {13, 37}
    pipeline = await run_pipeline(spool, [sink])
    try:
        for i in range(1, 101):
            await pipeline.handle(frame(i))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [i for i in range(1, 101) if i not in (13, 37)]
    letters = spool.dead_letters()
    assert [d.event.id for d in letters] == [13, 37]
    assert "refuses" in letters[0].error and letters[0].sink == "memory"
    assert pipeline.status["memory"].dead_lettered == 2


async def test_unexpected_exception_in_a_sink_is_retried(spool: Spool) -> None:
    """A sink bug (any exception) does not end delivery: the batch is retried."""

    class Flaky(MemorySink):
        calls = 0

        async def send(self, events: Sequence[SpooledEvent]) -> None:
            self.calls += 1
            if self.calls <= 2:
                raise KeyError("bug")
            await super().send(events)

    sink = Flaky()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [1] and pipeline.status["memory"].failures == 2


async def test_retry_after_is_honoured(spool: Spool) -> None:
    """A SinkError with retry_after delays the next attempt at least that long."""
    sink = MemorySink()
    sink.fail(sink_error("busy", retry_after=0.3))
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await until(lambda: sink.sends == 1)
        failed_at = time.monotonic()
        sink.recover()
        await pipeline.wait_delivered(timeout=5)
        assert time.monotonic() - failed_at >= 0.28
    finally:
        await pipeline.close()


async def test_backlog_survives_restart(tmp_path: Path) -> None:
    """Events spooled but not confirmed when the pipeline stops are delivered after a restart."""
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        sink = MemorySink()
        sink.fail()
        pipeline = await run_pipeline(spool, [sink])
        for i in range(1, 51):
            await pipeline.handle(frame(i))
        await pipeline.flush(timeout=5)
        await pipeline.close()
    with Spool(path) as spool:
        sink = MemorySink()
        pipeline = await run_pipeline(spool, [sink])
        await sink.wait_for(50)
        await pipeline.close()
    assert sink.ids == list(range(1, 51))
