"""The bridge: listener → durable spool → sinks.

:class:`Pipeline` is the spool and the sinks without a socket: its :meth:`Pipeline.handle` is
the listener's handler. It queues each event in memory; a writer task commits what has queued
in one SQLite transaction, in a worker thread, while the event loop goes on reading. Only then
does the event count as received. One delivery task per sink reads the spool from that sink's
cursor, in order, sends batches, and moves the cursor once the sink confirmed them; a failing
sink is retried with backoff, and events it refuses for good go to the dead-letter table. When
the spool reaches its size limit the handler waits for room, so the listener stops reading the
socket: nothing is ever dropped.

:class:`Bridge` adds the :class:`~neuroio.listener.EventListener` and the metrics server::

    async with Bridge(token, sinks=["file:events.jsonl", "redis://127.0.0.1:6379/0"]):
        ...

    await Bridge.from_options(token, to=["nats://127.0.0.1:4222"]).run()

Start-up errors (raised by :meth:`Bridge.start` and :meth:`Bridge.run`, after releasing
whatever was opened): :class:`~neuroio.exceptions.ConfigurationError` (a bad option or URI, the
metrics port in use), :class:`~neuroio.exceptions.MissingExtraError` (a sink's or the metrics'
extra is not installed; also raised by the constructor), :class:`~neuroio.exceptions.SpoolError`
(the spool is corrupt, unwritable or locked by another bridge) and
:class:`~neuroio.exceptions.SinkError` (a sink is unreachable). Once running,
:meth:`Bridge.run` raises :class:`~neuroio.exceptions.AuthenticationError` if the token is
rejected and :class:`~neuroio.exceptions.ConnectionFailedError` if ``max_retries`` is set and
exhausted.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import os
import ssl as _ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeGuard, TypeVar

import aiohttp
import msgspec

from . import _redact
from .backfill import EntriesClient, GapStart, parse_since
from .backoff import Backoff
from .exceptions import (
    BackfillError,
    ConfigurationError,
    NeuroIOError,
    PermanentSinkError,
    SinkError,
    SpoolError,
)
from .protocol import DEFAULT_API_URL, Kind, classify
from .sinks import Sink, from_uri
from .sinks.base import retry_after_of
from .spool import DEFAULT_MAX_BYTES, ROW_OVERHEAD, Spool, SpooledEvent

__all__ = [
    "LATENCY_BUCKETS",
    "Bridge",
    "BridgeConfig",
    "Pipeline",
    "SinkStatus",
]

log = logging.getLogger("neuroio.bridge")

_T = TypeVar("_T")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, math.inf)  # fmt: skip
"""Upper bounds (seconds) of the delivery latency histogram."""

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
# Committed events kept in memory so a sink that keeps up reads them without a query.
_TAIL = 4096
# Events per transaction: large enough to amortise a commit, small enough to bound the memory
# a commit holds (SQLite copies the segment it writes).
_MAX_COMMIT = 4096
# A spool filling again soon after draining is the same incident: warn about it once.
_FULL_WARNING_INTERVAL = 60.0
_NO_ID = -(2**63) - 1
# Spool state key: where gap recovery must start if the bridge stops before it finished.
RECOVER_AFTER = "recover_after"


@dataclasses.dataclass(eq=False)
class SinkStatus:
    """What one sink's delivery task has done; read it for monitoring.

    Attributes:
        name: the sink's name.
        cursor: ``seq`` of the last event the sink confirmed.
        delivered: events confirmed.
        failures: failed send attempts (each retried).
        dead_lettered: events refused for good.
        failing_since: ``time.monotonic()`` of the first failure of the current run of
            failures, ``None`` while the sink works.
        last_error: the last failure's message.
    """

    name: str
    cursor: int = 0
    delivered: int = 0
    failures: int = 0
    dead_lettered: int = 0
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


class Pipeline:
    """A spool and its sinks, fed with events by :meth:`handle` or :meth:`put`.

    Args:
        spool: an open :class:`~neuroio.spool.Spool` (the pipeline does not close it).
        sinks: started sinks, each with a distinct ``name``.
        retry_delay: cap of the first retry delay of a failing sink (full jitter, doubling).
        max_retry_delay: largest retry delay cap.
        max_pending: events queued in memory for the next commit before :meth:`put` waits.
        drain_timeout: on :meth:`close`, how long a send in progress may go on before it is
            abandoned (its events are sent again after a restart).

    Raises:
        ConfigurationError: two sinks share a name, or an option is out of range.
    """

    def __init__(
        self,
        spool: Spool,
        sinks: Sequence[Sink],
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        max_pending: int = 10_000,
        drain_timeout: float = 5.0,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(f"sink names must be distinct; repeated: {dupes}")
        if retry_delay <= 0 or max_retry_delay < retry_delay:
            raise ConfigurationError("need 0 < retry_delay <= max_retry_delay")
        if max_pending < 1:
            raise ConfigurationError("max_pending must be at least 1")
        self.spool = spool
        self.sinks = list(sinks)
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_pending = max_pending
        self.drain_timeout = drain_timeout
        self.status: dict[str, SinkStatus] = {s.name: SinkStatus(s.name) for s in sinks}
        self.received = 0
        """Events committed to the spool."""
        self.duplicates = 0
        """Events dropped because their id was already spooled or recently delivered."""
        self.malformed = 0
        """Frames that looked like events but had no integer ``id`` or object ``data``."""
        self.paused_since: float | None = None
        """``time.monotonic()`` since :meth:`put` has been waiting for room, else ``None``."""
        self._newest = _NO_ID
        self._full_episode = False
        self._full_warned_at = -math.inf
        self._pending: list[tuple[int, bytes, float]] = []
        self._pending_bytes = 0
        self._enqueued = 0
        self._committed = 0
        self._acks: dict[str, int] = {}
        self._tail: list[SpooledEvent] = []
        self._wake_writer = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._progress = asyncio.Condition()
        self._wakes: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in sinks}
        self._stop_delivery = asyncio.Event()
        self._stop_writer = False
        self._writer_task: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._closed = False
        # One thread for all spool work: SQLite serialises writers anyway, and a single
        # thread keeps one malloc arena instead of one per pool thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="neuroio-spool"
        )

    async def run_spool(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a :class:`~neuroio.spool.Spool` method on the pipeline's spool thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the sinks' cursors in the spool and start the writer and delivery tasks.

        Raises:
            SpoolError: the cursors could not be written.
        """
        if self._started:
            return
        self._started = True
        await self.run_spool(self.spool.register, [s.name for s in self.sinks])
        for sink in self.sinks:
            self.status[sink.name].cursor = self.spool.cursor(sink.name)
        self._writer_task = asyncio.create_task(self._write_loop(), name="neuroio-spool-writer")
        for sink in self.sinks:
            self._tasks[sink.name] = asyncio.create_task(
                self._deliver(sink), name=f"neuroio-deliver {sink.name}"
            )

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The writer and delivery tasks (they end only on :meth:`close` or a bug)."""
        writer = [self._writer_task] if self._writer_task is not None else []
        return writer + list(self._tasks.values())

    def abandon_sends(self) -> None:
        """Cancel the sends in progress now (their events stay in the spool and are sent
        again after a restart); the spool writer goes on, so nothing received is lost."""
        for task in self._tasks.values():
            task.cancel()

    async def close(self) -> None:
        """Commit what is queued, stop delivering, and persist the sinks' cursors.

        Sends in progress get ``drain_timeout`` seconds to finish. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._room.set()  # release a handler waiting for room; put() now refuses
        self._stop_delivery.set()
        for wake in self._wakes.values():
            wake.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks.values(), timeout=self.drain_timeout)
            for task in late:
                log.warning("%s: a send still running at shutdown is abandoned", task.get_name())
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._stop_writer = True
        self._wake_writer.set()
        if self._writer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        self._executor.shutdown(wait=False)

    # -- input -----------------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """The listener's handler: spool every event frame, ignore the other kinds.

        The event is kept as the server sent it, every field included, re-encoded as compact
        JSON. Waits while the spool is full (so the listener pauses the socket).
        """
        # Events dominate the stream and start this way (protocol.classify's fast path too).
        if raw.__class__ is not str or not raw.startswith('{"id":'):
            if classify(raw) is not Kind.EVENT:
                return
            if isinstance(raw, str):
                raw = str(raw)  # a str subclass (recovered frames): msgspec wants str itself
        try:
            value = _decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            self.malformed += 1
            log.warning("dropped an event frame that is not valid (or absurdly nested) JSON")
            return
        event_id = value.get("id") if value.__class__ is dict else None
        if not _valid_id(event_id) or value.get("data").__class__ is not dict:
            self.malformed += 1
            log.warning("dropped an event frame without a 64-bit integer id and an object data")
            return
        await self._put(event_id, _encoder.encode(value), time.time())

    async def put_event(self, event: Mapping[str, Any]) -> None:
        """Spool an event given as decoded JSON (``{"id": <int>, "data": {...}}``)."""
        event_id = event.get("id")
        if not _valid_id(event_id):
            raise ValueError("an event needs a 64-bit integer 'id'")
        await self._put(event_id, _encoder.encode(event), time.time())

    async def put(self, event_id: int, payload: bytes, received_at: float | None = None) -> None:
        """Queue one event for the next commit, waiting while the spool is full.

        Args:
            event_id: the event id (repeats are stored once).
            payload: the event's compact JSON.
            received_at: when it was received (``time.time()``, default now).

        Raises:
            SpoolError: the pipeline is closed.
            ValueError: ``event_id`` is not a 64-bit integer (the spool could not store it).
        """
        if not _valid_id(event_id):
            raise ValueError(f"event id must be a 64-bit integer, got {event_id!r}")
        await self._put(event_id, payload, time.time() if received_at is None else received_at)

    async def _put(self, event_id: int, payload: bytes, received_at: float) -> None:
        if self._closed or self._blocked():
            await self._wait_for_room()
        if event_id > self._newest:
            self._newest = event_id
        self._pending.append((event_id, payload, received_at))
        self._pending_bytes += len(payload) + ROW_OVERHEAD
        self._enqueued += 1
        self._wake_writer.set()

    async def _wait_for_room(self) -> None:
        while self._blocked():
            if self._closed:
                break
            self._enter_pause()
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise SpoolError("the bridge is closed; the event was not spooled")
        if self.paused_since is not None:
            self._leave_pause()

    @property
    def newest_id(self) -> int | None:
        """The highest event id queued since the pipeline started."""
        return None if self._newest == _NO_ID else self._newest

    def _blocked(self) -> bool:
        if len(self._pending) >= self.max_pending:
            return True
        limit = self.spool.max_bytes
        return limit is not None and self.spool.size_bytes + self._pending_bytes >= limit

    def _enter_pause(self) -> None:
        if self.paused_since is not None:
            return
        self.paused_since = time.monotonic()
        if len(self._pending) >= self.max_pending or self._full_episode:
            # A commit is merely behind, or this episode was already reported.
            return
        self._full_episode = True
        now = time.monotonic()
        if now - self._full_warned_at < _FULL_WARNING_INTERVAL:
            log.info("spool %s is full again: socket paused", self.spool.path)
            return
        self._full_warned_at = now
        slowest = min(self.status.values(), key=lambda s: s.cursor, default=None)
        log.warning(
            "spool %s is full (%d bytes, limit %d): pausing the socket until the sinks catch "
            "up; slowest sink %s is %d events behind (last error: %s)",
            self.spool.path,
            self.spool.size_bytes + self._pending_bytes,
            self.spool.max_bytes,
            slowest.name if slowest else "-",
            self.spool.last_seq - slowest.cursor if slowest else 0,
            slowest.last_error if slowest else None,
        )

    def _leave_pause(self) -> None:
        assert self.paused_since is not None
        paused = time.monotonic() - self.paused_since
        self.paused_since = None
        if paused > 1.0:
            log.warning("spool has room again: socket resumed after %.1f s paused", paused)

    def _update_room(self) -> None:
        if self._closed or not self._blocked():
            self._room.set()
        limit = self.spool.max_bytes
        # The episode ends only once the spool is half empty, so a spool hovering at its
        # limit logs one warning, not one per event.
        if self._full_episode and (
            limit is None or self.spool.size_bytes + self._pending_bytes < limit // 2
        ):
            self._full_episode = False

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event queued so far is committed to the spool."""
        target = self._enqueued

        async def _wait() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self._committed >= target or self._closed)

        await asyncio.wait_for(_wait(), timeout)

    async def wait_delivered(self, timeout: float | None = None) -> None:
        """Wait until every sink confirmed every event queued so far (tests, benchmarks).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await self.flush(timeout)
        target = self.spool.last_seq
        remaining = None if deadline is None else max(0.0, deadline - loop.time())

        async def _wait() -> None:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: all(s.cursor >= target for s in self.status.values())
                )

        await asyncio.wait_for(_wait(), remaining)

    # -- writer ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        backoff = Backoff(self.retry_delay, self.max_retry_delay)
        failing = False
        while True:
            if not self._pending and not self._acks:
                if self._stop_writer:
                    return
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            # Everything queued while the previous commit ran goes into this one.
            if len(self._pending) <= _MAX_COMMIT:
                events, self._pending = self._pending, []
            else:
                events = self._pending[:_MAX_COMMIT]
                del self._pending[:_MAX_COMMIT]
            acks, self._acks = self._acks, {}
            try:
                stored = await self.run_spool(self.spool.write, events, acks)
            except Exception as exc:  # SpoolError, or a bug: never let the writer die
                self._pending[:0] = events
                for name, seq in acks.items():
                    self._acks[name] = max(seq, self._acks.get(name, 0))
                if not failing:
                    log.error("cannot commit to the spool, retrying: %s", exc)
                    failing = True
                if self._stop_writer:
                    log.error("shutting down with %d events not spooled", len(self._pending))
                    return
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                log.warning("spool commits work again")
                failing = False
                backoff.reset()
            self._pending_bytes -= sum(len(e[1]) for e in events) + ROW_OVERHEAD * len(events)
            self._committed += len(events)
            self.received += len(stored)
            self.duplicates += len(events) - len(stored)
            if stored:
                self._extend_tail(stored)
                for wake in self._wakes.values():
                    wake.set()
            self._update_room()
            async with self._progress:
                self._progress.notify_all()

    def _extend_tail(self, stored: list[SpooledEvent]) -> None:
        tail = self._tail
        if tail and tail[-1].seq + 1 != stored[0].seq:
            tail.clear()
        tail.extend(stored)
        if len(tail) > 2 * _TAIL:
            del tail[: len(tail) - _TAIL]

    def _from_tail(self, after: int, limit: int) -> list[SpooledEvent] | None:
        tail = self._tail
        if not tail or tail[0].seq > after + 1:
            return None
        start = after + 1 - tail[0].seq
        return tail[start : start + limit]

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, sink: Sink) -> None:
        status = self.status[sink.name]
        wake = self._wakes[sink.name]
        backoff = Backoff(self.retry_delay, self.max_retry_delay)
        limit = max(1, sink.max_batch)
        while not self._stop_delivery.is_set():
            wake.clear()
            batch = self._from_tail(status.cursor, limit)
            if batch is None:
                try:
                    batch = await self.run_spool(self.spool.read, status.cursor, limit)
                except Exception as exc:  # SpoolError, or damaged data: retried, and reported
                    log.error("sink %s: cannot read the spool: %s", sink.name, exc)
                    status.last_error = f"cannot read the spool: {exc}"
                    if status.failing_since is None:
                        status.failing_since = time.monotonic()
                    await self._pause(backoff.next_delay())
                    continue
            if not batch:
                await wake.wait()
                continue
            if not await self._send(sink, status, backoff, batch):
                return
            status.cursor = batch[-1].seq
            self._acks[sink.name] = status.cursor
            self._wake_writer.set()
            async with self._progress:
                self._progress.notify_all()

    async def _send(
        self, sink: Sink, status: SinkStatus, backoff: Backoff, batch: Sequence[SpooledEvent]
    ) -> bool:
        """Send until confirmed or dead-lettered (True), or until shutdown (False)."""
        while True:
            try:
                await sink.send(batch)
            except PermanentSinkError as exc:
                if len(batch) == 1:
                    await self._dead_letter(sink, status, batch[0], exc)
                    return True
                # Find the refused events: each half is sent (and split) on its own.
                mid = len(batch) // 2
                return await self._send(sink, status, backoff, batch[:mid]) and await self._send(
                    sink, status, backoff, batch[mid:]
                )
            except SinkError as exc:
                error: Exception = exc
            except Exception as exc:  # a bug in a user's sink must not end delivery
                log.exception("sink %s raised an unexpected error; retrying", sink.name)
                error = exc
            else:
                self._confirmed(status, batch)
                if status.failing_since is not None:
                    log.warning(
                        "sink %s works again after %.1f s of failures",
                        sink.name,
                        status.failing_for(),
                    )
                    status.failing_since = None
                backoff.reset()
                return True
            status.failures += 1
            status.last_error = str(error) or type(error).__name__
            if status.failing_since is None:
                status.failing_since = time.monotonic()
            delay = max(backoff.next_delay(), retry_after_of(error))
            log.warning(
                "sink %s failed (attempt %d): %s; retrying in %.2f s",
                sink.name,
                backoff.attempts,
                status.last_error,
                delay,
            )
            if await self._pause(delay):
                return False

    def _confirmed(self, status: SinkStatus, batch: Sequence[SpooledEvent]) -> None:
        now = time.time()
        counts = status.latency_counts
        total = 0.0
        for event in batch:
            latency = max(0.0, now - event.received_at)
            total += latency
            counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        status.latency_sum += total
        status.delivered += len(batch)

    async def _dead_letter(
        self, sink: Sink, status: SinkStatus, event: SpooledEvent, exc: Exception
    ) -> None:
        reason = str(exc) or type(exc).__name__
        log.error(
            "sink %s refused event %d for good (dead-lettered): %s", sink.name, event.id, reason
        )
        backoff = Backoff(self.retry_delay, self.max_retry_delay)
        while True:
            try:
                await self.run_spool(self.spool.dead_letter, sink.name, event, reason)
                break
            except SpoolError as error:
                log.error("cannot store dead letter of event %d: %s", event.id, error)
                if await self._pause(backoff.next_delay()):
                    # Not acknowledged either, so it is tried again after a restart.
                    raise asyncio.CancelledError from error
        status.dead_lettered += 1

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if the pipeline is stopping meanwhile."""
        try:
            await asyncio.wait_for(self._stop_delivery.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return True

    # -- monitoring ------------------------------------------------------------------------

    def lag(self, name: str) -> int:
        """Events spooled that sink ``name`` has not confirmed yet."""
        return max(0, self.spool.last_seq - self.status[name].cursor)

    def lag_seconds(self, name: str, now: float | None = None) -> float:
        """Age of the oldest event sink ``name`` has not confirmed (0 when caught up).

        May query the spool: call it from a worker thread when the loop must not block.
        """
        cursor = self.status[name].cursor
        if cursor >= self.spool.last_seq:
            return 0.0
        tail = self._tail
        received: float | None = None
        if tail and tail[0].seq <= cursor + 1 <= tail[-1].seq:
            received = tail[cursor + 1 - tail[0].seq].received_at
        else:
            with contextlib.suppress(SpoolError):
                received = self.spool.received_at(cursor + 1)
        if received is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - received)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    """Every option of the bridge, named as the CLI options (``--spool-max-bytes`` is
    ``spool_max_bytes``). ``None`` disables an optional feature.

    Attributes:
        to: sink URIs (see :mod:`neuroio.sinks`).
        spool: spool file; ``None`` for the default in the user's data directory.
        spool_max_bytes: size of stored events at which the socket is paused.
        spool_sync: ``"full"`` (survives power loss) or ``"normal"`` (survives the process
            being killed; faster).
        webhook_secret: HMAC key for webhook signatures.
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port; ``None``: no server.
        metrics_host: address the metrics server binds.
        health_max_sink_failure: ``/healthz`` fails once a sink has failed this many seconds
            in a row.
        sink_retry_delay, sink_max_retry_delay: backoff of a failing sink (seconds).
        backfill: recover missed entries from the REST API (the socket never replays): at
            start-up those after the last event the spool committed, and after each
            reconnect those after the last event received.
        api_url: the REST API for recovery (default: the listener's).
        since: at start-up recover entries after this event id or ISO-8601 time instead.
        backfill_max_events: recover at most this many (the newest) per gap; ``None``: all.
        backfill_max_age: skip recovered entries older than this many seconds; ``None``: all.
        url, timeout, ping_interval, ping_timeout, reconnect_delay, max_reconnect_delay,
        max_message_size, max_queue, max_retries: passed to the
            :class:`~neuroio.listener.EventListener`.
    """

    to: tuple[str, ...] = ()
    spool: str | None = None
    spool_max_bytes: int | None = DEFAULT_MAX_BYTES
    spool_sync: Literal["full", "normal"] = "full"
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    health_max_sink_failure: float = 60.0
    sink_retry_delay: float = 0.5
    sink_max_retry_delay: float = 30.0
    url: str | None = None
    timeout: float = 4.0
    ping_interval: float = 5.0
    ping_timeout: float = 10.0
    reconnect_delay: float = 0.5
    max_reconnect_delay: float = 30.0
    max_message_size: int = 8 * 2**20
    max_queue: int = 1024
    max_retries: int | None = None
    backfill: bool = True
    api_url: str | None = None
    since: str | None = None
    backfill_max_events: int | None = None
    backfill_max_age: float | None = None


