"""The pipeline: a spool and its sinks, without a socket.

Three parts, in the order an event meets them:

input
    :meth:`Pipeline.handle` is the listener's handler: it keeps event frames (every field, as
    compact JSON) and queues them in memory for the next commit. Only a commit makes an event
    count as received.
writer
    one task commits whatever has queued, with the sinks' acknowledgements, in one SQLite
    transaction on the pipeline's spool thread, while the event loop goes on reading. A commit
    that fails (a full disk, an I/O error) is retried by itself with backoff, in smaller and
    smaller pieces so that however little room comes back is used (the spool itself
    checkpoints and truncates its write-ahead log after a full disk, so the log's space is
    reused). It never gives up and never drops what it holds; while commits fail,
    :attr:`Pipeline.commit_failing_since` and :attr:`Pipeline.commit_error` say so (and the
    bridge's ``/healthz`` answers 503).
backpressure
    the handler waits (so the listener stops reading the socket, and the server's pushes wait
    in TCP buffers or are recovered from the REST API later) while the spool is at its size
    limit, or while commits fail and a small number of events already wait uncommitted:
    memory holds a bounded number of events, never the whole outage.

Delivery (one :class:`~neuroio.bridge.delivery.SinkWorker` per route, that is per sink) reads
what the writer committed, from an in-memory tail when it keeps up, from the spool otherwise.
A route with a filter or a cooldown needs its events judged (the filter's answer and the
cooldown key, :meth:`~neuroio._routing.rules.RouteRules.judge`): each event is judged for
every such route at once, while the input holds it decoded anyway, and the verdicts are kept
in a small cache by ``seq`` that the routes share; an event read back from the spool (a route
that fell behind) is decoded and judged again once (:meth:`Pipeline.judged`). The cooldown
itself is moved by each route's worker, in spool order.

Dead letters asked for again (``neuroio-events deadletters retry`` writes requests into the
spool's ``redrive`` table from another process) are noticed by a small task that asks the
spool every ``redrive_interval`` seconds (default 1 s: one short read, on the spool thread)
which sinks have requests waiting; it wakes those sinks' workers, which deliver them before
their next batch. A retry is thus delivered within about ``redrive_interval`` of the request,
plus the batch a worker is sending; at start-up the first look is immediate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard, TypeVar

import msgspec

from .._protocol.backoff import Backoff
from .._protocol.frames import Kind, classify
from .._retry import Retrying
from .._routing.rules import Judges, RouteRules, Selection, Verdict
from .._words import plural
from ..exceptions import ConfigurationError, SpoolError
from ..sinks import Sink
from .delivery import SinkStatus, SinkWorker, unprefixed
from .spool import ROW_OVERHEAD, Redrive, Spool, SpooledEvent, stream_id_ok

__all__ = ["FAILING_MAX_PENDING", "Input", "Pipeline", "SinkLag"]

log = logging.getLogger("neuroio.bridge")

_T = TypeVar("_T")

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
# Committed events kept in memory so a sink that keeps up reads them without a query.
_TAIL = 4096
# Events per transaction: large enough to amortise a commit, small enough to bound the memory
# a commit holds (SQLite copies the segment it writes).
_MAX_COMMIT = 4096
# While commits fail, the handler waits once this many events wait uncommitted: a full disk
# pauses the socket at once instead of filling memory until the disk has room. (What was
# accepted while the first failing commit ran, at most max_pending, stays held.)
FAILING_MAX_PENDING = 64
# Longest wait between two attempts of a failing commit: room that comes back is used soon.
_MAX_COMMIT_RETRY_DELAY = 2.0
# A spool filling again soon after draining is the same incident: warn about it once.
_FULL_WARNING_INTERVAL = 60.0
# Verdicts of the routes kept per event (a power of two: slots are seq & mask). Routes that
# keep up read the same events within a few batches of each other, so the first judges an
# event for every route and the others reuse it. A slot is a small tuple (a bool or a key per
# route, no decoded event): about 3 MB for ten routes.
_JUDGED_SLOTS = 16384


@dataclasses.dataclass(frozen=True)
class SinkLag:
    """How far one sink is behind, read on the event loop (see :meth:`Pipeline.sink_lag`).

    Attributes:
        events: events spooled that the sink has not confirmed.
        oldest_received_at: when the oldest of them was received, if the in-memory tail
            knows it.
        oldest_seq: its ``seq`` when only the spool knows when it was received.
    """

    events: int
    oldest_received_at: float | None
    oldest_seq: int | None


_Pending = tuple[int, bytes, float, int]  # id, payload, received_at, stream number


class Input:
    """Where the events of one stream enter the pipeline (:meth:`Pipeline.input`).

    The single stream of a bridge without ``[[stream]]`` tables is number 0, unnamed: its
    events are spooled as they came. A named stream's events carry ``"stream": <name>`` (for
    filters, templates and sinks), and the spool keys them by stream and id.

    Attributes:
        number: the stream's number in the spool (0: the single stream).
        name: the stream's name, ``None`` for the single stream.
        admit: as :attr:`Pipeline.admit`, for this stream's events (its own gap tracker).
    """

    __slots__ = ("_pipeline", "number", "name", "admit", "_held", "_lowest")

    def __init__(self, pipeline: Pipeline, number: int, name: str | None) -> None:
        self._pipeline = pipeline
        self.number = number
        self.name = name
        self.admit: Callable[[int, str | None], bool] | None = None
        # For the watermark of a named stream: each id queued and not yet confirmed by every
        # route -> its seq (0 until committed; a repeat the spool dropped gets the spool's last
        # seq of that commit, which is past the copy it kept).
        self._held: dict[int, int] = {}
        # The held ids as a heap, for the lowest at once however many are held (a sink down
        # for an hour): entries no longer held are dropped when they come to the top.
        self._lowest: list[int] = []

    def __repr__(self) -> str:
        return f"<Input {self.number} {self.name!r}>"

    async def handle(self, raw: str | bytes) -> None:
        """The stream's listener's handler (see :meth:`Pipeline.handle`)."""
        await self._pipeline._handle(raw, self)

    async def put_event(self, event: dict[str, Any]) -> None:
        """Spool an event of this stream given as decoded JSON (see
        :meth:`Pipeline.put_event`); a named stream's is marked with its name."""
        if self.name is not None:
            event["stream"] = self.name
        await self._pipeline._put_event(event, self)

    def lowest_unconfirmed(self) -> int | None:
        """The lowest id of this stream received and not yet confirmed by every route
        (``None``: none); only named streams keep track."""
        held, lowest = self._held, self._lowest
        if not held:
            lowest.clear()
            return None
        # Ids are held in the order they were queued, which is (nearly) spool order: the
        # confirmed ones are dropped from the front, and one not yet confirmed stops the
        # walk (what it leaves behind only makes the answer lower, never wrong).
        upto = self._pipeline.confirmed_upto
        done = []
        for event_id, seq in held.items():
            if not 0 < seq <= upto:
                break
            done.append(event_id)
        for event_id in done:
            del held[event_id]
        while lowest and lowest[0] not in held:
            heapq.heappop(lowest)
        return lowest[0] if lowest else None

    def _queued(self, event_id: int) -> None:
        if event_id not in self._held:
            self._held[event_id] = 0
            heapq.heappush(self._lowest, event_id)


