"""The fleet coordinator: a bridge's share of the streams, held through leases in a NATS KV bucket.

Every worker of a fleet runs one :class:`Fleet` over the same stream list. It watches the whole
bucket, keeps its own worker key and leases alive, takes free or expired streams up to its
share and gives up what is above it, starting and stopping them through the bridge
(:class:`StreamHost`). The rules (keys, expiry by observation, targets, fencing deadlines) are
in :mod:`neuroio._fleet.plan`, whose docstring states the guarantees; in short, with ``ttl``
the lease TTL (default 10 s), ``margin`` ``ttl / 5`` and ``tick`` min(1 s, ``ttl / 5``):

* **Takeover** after a SIGKILL: at most ``ttl + tick`` after the kill, plus the watch's delivery
  latency, one more tick per further :func:`~neuroio._fleet.plan.acquire_limit` streams a
  taker needs (a quarter of its share, at least 4), and the stream's connect time
  (``ttl + ttl/3 + tick`` + connect time is a safe upper bound for a fleet's usual shares).
  The taker starts the stream after the watermark in ``mark.<stream>``, so gap recovery
  fetches what the killed worker had not delivered; nothing is lost.
* **Overlap**: 0. A holder that has not renewed a lease for ``ttl - margin`` seconds since it
  *sent* its last successful renewal stops the stream; a taker waits ``ttl`` after *seeing*
  that renewal. This holds while the holder's ``stop_stream`` returns within ``margin``, its
  event loop is never blocked for longer than ``margin``, and the two clocks' rates differ by
  less than ``margin / ttl``.
* **Partition**: the cut-off worker stops its streams before the others may take them; the
  others take them ``ttl`` to ``ttl + tick`` after its last renewal.
* **SIGTERM** (:meth:`Fleet.aclose`): streams stopped, final watermarks written, leases and the
  worker key deleted: the others take them at once.
* A stream whose token is refused stays with its holder (its lease is renewed, so it does
  not wander from worker to worker), and ``rejected.<stream>`` makes every worker's
  :meth:`Fleet.problems` report it.

Every worker must be configured with the same stream names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from yarl import URL

from .._fleet.plan import (
    LEASE,
    MARK,
    REJECTED,
    WORKER,
    Acquire,
    Observations,
    decode_json,
    decode_mark,
    encode_json,
    fence_deadline,
    key,
    name_problem,
    plan,
    target,
)
from ..exceptions import ConfigurationError, ConnectionFailedError
from ..sinks._uri import redact_uri
from ._fleet_uri import DEFAULT_BUCKET, DEFAULT_TTL, default_worker, parse_fleet_uri

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NATS

    from ..sinks.nats import _check_speaks_nats, _NotNats, _refused_login
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from ..exceptions import MissingExtraError

    raise MissingExtraError("nats", "the fleet (--fleet nats://...)") from exc

__all__ = ["Fleet", "StreamHost"]

log = logging.getLogger("neuroio.bridge.fleet")

T = TypeVar("T")

_DELETED = frozenset({"DEL", "PURGE"})
_MARK_INTERVAL = 1.0  # at most one watermark write per stream per second
_WRONG_LAST = (10071, 10164)  # JetStream: "wrong last sequence"
_ATTEMPTS_KEPT = 4
_Failure = (nats.errors.Error, asyncio.TimeoutError, OSError)


class StreamHost(Protocol):
    """What the fleet needs of the bridge: its streams, and starting and stopping each."""

    @property
    def stream_names(self) -> Sequence[str]:
        """Every configured stream, in config order."""
        ...

    async def start_stream(self, name: str, after: int | None) -> None:
        """Connect it; gap recovery starts after id ``after`` (``None``: as the spool knows)."""
        ...

    async def stop_stream(self, name: str) -> None:
        """Close its connection now (fencing, release); what it spooled is still delivered."""
        ...

    def watermark(self, name: str) -> int | None:
        """The highest id up to which every event was delivered; ``None``: not known yet."""
        ...

    def rejected(self, name: str) -> str | None:
        """Why its token was refused, or ``None``."""
        ...


def _wrong_last(error: BaseException) -> bool:
    """Whether a revision-checked write was refused because the key has moved on."""
    return isinstance(error, nats.js.errors.KeyWrongLastSequenceError) or (
        isinstance(error, nats.js.errors.APIError) and error.err_code in _WRONG_LAST
    )


@dataclasses.dataclass(eq=False)
class _Held:
    """A lease this worker holds, and its stream's state here."""

    name: str
    revision: int
    renewed: float  # when the last successful write of the lease was sent (monotonic)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    start: asyncio.Task[None] | None = None
    started: bool = False  # start_stream returned
    stopped: bool = False  # stop_stream called: the connection is closed or closing
    releasing: bool = False
    mark: int | None = None  # the watermark in the bucket (read at the start, then written)
    mark_at: float = -math.inf
    rejected: bytes | None = None  # the value of rejected.<stream> in the bucket
    attempts: list[tuple[bytes, float]] = dataclasses.field(default_factory=list)


