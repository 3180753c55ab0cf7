"""The bridge's gap recovery: where each gap starts, kept in the spool, and the entries the
socket did not push, fetched by the package's one recovery component into the pipeline.

The socket never replays (``docs/protocol.md``), so the bridge asks ``GET /v1/entries/`` for
what it missed: at start-up the entries after the last event its spool committed, after each
reconnect those after the last event received. The fetching, paging, ordering and fallbacks
are :class:`neuroio._recovery.Recovery`'s; what is delivered and what is trusted is the
:class:`~neuroio._protocol.gaps.GapTracker`'s. This module owns what only the bridge needs:

- **the floor before the first commit**: before the listener starts, the newest entry id of
  the REST API is read (bounded by the connect timeout) and stored in the spool, so a spool
  whose first commits fail (a full disk) still knows, after a restart, where recovery starts;
- **a stored cursor checked against the REST API**: the spool's newest id is used at start-up
  only if it is within the tracker's sanity bound of the REST API's newest id. A bogus id
  pushed on the socket is delivered (and so spooled), but it never becomes where recovery
  starts: the trusted cursor is stored (:data:`RESUME_POINT`) when such an id is seen and at
  shutdown, and the largest plausible id the spool holds is used with it;
- the **damaged batches** the spool reports (:meth:`~neuroio.bridge.spool.Spool.damaged`, found at
  start-up or by a sink's read): their events are fetched again from the REST API, from just
  below the damaged ids to the largest, then the batches are forgotten;
- **the mark of a recovered event**: it is spooled as
  ``{"id": ..., "data": {<entry>}, "backfilled": true}`` (pushed events carry no such key),
  so a route can filter on it and every sink receives it; the spool stores each id once
  whichever way it came first;
- :data:`RECOVER_AFTER`: where an unfinished recovery starts, stored before any later frame
  of the connection is handled and cleared once what it recovered is committed, so a bridge
  that dies during a recovery starts the next one from the same place;
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

import aiohttp
import msgspec

from .._config import ConnectionOptions, RecoveryOptions
from .._protocol.backoff import Backoff
from .._protocol.gaps import Gap, GapStart, GapTracker, Newest, parse_since
from .._recovery import Deliver, Recovery
from .._retry import Retrying
from .._times import iso, parse_time
from .._token import Tokens, TokenSource
from ..exceptions import BackfillError, SpoolError
from ..sinks.base import SpooledEvent
from .pipeline import Input, Pipeline, valid_id
from .spool import DamagedBatch

__all__ = ["RECOVER_AFTER", "RESUME_POINT", "GapRecovery", "decode_start", "encode_start"]

log = logging.getLogger("neuroio.bridge")

RECOVER_AFTER = "recover_after"
"""Spool state key: where gap recovery must start if the bridge stops before it finished."""
RESUME_POINT = "resume_point"
"""Spool state key: the last trusted point (the floor, or the trusted cursor), used at
start-up when the spool holds no event or its newest id is not plausible."""

# Events the spool holds that are read at start-up for the largest plausible id, when its
# newest is not plausible (a rare fault: the spool normally holds only what sinks lag).
_SCAN_PAGE = 1000
# With an empty entries list every later entry is new: recover from the beginning of time
# (on the server's clock; this machine's is never asked).
_BEGINNING = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_start(start: GapStart) -> str:
    """A gap start as the text stored in the spool (its id and ``created``, or a time)."""
    value: dict[str, Any] = {}
    if start.last_id is not None:
        value["id"] = start.last_id
        if start.last_created is not None:
            value["created"] = iso(start.last_created)
    elif start.since_time is not None:
        value["since"] = iso(start.since_time)
    return msgspec.json.encode(value).decode()


def decode_start(text: str | None) -> GapStart | None:
    """The gap start stored by :func:`encode_start` (or, as older spools stored it, a bare
    id or ISO-8601 time); ``None`` for nothing usable."""
    if text is None:
        return None
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, dict):
        event_id = value.get("id")
        if valid_id(event_id):
            return GapStart(last_id=event_id, last_created=parse_time(value.get("created")))
        since = parse_time(value.get("since"))
        return GapStart(since_time=since) if since is not None else None
    try:
        return parse_since(text)
    except ValueError:
        log.warning("ignoring an unreadable gap start stored in the spool")
        return None


class RecoverySpool(Protocol):
    """What gap recovery needs of the spool: the :class:`~neuroio.bridge.spool.Spool`
    itself for the single stream, a stream's view of it for a named stream
    (:class:`neuroio.bridge._streams.StreamSpool`)."""

    @property
    def last_event_id(self) -> int | None: ...

    @property
    def last_event_created(self) -> str | None: ...

    @property
    def damaged_count(self) -> int: ...

    def get_state(self, key: str) -> str | None: ...

    def set_state(self, key: str, value: str | None) -> None: ...

    def read(self, after: int, limit: int = 1000) -> list[SpooledEvent]: ...

    def damaged(self, limit: int = 1000) -> list[DamagedBatch]: ...

    def forget_damaged(self, first_seqs: Iterable[int]) -> None: ...


class GapRecovery:
    """The bridge's side of gap recovery: the floor and the stored starts.

    Args:
        token: the API token for the REST API, or the bridge's tokens (shared with its
            listener, so a token refused on one side is asked for again once for both).
        recovery: the recovery options (``since``, ``backfill``, limits).
        connection: the backoff of REST requests and the start-up bound (``timeout``).
        session: the bridge's aiohttp session.
        api_url: the REST API.
        pipeline, spool: where recovered entries go, and where the starts are kept.
        retry_delay: first retry delay of a state write that fails (a full disk).
        source: the stream's input into the pipeline (``None``: the single stream's).
        start_after: recovery starts after this id whatever the spool says (the fleet's
            watermark of a stream taken over from another worker).
    """

    def __init__(
        self,
        token: TokenSource | Tokens,
        recovery: RecoveryOptions,
        connection: ConnectionOptions,
        *,
        session: aiohttp.ClientSession,
        api_url: str,
        pipeline: Pipeline,
        spool: RecoverySpool,
        retry_delay: float = 0.5,
        source: Input | None = None,
        start_after: int | None = None,
    ) -> None:
        self._options = recovery
        self._connection = connection
        self._session = session
        self._api_url = api_url
        self._token = token if isinstance(token, Tokens) else Tokens(token, guard=False)
        self._pipeline = pipeline
        self._spool = spool
        self._put_event = source.put_event if source is not None else pipeline.put_event
        self._start_after = start_after
        self._kept_start: GapStart | None = None  # what RECOVER_AFTER holds while _kept
        self._closed = False
        self.tracker = GapTracker(
            dedupe_window=recovery.dedupe_window,
            max_events=recovery.backfill_max_events,
            max_age=recovery.backfill_max_age,
            on_suspect=self._suspect,
        )
        self.recovery = Recovery(
            session,
            api_url,
            token,
            self.tracker,
            self._deliver,
            backoff=Backoff(connection.reconnect_delay, connection.max_reconnect_delay),
            closing=lambda: self._closed,
        )
        self._retry = Retrying(
            Backoff(retry_delay, max(retry_delay, 2.0)),
            closing=lambda: self._closed,
            logger=log,
            what="storing where gap recovery starts",
        )
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._kept = False  # RECOVER_AFTER holds the start of the unfinished recovery
        self._gap_open = False
        self._damaged = False
        self._connections = False  # a connection was made since the last connected()
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.backfill_error: BackfillError | None = None
        """The last gap recovery the API refused (it is retried at the next start)."""

    @property
    def recovered(self) -> int:
        """Entries recovered from the REST API and handed to the spool."""
        return self.recovery.recovered

    # -- start-up --------------------------------------------------------------------------

    async def start(self) -> None:
        """Before the listener starts: learn the REST API's newest entry (bounded by the
        connect timeout), choose where recovery starts, and store it before any commit."""
        newest = await self._newest_at_start()
        if newest is not None:
            # No gap is open yet, so this only sets the floor and the sanity bound: ids
            # pushed before the first connection's own check are judged against it too.
            self.tracker.connected(newest)
        start = await self._stored_start(newest)
        if start is None and newest is not None:
            # A new spool: the floor is the newest entry now, whatever either clock says.
            if newest.id is not None:
                start = GapStart(last_id=newest.id, last_created=newest.created)
            else:
                start = GapStart(since_time=_BEGINNING)
        if start is not None:
            self.tracker.restore(start)
            self._gap_open = True
            text = encode_start(start)
            await self._store(RECOVER_AFTER, text)
            self._kept, self._kept_start = True, start
            await self._store(RESUME_POINT, text)
        elif self._spool.last_event_id is None:
            # The REST API is out of reach and the spool is empty: store a point by this
            # machine's clock, with the tracker's margin, before any event can be committed.
            await self._store(RESUME_POINT, encode_start(self.tracker.resume_point()))
        self._damaged = spool_damaged = self._spool.damaged_count > 0
        if spool_damaged:
            self._wake.set()
        self._task = asyncio.create_task(self._serve(), name="neuroio-bridge-recovery")

    def damaged_found(self) -> None:
        """A read found a damaged stored batch: fetch its events again (soon, on the loop)."""
        self._damaged = True
        self._wake.set()

    async def _newest_at_start(self) -> Newest | None:
        try:
            return await asyncio.wait_for(self.recovery.newest(), self._connection.timeout)
        except asyncio.TimeoutError:
            log.warning(
                "the entries API did not answer within %.1f s at start-up; starting anyway "
                "(the stored recovery start is checked at the first connection)",
                self._connection.timeout,
            )
        except BackfillError as exc:
            self.backfill_error = exc
            log.error("gap recovery failed at start-up (retried at the next start): %s", exc)
        return None

    async def _stored_start(self, newest: Newest | None) -> GapStart | None:
        options, spool = self._options, self._spool
        if self._start_after is not None:
            return GapStart(last_id=self._start_after)
        if options.since is not None:
            return parse_since(options.since)
        if not options.backfill:
            return None
        tracker = self.tracker

        def plausible(start: GapStart | None) -> bool:
            if start is None or start.last_id is None:
                return start is not None
            return newest is None or newest.id is None or tracker.plausible(start.last_id)

        last = None
        if spool.last_event_id is not None:
            last = GapStart(spool.last_event_id, parse_time(spool.last_event_created))
        cursor = last if plausible(last) else None
        if cursor is None:
            if last is not None:
                log.warning(
                    "the spool's newest event id %d is beyond the REST API's newest (%s): "
                    "recovery starts from the last trusted id instead",
                    last.last_id,
                    newest.id if newest is not None else None,
                )
            cursor = await self._trusted_fallback(plausible)
        pending = decode_start(await self._pipeline.run_spool(spool.get_state, RECOVER_AFTER))
        if not plausible(pending):
            return cursor
        assert pending is not None
        if cursor is None or cursor.last_id is None or pending.last_id is None:
            return pending
        return pending if pending.last_id < cursor.last_id else cursor

    async def _trusted_fallback(self, plausible: Callable[[GapStart], bool]) -> GapStart | None:
        spool = self._spool
        resume = decode_start(await self._pipeline.run_spool(spool.get_state, RESUME_POINT))
        candidates = [resume] if resume is not None and plausible(resume) else []
        if spool.last_event_id is not None:
            held = await self._pipeline.run_spool(self._largest_held, plausible)
            if held is not None:
                candidates.append(GapStart(last_id=held))
        with_id = [c for c in candidates if c.last_id is not None]
        if with_id:
            return max(with_id, key=lambda c: c.last_id or 0)
        return candidates[0] if candidates else None

    def _largest_held(self, plausible: Callable[[GapStart], bool]) -> int | None:
        """The largest plausible id among the events the spool holds (spool thread)."""
        best: int | None = None
        after = 0
        while True:
            events = self._spool.read(after, _SCAN_PAGE)
            if not events:
                return best
            for event in events:
                if (best is None or event.id > best) and plausible(GapStart(last_id=event.id)):
                    best = event.id
            after = events[-1].seq

    # -- connections -----------------------------------------------------------------------

    async def on_connected(self) -> None:
        """The listener's ``on_connected``: store where the gap this connection closes
        starts (before any later frame is handled), and have it recovered."""
        if self._gap_open:
            async with self._lock:
                if not self._kept:
                    # The open gap's own start: a gap a loss overtook may have opened before
                    # the live events that moved the cursor since.
                    start = self.tracker.open_start or self.tracker.resume_point()
                    await self._store(RECOVER_AFTER, encode_start(start))
                    self._kept, self._kept_start = True, start
                self._gap_open = False
                self._connections = True
                self._wake.set()
        else:
            self._connections = True  # learn the floor at least
            self._wake.set()

    async def on_disconnected(self, reason: object) -> None:
        """The listener's ``on_disconnected``: a gap opens after the last trusted event."""
        if self._options.backfill and not self._closed:
            self.tracker.lost()
            self._gap_open = True

    async def _serve(self) -> None:
        # Recovery.serve's loop, plus what the bridge does once a gap is recovered: commit
        # it and clear RECOVER_AFTER; and the damaged batches a read found.
        wake = self._wake
        while not self._closed:
            await wake.wait()
            wake.clear()
            if self._damaged:
                self._damaged = False
                await self._recover_damaged()
            if self._connections:
                # Only at a connection: connected() closes the open gap.
                self._connections = False
                if await self._recover_gaps():
                    await self._recovered()

    async def _recover_gaps(self) -> bool:
        """Close the open gap and recover every queued one; False if the API refused."""
        try:
            await self.recovery.connected()
            await self.recovery.run()
        except BackfillError as exc:
            self.tracker.drop_pending()
            self.backfill_error = exc
            log.error("gap recovery failed (retried at the next start): %s", exc)
            return False  # RECOVER_AFTER stays for the next start
        return True

    async def _recovered(self) -> None:
        """Commit what was recovered, then clear RECOVER_AFTER unless another gap opened."""
        await self._pipeline.flush()
        async with self._lock:
            tracker = self.tracker
            if self._closed or self._connections or not self._kept:
                return
            if tracker.pending or tracker.open_start is not None or self._gap_open:
                return  # a gap is still to recover: its stored start must stay
            if self._spool.last_event_id is None:
                # Nothing committed yet: the floor stays the place to start from.
                await self._store(RESUME_POINT, encode_start(self.tracker.resume_point()))
            await self._store(RECOVER_AFTER, None)
            self._kept, self._kept_start = False, None

    async def _deliver(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            try:
                # Marked so that routes can tell (filter.backfilled) and sinks see it: the
                # spool keeps one copy per id either way, so the mark changes no count.
                await self._put_event({"id": entry.get("id"), "data": entry, "backfilled": True})
            except ValueError:
                log.warning("gap recovery skipped an entry without a usable id")

    @property
    def received_upto(self) -> int | None:
        """An id up to which every entry of the stream has been received (handed to the
        pipeline) or is still to be recovered from a stored start at or below it: the lowest
        of the trusted cursor and the start of every gap not yet recovered. ``None`` while
        unknown (nothing trusted yet, or a gap that starts at a time rather than an id)."""
        tracker = self.tracker
        starts = [self._kept_start if self._kept else None, tracker.open_start]
        starts += tracker.pending_starts()
        lowest = tracker.cursor
        for start in starts:
            if start is None:
                continue
            point = start.last_id
            if point is None:
                if start.since_time != _BEGINNING:
                    return None
                point = 0  # the list was empty: every entry is still to come
            lowest = point if lowest is None else min(lowest, point)
        return lowest

    # -- damaged batches -----------------------------------------------------------------

    async def _recover_damaged(self) -> None:
        """Fetch again the events of the damaged batches whose ids are known, then forget
        the batches; those whose ids are unreadable are only logged (once, by the spool)."""
        spool = self._spool
        batches = await self._pipeline.run_spool(spool.damaged)
        known = [b for b in batches if b.ids]
        if not known:
            return
        wanted = {i for b in known for i in b.ids or ()}
        # Its own tracker: those ids were seen once (the bridge's tracker remembers them),
        # and no limit applies to fetching them again.
        tracker = GapTracker(max_events=None, max_age=None, dedupe_window=len(wanted))
        only = _Wanted(self._deliver, wanted)
        fetch = Recovery(
            self._session,
            self._api_url,
            self._token,
            tracker,
            only,
            backoff=Backoff(self._connection.reconnect_delay, self._connection.max_reconnect_delay),
            closing=lambda: self._closed,
        )
        try:
            await fetch.recover(Gap(GapStart(last_id=min(wanted) - 1), until=max(wanted)))
        except BackfillError as exc:
            log.error("damaged spool batches not recovered (retried at the next start): %s", exc)
            return
        if self._closed:
            return
        await self._pipeline.flush()
        await self._pipeline.run_spool(spool.forget_damaged, [b.first_seq for b in known])
        log.warning(
            "fetched again %d of the %d events of %d damaged spool batches from the REST API",
            only.delivered,
            len(wanted),
            len(known),
        )

    # -- storing ---------------------------------------------------------------------------

    def _suspect(self, event_id: int, reason: str) -> None:
        log.warning(
            "event id %d is %s: delivered, but recovery will not start after it", event_id, reason
        )
        if self._closed:
            return
        point = encode_start(self.tracker.resume_point())
        task = asyncio.get_running_loop().create_task(self._store(RESUME_POINT, point))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, key: str, value: str | None) -> None:
        """Store a state value, retrying while the disk is full (the caller waits: the
        socket pauses, as for a failing commit)."""
        while True:
            try:
                await self._pipeline.run_spool(self._spool.set_state, key, value)
            except SpoolError as exc:
                if not await self._retry.wait(reason=str(exc)):
                    return
                continue
            self._retry.reset()
            return

    async def aclose(self) -> None:
        """Stop recovering (a stored start stays for the next run) and store the trusted
        cursor if an untrusted id was seen."""
        self._closed = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for write in list(self._writes):
            with contextlib.suppress(BaseException):
                await write
        if self.tracker.suspects and self.tracker.cursor is not None:
            point = encode_start(self.tracker.resume_point())
            with contextlib.suppress(SpoolError):
                await self._pipeline.run_spool(self._spool.set_state, RESUME_POINT, point)


class _Wanted:
    """A ``deliver`` passing on only the entries whose ids are wanted (each once)."""

    def __init__(self, deliver: Deliver, wanted: set[int]) -> None:
        self._deliver = deliver
        self._wanted = wanted
        self.delivered = 0

    async def __call__(self, entries: list[dict[str, Any]]) -> None:
        kept = [e for e in entries if e.get("id") in self._wanted]
        self._wanted.difference_update(e.get("id") for e in kept)
        self.delivered += len(kept)
        if kept:
            await self._deliver(kept)
