"""The bridge's event streams: the one of its token, or one per ``[[stream]]`` table.

A :class:`Stream` owns what is its own: the listener (one WebSocket connection), its gap
recovery (tracker, cursor, the starts it keeps in the spool) and its :class:`Input` into the
pipeline. The spool, the pipeline, the routes and the sinks are the bridge's, shared by all
streams. What a named stream keeps in the spool is keyed by its number
(:meth:`~neuroio.bridge.spool.Spool.stream_number`): its events by stream and id, its newest
id, its recovery starts (:class:`StreamSpool`).

A named stream's failures are its own: a rejected token stops that stream (reported by
:attr:`Stream.rejected`, tried again after :attr:`Stream.retry_rejected_after` seconds), not
the bridge. The single stream's end the bridge as they always have (``AuthenticationError``:
exit 3).

Connection attempts of all streams pass one :class:`ConnectGate` (``connect_rate`` per second),
on top of each stream's jittered backoff: at start-up the streams connect spread over the
first seconds, and after a platform-wide outage they come back at that rate, not in a storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import ssl as _ssl
from collections.abc import Iterable
from typing import Any

import aiohttp
import msgspec

from .. import _streamlog
from .._config import ConnectionOptions, RecoveryOptions
from .._protocol.ratelimit import RateLimit
from .._protocol.session import LossReason
from .._token import Tokens
from ..exceptions import AuthenticationError, ConnectionFailedError
from ..listener import EventListener
from ..sinks.base import SpooledEvent
from ..stats import ListenerStats
from ._recovery import GapRecovery, RecoverySpool
from ._snapshot import StreamSnapshot
from .pipeline import Input, Pipeline
from .spool import DamagedBatch, Spool

__all__ = ["ConnectGate", "Stream", "StreamSpool"]

log = logging.getLogger("neuroio.bridge")

RETRY_REJECTED_AFTER = 60.0
"""Seconds a named stream whose token was rejected waits before trying again (its token file
or command may have been fixed meanwhile): one refused attempt a minute, never a loop."""

# Named streams asking the REST API for their newest entry at once (at start-up, a thousand
# streams would otherwise send a thousand requests together).
_REST_AT_ONCE = 20


# The gate lets attempts through a little below the limit: an attempt reaches the server some
# milliseconds after it starts here, later when either event loop is busy, and that jitter
# must not bunch more than `rate` of them into one second as the server sees them.
_GATE_HEADROOM = 0.9


class ConnectGate:
    """The connection attempts of every stream, at most ``rate`` a second as the server sees
    them: each starts at least ``1 / (0.9 * rate)`` seconds after the one before
    (:class:`RateLimit`)."""

    def __init__(self, rate: float) -> None:
        self._limit = RateLimit(rate * _GATE_HEADROOM)
        self._turn = asyncio.Lock()  # one waiter at a time: starts are spaced when they happen
        self.attempts = 0
        """Attempts let through so far."""
        self.rest = asyncio.Semaphore(_REST_AT_ONCE)
        """Held while a stream starting asks the REST API where to recover from."""

    async def wait(self) -> None:
        """Return when the next attempt may start (the listener's ``connect_gate``)."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            while (delay := self._limit.delay(loop.time())) > 0:
                await asyncio.sleep(delay)  # the rate limit itself, not a synchronisation
            self._limit.started(loop.time())
            self.attempts += 1


class StreamSpool:
    """What gap recovery keeps in the spool, for the named stream ``number``: its newest
    event, its starts (state keys suffixed ``.<number>``), its events, its damaged ids.

    Its methods run on the spool thread, as the spool's do (:meth:`Pipeline.run_spool`).
    """

    def __init__(self, spool: Spool, number: int, damaged: DamagedShare) -> None:
        self._spool = spool
        self._number = number
        self._damaged = damaged

    @property
    def last_event_id(self) -> int | None:
        return self._spool.newest_of(self._number)[0]

    @property
    def last_event_created(self) -> str | None:
        return self._spool.newest_of(self._number)[1]

    @property
    def damaged_count(self) -> int:
        return self._spool.damaged_count

    def get_state(self, key: str) -> str | None:
        return self._spool.get_state(f"{key}.{self._number}")

    def set_state(self, key: str, value: str | None) -> None:
        self._spool.set_state(f"{key}.{self._number}", value)

    def read(self, after: int, limit: int = 1000) -> list[SpooledEvent]:
        """This stream's events after seq ``after``: at least one unless the spool holds
        none of its events after ``after``."""
        while True:
            events = self._spool.read(after, limit)
            if not events:
                return []
            mine = [e for e in events if e.stream == self._number]
            if mine:
                return mine
            after = events[-1].seq

    def damaged(self, limit: int = 1000) -> list[DamagedBatch]:
        """The damaged batches holding ids of this stream, with only those ids."""
        found = []
        for batch in self._spool.damaged(limit):
            if batch.ids is None or batch.streams is None:
                continue
            ids = tuple(
                i for i, n in zip(batch.ids, batch.streams, strict=True) if n == self._number
            )
            if ids:
                found.append(dataclasses.replace(batch, ids=ids, streams=None))
        return found

    def forget_damaged(self, first_seqs: Iterable[int]) -> None:
        self._damaged.recovered(self._spool, self._number, first_seqs)


class DamagedShare:
    """A damaged batch holds the ids of several streams; it is forgotten once each of them
    recovered its own (spool thread)."""

    def __init__(self) -> None:
        self._done: dict[int, set[int]] = {}

    def recovered(self, spool: Spool, number: int, first_seqs: Iterable[int]) -> None:
        wanted = set(first_seqs)
        forget = []
        for batch in spool.damaged(limit=1_000_000):
            if batch.first_seq not in wanted:
                continue
            done = self._done.setdefault(batch.first_seq, set())
            done.add(number)
            if batch.streams is None or set(batch.streams) <= done:
                forget.append(batch.first_seq)
                del self._done[batch.first_seq]
        if forget:
            spool.forget_damaged(forget)


class Stream:
    """One event stream of the bridge: a token's listener, gap recovery and input.

    Args:
        name: the ``[[stream]]`` name; ``None`` for the single stream of a bridge without.
        number: its number in the spool (0 for the single stream).
        tokens: its token.
        connection: its listener's options (its own ``url`` given).
        recovery: its recovery options (its own ``api_url`` given).
        ssl: TLS context of the events socket.
        pipeline: the bridge's pipeline.
        spool: what recovery keeps in the spool for it.
        session: the bridge's aiohttp session for REST requests.
        gate: the connect-rate limit shared by the streams (``None``: none).
        retry_delay: first retry delay of a spool write that fails.
    """

    retry_rejected_after = RETRY_REJECTED_AFTER

    def __init__(
        self,
        name: str | None,
        number: int,
        tokens: Tokens,
        *,
        connection: ConnectionOptions,
        recovery: RecoveryOptions,
        ssl: _ssl.SSLContext | None,
        pipeline: Pipeline,
        spool: RecoverySpool,
        session: aiohttp.ClientSession | None,
        gate: ConnectGate | None,
        retry_delay: float,
    ) -> None:
        self.name = name
        self.number = number
        self.tokens = tokens
        self._connection = connection
        self._recovery_options = recovery
        self._ssl = ssl
        self._pipeline = pipeline
        self._spool = spool
        self._session = session
        self._gate = gate
        self._retry_delay = retry_delay
        self.input: Input = pipeline.input(number, name) if name is not None else pipeline._default
        self.listener: EventListener | None = None
        self.recovery: GapRecovery | None = None
        self.task: asyncio.Task[None] | None = None
        """The single stream's listening task (the bridge watches it); a named stream's
        supervisor."""
        self._rejected: str | None = None
        self.failed: str | None = None
        """Why a named stream stopped for good (``max_retries`` exhausted)."""
        self.running = False
        """Started and not stopped (a fleet worker holds it)."""
        self._stats: ListenerStats | None = None
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Stream {self.name or '(single)'} #{self.number} {self.state}>"

    @property
    def recovering(self) -> bool:
        options = self._recovery_options
        return options.backfill or options.since is not None

    @property
    def stats(self) -> ListenerStats | None:
        """The current (or last) listener's statistics."""
        return self.listener.stats if self.listener is not None else self._stats

    @property
    def state(self) -> str:
        """``stopped``, ``rejected``, ``failed``, or the listener's state (``live``, ...)."""
        if not self.running:
            return "stopped"
        if self.rejected is not None:
            return "rejected"
        if self.failed is not None:
            return "failed"
        stats = self.stats
        return stats.state.value if stats is not None else "idle"

    @property
    def rejected(self) -> str | None:
        """Why the stream's token was last rejected; ``None`` once a connection is live."""
        if self._rejected is not None and self._live():
            self._rejected = None
        return self._rejected

    def _live(self) -> bool:
        stats = self.stats
        return stats is not None and stats.state.value == "live"

    # -- start and stop ----------------------------------------------------------------

    async def start(self, after: int | None = None) -> None:
        """Start receiving; gap recovery starts after id ``after`` when given.

        When this returns, recovery has learnt where to start (the REST API's newest entry,
        asked before anything is received; a named stream's request limited with the
        others'), so :meth:`watermark` is known: a fleet writes it before anything else.
        """
        if self.running:
            return
        self.running = True
        self._stopping = asyncio.Event()
        self._rejected = self.failed = None
        if self.name is None:
            await self._prepare(after)
            assert self.listener is not None
            self.task = asyncio.create_task(self.listener.listen(), name="neuroio-bridge-listen")
            return
        # Its tasks (and those they create: the connection's, recovery's) log as the stream.
        context = contextvars.copy_context()
        context.run(_streamlog.current.set, self.name)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = context.run(
            asyncio.create_task, self._supervise(after, ready), name=f"neuroio-stream {self.name}"
        )
        await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)

    async def _prepare(self, after: int | None) -> None:
        """A new listener, and a new recovery (started) when gaps are recovered."""
        self.listener = self._listener()
        if not self.recovering:
            return
        assert self._session is not None
        self.recovery = GapRecovery(
            self.tokens,
            self._recovery_options,
            self._connection,
            session=self._session,
            api_url=self.listener.api_url,
            pipeline=self._pipeline,
            spool=self._spool,
            retry_delay=self._retry_delay,
            source=self.input,
            start_after=after,
        )
        self.input.admit = self.recovery.tracker.seen
        # The floor before the first commit: nothing is received before it is stored.
        if self._gate is not None:
            async with self._gate.rest:
                await self.recovery.start()
        else:
            await self.recovery.start()

    def _listener(self) -> EventListener:
        # The bridge recovers gaps itself (see GapRecovery) so that where recovery must
        # start is kept in the spool and survives a crash during the recovery.
        recovering = self.recovering
        return EventListener(
            self.tokens,
            self.input.handle,
            ssl=self._ssl,
            backfill=False,
            api_url=self._recovery_options.api_url,
            dedupe_window=self._recovery_options.dedupe_window,
            on_connected=self._on_connected if recovering else None,
            on_disconnected=self._on_disconnected if recovering else None,
            connect_gate=self._gate.wait if self._gate is not None else None,
            **msgspec.structs.asdict(self._connection),
        )

    async def _on_connected(self) -> None:
        if self.recovery is not None:
            await self.recovery.on_connected()

    async def _on_disconnected(self, reason: LossReason) -> None:
        if self.recovery is not None:
            await self.recovery.on_disconnected(reason)

    async def _supervise(self, after: int | None, ready: asyncio.Future[None]) -> None:
        """A named stream: listen; a rejected token waits and tries again, anything else
        that ends the listener stops the stream (reported), never the bridge."""
        try:
            await self._prepare(after)
            ready.set_result(None)
            while True:
                assert self.listener is not None
                try:
                    await self.listener.listen()
                    return  # closed
                except AuthenticationError as exc:
                    self._rejected = str(exc)
                    log.error(
                        "token rejected (%s); this stream stops, the others go on; trying "
                        "again in %.0f s",
                        exc,
                        self.retry_rejected_after,
                    )
                # Recovery starts again too: refused at start-up, it never learnt where to
                # start; a stream refused later has its newest event in the spool.
                if self.listener.stats.authenticated:
                    after = None
                self._stats = self.listener.stats
                if self.recovery is not None:
                    await self.recovery.aclose()
                # The pause ends early on stop(): its listener's close() waits for this task,
                # and a fleet's stop must return within the fencing margin.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.retry_rejected_after)
                if self._stopping.is_set():
                    return
                await self._prepare(after)
        except ConnectionFailedError as exc:
            self.failed = str(exc)
            log.error("stopped: %s", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: reported on this stream, the others go on
            self.failed = f"{type(exc).__name__}: {exc}"
            log.exception("stopped by an unexpected error")

    async def stop(self) -> None:
        """Close the connection and stop recovering (what was spooled is still delivered,
        and a stored recovery start stays for the next start). Idempotent."""
        if not self.running:
            return
        self.running = False
        self._stopping.set()
        listener, task = self.listener, self.task
        if listener is not None:
            self._stats = listener.stats
            await listener.close()
        if self.recovery is not None:
            await self.recovery.aclose()
        if task is not None:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # -- what it reports ----------------------------------------------------------------

    def watermark(self) -> int | None:
        """The highest id W such that every event of the stream with an id up to W was
        confirmed by every route (``None``: not known)."""
        recovery = self.recovery
        if recovery is None:
            return None
        low = recovery.received_upto
        if low is None:
            return None
        held = self.input.lowest_unconfirmed()
        return low if held is None else min(low, held - 1)

    def snapshot(self) -> StreamSnapshot:
        """The stream's figures now (metrics, the status page)."""
        name = self.name if self.name is not None else ""
        return StreamSnapshot.of(name, self.state, self.stats, self.running)

    def describe(self) -> dict[str, Any]:
        """The stream's figures for ``/healthz``, with why it is stopped."""
        snap = self.snapshot()
        return {
            "state": snap.state,
            "events": snap.events,
            "reconnects": sum(count for _, count in snap.reconnects),
            "last_event_at": snap.last_event_at,
            "rejected": self.rejected,
            "failed": self.failed,
        }
