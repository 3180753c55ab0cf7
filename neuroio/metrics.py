"""Prometheus metrics and a health check for a running :class:`~neuroio.bridge.Bridge`.

Served by aiohttp on the bridge's own event loop: ``GET /metrics`` (Prometheus text format)
and ``GET /healthz`` (``200`` with a JSON report, ``503`` when the connection is not live, a
sink has been failing longer than ``health_max_sink_failure``, or the spool is full). Each
bridge has its own registry; nothing is added to prometheus-client's global one. Values are
read from the bridge when scraped, so they are never stale. Metrics:

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
``neuroio_sink_lag_events``                gauge      events spooled, not yet confirmed
``neuroio_sink_lag_seconds``               gauge      age of the oldest unconfirmed event
``neuroio_sink_failing_seconds``           gauge      how long the sink has been failing
``neuroio_sink_delivery_seconds``          histogram  received → confirmed by the sink
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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web

from .exceptions import ConfigurationError, MissingExtraError
from .stats import State

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("metrics", "--metrics-port") from exc

if TYPE_CHECKING:
    from .bridge import Bridge

__all__ = ["BridgeCollector", "BridgeMetrics"]


class BridgeCollector(Collector):
    """Reads a bridge's counters when the registry is collected."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, read from the bridge now."""
        bridge = self._bridge
        pipeline = bridge.pipeline
        spool = bridge.spool
        listener = bridge.listener
        stats = listener.stats if listener is not None else None

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter(
            "neuroio_events_received", "Events committed to the spool.",
            pipeline.received if pipeline else 0,
        )  # fmt: skip
        yield counter(
            "neuroio_events_duplicate", "Repeated events dropped by the spool.",
            pipeline.duplicates if pipeline else 0,
        )  # fmt: skip
        yield counter(
            "neuroio_events_malformed", "Event frames without an integer id and object data.",
            pipeline.malformed if pipeline else 0,
        )  # fmt: skip
        yield counter(
            "neuroio_frames_received", "Frames of every kind received from the socket.",
            stats.messages if stats else 0,
        )  # fmt: skip

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
        if pipeline is not None:
            from .bridge import LATENCY_BUCKETS

            now = time.time()
            for name, status in pipeline.status.items():
                delivered.add_metric([name], status.delivered)
                failures.add_metric([name], status.failures)
                dead.add_metric([name], status.dead_lettered)
                lag.add_metric([name], pipeline.lag(name))
                lag_s.add_metric([name], pipeline.lag_seconds(name, now))
                failing.add_metric([name], status.failing_for())
                buckets: list[tuple[str, float]] = []
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, status.latency_counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
                latency.add_metric([name], buckets, status.latency_sum)
        yield from (delivered, failures, dead, lag, lag_s, failing, latency)

        yield gauge(
            "neuroio_spool_events",
            "Events in the spool not yet confirmed by every sink.",
            spool.depth if spool else 0,
        )
        yield gauge(
            "neuroio_spool_bytes", "Size of the held events, counted against the limit.",
            spool.size_bytes if spool else 0,
        )  # fmt: skip
        yield gauge(
            "neuroio_spool_max_bytes", "The spool size limit (0: none).",
            (spool.max_bytes or 0) if spool else 0,
        )  # fmt: skip
        yield gauge(
            "neuroio_spool_file_bytes", "Spool database and write-ahead log size on disk.",
            spool.file_bytes() if spool else 0,
        )  # fmt: skip
        yield gauge(
            "neuroio_spool_dead_letters", "Dead letters kept in the spool.",
            spool.dead_letter_count if spool else 0,
        )  # fmt: skip
        yield gauge(
            "neuroio_spool_paused", "1 while the socket is paused because the spool is full.",
            1 if pipeline is not None and pipeline.paused_since is not None else 0,
        )  # fmt: skip

        current = stats.state.value if stats else State.IDLE.value
        states = GaugeMetricFamily(
            "neuroio_connection_state", "1 for the connection's current state.", labels=["state"]
        )
        for state in State:
            states.add_metric([state.value], 1 if state.value == current else 0)
        yield states
        yield gauge(
            "neuroio_connection_live", "1 when connected and authenticated.",
            1 if current == State.LIVE.value else 0,
        )  # fmt: skip
        reconnects = CounterMetricFamily(
            "neuroio_reconnects", "Connection losses by reason.", labels=["reason"]
        )
        if stats is not None:
            for reason, count in sorted(stats.reconnects.items()):
                reconnects.add_metric([reason], count)
        yield reconnects
        rtt = stats.last_rtt if stats else None
        yield gauge(
            "neuroio_pong_rtt_seconds", "Round trip of the last answered PING (NaN: none yet).",
            rtt if rtt is not None else float("nan"),
        )  # fmt: skip
        last = stats.last_event_at if stats else None
        yield gauge(
            "neuroio_last_event_age_seconds", "Seconds since the last event (NaN: none yet).",
            time.time() - last if last is not None else float("nan"),
        )  # fmt: skip
        yield gauge(
            "neuroio_healthy", "1 when /healthz answers 200.", 1 if bridge.health()[0] else 0
        )


class BridgeMetrics:
    """The metrics registry and HTTP server of one bridge.

    Args:
        bridge: the bridge to report on.

    Attributes:
        registry: this bridge's own ``CollectorRegistry``.
        port: the bound port once started (useful with port 0).
    """

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BridgeCollector(bridge))
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    async def start(self, host: str, port: int | None) -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``host:port``.

        Raises:
            ConfigurationError: the address cannot be bound (e.g. the port is in use).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port or 0)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigurationError(
                f"metrics server cannot listen on {host}:{port}: {exc}"
            ) from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Stop the HTTP server. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        # Reading lag may query the spool: keep that off the loop.
        body = await asyncio.to_thread(self.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, report = self.bridge.health()
        return web.json_response(report, status=200 if ok else 503)
