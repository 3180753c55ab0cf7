"""Prometheus metrics, a health check and the status page for a running
:class:`~neuroio.EventListener` (``neuroio-events listen --metrics-port``), served by the
shared :class:`~neuroio._metrics_http.MetricsServer`.

The figures are the listener's :class:`~neuroio.stats.ListenerStats`, read on the event loop
when scraped (a dozen numbers: rendering them costs less than a thread hop). Where a figure
means what the bridge's does, it has the bridge's name, so that one dashboard reads both:

=========================================  =========  =========================================
name                                       type       meaning
=========================================  =========  =========================================
``neuroio_events_received_total``          counter    live events received from the socket
``neuroio_events_backfilled_total``        counter    events recovered from the REST API
``neuroio_events_duplicate_total``         counter    repeats dropped (gap recovery's dedupe)
``neuroio_frames_received_total``          counter    frames of every kind from the socket
``neuroio_frames_malformed_total``         counter    frames that are not a NeuroIO message
``neuroio_handler_errors_total``           counter    calls of the handler that raised
``neuroio_connection_state``               gauge      1 for the current ``state`` label
``neuroio_connection_live``                gauge      1 when connected and authenticated
``neuroio_reconnects_total``               counter    connection losses (label ``reason``)
``neuroio_pong_rtt_seconds``               gauge      round trip of the last PING (NaN: none)
``neuroio_last_event_age_seconds``         gauge      seconds since the last event (NaN: none)
``neuroio_backfill_failed``                gauge      1 once gap recovery failed for good
``neuroio_healthy``                        gauge      1 when ``/healthz`` would answer 200
=========================================  =========================================

Health: ``200`` while the connection is live (connected and authenticated), ``503``
otherwise, the report naming the state. There is no grace while reconnecting, as for the
bridge: how long a reconnect may last before someone is woken is the probe's to say (a
Kubernetes ``failureThreshold``, an alert on ``neuroio_healthy == 0`` for some minutes). A
failed gap recovery is reported but does not fail the check: live events go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ._metrics_http import MetricsServer
from ._status import StatusPage
from ._words import connection_state
from .exceptions import MissingExtraError
from .listener import EventListener
from .stats import State

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("metrics", "--metrics-port") from exc

__all__ = ["ListenerCollector", "ListenerMetrics", "health", "page_state", "render"]

_NAN = float("nan")


def health(listener: EventListener) -> tuple[bool, dict[str, Any]]:
    """Whether ``listener`` is healthy (its connection is live), and the JSON report."""
    stats = listener.stats
    state = stats.state.value
    problems = [] if stats.state is State.LIVE else [f"connection is {connection_state(state)}"]
    last = stats.last_event_at
    error = listener.backfill_error
    ok = not problems
    return ok, {
        "status": "ok" if ok else "failing",
        "problems": problems,
        "connection": state,
        "events": stats.events,
        "reconnects": dict(sorted(stats.reconnects.items())),
        "pong_rtt": round(stats.last_rtt, 6) if stats.last_rtt is not None else None,
        "last_event_age": round(time.time() - last, 3) if last is not None else None,
        "backfill_error": str(error) if error is not None else None,
    }


class ListenerCollector(Collector):
    """Yields the metric families of one listener's statistics (call on the event loop)."""

    def __init__(self, listener: EventListener) -> None:
        self._listener = listener

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, read now."""
        listener = self._listener
        stats = listener.stats
        yield CounterMetricFamily(
            "neuroio_events_received", "Live events received from the socket.", value=stats.events
        )
        yield CounterMetricFamily(
            "neuroio_events_backfilled", "Events recovered from the REST API.",
            value=stats.backfilled_events,
        )  # fmt: skip
        yield CounterMetricFamily(
            "neuroio_events_duplicate", "Repeated events dropped by gap recovery's dedupe.",
            value=stats.duplicate_events,
        )  # fmt: skip
        yield CounterMetricFamily(
            "neuroio_frames_received", "Frames of every kind received from the socket.",
            value=stats.messages,
        )  # fmt: skip
        yield CounterMetricFamily(
            "neuroio_frames_malformed", "Frames that are not a NeuroIO message.",
            value=stats.malformed,
        )  # fmt: skip
        yield CounterMetricFamily(
            "neuroio_handler_errors", "Handler calls that raised.", value=stats.handler_errors
        )
        states = GaugeMetricFamily(
            "neuroio_connection_state", "1 for the connection's current state.", labels=["state"]
        )
        for state in State:
            states.add_metric([state.value], 1 if state is stats.state else 0)
        yield states
        live = stats.state is State.LIVE
        yield GaugeMetricFamily(
            "neuroio_connection_live", "1 when connected and authenticated.", value=int(live)
        )
        reconnects = CounterMetricFamily(
            "neuroio_reconnects", "Connection losses by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.reconnects.items()):
            reconnects.add_metric([reason], count)
        yield reconnects
        rtt = stats.last_rtt
        yield GaugeMetricFamily(
            "neuroio_pong_rtt_seconds", "Round trip of the last answered PING (NaN: none yet).",
            value=rtt if rtt is not None else _NAN,
        )  # fmt: skip
        last = stats.last_event_at
        yield GaugeMetricFamily(
            "neuroio_last_event_age_seconds", "Seconds since the last event (NaN: none yet).",
            value=max(0.0, time.time() - last) if last is not None else _NAN,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "neuroio_backfill_failed", "1 once gap recovery failed for good (see the logs).",
            value=int(listener.backfill_error is not None),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "neuroio_healthy", "1 when /healthz answers 200.", value=int(health(listener)[0])
        )


def render(listener: EventListener) -> bytes:
    """The Prometheus text of ``listener``'s figures now (on its event loop)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ListenerCollector(listener))
    return bytes(generate_latest(registry))


def page_state(listener: EventListener) -> dict[str, Any]:
    """The status page's state of ``listener`` (no sinks: ``listen`` writes to its outputs)."""
    ok, report = health(listener)
    return {
        "connection": report["connection"],
        "healthy": ok,
        "problems": report["problems"],
        "rtt": report["pong_rtt"],
        "last_event_age": report["last_event_age"],
        "received": listener.stats.events,
    }


class ListenerMetrics(MetricsServer):
    """The ``/metrics`` and ``/healthz`` server of one listener (see the module docstring),
    and its status page: feed :attr:`ring` with each event (``ring.add(decoded)``)."""

    def __init__(self, listener: EventListener) -> None:
        super().__init__(self._scrape, lambda: health(listener))
        self._listener = listener

        async def state() -> dict[str, Any]:
            return page_state(listener)

        self.status = StatusPage(state, title="listener")
        self.ring = self.status.ring

    async def _scrape(self) -> bytes:
        return render(self._listener)