class Fleet:
    """One worker's part in a fleet: its share of the streams, through a NATS KV bucket.

    Args:
        server: the NATS server, ``nats://[credentials@]host:port`` (or ``tls://``).
        bucket: the KV bucket; created (history 1, no TTL) when missing.
        ttl: lease TTL in seconds: how long a silent holder keeps its streams.
        worker: this worker's id, unique in the fleet; default ``<hostname>-<pid>``.
        margin: seconds by which a holder that cannot renew stops its streams before any
            other worker may take them; default ``ttl / 5``.
        tick: seconds between balancing rounds; default min(1, ``ttl / 5``).
        connect_timeout: seconds :meth:`start` waits for NATS and the bucket.

    Raises:
        ConfigurationError: an option is out of range, or the worker id cannot be a key.
    """

    def __init__(
        self,
        server: str,
        *,
        bucket: str = DEFAULT_BUCKET,
        ttl: float = DEFAULT_TTL,
        worker: str | None = None,
        margin: float | None = None,
        tick: float | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.server = server
        self.bucket = bucket
        self.ttl = float(ttl)
        self.worker = worker if worker is not None else default_worker()
        self.margin = self.ttl / 5 if margin is None else float(margin)
        self.tick = min(1.0, self.ttl / 5) if tick is None else float(tick)
        self.connect_timeout = connect_timeout
        if not (self.ttl > 0 and 0 < self.margin < self.ttl / 2 and self.tick > 0):
            raise ConfigurationError(
                f"fleet {self}: ttl must be > 0 and margin between 0 and ttl / 2"
            )
        problem = name_problem(self.worker)
        if problem is not None:
            raise ConfigurationError(f"fleet {self}: worker id {problem}")
        self.renew_interval = self.ttl / 3
        # A request slower than this is treated as failed; renewals are ttl / 3 apart.
        self.op_timeout = max(0.25, min(self.ttl / 4, 5.0))
        self._seen = Observations(self.ttl)
        self._held: dict[str, _Held] = {}
        self._host: StreamHost | None = None
        self._streams: tuple[str, ...] = ()
        self._nc: Any = None
        self._kv: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._rewatch = asyncio.Event()
        self._fence_changed = asyncio.Event()
        self._lost_since: float | None = None
        self._heard = 0.0  # when the watch last delivered anything (monotonic)
        self._worker_rev = 0
        self._duplicate_id = False
        self._worker_sent: list[bytes] = []  # worker-key values sent since the last success
        self._serial = 0
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> Fleet:
        """The coordinator ``nats://host:port?bucket=...&ttl=...&worker=...`` describes.

        ``options`` are passed on (``margin``, ``tick``, ``connect_timeout``).

        Raises:
            ConfigurationError: the URI or an option is invalid (one line, credentials masked).
        """
        parsed = parse_fleet_uri(uri)
        return cls(
            parsed.server, bucket=parsed.bucket, ttl=parsed.ttl, worker=parsed.worker, **options
        )

    def __repr__(self) -> str:
        return f"<Fleet {self} worker={self.worker}>"

    def __str__(self) -> str:
        return f"{redact_uri(self.server)}?bucket={self.bucket}&ttl={self.ttl:g}"

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, host: StreamHost) -> None:
        """Connect, bind (or create) the bucket, announce this worker and start taking streams.

        Returns once the bucket's state is known; streams are then started in the background
        through ``host``.

        Raises:
            ConfigurationError: a stream name cannot be a key; the server is not NATS, refused
                the credentials, or has no JetStream.
            ConnectionFailedError: NATS did not answer within ``connect_timeout``.
        """
        for name in host.stream_names:
            problem = name_problem(name)
            if problem is not None:
                raise ConfigurationError(f"fleet {self}: stream name {problem}")
        self._host = host
        self._streams = tuple(host.stream_names)
        await self._connect()
        try:
            await self._bind_bucket()
            self._worker_rev = await self._op(self._kv.put(key(WORKER, self.worker), self._value()))
            self._tasks.append(asyncio.create_task(self._watching(), name="fleet-watch"))
            try:
                await asyncio.wait_for(self._ready.wait(), self.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectionFailedError(
                    f"fleet {self}: the bucket's keys did not arrive within "
                    f"{self.connect_timeout:g} s"
                ) from None
        except BaseException:
            await self._abandon()
            raise
        for coro, label in (
            (self._ticking(), "fleet-tick"),
            (self._renewing(), "fleet-renew"),
            (self._fencing(), "fleet-fence"),
        ):
            self._tasks.append(asyncio.create_task(coro, name=label))
        log.info("fleet %s: worker %s joined, %d streams", self, self.worker, len(self._streams))

    async def _connect(self) -> None:
        address = URL(self.server)
        try:
            await _check_speaks_nats(
                address.host or "", address.explicit_port or 4222, self.connect_timeout
            )
        except _NotNats as exc:
            raise ConfigurationError(f"fleet {self}: {exc}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionFailedError(
                f"fleet {self}: NATS is unreachable: {exc or type(exc).__name__}"
            ) from exc
        nc = NATS()
        errors: list[BaseException] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)
            log.debug("fleet %s: NATS: %s", self, error)

        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=[self.server],
                    connect_timeout=max(1, math.ceil(self.connect_timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    # A silent server (no FIN: a partition) is noticed within about a ttl;
                    # fencing does not wait for it, only the reported problem does.
                    ping_interval=max(1, math.ceil(self.ttl / 2)),
                    max_outstanding_pings=2,
                    error_cb=on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            reason = errors[-1] if errors else exc
            if _refused_login(reason):
                raise ConfigurationError(
                    f"fleet {self}: NATS rejected the credentials: {reason}"
                ) from None
            raise ConnectionFailedError(
                f"fleet {self}: NATS is unreachable: {reason or type(reason).__name__}"
            ) from exc
        self._nc = nc

    async def _bind_bucket(self) -> None:
        # Setting up may take longer than one operation; each later one is bounded by _op.
        js = self._nc.jetstream(timeout=max(self.op_timeout, 2.0))
        try:
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                try:
                    # No TTL on the bucket: watermarks must outlive the leases.
                    await js.create_key_value(bucket=self.bucket, history=1)
                except nats.js.errors.BadRequestError:
                    pass  # another worker created it first
                self._kv = await js.key_value(self.bucket)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise ConfigurationError(
                f"fleet {self}: JetStream is not enabled on the server"
            ) from None
        except _Failure as exc:
            raise ConnectionFailedError(
                f"fleet {self}: cannot open the bucket: {exc or type(exc).__name__}"
            ) from exc

    async def _op(self, call: Awaitable[T]) -> T:
        """One request to the bucket, bounded: a renewal slower than ``op_timeout`` is
        useless (renewals are ``ttl / 3`` apart), so it counts as failed."""
        return await asyncio.wait_for(call, self.op_timeout)

    async def aclose(self) -> None:
        """Leave the fleet at once: stop every held stream, write its final watermark, delete
        the leases and the worker key, so the other workers take them without waiting.

        With NATS out of reach the streams are only stopped; the others take them once the
        leases expire. Returns within about ``2 * op_timeout`` whatever NATS does."""
        if self._closed:
            return
        self._closed = True
        background = [t for t in self._tasks if t.get_name() != "fleet-watch"]
        await self._cancel(background)
        held = list(self._held.values())
        await asyncio.gather(*(self._stop(h) for h in held))
        released = self._kv is not None and self._connected_now()
        if released:
            writes = [self._release_writes(h) for h in held]
            writes.append(self._delete(key(WORKER, self.worker), self._worker_rev))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*writes), 2 * self.op_timeout)
        self._held.clear()
        await self._abandon()
        log.info(
            "fleet %s: worker %s left, %d streams %s",
            self,
            self.worker,
            len(held),
            "released" if released else "stopped (NATS out of reach: their leases will expire)",
        )

    async def _abandon(self) -> None:
        """Drop tasks and the connection, releasing nothing (also what a SIGKILL leaves)."""
        self._closed = True
        await self._cancel(self._tasks + [h.start for h in self._held.values() if h.start])
        self._tasks.clear()
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(nc.close(), 2 * self.op_timeout)

    @staticmethod
    async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
        pending = set(tasks)
        while pending:
            # Cancelled again until done: asyncio.wait_for of Python < 3.12 can swallow a
            # cancellation that arrives as the awaited event fires (the loops also end on
            # _closed). wait() does not raise the tasks' CancelledError into the caller.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)

    # -- reports ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is wrong with the fleet, one line each, the same on every worker: NATS out of
        reach here, and every stream whose token is refused (on whichever worker)."""
        found = []
        if self._lost_since is not None:
            lost = time.monotonic() - self._lost_since
            found.append(f"fleet: NATS unreachable for {lost:.0f} s")
        if self._duplicate_id:
            found.append(f"fleet: another process also uses worker id {self.worker}")
        for stream in self._seen.names(REJECTED):
            seen = self._seen.get(key(REJECTED, stream))
            value = decode_json(seen.value if seen else None)
            found.append(
                f"stream {stream}: token rejected on {value.get('worker', '?')}: "
                f"{value.get('reason', '?')}"
            )
        return found

    def status(self) -> dict[str, Any]:
        """The fleet as this worker sees it, for the status page and metrics.

        Keys: ``worker`` (this id), ``bucket``, ``ttl``, ``connected``, ``workers`` (live ids,
        sorted), ``target`` (this worker's share), ``held`` (its streams, sorted) and
        ``streams`` (each configured stream's holder, ``None`` when free).
        """
        now = time.monotonic()
        live = self._seen.live_workers(self.worker, now)
        return {
            "worker": self.worker,
            "bucket": self.bucket,
            "ttl": self.ttl,
            "connected": self._connected_now(),
            "workers": live,
            "target": target(self.worker, live, len(self._streams)),
            "held": sorted(self._held),
            "streams": {s: self._seen.holder(s, now) for s in self._streams},
        }

    # -- NATS events --------------------------------------------------------------------------

    async def _on_disconnected(self) -> None:
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            if not self._closed:
                log.warning("fleet %s: lost the connection to NATS", self)

    async def _on_reconnected(self) -> None:
        self._lost_since = None
        log.info("fleet %s: connected to NATS again", self)
        # The watch's consumer may not have survived the outage: start it again (keys whose
        # revision did not change keep the time they were first seen).
        self._rewatch.set()
        self._wake.set()

    def _connected_now(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    def _connected(self) -> bool:
        return self._connected_now() and not self._closed

    # -- the watch ----------------------------------------------------------------------------

    async def _watching(self) -> None:
        while not self._closed:
            self._rewatch.clear()
            try:
                watcher = await self._kv.watchall()
            except _Failure as exc:
                log.debug("fleet %s: cannot watch the bucket: %s", self, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._rewatch.wait(), self.tick)
                continue
            try:
                await self._follow(watcher)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def _follow(self, watcher: Any) -> None:
        self._heard = time.monotonic()
        while not self._rewatch.is_set() and not self._closed:
            try:
                entry = await watcher.updates(timeout=self.tick)
            except nats.errors.TimeoutError:
                continue
            if entry is None:  # every key's latest revision has been delivered
                self._ready.set()
                self._wake.set()
                continue
            self._heard = time.monotonic()
            value = None if entry.operation in _DELETED else bytes(entry.value or b"")
            changed = self._seen.saw(entry.key, entry.revision, value, time.monotonic())
            if changed and self._matters(entry.key, value):
                self._wake.set()

    def _matters(self, name: str, value: bytes | None) -> bool:
        """Whether a change calls for a balancing round at once: a worker came or went, a
        lease was taken or given up by another worker. This worker's own writes do not, so
        that it takes at most a few streams per tick."""
        if name.startswith(WORKER + "."):
            return name != key(WORKER, self.worker)
        if name.startswith(LEASE + "."):
            return value is None or decode_json(value).get("worker") != self.worker
        return False

    # -- balancing ----------------------------------------------------------------------------

    async def _ticking(self) -> None:
        while not self._closed:
            self._wake.clear()
            if self._connected():
                if time.monotonic() - self._heard > self.ttl:
                    # This worker's own renewals (every ttl / 3) should come back through the
                    # watch: silence this long means its consumer is gone. Start it again.
                    log.warning("fleet %s: the bucket's watch went silent; watching again", self)
                    self._heard = time.monotonic()
                    self._rewatch.set()
                try:
                    await self._balance()
                    await self._publish()
                except Exception:
                    log.exception("fleet %s: balancing failed", self)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)

    async def _balance(self) -> None:
        now = time.monotonic()
        busy = [h.name for h in self._held.values() if h.releasing]
        decision = plan(self.worker, self._streams, self._held, self._seen, now, busy=busy)
        jobs: list[Awaitable[None]] = [self._release(name) for name in decision.release]
        jobs += [self._acquire(a) for a in decision.acquire]
        if decision.live[0] == self.worker:
            jobs += self._forget_departed(now)
        await asyncio.gather(*jobs)

    def _forget_departed(self, now: float) -> list[Coroutine[Any, Any, None]]:
        # The first worker deletes the keys of workers gone silent, so that the bucket (and
        # every status page) does not list them for ever; revision-checked, so a worker that
        # spoke again in the meantime keeps its key.
        gone = []
        for worker in self._seen.names(WORKER):
            name = key(WORKER, worker)
            if worker != self.worker and self._seen.expired(name, now):
                gone.append(self._delete(name, self._seen.last_revision(name)))
        return gone

    def _value(self, **fields: object) -> bytes:
        self._serial += 1
        return encode_json({**fields, "at": round(time.time(), 3), "n": self._serial})

    async def _acquire(self, want: Acquire) -> None:
        name = want.stream
        value = self._value(worker=self.worker)
        sent = time.monotonic()
        try:
            revision = await self._op(self._kv.update(key(LEASE, name), value, last=want.last))
        except _Failure as exc:
            if _wrong_last(exc):
                await self._refresh(key(LEASE, name))
            else:
                log.debug("fleet %s: could not take %s: %s", self, name, exc)
            return  # another worker took it first, or NATS did not answer: next tick
        seen = self._seen.get(key(REJECTED, name))
        held = _Held(name, revision, sent, rejected=seen.value if seen else None)
        self._held[name] = held
        self._fence_changed.set()
        held.start = asyncio.create_task(self._start_stream(held), name=f"fleet-start-{name}")
        log.info("fleet %s: worker %s took stream %s", self, self.worker, name)

    async def _refresh(self, name: str) -> None:
        """Read a key this worker's view had wrong (a take refused), so that a watch running
        behind does not make it try the same stale revision every tick. Recorded as first seen
        now, which can only make the key look younger: safe."""
        try:
            entry = await self._op(self._kv.get(name))
        except nats.js.errors.KeyNotFoundError:
            return  # deleted: the watch brings the deletion's revision
        except _Failure:
            return
        self._seen.saw(name, entry.revision, bytes(entry.value or b""), time.monotonic())

    async def _start_stream(self, held: _Held) -> None:
        assert self._host is not None
        mark_key = key(MARK, held.name)
        try:
            entry = await self._op(self._kv.get(mark_key))
            held.mark = decode_mark(entry.value)
        except nats.js.errors.KeyNotFoundError:
            held.mark = None
        except _Failure:
            # The bucket as last seen: the mark is written before a lease is given up.
            seen = self._seen.get(mark_key)
            held.mark = decode_mark(seen.value if seen else None)
        try:
            await self._host.start_stream(held.name, after=held.mark)
        except Exception:
            log.exception("fleet %s: stream %s did not start", self, held.name)
            return
        held.started = True
        # Where this holder's recovery starts, at once: a holder dying in its first second
        # must not leave the next one without a mark (it would start from the newest entry).
        await self._write_mark(held, force=True)

    async def _release(self, name: str) -> None:
        held = self._held.get(name)
        if held is None or held.releasing:
            return
        held.releasing = True
        await self._stop(held)
        async with held.lock:
            if self._held.get(name) is held:
                await self._release_writes(held)
                self._held.pop(name, None)
        log.info("fleet %s: worker %s gave up stream %s", self, self.worker, name)

    async def _release_writes(self, held: _Held) -> None:
        """The final watermark, then the lease deleted (in this order: whoever sees the lease
        free has seen the mark), and the rejected report."""
        await self._write_mark(held, force=True)
        await self._delete(key(LEASE, held.name), held.revision)
        if held.rejected is not None:
            await self._delete(key(REJECTED, held.name), 0)

    async def _delete(self, name: str, revision: int) -> None:
        try:
            await self._op(self._kv.delete(name, last=revision))
        except _Failure as exc:
            log.debug("fleet %s: could not delete %s: %s", self, name, exc)

    async def _stop(self, held: _Held) -> None:
        """Close the stream's connection (cancelling a start under way); once."""
        if held.stopped:
            return
        held.stopped = True
        self._fence_changed.set()
        if held.start is not None and not held.start.done():
            await self._cancel([held.start])
        assert self._host is not None
        try:
            await self._host.stop_stream(held.name)
        except Exception:
            log.exception("fleet %s: stream %s did not stop cleanly", self, held.name)

    async def _drop(self, held: _Held, why: str) -> None:
        """Stop a stream this worker no longer holds, now, and forget it."""
        if self._held.get(held.name) is held:
            del self._held[held.name]
        log.warning("fleet %s: worker %s stopped stream %s: %s", self, self.worker, held.name, why)
        await self._stop(held)

    # -- watermarks and rejected tokens -------------------------------------------------------

    async def _publish(self) -> None:
        jobs = []
        for held in list(self._held.values()):
            if held.stopped or held.releasing or not held.started:
                continue
            jobs.append(self._write_mark(held))
            jobs.append(self._write_rejected(held))
        await asyncio.gather(*jobs)

    async def _write_mark(self, held: _Held, *, force: bool = False) -> None:
        assert self._host is not None
        mark = self._host.watermark(held.name)
        now = time.monotonic()
        if mark is None or (held.mark is not None and mark <= held.mark):
            return  # marks only grow: an older holder may have written a higher one
        if not force and now - held.mark_at < _MARK_INTERVAL:
            return
        held.mark_at = now
        try:
            await self._op(self._kv.put(key(MARK, held.name), str(mark).encode()))
        except _Failure as exc:
            log.debug("fleet %s: could not write the mark of %s: %s", self, held.name, exc)
            return
        held.mark = mark

    async def _write_rejected(self, held: _Held) -> None:
        try:
            await self._reconcile_rejected(held)
        except _Failure as exc:
            log.debug("fleet %s: could not report the token of %s: %s", self, held.name, exc)

    async def _reconcile_rejected(self, held: _Held) -> None:
        assert self._host is not None
        reason = self._host.rejected(held.name)
        name = key(REJECTED, held.name)
        if reason is None:
            if held.rejected is not None:
                await self._op(self._kv.delete(name))
                held.rejected = None
            return
        if decode_json(held.rejected) == {"worker": self.worker, "reason": reason}:
            return
        value = encode_json({"worker": self.worker, "reason": reason})
        await self._op(self._kv.put(name, value))
        held.rejected = value

    # -- renewal and fencing ------------------------------------------------------------------

    async def _renewing(self) -> None:
        while not self._closed:
            began = time.monotonic()
            if self._connected():
                # The worker key first: the others then count this worker gone no later than
                # its leases expire, and take them at once.
                await self._renew_worker()
                await asyncio.gather(*(self._renew(h) for h in list(self._held.values())))
            await asyncio.sleep(max(0.0, began + self.renew_interval - time.monotonic()))

    async def _renew_worker(self) -> None:
        name = key(WORKER, self.worker)
        value = self._value()
        self._worker_sent = [*self._worker_sent[-(_ATTEMPTS_KEPT - 1) :], value]
        try:
            self._worker_rev = await self._op(self._kv.update(name, value, last=self._worker_rev))
        except _Failure as exc:
            if _wrong_last(exc):
                await self._reclaim_worker_key(name)
            return
        self._worker_sent = []
        self._duplicate_id = False

    async def _reclaim_worker_key(self, name: str) -> None:
        """The worker key moved on without this worker: a renewal of its own that timed out
        here but was written (take its revision), the first worker deleted it while this one
        was silent, or another process uses the same id (reported). Claim it again."""
        try:
            entry = await self._op(self._kv.get(name))
        except nats.js.errors.KeyNotFoundError:
            entry = None
        except _Failure:
            return
        if entry is not None and entry.value in self._worker_sent:
            self._worker_rev = entry.revision
            return
        if entry is not None and not self._duplicate_id:
            log.error("fleet %s: another process also uses worker id %s", self, self.worker)
        self._duplicate_id = entry is not None
        with contextlib.suppress(*_Failure):
            self._worker_rev = await self._op(self._kv.put(name, self._value()))

    async def _renew(self, held: _Held) -> None:
        async with held.lock:
            if held.stopped or self._held.get(held.name) is not held:
                return
            value = self._value(worker=self.worker)
            sent = time.monotonic()
            held.attempts = [*held.attempts[-(_ATTEMPTS_KEPT - 1) :], (value, sent)]
            try:
                revision = await self._op(
                    self._kv.update(key(LEASE, held.name), value, last=held.revision)
                )
            except _Failure as exc:
                if _wrong_last(exc) and not await self._adopt(held):
                    await self._drop(held, "its lease was taken by another worker")
                return
            held.revision, held.renewed, held.attempts = revision, sent, []
            self._fence_changed.set()

    async def _adopt(self, held: _Held) -> bool:
        """After a refused renewal: whether the lease's value is one this worker sent (a
        renewal that timed out here but was written), and if so take its revision."""
        try:
            entry = await self._op(self._kv.get(key(LEASE, held.name)))
        except _Failure:
            return False
        for value, sent in held.attempts:
            if entry.value == value:
                held.revision, held.renewed, held.attempts = entry.revision, sent, []
                self._fence_changed.set()
                return True
        return False

    async def _fencing(self) -> None:
        while not self._closed:
            self._fence_changed.clear()
            now = time.monotonic()
            active = [h for h in self._held.values() if not h.stopped]
            due = [h for h in active if fence_deadline(h.renewed, self.ttl, self.margin) <= now]
            if due:
                why = f"no lease renewal for {self.ttl - self.margin:g} s"
                await asyncio.gather(*(self._drop(h, why) for h in due))
                continue
            deadlines = [fence_deadline(h.renewed, self.ttl, self.margin) for h in active]
            wait = min(deadlines) - now if deadlines else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._fence_changed.wait(), wait)
