"""What the metrics report, copied on the event loop: the only thing a scrape's thread reads.

The pipeline's counters and in-memory tail, the sinks' statuses and the listener's statistics
are mutated by the event loop; rendering the Prometheus text runs in a worker thread so that a
slow scrape never holds the loop. :meth:`neuroio.bridge.Bridge.snapshot` copies what is
reported into these frozen records on the loop, and the thread reads only them (and the spool,
whose methods are thread-safe).
"""

from __future__ import annotations

import dataclasses

from .spool import Spool

__all__ = ["BridgeSnapshot", "SinkSnapshot"]


@dataclasses.dataclass(frozen=True)
class SinkSnapshot:
    """One route's figures at one moment (a route is a sink, by name).

    Attributes:
        name: the route's name, which is its sink's.
        delivered, failures, dead_lettered: its counters.
        filtered, suppressed: events its filter did not take, and its cooldown held back.
        lag: events spooled it has not confirmed.
        oldest_received_at: when the oldest of them was received, if memory knew it.
        oldest_seq: that event's ``seq``, when only the spool knows when it was received.
        failing_for: seconds it has been failing (0 when healthy).
        latency_counts: the delivery latency histogram, per bucket (not cumulative).
        latency_sum: the sum of the latencies.
    """

    name: str
    delivered: int
    failures: int
    dead_lettered: int
    lag: int
    oldest_received_at: float | None
    oldest_seq: int | None
    failing_for: float
    latency_counts: tuple[int, ...]
    latency_sum: float
    filtered: int = 0
    suppressed: int = 0


@dataclasses.dataclass(frozen=True)
class BridgeSnapshot:
    """A bridge's figures at one moment (see the table in :mod:`neuroio.bridge.metrics`).

    Attributes:
        taken_at: ``time.time()`` when it was taken.
        spool: the open spool, for the figures read from disk (``None`` before start).
    """

    taken_at: float
    received: int = 0
    duplicates: int = 0
    malformed: int = 0
    frames: int = 0
    sinks: tuple[SinkSnapshot, ...] = ()
    spool: Spool | None = None
    spool_depth: int = 0
    spool_bytes: int = 0
    spool_max_bytes: int = 0
    dead_letters: int = 0
    paused: bool = False
    state: str = "idle"
    reconnects: tuple[tuple[str, int], ...] = ()
    rtt: float | None = None
    last_event_at: float | None = None
    healthy: bool = False
