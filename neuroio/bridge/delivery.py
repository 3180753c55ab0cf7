"""Delivery: one worker per route (a sink, with its filter and cooldown in front), reading
the spool from that route's cursor.

A :class:`SinkWorker` reads the next batch after its cursor, selects what the route takes
(its :class:`~neuroio._routing.rules.RouteRules`: the filter, then the cooldown, once per
batch read, so a retried send never runs the cooldown again), sends those events (no send
when none is taken), and reports the acknowledgement of the whole batch (the pipeline's writer
persists it with the next commit): an event the route did not take is acknowledged and
counted, never stored again. A failing sink is retried with backoff (a ``Retry-After`` it asks
for taking precedence); a batch the sink refuses for good
(:class:`~neuroio.exceptions.PermanentSinkError`) is bisected until the refused events are
found, and each goes to the dead-letter table. :class:`SinkStatus` is what a worker has done,
for monitoring.

Dead letters asked for again (``neuroio-events deadletters retry``, see
:meth:`~neuroio.bridge.spool.Spool.take_redrive`) are sent before the cursor's next batch,
when the pipeline sets :attr:`SinkWorker.redrive_due` (then one batch of them between two
batches after the cursor, so a large retry does not hold back new events): to this sink only,
without the route's filter and cooldown (the route took them once), and their dead letters are
removed only once the sink confirmed them (a crash in between sends them again, once).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from .._protocol.backoff import Backoff
from .._retry import Retrying
from .._routing.rules import Selection
from ..exceptions import PermanentSinkError, SinkError, SpoolError
from ..sinks import Sink
from ..sinks.base import ConsumerGoneError, retry_after_of
from .spool import Redrive, SpooledEvent

__all__ = ["LATENCY_BUCKETS", "SinkStatus", "SinkWorker"]

log = logging.getLogger("neuroio.bridge")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, math.inf)  # fmt: skip
"""Upper bounds (seconds) of the delivery latency histogram."""


@dataclasses.dataclass(eq=False)
class SinkStatus:
    """What one route's delivery task has done; read it for monitoring.

    Attributes:
        name: the route's name, which is its sink's name.
        cursor: ``seq`` of the last event the route acknowledged (confirmed by the sink, or
            not taken by the route).
        delivered: events confirmed.
        filtered: events the route's filter did not take (acknowledged, never sent).
        suppressed: events its cooldown held back (acknowledged, never sent).
        failures: failed send attempts (each retried).
        dead_lettered: events refused for good.
        refused_in_row: events refused for good since the last one the sink confirmed (the
            bridge's ``/healthz`` fails at ``health_max_refused``).
        last_refusal: why the sink last refused an event for good.
        failing_since: ``time.monotonic()`` of the first failure of the current run of
            failures, ``None`` while the sink works.
        last_error: the last failure's message.
    """

    name: str
    cursor: int = 0
    delivered: int = 0
    filtered: int = 0
    suppressed: int = 0
    failures: int = 0
    dead_lettered: int = 0
    refused_in_row: int = 0
    last_refusal: str | None = None
    failing_since: float | None = None
    last_error: str | None = None
    latency_counts: list[int] = dataclasses.field(
        default_factory=lambda: [0] * len(LATENCY_BUCKETS)
    )
    latency_sum: float = 0.0

    def failing_for(self, now: float | None = None) -> float:
        """Seconds the sink has been failing without a success (0 when healthy)."""
        if self.failing_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.failing_since

    def _failed(self, error: str) -> None:
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = time.monotonic()


def unprefixed(message: str | None, sink_name: str) -> str:
    """A sink's error message without its ``sink NAME:`` prefix, for a log line that
    already names the sink (so the name is not repeated twice in one line)."""
    text = message or ""
    return text.removeprefix(f"sink {sink_name}: ").removeprefix(f"sink {sink_name} ")


Reader = Callable[[int, int], Awaitable[list[SpooledEvent]]]
"""``read(after_seq, limit)``: the next events after a cursor (the pipeline's tail or spool)."""
Selector = Callable[[Sequence[SpooledEvent]], Selection]
"""``select(batch)``: what a route takes of a batch (its filter, then its cooldown)."""
TakeRedrive = Callable[[int], Awaitable[list[Redrive]]]
"""``take(limit)``: the oldest dead letters of this sink asked to be delivered again."""
FinishRedrive = Callable[[list[int], list[tuple[int, str]]], Awaitable[None]]
"""``finish(delivered numbers, [(number, reason)] refused again)``: one spool transaction."""
Refuse = Callable[[SpooledEvent, Exception], Awaitable[None]]


class SinkWorker:
    """Delivers the spool to one route's sink, in order, until ``stopping`` is set.

    Args:
        sink: the started sink (its name is the route's).
        status: where progress and failures are recorded.
        read: reads the next batch after a cursor (may raise :class:`SpoolError`).
        acked: called with the new cursor once the sink confirmed a batch.
        store_dead_letter: stores one refused event with its reason in the spool.
        wake: set when new events are committed.
        stopping: set when delivery must stop; ends retry waits at once.
        retry_delay, max_retry_delay: the backoff of a failing sink.
        select: what the route takes of a batch (moves its cooldown: called once per batch);
            ``None``: every event, never decoded.
        take_redrive, finish_redrive: read and settle this sink's dead letters asked for
            again; ``None``: no redrive.

    Attributes:
        redrive_due: set (with ``wake``) when dead letters wait to be delivered again: they
            are, before the next batch after the cursor.
    """

    def __init__(
        self,
        sink: Sink,
        status: SinkStatus,
        *,
        read: Reader,
        acked: Callable[[int], Awaitable[None]],
        store_dead_letter: Callable[[SpooledEvent, str], Awaitable[None]],
        wake: asyncio.Event,
        stopping: asyncio.Event,
        retry_delay: float,
        max_retry_delay: float,
        select: Selector | None = None,
        take_redrive: TakeRedrive | None = None,
        finish_redrive: FinishRedrive | None = None,
    ) -> None:
        self.sink = sink
        self._take_redrive = take_redrive
        self._finish_redrive = finish_redrive
        self.redrive_due = False
        self._select = select
        self.status = status
        self._read = read
        self._acked = acked
        self._store_dead_letter = store_dead_letter
        self._wake = wake
        self._stopping = stopping
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._retry = self._retrying()

    def _retrying(self) -> Retrying:
        return Retrying(Backoff(self._retry_delay, self._max_retry_delay), closing=self._stopping)

    async def run(self) -> None:
        """Read, send, acknowledge, until stopping (or cancelled: a send is abandoned)."""
        sink, status, wake, select = self.sink, self.status, self._wake, self._select
        limit = max(1, sink.max_batch)
        redrove = False
        while not self._stopping.is_set():
            wake.clear()
            # Retried dead letters first, then one batch after the cursor, and so on: a large
            # retry does not hold back the events arriving meanwhile.
            if self.redrive_due and not redrove:
                if not await self._redrive(limit):
                    return
                redrove = True
                continue
            redrove = False
            try:
                batch = await self._read(status.cursor, limit)
            except Exception as exc:  # SpoolError, or damaged data: retried, and reported
                log.error("sink %s: cannot read the spool: %s", sink.name, exc)
                status._failed(f"cannot read the spool: {exc}")
                await self._retry.wait()
                continue
            if not batch:
                if not self.redrive_due:  # more retries wait: no sleep
                    await wake.wait()
                continue
            if select is None:
                if not await self._send(batch):
                    return
            else:
                # Selected once, before the send and its retries: the cooldown moves once.
                taken, filtered, suppressed = select(batch)
                status.filtered += filtered
                status.suppressed += suppressed
                if not taken:
                    self._works()  # a failure (a spool read) is over: nothing to send
                elif not await self._send(taken):
                    return
            # The whole batch is acknowledged: what the route did not take is done with too.
            status.cursor = batch[-1].seq
            await self._acked(status.cursor)

    async def _redrive(self, limit: int) -> bool:
        """Send this sink's dead letters asked for again, then settle them in the spool:
        True when done (or nothing to do), False when stopping."""
        self.redrive_due = False
        if self._take_redrive is None or self._finish_redrive is None:
            return True
        try:
            items = await self._take_redrive(limit)
        except Exception as exc:  # SpoolError: retried, and reported
            log.error("sink %s: cannot read the dead letters to retry: %s", self.sink.name, exc)
            self.status._failed(f"cannot read the spool: {exc}")
            self.redrive_due = True
            return await self._retry.wait()
        if not items:
            return True
        self.redrive_due = True  # more may wait behind this batch
        numbers = {id(item.event): item.number for item in items}
        refused: list[tuple[int, str]] = []

        async def refuse(event: SpooledEvent, exc: Exception) -> None:
            reason = str(exc) or type(exc).__name__
            log.error(
                "sink %s refused event %d again (kept as a dead letter): %s",
                self.sink.name,
                event.id,
                reason,
            )
            refused.append((numbers[id(event)], reason))
            self.status.dead_lettered += 1
            self.status.refused_in_row += 1
            self.status.last_refusal = reason

        if not await self._send([item.event for item in items], refuse=refuse, redrive=True):
            return False
        again = {number for number, _ in refused}
        delivered = [item.number for item in items if item.number not in again]
        retry = self._retrying()
        while True:
            try:
                await self._finish_redrive(delivered, refused)
                break
            except SpoolError as error:
                log.error(
                    "sink %s: cannot record the retried dead letters: %s", self.sink.name, error
                )
                if not await retry.wait():
                    return False  # still requested: sent again (once) after a restart
        log.info(
            "sink %s: %d dead letters delivered again, %d refused again",
            self.sink.name,
            len(delivered),
            len(refused),
        )
        return True

    async def _send(
        self,
        batch: Sequence[SpooledEvent],
        *,
        refuse: Refuse | None = None,
        redrive: bool = False,
    ) -> bool:
        """Send until confirmed or refused for good (True), or until stopping (False).

        A refused event goes to ``refuse`` (default: the dead-letter table). A ``redrive``
        batch is counted as delivered but not in the latency histogram: its events waited
        for an operator, not for the bridge."""
        sink, status, retry = self.sink, self.status, self._retry
        while True:
            try:
                await sink.send(batch)
            except PermanentSinkError as exc:
                if len(batch) == 1:
                    await (refuse or self._dead_letter)(batch[0], exc)
                    return True
                # Find the refused events: each half is sent (and split) on its own.
                mid = len(batch) // 2
                return await self._send(
                    batch[:mid], refuse=refuse, redrive=redrive
                ) and await self._send(batch[mid:], refuse=refuse, redrive=redrive)
            except ConsumerGoneError:
                raise  # nobody reads any more: the bridge stops (Bridge._watch)
            except SinkError as exc:
                error: Exception = exc
            except Exception as exc:  # a bug in a user's sink must not end delivery
                log.exception("sink %s raised an unexpected error; retrying", sink.name)
                error = exc
            else:
                self._confirmed(batch, timed=not redrive)
                return True
            status.failures += 1
            status._failed(str(error) or type(error).__name__)
            # The sink's Retry-After is a minimum: a longer backoff still applies.
            delay = max(retry.backoff.next_delay(), retry_after_of(error))
            log.warning(
                "sink %s failed (attempt %d): %s; retrying in %.2f s",
                sink.name,
                retry.backoff.attempts,
                unprefixed(status.last_error, sink.name),
                delay,
            )
            if not await retry.wait(delay):
                return False

    def _confirmed(self, batch: Sequence[SpooledEvent], *, timed: bool = True) -> None:
        status = self.status
        status.refused_in_row = 0
        if not timed:
            status.delivered += len(batch)
            self._works()
            return
        now = time.time()
        counts = status.latency_counts
        total = 0.0
        for event in batch:
            latency = max(0.0, now - event.received_at)
            total += latency
            counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        status.latency_sum += total
        status.delivered += len(batch)
        self._works()

    def _works(self) -> None:
        status = self.status
        if status.failing_since is not None:
            log.warning(
                "sink %s works again after %.1f s of failures",
                self.sink.name,
                status.failing_for(),
            )
            status.failing_since = None
        self._retry.reset()

    async def _dead_letter(self, event: SpooledEvent, exc: Exception) -> None:
        name = self.sink.name
        reason = str(exc) or type(exc).__name__
        log.error(
            "sink %s refused event %d for good (dead-lettered): %s",
            name,
            event.id,
            unprefixed(reason, name),
        )
        retry = self._retrying()
        while True:
            try:
                await self._store_dead_letter(event, reason)
                break
            except SpoolError as error:
                log.error("cannot store dead letter of event %d: %s", event.id, error)
                if not await retry.wait():
                    # Not acknowledged either, so it is tried again after a restart.
                    raise asyncio.CancelledError from error
        self.status.dead_lettered += 1
        self.status.refused_in_row += 1
        self.status.last_refusal = reason