class Pipeline:
    """A spool and its sinks, fed with events by :meth:`handle` or :meth:`put`.

    Args:
        spool: an open :class:`~neuroio.bridge.spool.Spool` (the pipeline does not close it).
        sinks: started sinks, each with a distinct ``name`` (one per route).
        rules: the filter and cooldown of each route that has them, by sink name; the
            others take every event.
        retry_delay: cap of the first retry delay of a failing sink or commit (full jitter,
            doubling).
        max_retry_delay: largest retry delay cap of a failing sink.
        max_pending: events queued in memory for the next commit before :meth:`put` waits
            (while commits work; :data:`FAILING_MAX_PENDING` while they fail).
        drain_timeout: on :meth:`close`, how long a send in progress may go on before it is
            abandoned (its events are sent again after a restart).
        redrive_interval: seconds between two looks for dead letters asked to be delivered
            again.

    Raises:
        ConfigurationError: two sinks share a name, or an option is out of range.
    """

    def __init__(
        self,
        spool: Spool,
        sinks: Sequence[Sink],
        *,
        rules: Mapping[str, RouteRules] | None = None,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        max_pending: int = 10_000,
        drain_timeout: float = 5.0,
        redrive_interval: float = 1.0,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(f"sink names must be distinct; repeated: {dupes}")
        rules = dict(rules or {})
        if set(rules) - set(names):
            raise ConfigurationError(f"rules for no sink: {sorted(set(rules) - set(names))}")
        if retry_delay <= 0 or max_retry_delay < retry_delay:
            raise ConfigurationError("need 0 < retry_delay <= max_retry_delay")
        if max_pending < 1:
            raise ConfigurationError("max_pending must be at least 1")
        if redrive_interval <= 0:
            raise ConfigurationError("redrive_interval must be positive")
        self.redrive_interval = redrive_interval
        self.spool = spool
        self.sinks = list(sinks)
        self.rules = rules
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
        self.commit_failing_since: float | None = None
        """``time.monotonic()`` of the first failure of the current run of failed commits."""
        self.commit_error: str | None = None
        """Why the last commit failed, while commits fail."""
        self.commit_failures = 0
        """Failed commit attempts (each retried)."""
        self._default = Input(self, 0, None)
        self._inputs: dict[int, Input] = {0: self._default}
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        """Called by :meth:`handle` with each event it queues, decoded, not to be changed
        (the status page's ring of the last events): on the hot path, so it must be cheap."""
        self.on_damaged: Callable[[], None] | None = None
        """Called when a read found a damaged stored batch (moved aside by the spool, see
        :meth:`~neuroio.bridge.spool.Spool.damaged`): the bridge fetches its events again."""
        self._full_episode = False
        self._full_warned_at = -math.inf
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._committing = 0
        self._enqueued = 0
        self._committed = 0
        self._acks: dict[str, int] = {}
        self._tail: list[SpooledEvent] = []
        self._judges = Judges(list(rules.values()))
        self._judged: list[tuple[int, tuple[Verdict, ...]] | None] = (
            [None] * _JUDGED_SLOTS if rules else []
        )
        # By id for the single stream, by (stream, id) for a named one.
        self._prejudged: dict[int | tuple[int, int], tuple[Verdict, ...] | None] = {}
        self._wake_writer = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._progress = asyncio.Condition()
        self._wakes: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in sinks}
        self._stop_delivery = asyncio.Event()
        self._stop_writer = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._workers: dict[str, SinkWorker] = {}
        self._redrive_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        # One thread for all spool work: SQLite serialises writers anyway, and a single
        # thread keeps one malloc arena instead of one per pool thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="neuroio-spool"
        )

    @property
    def admit(self) -> Callable[[int, str | None], bool] | None:
        """Called by :meth:`handle` with each event's id and ``created`` before it is queued;
        ``False`` drops it as a duplicate (the bridge's gap tracker, which also moves the
        recovery cursor here). ``None``: every event is queued. (The single stream's; a
        named stream has its own, :attr:`Input.admit`.)"""
        return self._default.admit

    @admit.setter
    def admit(self, admit: Callable[[int, str | None], bool] | None) -> None:
        self._default.admit = admit

    def input(self, number: int, name: str) -> Input:
        """The input of the named stream ``number`` (>= 1, from
        :meth:`~neuroio.bridge.spool.Spool.stream_number`), the same object for the same
        number."""
        if number < 1:
            raise ValueError("a named stream's number is at least 1")
        found = self._inputs.get(number)
        if found is None:
            found = self._inputs[number] = Input(self, number, name)
        return found

    @property
    def confirmed_upto(self) -> int:
        """The seq up to which every route confirmed every event."""
        status = self.status.values()
        return min((s.cursor for s in status), default=self.spool.last_seq)

    async def run_spool(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a :class:`~neuroio.bridge.spool.Spool` method on the pipeline's spool thread."""
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
            worker = self._workers[sink.name] = self._worker(sink)
            self._tasks[sink.name] = asyncio.create_task(
                worker.run(), name=f"neuroio-deliver {sink.name}"
            )
        self._redrive_task = asyncio.create_task(self._redrive_loop(), name="neuroio-redrive")

    async def _redrive_loop(self) -> None:
        """Wake the workers of the sinks whose dead letters were asked for again."""
        stopping = self._stop_delivery
        while not stopping.is_set():
            try:
                waiting = await self.run_spool(self.spool.redrive_counts)
            except Exception as exc:  # SpoolError: the next look may work
                log.warning("cannot look for dead letters to retry: %s", exc)
                waiting = {}
            for name, count in waiting.items():
                worker = self._workers.get(name)
                if worker is not None and count and not worker.redrive_due:
                    worker.redrive_due = True
                    self._wakes[name].set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.redrive_interval)

    async def retry_dead_letters(self, sink: str | None = None) -> int:
        """Deliver the dead letters of ``sink`` (``None``: every sink) again, each to its own
        sink, once (as ``neuroio-events deadletters retry`` does): the requests are written to
        the spool and the workers woken now. Returns how many were selected.

        Raises:
            KeyError: no sink has that name.
            SpoolError: the requests could not be written.
        """
        if sink is not None and sink not in self.status:
            raise KeyError(sink)
        selected, _ = await self.run_spool(self.spool.request_redrive, sink, None)
        for name, worker in self._workers.items():
            if sink is None or name == sink:
                worker.redrive_due = True
                self._wakes[name].set()
        return int(selected)

    def _worker(self, sink: Sink) -> SinkWorker:
        name = sink.name

        async def acked(cursor: int) -> None:
            self._acks[name] = cursor
            self._wake_writer.set()
            async with self._progress:
                self._progress.notify_all()

        async def store_dead_letter(event: SpooledEvent, reason: str) -> None:
            await self.run_spool(self.spool.dead_letter, name, event, reason)

        async def take_redrive(limit: int) -> list[Redrive]:
            return await self.run_spool(self.spool.take_redrive, name, limit)

        async def finish_redrive(delivered: list[int], refused: list[tuple[int, str]]) -> None:
            await self.run_spool(self.spool.finish_redrive, name, delivered, refused)

        return SinkWorker(
            sink,
            self.status[name],
            read=self._read,
            acked=acked,
            store_dead_letter=store_dead_letter,
            wake=self._wakes[name],
            stopping=self._stop_delivery,
            retry_delay=self.retry_delay,
            max_retry_delay=self.max_retry_delay,
            select=self._selector(name),
            take_redrive=take_redrive,
            finish_redrive=finish_redrive,
        )

    def _selector(self, name: str) -> Callable[[Sequence[SpooledEvent]], Selection] | None:
        rules = self.rules.get(name)
        if rules is None:
            return None
        index = list(self.rules).index(name)

        def select(batch: Sequence[SpooledEvent]) -> Selection:
            return rules.select(batch, [v[index] for v in self.judged(batch)])

        return select

    def judged(self, events: Sequence[SpooledEvent]) -> list[tuple[Verdict, ...]]:
        """The verdicts of every route with rules on ``events`` (in :attr:`rules` order):
        each event decoded and judged once for all of them, while the cache holds it.

        A payload that is not a JSON object decodes as ``{}``: no filter takes it."""
        slots, judges = self._judged, self._judges
        mask = _JUDGED_SLOTS - 1
        out: list[tuple[Verdict, ...]] = []
        append = out.append
        for event in events:
            seq = event.seq
            slot = slots[seq & mask]
            if slot is not None and slot[0] == seq:
                append(slot[1])
                continue
            try:
                value = _decoder.decode(event.payload)
            except (msgspec.DecodeError, RecursionError):
                value = None
            if value.__class__ is not dict:
                log.warning(
                    "event %d in the spool is not a JSON object: no filter takes it", event.id
                )
                value = {}
            verdicts = judges(value)
            slots[seq & mask] = (seq, verdicts)
            append(verdicts)
        return out

    async def _read(self, after: int, limit: int) -> list[SpooledEvent]:
        batch = self._from_tail(after, limit)
        if batch is None:
            damaged = self.spool.damaged_count
            batch = await self.run_spool(self.spool.read, after, limit)
            if self.spool.damaged_count > damaged and self.on_damaged is not None:
                self.on_damaged()
        return batch

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The writer, delivery and redrive tasks (they end only on :meth:`close` or a bug)."""
        writer = [self._writer_task] if self._writer_task is not None else []
        redrive = [self._redrive_task] if self._redrive_task is not None else []
        return writer + list(self._tasks.values()) + redrive

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
        if self._redrive_task is not None:
            await asyncio.gather(self._redrive_task, return_exceptions=True)
        self._stop_writer.set()
        self._wake_writer.set()
        if self._writer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        self._executor.shutdown(wait=False)

    # -- input -----------------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """The listener's handler: spool every event frame, ignore the other kinds.

        The event is kept as the server sent it, every field included, re-encoded as compact
        JSON. Waits while the spool is full or failing (so the listener pauses the socket).
        """
        await self._handle(raw, self._default)

    async def _handle(self, raw: str | bytes, source: Input) -> None:
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
        data = value.get("data") if event_id is not None else None
        if not valid_id(event_id) or data.__class__ is not dict:
            self.malformed += 1
            log.warning("dropped an event frame without a 64-bit integer id and an object data")
            return
        name = source.name
        if name is not None:
            if not stream_id_ok(event_id):
                self.malformed += 1
                log.warning("dropped an event whose id %d is out of a stream's range", event_id)
                return
            value["stream"] = name
        # Room first, then the tracker: an event is marked seen (which moves the recovery
        # cursor) only as it is queued. A handler cancelled while it waits (the connection was
        # lost meanwhile) leaves the event unseen, so gap recovery fetches it again.
        if self._closed or self._blocked():
            await self._wait_for_room()
        admit = source.admit
        if admit is not None:
            created = data.get("created")
            if not admit(event_id, created if created.__class__ is str else None):
                self.duplicates += 1
                return
        on_event = self.on_event
        if on_event is not None:
            on_event(value)
        self._append(event_id, _encoder.encode(value), time.time(), value, source)

    async def put_event(self, event: Mapping[str, Any]) -> None:
        """Spool an event given as decoded JSON (``{"id": <int>, "data": {...}}``)."""
        await self._put_event(event, self._default)

    async def _put_event(self, event: Mapping[str, Any], source: Input) -> None:
        event_id = event.get("id")
        if not valid_id(event_id) or (source.number and not stream_id_ok(event_id)):
            raise ValueError("an event needs a 64-bit integer 'id'")
        await self._put(event_id, _encoder.encode(event), time.time(), event, source)

    async def put(self, event_id: int, payload: bytes, received_at: float | None = None) -> None:
        """Queue one event for the next commit, waiting while the spool is full or failing.

        Args:
            event_id: the event id (repeats are stored once).
            payload: the event's compact JSON.
            received_at: when it was received (``time.time()``, default now).

        Raises:
            SpoolError: the pipeline is closed.
            ValueError: ``event_id`` is not a 64-bit integer (the spool could not store it).
        """
        if not valid_id(event_id):
            raise ValueError(f"event id must be a 64-bit integer, got {event_id!r}")
        received = time.time() if received_at is None else received_at
        await self._put(event_id, payload, received, None, self._default)

    async def _put(
        self,
        event_id: int,
        payload: bytes,
        received_at: float,
        value: Mapping[str, Any] | None,
        source: Input,
    ) -> None:
        if self._closed or self._blocked():
            await self._wait_for_room()
        self._append(event_id, payload, received_at, value, source)

    def _append(
        self,
        event_id: int,
        payload: bytes,
        received_at: float,
        value: Mapping[str, Any] | None,
        source: Input,
    ) -> None:
        number = source.number
        if number:
            source._queued(event_id)
        if self._judges:
            # The routes' verdicts while the event is decoded anyway: moved into the cache
            # once committed. An id queued twice (pushed and recovered: payloads that differ)
            # gets none: it is judged later from the copy the spool kept.
            pre = self._prejudged
            key = (number, event_id) if number else event_id
            if key in pre or value is None:
                pre[key] = None
            else:
                pre[key] = self._judges(value)
        self._pending.append((event_id, payload, received_at, number))
        self._pending_bytes += len(payload) + ROW_OVERHEAD
        self._enqueued += 1
        self._wake_writer.set()

    @property
    def uncommitted(self) -> int:
        """Events accepted and held in memory, not yet committed (queued or being written)."""
        return len(self._pending) + self._committing

    # -- backpressure ----------------------------------------------------------------------

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

    def _blocked(self) -> bool:
        if self.commit_failing_since is not None:
            if self.uncommitted >= FAILING_MAX_PENDING:
                return True
        elif len(self._pending) >= self.max_pending:
            return True
        limit = self.spool.max_bytes
        return limit is not None and self.spool.size_bytes + self._pending_bytes >= limit

    def _enter_pause(self) -> None:
        if self.paused_since is not None:
            return
        self.paused_since = time.monotonic()
        if self.commit_failing_since is not None:
            log.warning("socket paused until spool commits work again (%s)", self.commit_error)
            return
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
            "up; slowest sink %s is %s behind (last error: %s)",
            self.spool.path,
            self.spool.size_bytes + self._pending_bytes,
            self.spool.max_bytes,
            slowest.name if slowest else "-",
            plural(self.spool.last_seq - slowest.cursor if slowest else 0, "event"),
            unprefixed(slowest.last_error, slowest.name) if slowest else "none",
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
        retry = Retrying(
            Backoff(self.retry_delay, max(self.retry_delay, _MAX_COMMIT_RETRY_DELAY)),
            closing=self._stop_writer,
        )
        size = _MAX_COMMIT
        while True:
            if not self._pending and not self._acks:
                if self._stop_writer.is_set():
                    return
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            # Everything queued while the previous commit ran goes into this one.
            events = self._pending[:size]
            del self._pending[:size]
            acks, self._acks = self._acks, {}
            self._committing = len(events)
            try:
                stored = await self.run_spool(self.spool.write, events, acks)
            except Exception as exc:  # SpoolError, or a bug: never let the writer die
                self._committing = 0
                self._pending[:0] = events
                for name, seq in acks.items():
                    self._acks[name] = max(seq, self._acks.get(name, 0))
                self._commit_failed(exc)
                if self._stop_writer.is_set():
                    log.error(
                        "shutting down with %s not spooled", plural(len(self._pending), "event")
                    )
                    return
                # A smaller commit needs less room: however little comes back is used.
                size = max(1, len(events) // 2)
                await retry.wait()
                continue
            self._committing = 0
            if self.commit_failing_since is not None:
                log.warning(
                    "spool commits work again after %.1f s",
                    time.monotonic() - self.commit_failing_since,
                )
                self.commit_failing_since = self.commit_error = None
                retry.reset()
            size = min(_MAX_COMMIT, size * 2)
            await self._committed_batch(events, stored)

    def _commit_failed(self, exc: Exception) -> None:
        self.commit_failures += 1
        self.commit_error = str(exc) or type(exc).__name__
        if self.commit_failing_since is None:
            self.commit_failing_since = time.monotonic()
            log.error("cannot commit to the spool, retrying: %s", self.commit_error)

    async def _committed_batch(self, events: list[_Pending], stored: list[SpooledEvent]) -> None:
        self._pending_bytes -= sum(len(e[1]) for e in events) + ROW_OVERHEAD * len(events)
        self._committed += len(events)
        self.received += len(stored)
        self.duplicates += len(events) - len(stored)
        pre = self._prejudged
        if pre:
            slots, mask = self._judged, _JUDGED_SLOTS - 1
            for event in stored:
                key = (event.stream, event.id) if event.stream else event.id
                verdicts = pre.pop(key, None)
                if verdicts is not None:
                    slots[event.seq & mask] = (event.seq, verdicts)
            if len(stored) != len(events):
                for event_id, _, _, number in events:  # the repeats the spool dropped
                    pre.pop((number, event_id) if number else event_id, None)
        if len(self._inputs) > 1:
            self._held_committed(events, stored)
        if stored:
            self._extend_tail(stored)
            for wake in self._wakes.values():
                wake.set()
        self._update_room()
        async with self._progress:
            self._progress.notify_all()

    def _held_committed(self, events: list[_Pending], stored: list[SpooledEvent]) -> None:
        """Give the named streams' held ids their seq (see :class:`Input`)."""
        seqs = {(e.stream, e.id): e.seq for e in stored if e.stream}
        last = self.spool.last_seq
        inputs = self._inputs
        for event_id, _, _, number in events:
            if number:
                source = inputs.get(number)
                if source is not None and event_id in source._held:
                    source._held[event_id] = seqs.get((number, event_id), last)

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

    # -- monitoring ------------------------------------------------------------------------

    def lag(self, name: str) -> int:
        """Events spooled that sink ``name`` has not confirmed yet."""
        return max(0, self.spool.last_seq - self.status[name].cursor)

    def sink_lag(self, name: str) -> SinkLag:
        """How far sink ``name`` is behind, from memory only (call it on the event loop); the
        receive time of the oldest unconfirmed event is left to the spool when the tail no
        longer holds it (:meth:`~neuroio.bridge.spool.Spool.received_at`, thread-safe)."""
        cursor = self.status[name].cursor
        events = self.lag(name)
        if cursor >= self.spool.last_seq:
            return SinkLag(events, None, None)
        tail = self._tail
        if tail and tail[0].seq <= cursor + 1 <= tail[-1].seq:
            return SinkLag(events, tail[cursor + 1 - tail[0].seq].received_at, None)
        return SinkLag(events, None, cursor + 1)

    def lag_seconds(self, name: str, now: float | None = None) -> float:
        """Age of the oldest event sink ``name`` has not confirmed (0 when caught up).

        Call it on the event loop; it may query the spool (a short read)."""
        lag = self.sink_lag(name)
        received = lag.oldest_received_at
        if lag.oldest_seq is not None:
            with contextlib.suppress(SpoolError):
                received = self.spool.received_at(lag.oldest_seq)
        if received is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - received)


def valid_id(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an event id the spool can store (a signed 64-bit integer)."""
    # SQLite integers are signed 64-bit; the platform's ids are far below that.
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
