"""Prometheus metrics and a health check for a running :class:`~neuroio.bridge.Bridge`.

Served by aiohttp on the bridge's own event loop: ``GET /metrics`` (Prometheus text format)
and ``GET /healthz`` (``200`` with a JSON report, ``503`` when the connection is not live, a
sink has been failing longer than ``health_max_sink_failure`` or refused its last
``health_max_refused`` events for good, the spool is full, or spool commits fail). Each
scrape has its own registry; nothing is added to prometheus-client's global one. Values are
a :class:`~neuroio.bridge.BridgeSnapshot` taken on the event loop when scraped, so they are
never stale, and the worker thread that renders them touches no state the loop mutates.
Metrics (a route is a sink: the ``sink`` label of the ``neuroio_sink_*`` families is the
route's name, so dashboards made before routes keep working; the two ``neuroio_route_*``
families carry the name as ``route``, and as ``sink`` too so they join the others with
``on(sink)``):

=========================================  =========  =========================================
name                                       type       meaning
=========================================  =========  =========================================
``neuroio_events_received_total``          counter    events committed to the spool
``neuroio_events_duplicate_total``         counter    repeats dropped by the spool
``neuroio_events_malformed_total``         counter    event frames without id/data, dropped
``neuroio_frames_received_total``          counter    frames of every kind from the socket
``neuroio_sink_delivered_total``           counter    events a sink confirmed (label ``sink``)
``neuroio_sink_failures_total``            counter    failed send attempts, retried
``neuroio_sink_dead_lettered_total``       counter    events a sink refused for good
``neuroio_sink_dead_letters``              gauge      dead letters of the sink held in the spool
``neuroio_sink_lag_events``                gauge      events spooled, not yet confirmed
``neuroio_sink_lag_seconds``               gauge      age of the oldest unconfirmed event
``neuroio_sink_failing_seconds``           gauge      how long the sink has been failing
``neuroio_sink_delivery_seconds``          histogram  received → confirmed by the sink
``neuroio_route_filtered_total``           counter    events a route's filter did not take
``neuroio_route_suppressed_total``         counter    events a route's cooldown held back
``neuroio_spool_events``                   gauge      events not yet confirmed by every sink
``neuroio_spool_bytes``                    gauge      their size, counted against the limit
``neuroio_spool_max_bytes``                gauge      the limit (``--spool-max-bytes``)
``neuroio_spool_file_bytes``               gauge      database and WAL size on disk
``neuroio_spool_dead_letters``             gauge      dead letters kept
``neuroio_spool_paused``                   gauge      1 while the socket is paused (spool full)
``neuroio_connection_state``               gauge      1 for the current ``state`` label
``neuroio_connection_live``                gauge      1 when connected and authenticated
``neuroio_reconnects_total``               counter    connection losses (label ``reason``)
``neuroio_pong_rtt_seconds``               gauge      round trip of the last PING
``neuroio_last_event_age_seconds``         gauge      seconds since the last event
``neuroio_healthy``                        gauge      1 when ``/healthz`` would answer 200
=========================================  =========  =========================================

A bridge of named streams (``[[stream]]``) reports its connection as the streams' together
(``neuroio_connection_live`` is 1 when every stream it runs is live) and each stream apart,
labelled ``stream``:

=========================================  =========  =========================================
``neuroio_streams``                        gauge      streams by ``state`` (``live``, ``backoff``,
                                                      ``rejected``, ``stopped``: held elsewhere)
``neuroio_stream_live``                    gauge      1 when the stream is connected and
                                                      authenticated
``neuroio_stream_running``                 gauge      1 when this bridge runs (holds) it
``neuroio_stream_rejected``                gauge      1 while its token is rejected
``neuroio_stream_events_total``            counter    events received on its connections
``neuroio_stream_reconnects_total``        counter    its connection losses
``neuroio_stream_last_event_age_seconds``  gauge      seconds since its last event
``neuroio_stream_connect_attempts_total``  counter    attempts through the shared rate limit
=========================================  =========  =========================================
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .._metrics_http import MetricsServer
from ..exceptions import MissingExtraError, SpoolError
from ..stats import State
from ._snapshot import BridgeSnapshot, SinkSnapshot
from .delivery import LATENCY_BUCKETS

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("metrics", "--metrics-port") from exc

__all__ = ["BridgeCollector", "BridgeMetrics"]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class BridgeCollector(Collector):
    """Yields the metric families of one :class:`~neuroio.bridge.BridgeSnapshot`.

    Safe in any thread: it reads the snapshot, and the spool (thread-safe) for the figures
    only the disk knows (file size, the receive time of a sink's oldest unconfirmed event).
    """

    def __init__(self, snapshot: BridgeSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the snapshot."""
        snap = self._snapshot
        yield _counter("neuroio_events_received", "Events committed to the spool.", snap.received)
        yield _counter(
            "neuroio_events_duplicate", "Repeated events dropped by the spool.", snap.duplicates
        )
        yield _counter(
            "neuroio_events_malformed", "Event frames without an integer id and object data.",
            snap.malformed,
        )  # fmt: skip
        yield _counter(
            "neuroio_frames_received", "Frames of every kind received from the socket.",
            snap.frames,
        )  # fmt: skip
        yield from self._sinks(snap)
        yield from self._spool(snap)
        yield from self._connection(snap)
        if snap.streams:
            yield from self._streams(snap)
        yield _gauge("neuroio_healthy", "1 when /healthz answers 200.", 1 if snap.healthy else 0)

    def _sinks(self, snap: BridgeSnapshot) -> Iterator[Metric]:
        delivered = CounterMetricFamily(
            "neuroio_sink_delivered", "Events confirmed by the sink.", labels=["sink"]
        )
        failures = CounterMetricFamily(
            "neuroio_sink_failures", "Failed send attempts (retried).", labels=["sink"]
        )
        dead = CounterMetricFamily(
            "neuroio_sink_dead_lettered", "Events the sink refused for good.", labels=["sink"]
        )
        lag = GaugeMetricFamily(
            "neuroio_sink_lag_events", "Spooled events the sink has not confirmed.", labels=["sink"]
        )
        lag_s = GaugeMetricFamily(
            "neuroio_sink_lag_seconds", "Age of the oldest event the sink has not confirmed.",
            labels=["sink"],
        )  # fmt: skip
        failing = GaugeMetricFamily(
            "neuroio_sink_failing_seconds", "Seconds the sink has been failing (0 when healthy).",
            labels=["sink"],
        )  # fmt: skip
        latency = HistogramMetricFamily(
            "neuroio_sink_delivery_seconds", "From receiving an event to the sink confirming it.",
            labels=["sink"],
        )  # fmt: skip
        filtered = CounterMetricFamily(
            "neuroio_route_filtered", "Events the route's filter did not take (acknowledged).",
            labels=["route", "sink"],
        )  # fmt: skip
        suppressed = CounterMetricFamily(
            "neuroio_route_suppressed", "Events the route's cooldown held back (acknowledged).",
            labels=["route", "sink"],
        )  # fmt: skip
        held = GaugeMetricFamily(
            "neuroio_sink_dead_letters", "Dead letters of the sink held in the spool.",
            labels=["sink"],
        )  # fmt: skip
        counts: dict[str, int] = {}
        if snap.spool is not None:
            # Counted again from the file at most every few seconds (an index scan): the
            # deadletters command deletes rows from another process.
            with contextlib.suppress(SpoolError):
                counts = snap.spool.dead_letter_counts()
        for sink in snap.sinks:
            held.add_metric([sink.name], counts.pop(sink.name, 0))
        for other, count in sorted(counts.items()):  # sinks no longer configured
            held.add_metric([other], count)
        for sink in snap.sinks:
            name = [sink.name]
            filtered.add_metric([sink.name, sink.name], sink.filtered)
            suppressed.add_metric([sink.name, sink.name], sink.suppressed)
            delivered.add_metric(name, sink.delivered)
            failures.add_metric(name, sink.failures)
            dead.add_metric(name, sink.dead_lettered)
            lag.add_metric(name, sink.lag)
            lag_s.add_metric(name, self._lag_seconds(snap, sink))
            failing.add_metric(name, sink.failing_for)
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, sink.latency_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            latency.add_metric(name, buckets, sink.latency_sum)
        yield held
        yield from (delivered, failures, dead, lag, lag_s, failing, latency, filtered, suppressed)

    @staticmethod
    def _lag_seconds(snap: BridgeSnapshot, sink: SinkSnapshot) -> float:
        received = sink.oldest_received_at
        if sink.oldest_seq is not None and snap.spool is not None:
            with contextlib.suppress(SpoolError):
                received = snap.spool.received_at(sink.oldest_seq)
        return 0.0 if received is None else max(0.0, snap.taken_at - received)

    def _spool(self, snap: BridgeSnapshot) -> Iterator[Metric]:
        yield _gauge(
            "neuroio_spool_events", "Events in the spool not yet confirmed by every sink.",
            snap.spool_depth,
        )  # fmt: skip
        yield _gauge(
            "neuroio_spool_bytes", "Size of the held events, counted against the limit.",
            snap.spool_bytes,
        )  # fmt: skip
        yield _gauge(
            "neuroio_spool_max_bytes", "The spool size limit (0: none).", snap.spool_max_bytes
        )
        yield _gauge(
            "neuroio_spool_file_bytes", "Spool database and write-ahead log size on disk.",
            snap.spool.file_bytes() if snap.spool is not None else 0,
        )  # fmt: skip
        held = snap.dead_letters
        if snap.spool is not None:
            # The same count as neuroio_sink_dead_letters (read again from the file at most
            # every few seconds), so the two agree after a purge from outside.
            with contextlib.suppress(SpoolError):
                held = sum(snap.spool.dead_letter_counts().values())
        yield _gauge("neuroio_spool_dead_letters", "Dead letters kept in the spool.", held)
        yield _gauge(
            "neuroio_spool_paused", "1 while the socket is paused because the spool is full.",
            1 if snap.paused else 0,
        )  # fmt: skip

    def _connection(self, snap: BridgeSnapshot) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "neuroio_connection_state", "1 for the connection's current state.", labels=["state"]
        )
        for state in State:
            states.add_metric([state.value], 1 if state.value == snap.state else 0)
        yield states
        yield _gauge(
            "neuroio_connection_live", "1 when connected and authenticated.",
            1 if snap.state == State.LIVE.value else 0,
        )  # fmt: skip
        reconnects = CounterMetricFamily(
            "neuroio_reconnects", "Connection losses by reason.", labels=["reason"]
        )
        for reason, count in snap.reconnects:
            reconnects.add_metric([reason], count)
        yield reconnects
        yield _gauge(
            "neuroio_pong_rtt_seconds", "Round trip of the last answered PING (NaN: none yet).",
            snap.rtt if snap.rtt is not None else float("nan"),
        )  # fmt: skip
        last = snap.last_event_at
        yield _gauge(
            "neuroio_last_event_age_seconds", "Seconds since the last event (NaN: none yet).",
            snap.taken_at - last if last is not None else float("nan"),
        )  # fmt: skip

    def _streams(self, snap: BridgeSnapshot) -> Iterator[Metric]:
        by_state: dict[str, int] = {}
        live = GaugeMetricFamily(
            "neuroio_stream_live", "1 when the stream is connected and authenticated.",
            labels=["stream"],
        )  # fmt: skip
        running = GaugeMetricFamily(
            "neuroio_stream_running", "1 when this bridge runs (holds) the stream.",
            labels=["stream"],
        )  # fmt: skip
        rejected = GaugeMetricFamily(
            "neuroio_stream_rejected", "1 while the stream's token is rejected.", labels=["stream"]
        )
        events = CounterMetricFamily(
            "neuroio_stream_events", "Events received on the stream's connections.",
            labels=["stream"],
        )  # fmt: skip
        reconnects = CounterMetricFamily(
            "neuroio_stream_reconnects", "The stream's connection losses.", labels=["stream"]
        )
        age = GaugeMetricFamily(
            "neuroio_stream_last_event_age_seconds",
            "Seconds since the stream's last event (NaN: none yet).",
            labels=["stream"],
        )
        for stream in snap.streams:
            name = [stream.name]
            by_state[stream.state] = by_state.get(stream.state, 0) + 1
            live.add_metric(name, 1 if stream.state == State.LIVE.value else 0)
            running.add_metric(name, 1 if stream.running else 0)
            rejected.add_metric(name, 1 if stream.state == "rejected" else 0)
            events.add_metric(name, stream.events)
            reconnects.add_metric(name, sum(count for _, count in stream.reconnects))
            last = stream.last_event_at
            age.add_metric(name, snap.taken_at - last if last is not None else float("nan"))
        states = GaugeMetricFamily("neuroio_streams", "Streams by state.", labels=["state"])
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield from (states, live, running, rejected, events, reconnects, age)
        yield _counter(
            "neuroio_stream_connect_attempts",
            "Connection attempts through the rate limit all streams share.",
            snap.connect_attempts,
        )


def render(snapshot: BridgeSnapshot) -> bytes:
    """The Prometheus text of ``snapshot`` (any thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(snapshot))
    return bytes(generate_latest(registry))


class BridgeMetrics(MetricsServer):
    """The metrics and health HTTP server of one bridge.

    Args:
        snapshot: takes a :class:`~neuroio.bridge.BridgeSnapshot` (called on the event loop).
        health: whether the bridge is healthy, and the JSON report (on the event loop).

    Attributes:
        port: the bound port once started (useful with port 0).
    """

    def __init__(
        self,
        snapshot: Callable[[], BridgeSnapshot],
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        super().__init__(self._scrape, health)
        self._snapshot = snapshot

    def render(self) -> bytes:
        """The metrics in the Prometheus text format (call it on the event loop)."""
        return render(self._snapshot())

    async def _scrape(self) -> bytes:
        # The snapshot is taken here, on the loop; rendering it (and the spool reads it
        # needs) happens off the loop and never touches what the loop mutates.
        snapshot = self._snapshot()
        return await asyncio.to_thread(render, snapshot)