_LISTENER_OPTIONS = (
    "url",
    "timeout",
    "ping_interval",
    "ping_timeout",
    "reconnect_delay",
    "max_reconnect_delay",
    "max_message_size",
    "max_queue",
    "max_retries",
    "api_url",
)


class Bridge:
    """Receives events from the platform and delivers each to every sink, durably.

    Args:
        api_token: the platform API token (never logged or shown).
        sinks: sink URIs and/or :class:`~neuroio.sinks.Sink` objects.
        spool: the spool file (or an open :class:`~neuroio.spool.Spool`, which the bridge
            then does not close); ``None`` for the default path.
        ssl: TLS context for the events socket.
        options: the other fields of :class:`BridgeConfig`, by keyword.

    Raises:
        ConfigurationError: an option or a sink URI is invalid, or two sinks share a name.
        MissingExtraError: a sink's extra, or ``metrics`` when ``metrics_port`` is set, is
            not installed.
    """

    def __init__(
        self,
        api_token: str,
        sinks: Sequence[str | Sink] = (),
        *,
        spool: str | os.PathLike[str] | Spool | None = None,
        ssl: _ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(api_token, str) or not api_token:
            raise ConfigurationError("api_token must be a non-empty string")
        if isinstance(sinks, (str, Sink)):
            sinks = [sinks]
        uris = tuple(s for s in sinks if isinstance(s, str))
        try:
            self.config = BridgeConfig(
                to=uris,
                spool=None if spool is None or isinstance(spool, Spool) else os.fspath(spool),
                **options,
            )
        except TypeError as exc:
            raise ConfigurationError(f"invalid bridge option: {exc}") from None
        _validate(self.config)
        if not sinks:
            raise ConfigurationError("the bridge needs at least one sink (--to URI)")
        self._token = api_token
        _redact.guard(api_token)
        if self.config.webhook_secret:
            _redact.guard(self.config.webhook_secret)
        self._ssl = ssl
        self.sinks: list[Sink] = [
            from_uri(s, webhook_secret=self.config.webhook_secret) if isinstance(s, str) else s
            for s in sinks
        ]
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"two sinks have the same name {sorted({n for n in names if names.count(n) > 1})};"
                " add ?name=... to tell them apart"
            )
        self._metrics_cls: Any = None
        if self.config.metrics_port is not None:
            from .metrics import BridgeMetrics  # raises MissingExtraError without the extra

            self._metrics_cls = BridgeMetrics
        self._given_spool = spool if isinstance(spool, Spool) else None
        self.spool: Spool | None = self._given_spool
        self.pipeline: Pipeline | None = None
        self.listener: Any = None
        self.metrics: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._started_sinks: list[Sink] = []
        self._closing: asyncio.Event | None = None
        self._state: Literal["new", "starting", "running", "closed"] = "new"
        self._connected_before = False
        self._last_frame_at = time.time()
        self._gaps: list[GapStart] = []
        self._recovery: asyncio.Task[None] | None = None
        self._floor_kept = False
        self._floor_lock = asyncio.Lock()
        self.recovered = 0
        """Entries recovered from the REST API and handed to the spool."""
        self.backfill_error: BackfillError | None = None
        """The last gap recovery the API refused (it is retried at the next start)."""

    @classmethod
    def from_config(cls, api_token: str, config: BridgeConfig, **extra: Any) -> Bridge:
        """A bridge from a :class:`BridgeConfig` (``extra``: ``ssl``, or Sink objects as
        ``sinks`` to add to ``config.to``)."""
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        uris: list[str | Sink] = list(options.pop("to"))
        uris.extend(extra.pop("sinks", ()))
        return cls(api_token, uris, **options, **extra)

    @classmethod
    def from_options(cls, api_token: str, **options: Any) -> Bridge:
        """A bridge from CLI-style options (``to=[...]``, ``spool=...``, ...)."""
        options["to"] = tuple(options.get("to") or ())
        extra = {k: options.pop(k) for k in ("ssl",) if k in options}
        try:
            config = BridgeConfig(**options)
        except TypeError as exc:
            raise ConfigurationError(f"invalid bridge option: {exc}") from None
        return cls.from_config(api_token, config, **extra)

    def __repr__(self) -> str:
        return f"<Bridge {self._state} sinks={[s.name for s in self.sinks]}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, start the sinks, the metrics server and the listener.

        Raises:
            SpoolError, SinkError, ConfigurationError: see the module documentation.
        """
        if self._state != "new":
            if self._state == "closed":
                raise RuntimeError("this Bridge is closed")
            return
        self._state = "starting"
        self._closing = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        self._state = "running"

    async def _start(self) -> None:
        config = self.config
        if self.spool is None:
            path = Path(config.spool) if config.spool else None
            self.spool = await asyncio.to_thread(
                Spool, path, max_bytes=config.spool_max_bytes, synchronous=config.spool_sync
            )
        for sink in self.sinks:
            self._started_sinks.append(sink)
            await sink.start()
        self.pipeline = Pipeline(
            self.spool,
            self.sinks,
            retry_delay=config.sink_retry_delay,
            max_retry_delay=config.sink_max_retry_delay,
        )
        await self.pipeline.start()
        if self._metrics_cls is not None:
            self.metrics = self._metrics_cls(self)
            await self.metrics.start(config.metrics_host, config.metrics_port)
        from .listener import EventListener

        listener_options = {name: getattr(config, name) for name in _LISTENER_OPTIONS}
        # The bridge recovers gaps itself (see _on_connected) so that where recovery must
        # start is kept in the spool and survives a crash during the recovery.
        self.listener = EventListener(
            self._token, self._handle, ssl=self._ssl, backfill=False, **listener_options
        )
        self._listen_task = asyncio.create_task(
            self.listener.listen(), name="neuroio-bridge-listen"
        )
        log.info(
            "bridge running: spool %s (%d events held), sinks %s",
            self.spool.path,
            self.spool.depth,
            ", ".join(s.name for s in self.sinks),
        )

    # -- gap recovery ----------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        assert self.pipeline is not None
        if isinstance(raw, str) and not raw.startswith('{"id":') and classify(raw) is Kind.AUTH_OK:
            await self._on_connected()
        else:
            await self.pipeline.handle(raw)
        self._last_frame_at = time.time()

    async def _on_connected(self) -> None:
        """Queue the gap this (re)connection leaves, and make sure recovery runs."""
        assert self.pipeline is not None and self.spool is not None
        first = not self._connected_before
        self._connected_before = True
        gap: GapStart | None = None
        if first:
            if self.config.since is not None:
                gap = parse_since(self.config.since)
            elif self.config.backfill:
                floor = await self.pipeline.run_spool(self.spool.get_state, RECOVER_AFTER)
                last = self.spool.last_event_id
                if floor is not None:
                    gap = parse_since(floor)
                    if gap and gap.last_id is not None and last is not None:
                        gap = GapStart(last_id=min(gap.last_id, last))
                elif last is not None:
                    gap = GapStart(last_id=last)
        elif self.config.backfill:
            # Every frame of the lost connection was handled before this AUTH answer.
            newest = self.pipeline.newest_id
            if newest is None:
                newest = self.spool.last_event_id
            if newest is not None:
                gap = GapStart(last_id=newest)
            else:
                gap = GapStart(since_time=datetime.fromtimestamp(self._last_frame_at, timezone.utc))
        if gap is None:
            return
        async with self._floor_lock:
            if not self._floor_kept:
                # Stored before any later frame is handled: if the bridge dies before the gap
                # is spooled, the next start recovers from here, not from a later live event.
                await self.pipeline.run_spool(self.spool.set_state, RECOVER_AFTER, _gap_text(gap))
                self._floor_kept = True
            self._gaps.append(gap)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="neuroio-bridge-recovery")

    async def _recover(self) -> None:
        assert self.pipeline is not None and self.spool is not None
        spool, pipeline = self.spool, self.pipeline
        api_url = self.config.api_url or getattr(self.listener, "api_url", None) or DEFAULT_API_URL
        async with aiohttp.ClientSession() as session:
            client = EntriesClient(
                session,
                api_url,
                self._token,
                backoff=Backoff(self.config.reconnect_delay, self.config.max_reconnect_delay),
                closing=lambda: self._state == "closed",
            )
            while True:
                while self._gaps:
                    gap = self._gaps[0]
                    try:
                        entries = await client.missed(gap)
                    except BackfillError as exc:
                        self.backfill_error = exc
                        log.error("gap recovery failed (retried at the next start): %s", exc)
                        self._gaps.clear()
                        return
                    if self._state == "closed":
                        return
                    entries = _limit(
                        entries, self.config.backfill_max_events, self.config.backfill_max_age
                    )
                    for entry in entries:
                        event_id = entry.get("id")
                        if not _valid_id(event_id):
                            log.warning("gap recovery skipped an entry without a usable id")
                            continue
                        await pipeline.put_event({"id": event_id, "data": entry})
                    self._gaps.pop(0)
                    self.recovered += len(entries)
                    if entries:
                        log.info("recovered %d missed entries from the REST API", len(entries))
                await pipeline.flush()
                async with self._floor_lock:
                    if self._gaps:
                        continue  # a reconnect during the flush
                    if self._state == "closed" or self.backfill_error is not None:
                        return  # the stored start stays for the next run
                    await pipeline.run_spool(spool.set_state, RECOVER_AFTER, None)
                    self._floor_kept = False
                    return

    async def run(self) -> None:
        """Start (if needed) and run until :meth:`close` or cancellation.

        Raises:
            AuthenticationError: the token was rejected.
            ConnectionFailedError: ``max_retries`` connection attempts failed.
            and the start-up errors of :meth:`start`.
        """
        await self.start()
        assert self._closing is not None and self.pipeline is not None
        closing = asyncio.create_task(self._closing.wait())
        watched: set[asyncio.Future[Any]] = {closing, *self.pipeline.tasks}
        if self._listen_task is not None:
            watched.add(self._listen_task)
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not closing and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            if closing not in done:
                for task in done:
                    if task is not closing:
                        raise NeuroIOError(f"bridge task {task.get_name()} ended unexpectedly")
        finally:
            closing.cancel()
            await self.close()

    async def close(self) -> None:
        """Stop the listener, commit what was received, stop the sinks. Idempotent."""
        if self._state == "closed":
            return
        if self._closing is not None:
            self._closing.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._state = "closed"
        if self.listener is not None:
            await self.listener.close()
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        if self._listen_task is not None:
            if not self._listen_task.done():
                self._listen_task.cancel()
            with contextlib.suppress(BaseException):
                await self._listen_task
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.metrics is not None:
            await self.metrics.stop()
        for sink in self._started_sinks:
            try:
                await sink.aclose()
            except Exception:
                log.exception("sink %s failed to close", sink.name)
        self._started_sinks.clear()
        if self.spool is not None and self._given_spool is None:
            self.spool.close()
        _redact.release(self._token)

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the bridge is healthy, and why: the connection is live and no sink has
        been failing for longer than ``health_max_sink_failure``."""
        state = self.listener.stats.state.value if self.listener is not None else "idle"
        problems: list[str] = []
        if state != "live":
            problems.append(f"connection is {state}")
        sinks: dict[str, Any] = {}
        now = time.monotonic()
        if self.pipeline is not None:
            for name, status in self.pipeline.status.items():
                failing = status.failing_for(now)
                sinks[name] = {
                    "lag": self.pipeline.lag(name),
                    "failing_for": round(failing, 3),
                    "last_error": status.last_error if failing else None,
                }
                if failing > self.config.health_max_sink_failure:
                    problems.append(f"sink {name} failing for {failing:.0f} s")
            if self.pipeline.paused_since is not None:
                sinks_paused = now - self.pipeline.paused_since
                problems.append(f"spool full, socket paused for {sinks_paused:.0f} s")
        ok = not problems
        return ok, {
            "status": "ok" if ok else "failing",
            "problems": problems,
            "connection": state,
            "sinks": sinks,
        }


