"""The asyncio listener: one authenticated connection at a time, kept for as long as it runs.

:class:`EventListener` is the public face: its options, the reconnect cycle (backoff, the
verdicts that end it: a refused token, ``max_retries``), the connection hooks, the typed
iterator, and gap recovery from the REST API. Each connection is a
:class:`~neuroio._connection.Connection` (connect, AUTH, reader, keepalive); frames reach the
handler through one :class:`~neuroio._connection.Handoff`, so the handler, recovered frames
and the hooks never run at once. The rules (AUTH verdicts, heartbeat, backoff) are in
``neuroio._protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as _ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from ._config import (
    DEFAULT_EVENTS_URL,
    ConnectionOptions,
    RecoveryOptions,
    default_api_url,
    is_production_api,
)
from ._connection import RECOVERY, Connection, Handler, Handoff
from ._inbox import Inbox
from ._net import is_loopback_url
from ._protocol.backoff import Backoff
from ._protocol.frames import StreamParser, event_decoder, event_key, parse_message
from ._protocol.gaps import GapTracker, parse_since
from ._protocol.session import LossReason, Lost, Rejected, SilentRejections
from ._recovery import Recovery
from ._token import TokenError, Tokens, TokenSource
from ._words import plural
from .exceptions import (
    AuthenticationError,
    BackfillError,
    ConfigurationError,
    ConnectionFailedError,
)
from .messages import Backfilled, Event
from .stats import ListenerStats, State

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp depends on async_timeout on 3.10
    from async_timeout import timeout as _timeout

__all__ = ["EventListener", "Handler", "LossReason"]

logger = logging.getLogger("neuroio.listener")

_decode_event = event_decoder.decode
_NEEDS_CLEANUP_CLOSED = bool(getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", False))
_DEFAULTS = ConnectionOptions()
_RECOVERY_DEFAULTS = RecoveryOptions()
# aiohttp's default keep-alive of a pooled (REST) connection, seconds; lowered below.
_POOL_IDLE = 15.0
# Untrusted ids logged (one line each) before the rest are only counted.
_UNTRUSTED_LOG_LIMIT = 10


class EventListener:
    """Listens to the NeuroIO events stream and never silently stops.

    Args:
        api_token: the platform API token, or a callable or async callable returning it
            (e.g. :func:`~neuroio.token_file`), asked at each connection attempt and REST
            request while no token is held. A token is kept as long as the server accepts
            it; once refused, the provider is asked again: a new token is tried at once, the
            same one once more after the backoff, and refused again it is fatal. A provider
            that raises is a failed attempt, retried with backoff. No token used is ever
            logged or shown in errors and reprs.
        event_handler_func: ``async def handler(message: str | bytes)``, awaited for every frame
            the server sends (auth reply, PONG, error, event), one at a time, in arrival order.
            ``None`` to iterate over typed :class:`~neuroio.Event` objects instead.
        timeout: seconds allowed to open a connection and receive the AUTH reply.
        url: the events service URL; ``None`` means ``$NEUROIO_EVENTS_URL``, else
            ``wss://events.neuroio.com``.
        ping_interval: seconds between PINGs on a live connection. They go out on schedule
            even while the handler is busy.
        ping_timeout: a PING unanswered this long means the connection is dead; it is dropped
            and replaced. Not judged while the handler is busy (the answer waits unread).
        reconnect_delay: cap of the first reconnect delay (full jitter, doubling per attempt).
        max_reconnect_delay: largest reconnect delay cap.
        max_message_size: largest frame accepted, bytes; a larger one drops the connection.
        max_queue: without a handler, events received but not yet taken by the iterator; when
            full the listener stops reading the socket (TCP backpressure) rather than grow or
            drop. With a handler, the socket is not read while the handler runs, so at most
            aiohttp's read buffer (64 KiB) waits; ``max_queue`` then bounds recovered frames
            waiting for their turn.
        max_retries: consecutive failed connection attempts before
            :class:`~neuroio.ConnectionFailedError`; ``None`` retries forever.
        ssl: an :class:`ssl.SSLContext` for ``wss://`` (certificates are always verified unless
            a context that does not verify is given).
        drain_timeout: on :meth:`close`, seconds allowed for the handler call in progress to
            finish before it is cancelled.
        backoff: a :class:`~neuroio._protocol.backoff.Backoff` to use instead of the default one.
        backfill: after every reconnect, fetch the entries missed meanwhile from the REST API
            and deliver them (as :class:`~neuroio.messages.Backfilled` frames; typed events get
            ``backfilled=True``). Duplicates between live and recovered events are dropped.
            Each connection then also asks the REST API for its newest entry (two requests of
            one entry): a gap starts there when no event was seen, never at a clock time.
        api_url: the REST API; ``None`` means ``$NEUROIO_API_URL``, else the origin of
            ``url`` when it is a loopback address (``http://`` for ``ws://``, ``https://``
            for ``wss://``: the emulator serves both), else ``https://api.neuroio.com``. The
            production API with a loopback ``url`` is warned about.
        since: also recover, before the first connection, the entries after this event id
            (an ``int``) or created from this time on (ISO-8601 text or ``datetime``).
        backfill_max_events: recover at most this many entries per gap (the newest);
            ``None`` for no limit. What is skipped is logged.
        backfill_max_age: skip recovered entries created this many seconds before the newest
            entry (the server's clock, not this machine's); ``None`` for no limit.
        dedupe_window: how many recent event ids are remembered to drop duplicates.
        on_connected: ``async def on_connected()``, awaited once per authenticated connection
            in the handler's turn: after the ``{"auth": "ok"}`` frame was handed to the handler
            and before any later frame of that connection. ``None``: nothing is called.
        on_disconnected: ``async def on_disconnected(reason: LossReason)``, awaited once per
            connection that ``on_connected`` was awaited for, after its last frame was handled
            and before the reconnect delay (``LossReason.CLOSING`` on :meth:`close`).
            An exception in either hook is logged with its traceback and counted in
            ``stats.handler_errors``; it never stops the listener.
        connect_gate: ``async def connect_gate()``, awaited before each connection attempt
            (after the reconnect delay): a limit on the rate of attempts shared by several
            listeners (the bridge's streams). :meth:`close` does not wait for it.

    Raises:
        ConfigurationError: an option is out of range or the URL is not ``ws://``/``wss://``.
    """

    def __init__(
        self,
        api_token: TokenSource | Tokens,
        event_handler_func: Handler | None = None,
        timeout: float = _DEFAULTS.timeout,
        *,
        url: str | None = None,
        ping_interval: float = _DEFAULTS.ping_interval,
        ping_timeout: float = _DEFAULTS.ping_timeout,
        reconnect_delay: float = _DEFAULTS.reconnect_delay,
        max_reconnect_delay: float = _DEFAULTS.max_reconnect_delay,
        max_message_size: int = _DEFAULTS.max_message_size,
        max_queue: int = _DEFAULTS.max_queue,
        max_retries: int | None = _DEFAULTS.max_retries,
        ssl: _ssl.SSLContext | None = None,
        drain_timeout: float = _DEFAULTS.drain_timeout,
        backoff: Backoff | None = None,
        backfill: bool = _RECOVERY_DEFAULTS.backfill,
        api_url: str | None = None,
        since: int | str | datetime | None = None,
        backfill_max_events: int | None = _RECOVERY_DEFAULTS.backfill_max_events,
        backfill_max_age: float | None = _RECOVERY_DEFAULTS.backfill_max_age,
        dedupe_window: int = _RECOVERY_DEFAULTS.dedupe_window,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_disconnected: Callable[[LossReason], Awaitable[None]] | None = None,
        connect_gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Tokens given by an owner (the bridge) are shared with its gap recovery, and stay
        # redacted as long as that owner lives.
        self._owns_tokens = not isinstance(api_token, Tokens)
        tokens = api_token if isinstance(api_token, Tokens) else Tokens(api_token)
        options = ConnectionOptions(
            url=url or os.environ.get("NEUROIO_EVENTS_URL") or DEFAULT_EVENTS_URL,
            timeout=timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            reconnect_delay=reconnect_delay,
            # A first delay above the maximum raises the maximum, as it always has here.
            max_reconnect_delay=max(reconnect_delay, max_reconnect_delay),
            max_message_size=max_message_size,
            max_queue=max_queue,
            max_retries=max_retries,
            drain_timeout=drain_timeout,
        )
        options.validate()
        recovery = RecoveryOptions(
            backfill=backfill,
            api_url=_api_url(options.url, api_url or os.environ.get("NEUROIO_API_URL")),
            since=since.isoformat() if isinstance(since, datetime) else since,
            backfill_max_events=backfill_max_events,
            backfill_max_age=backfill_max_age,
            dedupe_window=dedupe_window,
        )
        recovery.validate()
        try:
            first_gap = parse_since(since)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self._tokens = tokens
        # The provider's token the server last refused (None after an accepted one).
        self._refused: str | None = None
        self._handler = event_handler_func
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._connect_gate = connect_gate
        self.options = options
        """The connection options in effect (url resolved)."""
        self.recovery_options = recovery
        """The gap-recovery options in effect (api_url resolved)."""
        self._ssl = ssl
        self._backoff = backoff or Backoff(reconnect_delay, options.max_reconnect_delay)
        # Without recovery there is no tracker, and the reader's hot path no dedupe step.
        self._tracker: GapTracker | None = None
        if backfill or first_gap is not None:
            self._tracker = GapTracker(
                dedupe_window=dedupe_window,
                max_events=backfill_max_events,
                max_age=backfill_max_age,
                on_suspect=self._untrusted_id,
            )
            if first_gap is not None:
                self._tracker.restore(first_gap)
        self._untrusted_logged = 0
        self._recovery: Recovery | None = None
        self._backfill_task: asyncio.Task[None] | None = None
        self.backfill_error: BackfillError | None = None
        """The last gap-recovery failure that could not be retried (e.g. a refused token)."""
        self.stats = ListenerStats()
        self._handoff: Handoff | None = None
        self._closing: asyncio.Event | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._connection_now: Connection | None = None
        self._iter_task: asyncio.Task[None] | None = None
        # The typed iterator's decoder state: whether this stream's entries carry unknown
        # fields, so that each of their events is decoded once.
        self._parser = StreamParser()
        self._session: aiohttp.ClientSession | None = None
        self._last_failure = ""
        if options.url is not None and options.url.startswith("ws://"):
            if not is_loopback_url(options.url):
                logger.warning(
                    "%s is not encrypted: the API token and events travel in clear text; "
                    "use wss:// outside a local test setup",
                    options.url,
                )

    # The options as attributes, read-only, as they always were readable.
    @property
    def url(self) -> str:
        """The events service URL."""
        assert self.options.url is not None
        return self.options.url

    @property
    def timeout(self) -> float:
        """Seconds allowed to connect and receive the AUTH reply."""
        return self.options.timeout

    @property
    def ping_interval(self) -> float:
        """Seconds between PINGs."""
        return self.options.ping_interval

    @property
    def ping_timeout(self) -> float:
        """A PING unanswered this long (while reading) means the connection is dead."""
        return self.options.ping_timeout

    @property
    def max_message_size(self) -> int:
        """Largest frame accepted, bytes."""
        return self.options.max_message_size

    @property
    def max_queue(self) -> int:
        """Frames received but not yet taken (iterator), or recovered and waiting (handler)."""
        return self.options.max_queue

    @property
    def max_retries(self) -> int | None:
        """Consecutive failed attempts before giving up; ``None``: forever."""
        return self.options.max_retries

    @property
    def drain_timeout(self) -> float:
        """On close, seconds the handler call in progress may take."""
        return self.options.drain_timeout

    @property
    def backfill(self) -> bool:
        """Whether gaps are recovered from the REST API after each reconnect."""
        return self.recovery_options.backfill

    @property
    def api_url(self) -> str:
        """The REST API used for gap recovery."""
        assert self.recovery_options.api_url is not None
        return self.recovery_options.api_url

    @property
    def backfill_max_events(self) -> int | None:
        """At most this many entries recovered per gap."""
        return self.recovery_options.backfill_max_events

    @property
    def backfill_max_age(self) -> float | None:
        """Recovered entries older than this many seconds are skipped."""
        return self.recovery_options.backfill_max_age

    def __repr__(self) -> str:
        return f"<EventListener url={self.url!r} state={self.stats.state.value}>"

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._owns_tokens:
                self._tokens.release()

    @property
    def state(self) -> State:
        """The current :class:`~neuroio.stats.State`."""
        return self.stats.state

    # ------------------------------------------------------------------ public API

    async def listen(self) -> None:
        """Connect, authenticate and deliver frames until :meth:`close` is called.

        Raises:
            AuthenticationError: the server rejected the token (never retried).
            ConnectionFailedError: ``max_retries`` consecutive attempts failed.
            RuntimeError: ``listen()`` is already running on this listener.
        """
        if self._listen_task is not None and not self._listen_task.done():
            raise RuntimeError("this EventListener is already listening")
        self._listen_task = asyncio.current_task()
        self._closing = asyncio.Event()
        inbox: Inbox[Any] = Inbox(self.max_queue)
        self._handoff = Handoff(self._handler, inbox, self.stats, self.drain_timeout)
        self._failure = None
        # enable_cleanup_closed: aiohttp's advice for Pythons whose SSL transports can linger
        # after close; a listener that reconnects for months must not leak them.
        # keepalive_timeout: only REST requests are pooled. A loss found by the heartbeat
        # takes at least about ping_timeout, so a REST connection idle for half of it is not
        # reused after the loss: it may be on the same dead path, and would hang a request.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED,
                keepalive_timeout=min(_POOL_IDLE, self.ping_timeout / 2),
            )
        )
        self._session = session
        try:
            self._start_recovery(session)
            await self._connection_cycle(session)
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._set_state(State.CLOSED)
            await self._stop_backfill()
            await session.close()
            inbox.close()
            self.stats.queue_high_water = max(self.stats.queue_high_water, inbox.high_water)

    def run(self) -> None:
        """The blocking form of :meth:`listen`, for a program without an event loop.

        Runs :meth:`listen` with :func:`asyncio.run` (a new loop of the default policy, so
        ``uvloop.install()`` beforehand makes it uvloop; the library never picks the loop
        itself) until the handler or a hook calls :meth:`close`, or Ctrl-C, which closes the
        listener and raises :class:`KeyboardInterrupt` here. A handler is needed: to iterate
        from synchronous code, use :func:`neuroio.sync.connect`.

        Raises:
            AuthenticationError: the server rejected the token (never retried).
            ConnectionFailedError: ``max_retries`` consecutive attempts failed.
            TypeError: the listener has no ``event_handler_func``.
            RuntimeError: called from a running event loop (``await listen()`` there).
        """
        if self._handler is None:
            raise TypeError("run() delivers to a handler: use neuroio.sync.connect() to iterate")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.listen())
        else:
            raise RuntimeError("run() blocks: inside an event loop, await listen() instead")

    async def close(self) -> None:
        """Stop listening: close the connection with code 1000 and end every task.

        A handler call in progress may finish (up to ``drain_timeout`` seconds); frames not
        yet read from the socket are not delivered. Idempotent; safe to call from inside the
        handler (it then returns at once and ``listen()`` ends after the handler returns).
        """
        if self._closing is not None:
            self._closing.set()
        task = self._listen_task
        if task is None or task.done():
            return
        current = asyncio.current_task()
        connection = self._connection_now
        reader = connection.reader_task if connection is not None else None
        if current in (task, reader, self._backfill_task):
            # Called from inside the handler: waiting here would wait for ourselves.
            return
        # asyncio.wait, not wait_for: wait_for can swallow a cancellation of the caller.
        await asyncio.wait({task}, timeout=self.drain_timeout + self.timeout + 1)

    async def __aenter__(self) -> EventListener:
        self._iter_task = asyncio.create_task(self._listen_quietly(), name="neuroio-listen")
        # listen() creates the inbox on its first step; make sure it has run.
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        task = self._iter_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._handler is not None:
            raise TypeError("iterate over an EventListener created without event_handler_func")
        return self

    async def __anext__(self) -> Event:
        """The next event (control messages are not yielded)."""
        if self._handoff is None:
            raise RuntimeError("iterate inside 'async with EventListener(...)'")
        inbox = self._handoff.inbox
        while True:
            try:
                item = inbox.get_nowait()
            except IndexError:
                try:
                    item = await inbox.get()
                except EOFError:
                    failure = self._failure
                    if failure is not None and not isinstance(failure, asyncio.CancelledError):
                        raise failure from None
                    raise StopAsyncIteration from None
            if type(item) is str and not self._parser.lax_first:
                # The common case, decoded in one pass as parse_message would.
                try:
                    frame = _decode_event(item)
                except Exception:
                    pass
                else:
                    return Event(id=frame.id, entry=frame.data)
            event = self._event_of(item)
            if event is not None:
                return event

    def _event_of(self, item: str | bytes) -> Event | None:
        """The event in an inbox item the one-pass decode above did not take, if any."""
        parser = self._parser
        if type(item) is not str:
            parse = parse_message
        elif parser.lax_first:
            parse = parser.lax  # entries with unknown fields: see StreamParser
        else:
            parse = parser.refused  # not again the attempt that just failed
        try:
            message = parse(item)
        except Exception:
            return None
        if not isinstance(message, Event):
            return None
        if isinstance(item, Backfilled):
            return msgspec.structs.replace(message, backfilled=True)
        return message

    # ------------------------------------------------------------------ the reconnect cycle

    async def _listen_quietly(self) -> None:
        # For ``async with``: the failure is re-raised by the iterator, not by a lost task.
        with contextlib.suppress(Exception):
            await self.listen()

    def _set_state(self, state: State) -> None:
        if self.stats.state is not state:
            logger.debug("state %s -> %s", self.stats.state.value, state.value)
            self.stats.state = state

    def _closing_now(self) -> bool:
        return self._closing is not None and self._closing.is_set()

    def _connection(self, session: aiohttp.ClientSession, token: str) -> Connection:
        assert self._handoff is not None and self._closing is not None
        return Connection(
            url=self.url,
            token=token,
            options=self.options,
            ssl=self._ssl,
            http=session,
            handoff=self._handoff,
            backoff=self._backoff,
            closing=self._closing,
            set_state=self._set_state,
            remember=self._remember if self._tracker is not None else None,
            on_connected=self._on_connected,
            on_live=self._live,
        )

    async def _connection_cycle(self, session: aiohttp.ClientSession) -> None:
        failures = 0  # consecutive attempts that never reached {"auth": "ok"}
        silent = SilentRejections()
        # The shared connect-rate limit is waited for in the state the last attempt left.
        while not self._closing_now() and await self._through_gate():
            self._set_state(State.CONNECTING)
            try:
                token = await self._tokens.get()
            except TokenError as exc:
                # A failed attempt like a refused TCP connection: the provider may recover.
                self._last_failure = str(exc)
                failures += 1
                self._check_retries(failures, Lost(LossReason.CONNECT_FAILED))
                await self._back_off("token_provider", detail=str(exc))
                continue
            connection = self._connection_now = self._connection(session, token)
            verdict = await connection.run()
            if connection.last_failure:
                self._last_failure = connection.last_failure
            if isinstance(verdict, Rejected):
                if await self._rejected(verdict, token):
                    continue
                failures += 1
                self._check_retries(failures, Lost(LossReason.CONNECT_FAILED))
                await self._back_off("token_rejected")
                continue
            if verdict.authenticated:
                self._refused = None
                await self._disconnected(verdict.reason)
            if self._closing_now():
                return
            if verdict.authenticated:
                failures = 0
                if self.backfill:
                    assert self._tracker is not None
                    self._tracker.lost()
            else:
                failures += 1
            rejected = silent.observe(verdict)
            if rejected is not None:
                raise _authentication_error(rejected)
            if verdict.authenticated:
                await self._back_off(verdict.reason.value)
            else:
                await self._attempt_failed(connection, verdict, failures)

    async def _through_gate(self) -> bool:
        """Wait for the shared connect-rate limit (if any); ``False`` if closed meanwhile."""
        if self._connect_gate is None:
            return True
        assert self._closing is not None
        passing = asyncio.ensure_future(self._connect_gate())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({passing, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            passing.cancel()
            closing.cancel()
        return not self._closing_now()

    async def _attempt_failed(self, connection: Connection, verdict: Lost, failures: int) -> None:
        """One line about an attempt that never became a connection, saying why; then give
        up (``max_retries``) or wait before the next one."""
        loud = connection.failure_is_error
        if loud and self.max_retries is not None and failures > self.max_retries:
            # Not a network hiccup (a TLS certificate): in the log even on the last attempt.
            logger.error("no connection to %s (%s)", self.url, connection.last_failure)
        self._check_retries(failures, verdict)
        await self._back_off(verdict.reason.value, detail=connection.last_failure, error=loud)

    async def _rejected(self, verdict: Rejected, token: str) -> bool:
        """The server refused ``token``: ``True`` tries the provider's new token at once.

        ``False``: the provider gave the same token (or failed), or the refused token was
        itself the new one of a refusal; the next is tried after the backoff (the same token
        once more, the provider asked again first). A token refused twice in a row, or a
        fixed one, raises :class:`~neuroio.exceptions.AuthenticationError`.
        """
        tokens, previous = self._tokens, self._refused
        if not tokens.dynamic or token == previous:
            raise _authentication_error(verdict)
        self._refused = token
        tokens.rejected(token)
        try:
            fresh = await tokens.get()
        except TokenError as exc:
            self._last_failure = str(exc)
            return False
        if fresh != token:
            logger.info("the API token was refused; trying the token provider's new one")
            # Refusals in a row: a provider handing out bad tokens gets the backoff, never
            # a tight loop of connections.
            return previous is None
        # Asked again after the backoff: a file or a secret store may lag a rotation.
        tokens.rejected(token)
        return False

    async def _disconnected(self, reason: LossReason) -> None:
        hook = self._on_disconnected
        if hook is None:
            return
        assert self._handoff is not None

        async def call() -> None:
            await hook(reason)

        if reason is LossReason.CLOSING:
            await self._handoff.run_hook_closing(call, "on_disconnected")
        else:
            await self._handoff.run_hook(call, "on_disconnected")

    def _check_retries(self, failures: int, verdict: Lost) -> None:
        if self.max_retries is not None and failures > self.max_retries:
            raise ConnectionFailedError(
                f"could not connect to {self.url} after {plural(failures, 'attempt')} "
                f"(last failure: {self._last_failure or verdict.reason.value})",
                attempts=failures,
                last_reason=verdict.reason,
            )

    async def _back_off(self, reason: str, *, detail: str = "", error: bool = False) -> None:
        self.stats.reconnects[reason] += 1
        delay = self._backoff.next_delay()
        self._set_state(State.BACKOFF)
        logger.log(
            logging.ERROR if error else logging.WARNING,
            "no connection to %s (%s); reconnecting in %.2fs",
            self.url,
            detail or reason,
            delay,
        )
        assert self._closing is not None
        with contextlib.suppress(asyncio.TimeoutError):
            async with _timeout(delay):
                await self._closing.wait()

    # ------------------------------------------------------------------ gap recovery

    def _start_recovery(self, session: aiohttp.ClientSession) -> None:
        """One task for the whole of listen(): it recovers after each notified connection."""
        tracker = self._tracker
        if tracker is None:
            return
        assert self._closing is not None
        self._recovery = Recovery(
            session,
            self.api_url,
            self._tokens,
            tracker,
            self._deliver_recovered,
            backoff=Backoff(self._backoff.initial, self._backoff.maximum),
            closing=self._closing,
        )
        self._backfill_task = asyncio.create_task(
            self._recovery.serve(on_error=self._recovery_failed), name="neuroio-backfill"
        )
        self._backfill_task.add_done_callback(_recovery_ended)

    def _live(self) -> None:
        """A connection authenticated: learn the newest entry and recover what is pending.

        With ``since=`` alone (no ``backfill``), only until that first gap was served.
        """
        recovery, tracker = self._recovery, self._tracker
        if recovery is None or tracker is None:
            return
        if self.backfill or (tracker.newest is None and self.backfill_error is None):
            recovery.notify_connected()

    def _remember(self, data: str | bytes) -> bool:
        """Dedupe and the recovery cursor; ``False`` if this event id was already delivered."""
        key = event_key(data)
        if key is not None:
            assert self._tracker is not None
            if not self._tracker.seen(*key):
                self.stats.duplicate_events += 1
                return False
        return True

    async def _deliver_recovered(self, entries: list[dict[str, Any]]) -> None:
        """One page of recovered entries, ascending: each as a Backfilled frame, in turn."""
        handoff = self._handoff
        assert handoff is not None
        stats = self.stats
        for entry in entries:
            frame = Backfilled(_encoder.encode({"id": entry["id"], "data": entry}).decode())
            stats.backfilled_events += 1
            await handoff.deliver(frame, RECOVERY)

    def _recovery_failed(self, exc: BackfillError) -> None:
        self.backfill_error = exc
        logger.error("gap recovery failed: %s", exc)

    def _untrusted_id(self, event_id: int, reason: str) -> None:
        """An id gap recovery does not trust: said once per id, up to a bound."""
        self._untrusted_logged += 1
        if self._untrusted_logged > _UNTRUSTED_LOG_LIMIT:
            return
        more = (
            "; further untrusted ids are not logged"
            if self._untrusted_logged == _UNTRUSTED_LOG_LIMIT
            else ""
        )
        logger.warning(
            "event id %d is %s: delivered, but gap recovery does not start after it%s",
            event_id,
            reason,
            more,
        )

    async def _stop_backfill(self) -> None:
        task = self._backfill_task
        self._backfill_task = None
        if task is None or task.done():
            return
        assert self._handoff is not None
        if self._handoff.turn.owner == RECOVERY:
            await self._handoff.hold()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EOFError):
            await task


def _api_url(url: str | None, given: str | None) -> str:
    """The REST API gap recovery uses with the events ``url``: ``given``, else the default
    (:func:`~neuroio._config.default_api_url`); the production API given for a loopback
    ``url`` is warned about, once, as the likely mistake it is."""
    assert url is not None
    if given is None:
        return default_api_url(url)
    if is_production_api(given) and is_loopback_url(url):
        logger.warning(
            "the events URL %s is on this machine but gap recovery uses the production API "
            "%s: give --api-url %s for a local emulator",
            url,
            given,
            default_api_url(url),
        )
    return given


def _authentication_error(verdict: Rejected) -> AuthenticationError:
    return AuthenticationError(
        verdict.message, close_code=verdict.close_code, server_message=verdict.server_message
    )


def _recovery_ended(task: asyncio.Task[None]) -> None:
    # The task runs until close() cancels it; ending otherwise would silently stop recovery.
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "gap recovery stopped; gaps are no longer recovered", exc_info=task.exception()
        )


_encoder = msgspec.json.Encoder()
