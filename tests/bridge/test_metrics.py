"""/metrics: rendered off the event loop from a snapshot taken on it."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, SupportsIndex

import aiohttp

from neuroio.bridge import LATENCY_BUCKETS, Bridge, BridgeSnapshot, SinkSnapshot
from neuroio.bridge.metrics import render
from neuroio.exceptions import SinkError
from neuroio.sinks import MemorySink, SpooledEvent

from ..helpers import until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options


class ThreadRecordingList(list[SpooledEvent]):
    """A list that records which threads read it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: set[int] = set()

    def __len__(self) -> int:
        self.threads.add(threading.get_ident())
        return super().__len__()

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        self.threads.add(threading.get_ident())
        return super().__getitem__(index)


async def test_scrapes_never_read_the_pipeline_from_another_thread(tmp_path: Path) -> None:
    """While a sink lags (so its lag is read from the in-memory tail), every /metrics scrape
    reads the tail on the event loop's thread only, and still reports the lag in seconds."""
    sink = MemorySink()
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(TOKEN, [sink], metrics_port=0, **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        async with bridge, aiohttp.ClientSession() as http:
            assert bridge.pipeline is not None and bridge.metrics is not None
            pipeline = bridge.pipeline
            tail = ThreadRecordingList(pipeline._tail)
            pipeline._tail = tail
            loop_thread = threading.get_ident()
            await server.wait_live()
            sink.fail(SinkError("down for the test"))
            await server.emit(50)
            await until(lambda: pipeline.received == 50 and sink.sends > 0)
            await until(lambda: pipeline.sink_lag("memory").oldest_received_at is not None)
            for _ in range(5):
                url = f"http://127.0.0.1:{bridge.metrics.port}/metrics"
                async with http.get(url) as answer:
                    assert answer.status == 200
                    text = await answer.text()
            sink.recover()
    lag = re.search(r'^neuroio_sink_lag_seconds\{sink="memory"\} (\S+)$', text, re.M)
    assert lag is not None and float(lag.group(1)) > 0
    assert re.search(r'^neuroio_sink_lag_events\{sink="memory"\} 50\.0$', text, re.M)
    assert tail.threads == {loop_thread}


def test_render_reports_what_the_snapshot_holds() -> None:
    """The Prometheus text is a pure function of the snapshot: counters, per-sink figures,
    the latency histogram (cumulative), the connection state, and health."""
    counts = [0] * len(LATENCY_BUCKETS)
    counts[0], counts[-1] = 3, 1
    snapshot = BridgeSnapshot(
        taken_at=1000.0,
        received=7,
        duplicates=1,
        sinks=(
            SinkSnapshot(
                name="file:x",
                delivered=4,
                failures=2,
                dead_lettered=0,
                lag=3,
                oldest_received_at=997.5,
                oldest_seq=None,
                failing_for=1.25,
                latency_counts=tuple(counts),
                latency_sum=400.0,
            ),
        ),
        state="live",
        reconnects=(("closed", 2),),
        last_event_at=990.0,
        healthy=True,
    )
    text = render(snapshot).decode()
    for line in (
        "neuroio_events_received_total 7.0",
        "neuroio_events_duplicate_total 1.0",
        'neuroio_sink_delivered_total{sink="file:x"} 4.0',
        'neuroio_sink_failures_total{sink="file:x"} 2.0',
        'neuroio_sink_lag_events{sink="file:x"} 3.0',
        'neuroio_sink_lag_seconds{sink="file:x"} 2.5',
        'neuroio_sink_failing_seconds{sink="file:x"} 1.25',
        'neuroio_sink_delivery_seconds_bucket{le="0.001",sink="file:x"} 3.0',
        'neuroio_sink_delivery_seconds_bucket{le="+Inf",sink="file:x"} 4.0',
        'neuroio_connection_state{state="live"} 1.0',
        "neuroio_connection_live 1.0",
        'neuroio_reconnects_total{reason="closed"} 2.0',
        "neuroio_last_event_age_seconds 10.0",
        "neuroio_spool_file_bytes 0.0",
        "neuroio_healthy 1.0",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
