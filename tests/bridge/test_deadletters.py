"""Dead letters in a running pipeline: retried to their own sink only, once each, settled with
the sink's answer; the refused-in-a-row count behind ``/healthz``."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroio.bridge import BridgeConfig
from neuroio.bridge._configfile import load as load_config
from neuroio.bridge._snapshot import refused_problem
from neuroio.bridge.spool import DeadLetterStore, Spool
from neuroio.exceptions import ConfigurationError
from neuroio.sinks import MemorySink

from ..helpers import until
from ._common import feed, run_pipeline


async def test_retry_delivers_to_its_own_sink_once_while_the_pipeline_runs(spool: Spool) -> None:
    """Events refused by sink a are asked for again from outside; a running pipeline sends
    them to a only (b confirmed them long ago), once each, and removes their dead letters;
    one refused again stays with its new reason."""
    a, b = MemorySink("a"), MemorySink("b")
    a.refuse = {3, 5, 8}
    pipeline = await run_pipeline(spool, [a, b], redrive_interval=0.02)
    try:
        await feed(pipeline, range(1, 11))
        await pipeline.wait_delivered(timeout=5)
        assert [d.event.id for d in spool.dead_letters("a")] == [3, 5, 8]
        assert pipeline.status["a"].refused_in_row == 0  # 9 and 10 confirmed after 8
        a.refuse = {8}
        with DeadLetterStore(spool.path) as store:
            assert store.retry("a") == (3, 3)
        await until(lambda: a.ids.count(3) == 1 and a.ids.count(5) == 1)
        await until(lambda: [d.event.id for d in spool.dead_letters("a")] == [8])
        (kept,) = spool.dead_letters("a")
        assert "refuses" in kept.error
        with DeadLetterStore(spool.path) as store:
            assert [d.retry_pending for d in store.select("a")] == [False]
        # Another look at the (now empty) requests sends nothing more.
        looks = a.sends
        await until(lambda: spool.redrive_counts() == {})
        await feed(pipeline, range(11, 12))
        await pipeline.wait_delivered(timeout=5)
        assert a.sends == looks + 1
    finally:
        await pipeline.close()
    assert sorted(a.ids) == [i for i in range(1, 12) if i != 8]
    assert a.ids.count(3) == a.ids.count(5) == 1
    assert b.ids == list(range(1, 12))
    assert pipeline.status["a"].delivered == 10


async def test_requests_made_while_stopped_are_delivered_at_the_next_start(
    spool: Spool,
) -> None:
    """A retry asked while no pipeline runs is delivered by the next one, first thing."""
    sink = MemorySink("a")
    sink.refuse = {2}
    pipeline = await run_pipeline(spool, [sink])
    await feed(pipeline, range(1, 4))
    await pipeline.wait_delivered(timeout=5)
    await pipeline.close()
    with DeadLetterStore(spool.path) as store:
        store.retry()
    sink = MemorySink("a")
    pipeline = await run_pipeline(spool, [sink], redrive_interval=60)
    try:
        await until(lambda: sink.ids == [2])
        await until(lambda: spool.dead_letters() == [])
    finally:
        await pipeline.close()


async def test_refused_in_a_row_counts_until_one_is_confirmed(spool: Spool) -> None:
    """Ten refusals in a row make the health problem naming the sink and the reason; one
    confirmed event ends the run; 0 disables the check."""
    sink = MemorySink("hooks", max_batch=1)
    sink.refuse = set(range(1, 11))
    pipeline = await run_pipeline(spool, [sink])
    try:
        await feed(pipeline, range(1, 10))
        await pipeline.wait_delivered(timeout=5)
        status = pipeline.status["hooks"]
        assert status.refused_in_row == 9
        assert refused_problem("hooks", status, 10) is None
        await feed(pipeline, range(10, 11))
        await pipeline.wait_delivered(timeout=5)
        problem = refused_problem("hooks", status, 10)
        assert problem is not None
        assert problem.startswith("sink hooks refused the last 10 events (dead letters): ")
        assert "refuses" in problem
        assert refused_problem("hooks", status, 0) is None
        await feed(pipeline, range(11, 12))
        await pipeline.wait_delivered(timeout=5)
        assert status.refused_in_row == 0
        assert refused_problem("hooks", status, 10) is None
    finally:
        await pipeline.close()


def test_health_max_refused_from_options_and_file(tmp_path: Path) -> None:
    """health_max_refused defaults to 10; the file's health.max_refused sets it; a negative
    value is one ConfigurationError naming it."""
    assert BridgeConfig().health_max_refused == 10
    assert BridgeConfig.from_flat(health_max_refused=0).health_max_refused == 0
    with pytest.raises(ConfigurationError, match="health_max_refused"):
        BridgeConfig.from_flat(health_max_refused=-1)
    path = tmp_path / "bridge.toml"
    path.write_text('to = ["memory:"]\n[health]\nmax_refused = 3\n')
    file = load_config(path)
    assert file.keys["health_max_refused"] == "health.max_refused"
    assert file.bridge_config().health_max_refused == 3
    path.write_text('to = ["memory:"]\n[health]\nmax_refused = -2\n')
    with pytest.raises(ConfigurationError, match=r"health\.max_refused"):
        load_config(path)