def _valid_id(value: object) -> TypeGuard[int]:
    # SQLite integers are signed 64-bit; the platform's ids are far below that.
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _gap_text(gap: GapStart) -> str:
    if gap.last_id is not None:
        return str(gap.last_id)
    assert gap.since_time is not None
    return gap.since_time.isoformat()


def _limit(
    entries: list[dict[str, Any]], max_events: int | None, max_age: float | None
) -> list[dict[str, Any]]:
    """Apply ``backfill_max_age`` and ``backfill_max_events`` (entries sorted by id)."""
    if max_age is not None:
        oldest = datetime.fromtimestamp(time.time() - max_age, timezone.utc)
        kept = []
        for entry in entries:
            created = entry.get("created")
            try:
                moment = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
            except ValueError:
                kept.append(entry)  # no usable time: keep rather than lose
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            if moment >= oldest:
                kept.append(entry)
        if len(kept) < len(entries):
            log.warning(
                "gap recovery skipped %d entries older than %.0f s (backfill_max_age)",
                len(entries) - len(kept),
                max_age,
            )
        entries = kept
    if max_events is not None and len(entries) > max_events:
        log.warning(
            "gap recovery skipped the %d oldest of %d missed entries (backfill_max_events)",
            len(entries) - max_events,
            len(entries),
        )
        entries = entries[len(entries) - max_events :]
    return entries


def _validate(config: BridgeConfig) -> None:
    if config.spool_max_bytes is not None and config.spool_max_bytes <= 0:
        raise ConfigurationError("spool_max_bytes must be positive")
    if config.spool_sync not in ("full", "normal"):
        raise ConfigurationError(
            f"spool_sync must be 'full' or 'normal', got {config.spool_sync!r}"
        )
    if config.metrics_port is not None and not 0 <= config.metrics_port <= 65535:
        raise ConfigurationError(f"metrics_port must be 0..65535, got {config.metrics_port}")
    if config.health_max_sink_failure <= 0:
        raise ConfigurationError("health_max_sink_failure must be positive")
    if config.sink_retry_delay <= 0 or config.sink_max_retry_delay < config.sink_retry_delay:
        raise ConfigurationError("need 0 < sink_retry_delay <= sink_max_retry_delay")
