"""The :class:`Bridge`: the listener, the pipeline, the metrics, wired, started and stopped.

::

    async with Bridge(token, sinks=["file:events.jsonl", "redis://127.0.0.1:6379/0"]):
        ...

    await Bridge.from_options(token, to=["nats://127.0.0.1:4222"]).run()

Start-up errors (raised by :meth:`Bridge.start` and :meth:`Bridge.run`, after releasing
whatever was opened): :class:`~neuroio.exceptions.ConfigurationError` (a bad option or URI, the
metrics port in use), :class:`~neuroio.exceptions.MissingExtraError` (a sink's or the metrics'
extra is not installed; also raised by the constructor), :class:`~neuroio.exceptions.SpoolError`
(the spool is corrupt, unwritable or locked by another bridge) and, with
``require_sinks=True`` only, :class:`~neuroio.exceptions.SinkError` (a sink is unreachable).
By default a sink unreachable at start-up does not stop the bridge: it receives and spools,
reports the sink on ``/healthz``, and starts the sink with backoff until it answers
(:mod:`neuroio.bridge._starting`); a sink that answers but refuses the configuration (its
credentials, say) raises :class:`~neuroio.exceptions.ConfigurationError`. Once running,
:meth:`Bridge.run` raises :class:`~neuroio.exceptions.AuthenticationError` if the token is
rejected and :class:`~neuroio.exceptions.ConnectionFailedError` if ``max_retries`` is set and
exhausted.

Stopping, as uvicorn's ``Server`` does it: :meth:`Bridge.request_stop` (what a SIGINT/SIGTERM
handler calls) sets :attr:`Bridge.should_exit`; :meth:`Bridge.run` then stops reading, commits
what it received and lets each sink finish the batch it is sending, within
``shutdown_timeout``. A second request sets :attr:`Bridge.force_exit`: the sends in flight are
abandoned at once (their events stay in the spool for the next start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import ssl as _ssl
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import msgspec

from .. import _redact, _streamlog
from .._config import DEFAULT_EVENTS_URL, ConnectionOptions, RecoveryOptions, default_api_url
from .._routing.rules import RouteRules
from .._token import Tokens, TokenSource, token_command, token_file
from .._words import connection_state, plural
from ..exceptions import (
    BackfillError,
    ConfigurationError,
    ConnectionFailedError,
    MissingExtraError,
    NeuroIOError,
    PermanentSinkError,
    SinkError,
)
from ..listener import EventListener
from ..sinks import Sink, from_uri
from ..sinks.base import ConsumerGoneError
from ..stats import State
from ._snapshot import BridgeSnapshot, SinkSnapshot, StreamSnapshot, refused_problem
from ._starting import LateStart, close_quietly
from ._streams import ConnectGate, DamagedShare, Stream, StreamSpool
from .config import BridgeConfig, RouteConfig, StreamConfig
from .pipeline import Pipeline
from .spool import Spool

if TYPE_CHECKING:
    from ._fleet import Fleet
    from .metrics import BridgeMetrics

__all__ = ["FORCE_GRACE", "Bridge"]

log = logging.getLogger("neuroio.bridge")

FORCE_GRACE = 1.0
"""After a forced stop, seconds the bridge may still take to close its sinks and spool."""


class Bridge:
    """Receives events from the platform and delivers each to every route that takes it,
    durably.

    A route is a sink with an optional filter and cooldown in front (``config.routes``); each
    sink URI and :class:`~neuroio.sinks.Sink` object given is a route that takes every event,
    named as its sink. The route's name is its sink's name, its cursor in the spool, and its
    label in metrics and health.

    Args:
        api_token: the platform API token, or a provider of it as for
            :class:`~neuroio.EventListener` (e.g. :func:`~neuroio.token_file`), shared by the
            listener and gap recovery; no token is ever logged or shown.
        sinks: sink URIs and/or :class:`~neuroio.sinks.Sink` objects.
        spool: the spool file (or an open :class:`~neuroio.bridge.spool.Spool`, which the bridge
            then does not close); ``None`` for the default path.
        ssl: TLS context for the events socket.
        options: the other options of :class:`BridgeConfig`, by their flat (CLI) names.

    Raises:
        ConfigurationError: an option, a sink URI or a route's filter or cooldown is invalid,
            or two routes (sinks) share a name.
        MissingExtraError: a sink's extra, or ``metrics`` when ``metrics_port`` is set, is
            not installed.
    """

    def __init__(
        self,
        api_token: TokenSource | None,
        sinks: Sequence[str | Sink] = (),
        *,
        spool: str | os.PathLike[str] | Spool | None = None,
        ssl: _ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        if isinstance(sinks, (str, Sink)):
            sinks = [sinks]
        uris = tuple(s for s in sinks if isinstance(s, str))
        path = None if spool is None or isinstance(spool, Spool) else os.fspath(spool)
        try:
            config = BridgeConfig.from_flat(to=uris, spool=path, **options)
        except TypeError as exc:
            raise ConfigurationError(f"invalid bridge option: {exc}") from None
        objects = [s for s in sinks if isinstance(s, Sink)]
        self._setup(api_token, config, objects, spool if isinstance(spool, Spool) else None, ssl)

    def _setup(
        self,
        api_token: TokenSource | None,
        config: BridgeConfig,
        objects: Sequence[Sink],
        spool: Spool | None,
        ssl: _ssl.SSLContext | None,
    ) -> None:
        if api_token is None and not config.streams:
            raise ConfigurationError("the bridge needs a token, or [[stream]] tables with theirs")
        # A bridge of named streams has no token of its own: each stream brings its own.
        tokens = Tokens(api_token) if api_token is not None else None
        self.config = config
        if not config.to and not objects and not config.routes:
            raise ConfigurationError("the bridge needs at least one sink (--to URI) or route")
        self._tokens = tokens
        if config.webhook_secret:
            _redact.guard(config.webhook_secret)
        self._ssl = ssl
        self.sinks: list[Sink] = [
            from_uri(uri, webhook_secret=config.webhook_secret) for uri in config.to
        ]
        self.sinks += objects
        self.rules: dict[str, RouteRules] = {}
        """The filter and cooldown of each route that has them, by route name."""
        self.sinks += self._routes(config.routes, config.webhook_secret)
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"two sinks have the same name {sorted({n for n in names if names.count(n) > 1})};"
                " add ?name=... to tell them apart"
            )
        self._metrics_cls: type[BridgeMetrics] | None = None
        if config.metrics_port is not None:
            from .metrics import BridgeMetrics  # raises MissingExtraError without the extra

            self._metrics_cls = BridgeMetrics
        self._given_spool = spool
        self.spool: Spool | None = spool
        self.pipeline: Pipeline | None = None
        self.metrics: BridgeMetrics | None = None
        self.streams: dict[str, Stream] = {}
        """The named streams (``config.streams``), by name, once started."""
        self._single: Stream | None = None
        self._gate: ConnectGate | None = None
        self.fleet: Fleet | None = None
        """The fleet this bridge is a worker of (``config.fleet``), once started."""
        self._started_sinks: list[Sink] = []
        self._late: dict[str, LateStart] = {}
        self._late_tasks: list[asyncio.Task[None]] = []
        self._stop_late = asyncio.Event()
        self._closing = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._state: Literal["new", "starting", "running", "closed"] = "new"
        self._http: aiohttp.ClientSession | None = None
        self.should_exit = False
        """A stop was requested: :meth:`run` stops gracefully."""
        self.force_exit = False
        """A second stop was requested: the sends in flight are abandoned."""

    def _routes(self, routes: Sequence[RouteConfig], secret: str | None) -> list[Sink]:
        """A sink per configured route, named as the route, and the routes' rules."""
        sinks: list[Sink] = []
        seen: set[str] = set()
        for route in routes:
            name = route.name
            if not isinstance(name, str) or not name.strip():
                raise ConfigurationError(f"route name must be a non-empty string, got {name!r}")
            if name in seen:
                raise ConfigurationError(f"two routes are named {name!r}; route names must differ")
            seen.add(name)
            rules = RouteRules.from_config(route)
            try:
                sink = from_uri(route.to, webhook_secret=secret)
            except MissingExtraError:
                raise
            except ConfigurationError as exc:
                raise ConfigurationError(f"route {name}: to: {exc}") from None
            sink.name = name
            if rules is not None:
                self.rules[name] = rules
            sinks.append(sink)
        return sinks

    @classmethod
    def from_config(
        cls,
        api_token: TokenSource | None,
        config: BridgeConfig,
        *,
        sinks: Sequence[Sink] = (),
        spool: Spool | None = None,
        ssl: _ssl.SSLContext | None = None,
    ) -> Bridge:
        """A bridge from a :class:`BridgeConfig` (``sinks``: Sink objects added to
        ``config.to``; ``spool``: an open spool to use instead of ``config.spool``)."""
        bridge = cls.__new__(cls)
        bridge._setup(api_token, config, sinks, spool, ssl)
        return bridge

    @classmethod
    def from_options(cls, api_token: TokenSource | None, **options: Any) -> Bridge:
        """A bridge from CLI-style options (``to=[...]``, ``spool=...``, ``ssl=...``)."""
        ssl = options.pop("ssl", None)
        try:
            config = BridgeConfig.from_flat(**options)
        except TypeError as exc:
            raise ConfigurationError(f"invalid bridge option: {exc}") from None
        return cls.from_config(api_token, config, ssl=ssl)

    def __repr__(self) -> str:
        return f"<Bridge {self._state} routes={[s.name for s in self.sinks]}>"

    @property
    def listener(self) -> EventListener | None:
        """The single stream's listener (``None`` for a bridge of named streams)."""
        return self._single.listener if self._single is not None else None

    def _all_streams(self) -> list[Stream]:
        return [self._single] if self._single is not None else list(self.streams.values())

    @property
    def recovered(self) -> int:
        """Entries recovered from the REST API and handed to the spool."""
        return sum(s.recovery.recovered for s in self._all_streams() if s.recovery is not None)

    @property
    def backfill_error(self) -> BackfillError | None:
        """The last gap recovery the API refused (it is retried at the next start)."""
        for stream in self._all_streams():
            if stream.recovery is not None and stream.recovery.backfill_error is not None:
                return stream.recovery.backfill_error
        return None

    # -- streams (what a fleet drives) -------------------------------------------------------

    @property
    def stream_names(self) -> Sequence[str]:
        """Every named stream of the config, in its order."""
        return [s.name for s in self.config.streams]

    async def start_stream(self, name: str, after: int | None = None) -> None:
        """Start receiving the named stream (gap recovery after id ``after`` when given).

        Raises:
            KeyError: no stream has that name.
        """
        await self.streams[name].start(after)

    async def stop_stream(self, name: str) -> None:
        """Close the named stream's connection now; what it spooled is still delivered.

        Raises:
            KeyError: no stream has that name.
        """
        await self.streams[name].stop()

    def watermark(self, name: str) -> int | None:
        """The highest id up to which every event of the named stream was confirmed by
        every route (``None``: not known)."""
        return self.streams[name].watermark()

    def rejected(self, name: str) -> str | None:
        """Why the named stream's token was rejected, or ``None``."""
        return self.streams[name].rejected

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
                Spool,
                path,
                max_bytes=config.spool_max_bytes,
                synchronous=config.spool_sync,
                streams=bool(config.streams),
            )
        # As the listener resolves them: a loopback events URL has its REST API beside it.
        events_url = (
            config.connection.url or os.environ.get("NEUROIO_EVENTS_URL") or DEFAULT_EVENTS_URL
        )
        api_url = (
            config.recovery.api_url
            or os.environ.get("NEUROIO_API_URL")
            or default_api_url(events_url)
        )
        for sink in self.sinks:
            use_platform = getattr(sink, "use_platform", None)
            if callable(use_platform):  # a sink fetching from the platform (images:)
                if self._tokens is None:
                    raise ConfigurationError(
                        f"sink {sink.name}: face images are fetched with the bridge's token; "
                        "a bridge of [[stream]]s has none (run one bridge per space for images)"
                    )
                use_platform(api_url, self._tokens.get)
        delivered_to = [await self._start_sink(sink) for sink in self.sinks]
        self.pipeline = Pipeline(
            self.spool,
            delivered_to,
            rules=self.rules,
            retry_delay=config.sink_retry_delay,
            max_retry_delay=config.sink_max_retry_delay,
        )
        await self.pipeline.start()
        self.pipeline.on_damaged = self._damaged_found
        for name, late in self._late.items():
            status = self.pipeline.status[name]
            late.failed(status, late.first_error)  # failing (and logged) from now on
            self._late_tasks.append(
                asyncio.create_task(late.run(status), name=f"neuroio-start {name}")
            )
        if self._metrics_cls is not None:
            self.metrics = self._metrics_cls(self.snapshot, self.health)
            from ._snapshot import status_page  # beside the metrics, which it extends

            self.metrics.status = status_page(self)
            self.pipeline.on_event = self.metrics.status.ring.add
            await self.metrics.start(config.metrics_host, config.metrics_port)
            log.info(
                "metrics on %s, health on /healthz, status page on %s",
                self.metrics.url("/metrics"),
                self.metrics.url("/"),
            )
        if config.streams:
            await self._start_streams()
        else:
            await self._start_single()
        log.info(
            "bridge running: spool %s (%s held), routes %s",
            self.spool.path,
            plural(self.spool.depth, "event"),
            ", ".join(s.name for s in self.sinks),
        )

    async def _start_sink(self, sink: Sink) -> Sink:
        """Start ``sink``; what the pipeline delivers to: the sink, or a :class:`LateStart`
        for it when it is unreachable (and ``require_sinks`` is off)."""
        self._started_sinks.append(sink)
        try:
            await sink.start()
        except PermanentSinkError:
            raise  # refused for good: retrying will not help
        except SinkError as exc:
            if self.config.require_sinks:
                raise
            self._started_sinks.remove(sink)
            await close_quietly(sink)  # nothing half-open is kept while it is retried
            late = LateStart(
                sink,
                exc,
                opened=self._started_sinks,
                stopping=self._stop_late,
                retry_delay=self.config.sink_retry_delay,
                max_retry_delay=self.config.sink_max_retry_delay,
            )
            self._late[sink.name] = late
            return late
        return sink

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _start_single(self) -> None:
        assert self.pipeline is not None and self.spool is not None and self._tokens is not None
        config = self.config
        options = config.recovery
        recovering = options.backfill or options.since is not None
        stream = Stream(
            None,
            0,
            self._tokens,
            connection=config.connection,
            recovery=options,
            ssl=self._ssl,
            pipeline=self.pipeline,
            spool=self.spool,
            session=self._session() if recovering else None,
            gate=None,
            retry_delay=config.sink_retry_delay,
        )
        self._single = stream
        await stream.start()

    async def _start_streams(self) -> None:
        """Set up every named stream; start them all, or join the fleet that shares them."""
        assert self.pipeline is not None and self.spool is not None
        config = self.config
        _streamlog.install()
        self._gate = ConnectGate(config.connect_rate)
        damaged = DamagedShare()
        session = self._session()
        for stream_config in config.streams:
            number = await self.pipeline.run_spool(self.spool.stream_number, stream_config.name)
            connection, recovery = self._stream_options(stream_config)
            self.streams[stream_config.name] = Stream(
                stream_config.name,
                number,
                _stream_tokens(stream_config),
                connection=connection,
                recovery=recovery,
                ssl=self._ssl,
                pipeline=self.pipeline,
                spool=StreamSpool(self.spool, number, damaged),
                session=session,
                gate=self._gate,
                retry_delay=config.sink_retry_delay,
            )
        if config.fleet is not None:
            from ._fleet import Fleet

            self.fleet = Fleet.from_uri(config.fleet)
            try:
                await self.fleet.start(self)
            except ConnectionFailedError as exc:
                # Not a platform connection: a worker that cannot reach the fleet holds
                # nothing, so it stops (status 1) and its supervisor starts it again.
                raise NeuroIOError(str(exc)) from None
            return
        for stream in self.streams.values():
            await stream.start()

    def _damaged_found(self) -> None:
        """A read found a damaged batch: each running stream fetches its own ids again."""
        for stream in self._all_streams():
            if stream.running and stream.recovery is not None:
                stream.recovery.damaged_found()

    def _stream_options(self, stream: StreamConfig) -> tuple[ConnectionOptions, RecoveryOptions]:
        """The bridge's connection and recovery options with the stream's own URLs; what is
        still unset the stream's listener resolves (environment, then default) as any does."""
        connection, recovery = self.config.connection, self.config.recovery
        if stream.url is not None:
            connection = msgspec.structs.replace(connection, url=stream.url)
        if stream.api_url is not None:
            recovery = msgspec.structs.replace(recovery, api_url=stream.api_url)
        return connection, recovery

    async def run(self) -> None:
        """Start (if needed) and run until :meth:`request_stop`, :meth:`close` or
        cancellation, then stop within ``shutdown_timeout`` (see the module documentation).

        Raises:
            AuthenticationError: the token was rejected.
            ConnectionFailedError: ``max_retries`` connection attempts failed.
            and the start-up errors of :meth:`start`.
        """
        try:
            if await self._start_unless_stopped():
                await self._watch()
        finally:
            await self._stop_within_budget()

    async def _start_unless_stopped(self) -> bool:
        """Start; False if a stop was requested first (start-up is then undone)."""
        starting = asyncio.create_task(self.start(), name="neuroio-bridge-start")
        stop = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not starting.done():
                # Stopped while starting (e.g. a sink slow to answer): start() releases what
                # it opened when cancelled.
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        if starting.cancelled():
            return False
        starting.result()  # a start-up error ends here, before anything was received
        return not self.should_exit

    async def _watch(self) -> None:
        assert self.pipeline is not None
        closing = asyncio.create_task(self._closing.wait())
        watched: set[asyncio.Future[Any]] = {closing, *self.pipeline.tasks}
        if self._single is not None and self._single.task is not None:
            watched.add(self._single.task)
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is closing or task.cancelled() else task.exception()
                if isinstance(error, ConsumerGoneError):
                    log.info("%s: stopping", error)  # `| head`: a quiet end, as on SIGTERM
                    self.should_exit = True
                    return
                if error is not None:
                    raise error
            if closing not in done:
                for task in done:
                    if task is not closing:
                        raise NeuroIOError(f"bridge task {task.get_name()} ended unexpectedly")
        finally:
            closing.cancel()

    async def _stop_within_budget(self) -> None:
        closer = asyncio.create_task(self.close(), name="neuroio-bridge-close")
        self._closer = closer
        if self.force_exit:
            asyncio.get_running_loop().call_later(FORCE_GRACE, closer.cancel)
        await asyncio.wait({closer}, timeout=self.config.shutdown_timeout)
        if not closer.done():
            log.warning(
                "the bridge did not stop within %.0f s; what it had not delivered stays "
                "in the spool for the next start",
                self.config.shutdown_timeout,
            )
            closer.cancel()
        await asyncio.gather(closer, return_exceptions=True)

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop (e.g. from a signal handler; call it on the loop).

        The first call stops gracefully: reading ends, what was received is committed, and
        each sink may finish the batch it is sending. A second call abandons the sends in
        flight (their events stay in the spool) and leaves the bridge :data:`FORCE_GRACE`
        seconds to close its sinks and spool.
        """
        if not self.should_exit:
            self.should_exit = True
            self._closing.set()
            return
        if self.force_exit:
            return
        self.force_exit = True
        # The writer is spared: it commits what was received.
        if self.pipeline is not None:
            self.pipeline.abandon_sends()
        if self._closer is not None and not self._closer.done():
            asyncio.get_running_loop().call_later(FORCE_GRACE, self._closer.cancel)

    async def reopen(self) -> None:
        """Have every started sink reopen its files (:meth:`Sink.reopen`; what a SIGHUP
        handler calls, for logrotate). A sink that fails is logged; delivery goes on."""
        for sink in list(self._started_sinks):
            try:
                await sink.reopen()
            except Exception as exc:
                log.error("sink %s: reopen failed: %s", sink.name, exc)

    async def close(self) -> None:
        """Stop the listener, commit what was received, stop the sinks. Idempotent."""
        if self._state == "closed":
            return
        self._closing.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._state = "closed"
        if self.fleet is not None:
            # Before the streams stop: the fleet releases what this worker holds at once,
            # with the last watermarks, so the others take over without waiting for a lease
            # to expire.
            try:
                await self.fleet.aclose()
            except Exception:
                log.exception("the fleet did not close cleanly")
        await asyncio.gather(*(stream.stop() for stream in self._all_streams()))
        if self._http is not None:
            await self._http.close()
        for task in self._late_tasks:
            task.cancel()
        await asyncio.gather(*self._late_tasks, return_exceptions=True)
        self._late_tasks.clear()
        self._stop_late.set()  # a send waiting for its sink to start gives up
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
        if self._tokens is not None:
            self._tokens.release()
        for stream in self.streams.values():
            stream.tokens.release()

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

    # -- health and metrics ----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the bridge is healthy, and why: the connection is live, spool commits
        work, the socket is not paused, every sink started (``sink <route> not started for N
        s`` while one unreachable at start-up has not answered yet), no route's sink has been
        failing for longer than ``health_max_sink_failure`` (a problem names the route:
        ``sink <route> failing for N s``, the words kept from before routes), nor refused its
        last ``health_max_refused`` events (``sink <route> refused the last N events (dead
        letters): <reason>``). A bridge of named streams: every stream it runs is live, none
        has its token rejected (``stream <name>: token rejected: ...``) or stopped, and the
        fleet it is a worker of reports no problem (a stream rejected on another worker
        included)."""
        problems: list[str] = []
        streams: dict[str, Any] | None = None
        if self.config.streams:
            state, streams = self._streams_health(problems)
        else:
            state = self.listener.stats.state.value if self.listener is not None else "idle"
            if state != "live":
                problems.append(f"connection is {connection_state(state)}")
        sinks: dict[str, Any] = {}
        now = time.monotonic()
        pipeline = self.pipeline
        if pipeline is not None:
            for name, status in pipeline.status.items():
                failing = status.failing_for(now)
                sinks[name] = {
                    "lag": pipeline.lag(name),
                    "delivered": status.delivered,
                    "filtered": status.filtered,
                    "suppressed": status.suppressed,
                    "failing_for": round(failing, 3),
                    "last_error": status.last_error if failing else None,
                    "started": not self._not_started(name),
                    "refused_in_row": status.refused_in_row,
                }
                if self._not_started(name):
                    # Never reached since start-up: nothing is delivered at all, so no grace.
                    problems.append(f"sink {name} not started for {failing:.0f} s")
                elif failing > self.config.health_max_sink_failure:
                    problems.append(f"sink {name} failing for {failing:.0f} s")
                refused = refused_problem(name, status, self.config.health_max_refused)
                if refused is not None:
                    problems.append(refused)
            problems += _spool_problems(pipeline, now)
        ok = not problems
        report: dict[str, Any] = {
            "status": "ok" if ok else "failing",
            "problems": problems,
            "connection": state,
            "sinks": sinks,
        }
        if streams is not None:
            report["streams"] = streams
            if self.fleet is not None:
                report["fleet"] = self.fleet.status()
        return ok, report

    def _streams_health(self, problems: list[str]) -> tuple[str, dict[str, Any]]:
        """The named streams' part of :meth:`health`: the overall connection state, each
        stream's figures, and their problems added to ``problems``."""
        report: dict[str, Any] = {}
        down: list[str] = []
        running = 0
        for name, stream in self.streams.items():
            report[name] = stream.describe()
            if not stream.running:
                continue
            running += 1
            state = stream.state
            if stream.rejected is not None and state != "live":
                if self.fleet is None:  # else the fleet's problems name it, on every worker
                    problems.append(f"stream {name}: token rejected: {stream.rejected}")
            elif stream.failed is not None:
                problems.append(f"stream {name} stopped: {stream.failed}")
            elif state != "live":
                down.append(f"{name} ({connection_state(state)})")
        if down:
            shown = ", ".join(down[:5]) + (f" and {len(down) - 5} more" if len(down) > 5 else "")
            problems.append(f"{len(down)} of {plural(running, 'stream')} not live: {shown}")
        if self.fleet is not None:
            problems += self.fleet.problems()
        return _overall((s.state, s.running) for s in self.streams.values()), report

    def _not_started(self, name: str) -> bool:
        late = self._late.get(name)
        return late is not None and not late.started.is_set()

    async def retry_dead_letters(self, sink: str | None) -> int:
        """Deliver the dead letters of ``sink`` (``None``: every sink) again, each to its own
        sink, once (the status page's retry, ``neuroio-events deadletters retry`` from
        outside); how many were selected (0 before start).

        Raises:
            KeyError: no sink has that name.
            SpoolError: the requests could not be written.
        """
        if self.pipeline is None:
            return 0
        return await self.pipeline.retry_dead_letters(sink)

    def snapshot(self) -> BridgeSnapshot:
        """Every figure the metrics report, copied now (call it on the event loop)."""
        pipeline, spool, listener = self.pipeline, self.spool, self.listener
        stats = listener.stats if listener is not None else None
        now = time.monotonic()
        streams = tuple(stream.snapshot() for stream in self.streams.values())
        sinks: list[SinkSnapshot] = []
        if pipeline is not None:
            for name, status in pipeline.status.items():
                lag = pipeline.sink_lag(name)
                sinks.append(
                    SinkSnapshot(
                        name=name,
                        delivered=status.delivered,
                        filtered=status.filtered,
                        suppressed=status.suppressed,
                        failures=status.failures,
                        dead_lettered=status.dead_lettered,
                        lag=lag.events,
                        oldest_received_at=lag.oldest_received_at,
                        oldest_seq=lag.oldest_seq,
                        failing_for=status.failing_for(now),
                        latency_counts=tuple(status.latency_counts),
                        latency_sum=status.latency_sum,
                    )
                )
        return BridgeSnapshot(
            taken_at=time.time(),
            received=pipeline.received if pipeline else 0,
            duplicates=pipeline.duplicates if pipeline else 0,
            malformed=pipeline.malformed if pipeline else 0,
            frames=stats.messages if stats else sum(s.frames for s in streams),
            sinks=tuple(sinks),
            spool=spool,
            spool_depth=spool.depth if spool else 0,
            spool_bytes=spool.size_bytes if spool else 0,
            spool_max_bytes=(spool.max_bytes or 0) if spool else 0,
            dead_letters=spool.dead_letter_count if spool else 0,
            paused=pipeline is not None and pipeline.paused_since is not None,
            state=stats.state.value if stats else _overall((s.state, s.running) for s in streams),
            reconnects=tuple(sorted(stats.reconnects.items())) if stats else _reconnects(streams),
            rtt=stats.last_rtt if stats else None,
            last_event_at=stats.last_event_at if stats else _last_event(streams),
            healthy=self.health()[0],
            streams=streams,
            connect_attempts=self._gate.attempts if self._gate is not None else 0,
        )


