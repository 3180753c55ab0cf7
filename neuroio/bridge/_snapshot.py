"""What the metrics report, copied on the event loop: the only thing a scrape's thread reads.

The pipeline's counters and in-memory tail, the sinks' statuses and the listener's statistics
are mutated by the event loop; rendering the Prometheus text runs in a worker thread so that a
slow scrape never holds the loop. :meth:`neuroio.bridge.Bridge.snapshot` copies what is
reported into these frozen records on the loop, and the thread reads only them (and the spool,
whose methods are thread-safe). The status page's state (:func:`page_state`) is made the same
way: from a snapshot, off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._status import Retry, StatusPage
from ..exceptions import SpoolError
from ..stats import ListenerStats
from .delivery import SinkStatus
from .spool import Spool

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = [
    "StreamSnapshot",
    "BridgeSnapshot",
    "SinkSnapshot",
    "dead_letters_by_sink",
    "lag_seconds",
    "page_state",
    "refused_problem",
    "status_page",
    "streams_state",
]

STREAM_ROWS = 50
"""Rows of the status page's streams table past which only the streams not live are listed
(the live ones are counted in one row): a thousand live streams must not bury one down."""
STREAM_DOWN_ROWS = 100
"""At most this many streams not live are listed (the rest counted in one row), so that a
platform-wide outage of a thousand streams keeps the page small too."""
_SEVERITY = ("rejected", "failed", "backoff", "closed", "connecting", "authenticating", "idle")
"""The states not live, worst first: the order of the table and of the summary's counts."""


def refused_problem(name: str, status: SinkStatus, max_refused: int) -> str | None:
    """The health problem of a sink that refused its last ``max_refused`` events for good
    (every one dead-lettered, none confirmed since), or ``None`` (also when ``max_refused``
    is 0: never). A sink that refuses everything loses nothing (the dead letters keep the
    events) but delivers nothing either, which a supervisor must hear of."""
    if max_refused <= 0 or status.refused_in_row < max_refused:
        return None
    return (
        f"sink {name} refused the last {status.refused_in_row} events (dead letters): "
        f"{status.last_refusal}"
    )


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
class StreamSnapshot:
    """One named stream's figures (labelled ``stream`` in the metrics).

    Attributes:
        name: the stream's name.
        state: ``live``, ``backoff``, ..., ``rejected``, ``failed`` or ``stopped`` (a fleet
            worker that does not hold it).
        running: started (held) and not stopped.
        events, frames: events and frames received on its connections.
        reconnects: connection losses by reason.
        rtt: the round trip of its last PING.
        last_event_at: when its last event came (as ``ListenerStats.last_event_at``).
    """

    name: str
    state: str
    running: bool
    events: int = 0
    frames: int = 0
    reconnects: tuple[tuple[str, int], ...] = ()
    rtt: float | None = None
    last_event_at: float | None = None

    @classmethod
    def of(
        cls, name: str, state: str, stats: ListenerStats | None, running: bool
    ) -> StreamSnapshot:
        """The snapshot of a stream in ``state`` whose listener has ``stats``."""
        if stats is None:
            return cls(name, state, running)
        return cls(
            name,
            state,
            running,
            events=stats.events,
            frames=stats.messages,
            reconnects=tuple(sorted(stats.reconnects.items())),
            rtt=stats.last_rtt,
            last_event_at=stats.last_event_at,
        )


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
    streams: tuple[StreamSnapshot, ...] = ()
    connect_attempts: int = 0


def lag_seconds(snap: BridgeSnapshot, sink: SinkSnapshot) -> float:
    """Age of ``sink``'s oldest unconfirmed event at ``snap.taken_at`` (0 when caught up);
    may read the spool (thread-safe), so call it off the loop."""
    received = sink.oldest_received_at
    if sink.oldest_seq is not None and snap.spool is not None:
        with contextlib.suppress(SpoolError):
            received = snap.spool.received_at(sink.oldest_seq)
    return 0.0 if received is None else max(0.0, snap.taken_at - received)