def _overall(streams: Iterable[tuple[str, bool]]) -> str:
    """The connection state of a bridge of named streams, from each stream's state and
    whether it runs, as one of the listener's: ``live`` when every running stream is, else
    the state of the first that is not (``backoff`` for a rejected or stopped one)."""
    running = False
    for state, runs in streams:
        if not runs:
            continue
        running = True
        if state != State.LIVE.value:
            return state if state in _LISTENER_STATES else State.BACKOFF.value
    return State.LIVE.value if running else State.IDLE.value


_LISTENER_STATES = frozenset(state.value for state in State)


def _reconnects(streams: Sequence[StreamSnapshot]) -> tuple[tuple[str, int], ...]:
    total: dict[str, int] = {}
    for stream in streams:
        for reason, count in stream.reconnects:
            total[reason] = total.get(reason, 0) + count
    return tuple(sorted(total.items()))


def _last_event(streams: Sequence[StreamSnapshot]) -> float | None:
    times = [s.last_event_at for s in streams if s.last_event_at is not None]
    return max(times) if times else None


def _stream_tokens(stream: StreamConfig) -> Tokens:
    if stream.token_file is not None:
        return Tokens(token_file(stream.token_file))
    assert stream.token_command is not None
    try:
        argv = shlex.split(stream.token_command)
    except ValueError as exc:
        raise ConfigurationError(f"stream {stream.name}: token_command: {exc}") from None
    return Tokens(token_command(argv))


def _spool_problems(pipeline: Pipeline, now: float) -> list[str]:
    problems = []
    if pipeline.commit_failing_since is not None:
        failing = now - pipeline.commit_failing_since
        problems.append(f"spool commit failing for {failing:.0f} s: {pipeline.commit_error}")
        if pipeline.paused_since is not None:
            problems.append(f"socket paused for {now - pipeline.paused_since:.0f} s")
    elif pipeline.paused_since is not None:
        problems.append(f"spool full, socket paused for {now - pipeline.paused_since:.0f} s")
    return problems