def dead_letters_by_sink(spool: Spool, names: Sequence[str]) -> dict[str, int]:
    """Dead letters kept per sink, ``names`` first with 0 for none (call it off the loop):
    :meth:`~neuroio.bridge.spool.Spool.dead_letter_counts`, read again from the file at most
    every few seconds, since the ``deadletters`` command purges from outside."""
    counts = dict.fromkeys(names, 0)
    with contextlib.suppress(SpoolError):
        counts.update(spool.dead_letter_counts())
    return counts


def page_state(
    snap: BridgeSnapshot,
    health: Mapping[str, Any],
    errors: Mapping[str, str | None],
    dead_letters: Mapping[str, int],
) -> dict[str, Any]:
    """The status page's state (:mod:`neuroio._status._render`) of ``snap``; ``health`` is
    the ``/healthz`` report, ``errors`` each failing sink's last error. Reads the spool."""
    sinks = []
    for sink in snap.sinks:
        failing = sink.failing_for > 0
        sinks.append(
            {
                "name": sink.name,
                "delivered": sink.delivered,
                "lag": sink.lag,
                "lag_seconds": round(lag_seconds(snap, sink), 3),
                "failing_for": round(sink.failing_for, 3),
                "failing_since": round(snap.taken_at - sink.failing_for, 3) if failing else None,
                "last_error": errors.get(sink.name) if failing else None,
                "dead_letters": dead_letters.get(sink.name, 0),
                "dead_lettered": sink.dead_lettered,
                "filtered": sink.filtered,
                "suppressed": sink.suppressed,
            }
        )
    last = snap.last_event_at
    state: dict[str, Any] = {
        "connection": snap.state,
        "healthy": snap.healthy,
        "problems": list(health.get("problems", [])),
        "rtt": round(snap.rtt, 6) if snap.rtt is not None else None,
        "last_event_age": round(max(0.0, snap.taken_at - last), 3) if last is not None else None,
        "received": snap.received,
        "spool": {
            "depth": snap.spool_depth,
            "bytes": snap.spool_bytes,
            "max_bytes": snap.spool_max_bytes,
            "dead_letters": snap.dead_letters,
            "paused": snap.paused,
        },
        "sinks": sinks,
    }
    if snap.streams:
        state["streams"] = streams_state(snap, health)
    return state


def _rank(state: str, fleet: bool) -> int:
    """Where a stream in ``state`` sorts: the worst first, then the live ones; in a fleet the
    streams this worker does not hold (``stopped``) last, since another worker holds them."""
    if state == "live":
        return len(_SEVERITY) + 1
    if state == "stopped":
        return len(_SEVERITY) + 2 if fleet else len(_SEVERITY)
    try:
        return _SEVERITY.index(state)
    except ValueError:
        return len(_SEVERITY)  # a state of a later version: not live, shown with the others


def streams_state(snap: BridgeSnapshot, health: Mapping[str, Any]) -> dict[str, Any]:
    """The streams part of the status page's state (``state["streams"]``) of ``snap``, whose
    ``/healthz`` report ``health`` gives each stream's reason (``streams``) and the fleet
    (``fleet``, when in one).

    Keys: ``total``, ``live``, ``counts`` (``[state, count]`` of the streams not live, worst
    first), ``rows`` (the streams listed, worst first: ``name``, ``state``, ``held``,
    ``holder`` (the worker holding it in a fleet, ``None`` when not known), ``events``,
    ``reconnects``, ``last_event_age``, ``reason``), ``more_live`` and ``more_down`` (streams
    left out of ``rows``: live, and not live beyond :data:`STREAM_DOWN_ROWS`), ``more_held``
    (in a fleet: streams held by other workers left out) and ``fleet`` (``None``, or
    ``worker``, ``workers``, ``connected``, ``held``, ``target``).
    """
    found = health.get("fleet")
    fleet: Mapping[str, Any] | None = found if isinstance(found, Mapping) else None
    in_fleet = fleet is not None
    order = sorted(snap.streams, key=lambda s: (_rank(s.state, in_fleet), s.name))
    counts: dict[str, int] = {}
    for stream in order:
        counts[stream.state] = counts.get(stream.state, 0) + 1
    live = counts.pop("live", 0)
    # Listed: everything when it fits; else the streams that need a look (not live, and in a
    # fleet not merely held by another worker), the others counted.
    shown = order
    more_live = more_held = more_down = 0
    if len(order) > STREAM_ROWS:
        more_live = live
        more_held = counts.get("stopped", 0) if in_fleet else 0
        # Sorted worst first: the streams that need a look are the first ones.
        shown = order[: len(order) - more_live - more_held]
        if len(shown) > STREAM_DOWN_ROWS:
            more_down = len(shown) - STREAM_DOWN_ROWS
            shown = shown[:STREAM_DOWN_ROWS]
    reasons = health.get("streams")
    holders = fleet.get("streams") if fleet is not None else None
    rows = []
    for stream in shown:
        described = reasons.get(stream.name) if isinstance(reasons, Mapping) else None
        reason = None
        if isinstance(described, Mapping):
            if stream.state == "rejected" and described.get("rejected"):
                reason = f"token rejected: {described['rejected']}"
            elif stream.state == "failed" and described.get("failed"):
                reason = str(described["failed"])
        holder = holders.get(stream.name) if isinstance(holders, Mapping) else None
        last = stream.last_event_at
        rows.append(
            {
                "name": stream.name,
                "state": stream.state,
                "held": stream.running,
                "holder": holder if isinstance(holder, str) else None,
                "events": stream.events,
                "reconnects": sum(count for _, count in stream.reconnects),
                "last_event_age": (
                    round(max(0.0, snap.taken_at - last), 3) if last is not None else None
                ),
                "reason": reason,
            }
        )
    return {
        "total": len(order),
        "live": live,
        "counts": [[state, count] for state, count in counts.items()],
        "rows": rows,
        "more_live": more_live,
        "more_held": more_held,
        "more_down": more_down,
        "fleet": _fleet_state(fleet) if fleet is not None else None,
    }


def _fleet_state(fleet: Mapping[str, Any]) -> dict[str, Any]:
    """The few facts of the fleet's status (:meth:`Fleet.status`) the page shows in a line."""
    workers = fleet.get("workers")
    held = fleet.get("held")
    return {
        "worker": str(fleet.get("worker", "?")),
        "workers": [str(w) for w in workers] if isinstance(workers, (list, tuple)) else [],
        "connected": bool(fleet.get("connected", True)),
        "held": len(held) if isinstance(held, (list, tuple)) else None,
        "target": fleet.get("target") if isinstance(fleet.get("target"), int) else None,
    }


class _Owner(Protocol):
    """What :func:`status_page` reads of a bridge (a protocol: no import cycle)."""

    @property
    def pipeline(self) -> Pipeline | None: ...

    def snapshot(self) -> BridgeSnapshot: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...


def status_page(bridge: _Owner) -> StatusPage:
    """The status page of ``bridge``: its state from a snapshot taken on the loop and
    completed off it (spool reads); the dead-letter re-drive is ``bridge.retry_dead_letters``
    when the bridge has one (``async (sink: str | None) -> int``), else the page answers 501."""
    dead: dict[str, int] = {}
    dead_total = 0

    def complete(
        snap: BridgeSnapshot, health: dict[str, Any], errors: dict[str, str | None]
    ) -> dict[str, Any]:
        nonlocal dead, dead_total
        if snap.dead_letters != dead_total and snap.spool is not None:
            # Counted again only when the spool's total changed: the common case reads nothing.
            dead = dead_letters_by_sink(snap.spool, [s.name for s in snap.sinks])
            dead_total = snap.dead_letters
        return page_state(snap, health, errors, dead if dead_total else {})

    async def state() -> dict[str, Any]:
        snap = bridge.snapshot()
        _, health = bridge.health()
        pipeline = bridge.pipeline
        status = pipeline.status if pipeline is not None else {}
        errors = {name: sink.last_error for name, sink in status.items()}
        return await asyncio.to_thread(complete, snap, health, errors)

    retry: Retry | None = None
    redrive = getattr(bridge, "retry_dead_letters", None)
    if redrive is not None:

        async def retry(sink: str | None) -> int:
            answer = redrive(sink)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer if isinstance(answer, int) else len(answer or ())

    return StatusPage(state, retry=retry, title="bridge")
