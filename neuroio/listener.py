"""The asyncio listener: one authenticated connection, kept alive for as long as it runs.

This is the only module that owns a socket and tasks. Per connection it runs a reader task,
supervised by the connection loop, which also sends PINGs and judges the connection by
:class:`~neuroio.heartbeat.Heartbeat`. The reader hands each frame to the user's handler itself
and reads the next one only when the handler returned: while the handler is busy the socket is
not read, so TCP pushes back on the server and memory stays bounded. Frames recovered after a
gap come from another task and take turns with the reader, so the handler is never called twice
at once. Without a handler, the reader fills a bounded :class:`~neuroio.inbox.Inbox` that the
async iterator empties. Reconnect delays come from :class:`~neuroio.backoff.Backoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl as _ssl
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeAlias

import aiohttp
import msgspec

from . import _redact
from .backfill import EntriesClient, GapStart, RecentIds, parse_since
from .backoff import Backoff
from .exceptions import (
    AuthenticationError,
    BackfillError,
    ConfigurationError,
    ConnectionFailedError,
)
from .heartbeat import Heartbeat
from .inbox import Inbox
from .messages import Backfilled, Event
from .protocol import (
    DEFAULT_API_URL,
    DEFAULT_EVENTS_URL,
    Kind,
    _event_decoder,
    classify,
    encode_auth,
    encode_ping,
    event_key,
    parse_message,
)
from .stats import ListenerStats, State

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp depends on async_timeout on 3.10
    from async_timeout import timeout as _timeout

__all__ = ["EventListener", "Handler"]

logger = logging.getLogger("neuroio.listener")

Handler = Callable[[Any], Awaitable[Any]]
"""An async callable taking one frame (``str``, or ``bytes`` for binary frames)."""

# Close codes that mean "your credentials are refused" when they arrive before {"auth": "ok"}.
_AUTH_CLOSE_CODES = frozenset({1008, 3000, 3003, 4001, 4003, 4401, 4403})
# Close codes that say nothing about the token: the server is going away or restarting.
_NEUTRAL_CLOSE_CODES = frozenset({1001, 1012, 1013})
# A server that accepts the handshake and then drops us, without answering AUTH, this many times
# in a row is refusing the token without saying so.
_MAX_SILENT_REJECTIONS = 3
# Who holds the handler: the reader, the recovery task, close(), or a waiter it was handed to.
_READER = "reader"
_RECOVERY = "recovery"
_CLOSER = "closer"
_HANDED = "handed"
_EVENT_PREFIX = '{"id":'
_decode_event = _event_decoder.decode
_NEEDS_CLEANUP_CLOSED = bool(getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", False))
# How stale ListenerStats.last_event_at may be, seconds.
_STAMP_INTERVAL = 1.0
_WebSocket: TypeAlias = "aiohttp.ClientWebSocketResponse[bool]"


class _Turn:
    """Whose turn it is to call the handler: one call at a time, waiters served in order.

    The reader takes a free turn without awaiting anything (the hot path); the recovery
    task and close() queue for it. A released turn is handed to the first waiter directly,
    so nobody slips in before that waiter wakes.
    """

    __slots__ = ("owner", "waiters")

    def __init__(self) -> None:
        self.owner: str | None = None
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, owner: str, stats: ListenerStats) -> None:
        if self.owner is None:
            self.owner = owner
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if len(self.waiters) > stats.queue_high_water:
            stats.queue_high_water = len(self.waiters)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed to us just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise
        self.owner = owner

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.owner = _HANDED
                waiter.set_result(None)
                return
        self.owner = None


class _Rejected(Exception):
    """The server refused the token on this connection (internal)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class EventListener:
    """Listens to the NeuroIO events stream and never silently stops.

    Args:
        api_token: the platform API token. Never logged or shown in errors and reprs.
        event_handler_func: ``async def handler(message: str | bytes)``, awaited for every frame
            the server sends (auth reply, PONG, error, event), one at a time, in arrival order.
            ``None`` to iterate over typed :class:`~neuroio.Event` objects instead.
        timeout: seconds allowed to open a connection and receive the AUTH reply.
        url: the events service URL; ``None`` means ``$NEUROIO_EVENTS_URL``, else
            ``wss://events.neuroio.com``.
        ping_interval: seconds between PINGs on a live connection.
        ping_timeout: a PING unanswered this long means the connection is dead; it is dropped
            and replaced.
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
        backoff: a :class:`~neuroio.backoff.Backoff` to use instead of the default one.
        backfill: after every reconnect, fetch the entries missed meanwhile from the REST API
            and deliver them (as :class:`~neuroio.messages.Backfilled` frames; typed events get
            ``backfilled=True``). Duplicates between live and recovered events are dropped.
        api_url: the REST API; ``None`` means ``$NEUROIO_API_URL``, else
            ``https://api.neuroio.com``.
        since: also recover, before the first connection, the entries after this event id
            (an ``int``) or created from this time on (ISO-8601 text or ``datetime``).
        backfill_max_events: recover at most this many entries per gap (the newest);
            ``None`` for no limit. What is skipped is logged.
        backfill_max_age: skip recovered entries older than this many seconds; ``None`` for
            no limit.
        dedupe_window: how many recent event ids are remembered to drop duplicates.

    Raises:
        ConfigurationError: an option is out of range or the URL is not ``ws://``/``wss://``.
    """

    def __init__(
        self,
        api_token: str,
        event_handler_func: Handler | None = None,
        timeout: float = 4.0,
        *,
        url: str | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 10.0,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
        max_message_size: int = 8 * 2**20,
        max_queue: int = 1024,
        max_retries: int | None = None,
        ssl: _ssl.SSLContext | None = None,
        drain_timeout: float = 5.0,
        backoff: Backoff | None = None,
        backfill: bool = False,
        api_url: str | None = None,
        since: int | str | datetime | None = None,
        backfill_max_events: int | None = 10_000,
        backfill_max_age: float | None = 24 * 3600.0,
        dedupe_window: int = 100_000,
    ) -> None:
        if not isinstance(api_token, str) or not api_token:
            raise ConfigurationError("api_token must be a non-empty string")
        if url is None:
            url = os.environ.get("NEUROIO_EVENTS_URL") or DEFAULT_EVENTS_URL
        if not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"events URL must start with ws:// or wss://, got {url!r}")
        if timeout <= 0 or ping_interval <= 0 or ping_timeout <= 0:
            raise ConfigurationError("timeout, ping_interval and ping_timeout must be positive")
        if max_queue < 1 or max_message_size < 1:
            raise ConfigurationError("max_queue and max_message_size must be at least 1")
        if max_retries is not None and max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0 or None")
        self._token = api_token
        _redact.guard(api_token)
        self._handler = event_handler_func
        self.url = url
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.drain_timeout = drain_timeout
        self._ssl = ssl
        self._backoff = backoff or Backoff(
            reconnect_delay, max(reconnect_delay, max_reconnect_delay)
        )
        try:
            first_gap = parse_since(since)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.backfill = backfill
        self.api_url = api_url or os.environ.get("NEUROIO_API_URL") or DEFAULT_API_URL
        if not self.api_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"api_url must start with http:// or https://, got {api_url!r}"
            )
        self.backfill_max_events = backfill_max_events
        self.backfill_max_age = backfill_max_age
        self._gaps: list[GapStart] = [first_gap] if first_gap is not None else []
        self._recent = RecentIds(dedupe_window) if (backfill or first_gap) else None
        self._cursor_id: int | None = None
        self._cursor_created: str | None = None
        self._backfill_task: asyncio.Task[None] | None = None
        self.backfill_error: BackfillError | None = None
        """The last gap-recovery failure that could not be retried (e.g. a refused token)."""
        self.stats = ListenerStats()
        self._inbox: Inbox[Any] | None = None
        self._closing: asyncio.Event | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # The handler turn: who holds it, who waits for it (each waiter is handed it in order).
        self._turn = _Turn()
        self._reader_waiting = False
        self._reader_task: asyncio.Task[None] | None = None
        self._iter_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._last_failure = ""
        if url.startswith("ws://") and not _is_loopback(url):
            logger.warning(
                "%s is not encrypted: the API token and events travel in clear text; "
                "use wss:// outside a local test setup",
                url,
            )

    def __repr__(self) -> str:
        return f"<EventListener url={self.url!r} state={self.stats.state.value}>"

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            _redact.release(self._token)

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
        self._inbox = Inbox(self.max_queue)
        self._failure = None
        self._turn = _Turn()
        # enable_cleanup_closed: aiohttp's advice for Pythons whose SSL transports can linger
        # after close; a listener that reconnects for months must not leak them.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED)
        )
        self._session = session
        try:
            await self._connection_cycle(session)
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._set_state(State.CLOSED)
            await self._stop_backfill()
            await session.close()
            self._inbox.close()
            self.stats.queue_high_water = max(self.stats.queue_high_water, self._inbox.high_water)

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
        if asyncio.current_task() in (task, self._reader_task, self._backfill_task):
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
        inbox = self._inbox
        if inbox is None:
            raise RuntimeError("iterate inside 'async with EventListener(...)'")
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
            if type(item) is str:
                # The common case, decoded in one pass as parse_message would.
                try:
                    frame = _decode_event(item)
                except Exception:
                    pass
                else:
                    return Event(id=frame.id, entry=frame.data)
            try:
                message = parse_message(item)
            except Exception:
                continue
            if isinstance(message, Event):
                if isinstance(item, Backfilled):
                    return msgspec.structs.replace(message, backfilled=True)
                return message

    # ------------------------------------------------------------------ internals

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

    async def _connection_cycle(self, session: aiohttp.ClientSession) -> None:
        failures = 0  # consecutive attempts that never reached {"auth": "ok"}
        silent_rejections = 0
        while not self._closing_now():
            self._set_state(State.CONNECTING)
            authenticated = False
            try:
                reason, authenticated = await self._one_connection(session)
            except _Rejected as exc:
                raise AuthenticationError(
                    f"the NeuroIO events service rejected the API token ({exc.detail}); "
                    "check the token and that it belongs to this platform"
                ) from None
            if self._closing_now():
                return
            if authenticated:
                failures = 0
                silent_rejections = 0
                if self.backfill:
                    self._gaps.append(self._gap_start())
            else:
                failures += 1
                if reason.startswith("closed_before_auth"):
                    silent_rejections += 1
                    if silent_rejections >= _MAX_SILENT_REJECTIONS:
                        raise AuthenticationError(
                            "the NeuroIO events service closed the connection before accepting "
                            f"the API token {silent_rejections} times in a row; check the token"
                        )
                else:
                    silent_rejections = 0
            reason = reason.split(":", 1)[0]
            if self.max_retries is not None and failures > self.max_retries:
                raise ConnectionFailedError(
                    f"could not connect to {self.url} after {failures} attempts "
                    f"(last failure: {self._last_failure or reason})"
                )
            self.stats.reconnects[reason] += 1
            delay = self._backoff.next_delay()
            self._set_state(State.BACKOFF)
            logger.warning(
                "no connection to %s (%s); reconnecting in %.2fs", self.url, reason, delay
            )
            assert self._closing is not None
            with contextlib.suppress(asyncio.TimeoutError):
                async with _timeout(delay):
                    await self._closing.wait()

    async def _one_connection(self, session: aiohttp.ClientSession) -> tuple[str, bool]:
        """Run one connection to its end; return why it ended and whether it authenticated."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with _timeout(self.timeout):
                ws = await session.ws_connect(
                    self.url,
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=self.max_message_size,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.timeout),
                    ssl=self._ssl if self._ssl is not None else True,
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            # Never accepted, but retried: a certificate can be fixed on the server side
            # while this runs unattended. Loud, because it is not a network hiccup.
            problem = _certificate_problem(exc.certificate_error)
            self._last_failure = f"TLS certificate rejected: {problem}"
            logger.error("TLS certificate of %s rejected: %s", self.url, problem)
            return "connect_failed", False
        except aiohttp.ClientSSLError as exc:
            self._last_failure = f"TLS handshake failed: {_describe(exc)}"
            logger.error("TLS handshake with %s failed: %s", self.url, _describe(exc))
            return "connect_failed", False
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self._last_failure = _describe(exc)
            logger.info("cannot connect to %s: %s", self.url, self._last_failure)
            return "connect_failed", False
        self.stats.connects += 1
        try:
            return await self._serve(ws, deadline)
        finally:
            if not ws.closed:
                # A dead peer never answers the close frame: do not wait for it long.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(ws.close(code=1000), self.timeout)

    async def _serve(self, ws: _WebSocket, deadline: float) -> tuple[str, bool]:
        assert self._closing is not None
        loop = asyncio.get_running_loop()
        self._set_state(State.AUTHENTICATING)
        await ws.send_str(encode_auth(self._token))
        ended = await self._authenticate(ws, deadline)
        if ended is not None:
            return ended, False
        self.stats.authenticated += 1
        self._set_state(State.LIVE)
        logger.info("connected to %s and authenticated", self.url)
        if self._gaps and (self._backfill_task is None or self._backfill_task.done()):
            self._backfill_task = asyncio.create_task(self._recover(), name="neuroio-backfill")

        heartbeat = Heartbeat(self.ping_interval, self.ping_timeout)
        live_since = loop.time()
        heartbeat.start(live_since)
        outcome: list[str] = []
        reader = asyncio.create_task(
            self._read(ws, heartbeat, live_since, outcome), name="neuroio-reader"
        )
        self._reader_task = reader
        closing = asyncio.create_task(self._closing.wait(), name="neuroio-closing")
        # While the reader is in the handler or waiting for room it reads nothing, so PONGs
        # wait unread: the heartbeat is not judged then, and polled to resume promptly.
        poll = min(self.ping_interval, self.ping_timeout) / 4
        stats = self.stats
        events_seen = stats.events
        try:
            while True:
                now = loop.time()
                if stats.events != events_seen:
                    events_seen = stats.events
                    stats.last_event_at = time.time()
                if self._inbox is not None and self._inbox.high_water > self.stats.queue_high_water:
                    self.stats.queue_high_water = self._inbox.high_water
                if self._turn.owner == _READER or self._reader_waiting:
                    heartbeat.pause()
                elif heartbeat.paused:
                    heartbeat.resume(now)
                if heartbeat.is_dead(now):
                    logger.warning(
                        "no PONG from %s within %.1fs of a PING: connection is dead",
                        self.url,
                        self.ping_timeout,
                    )
                    return "heartbeat_timeout", True
                if heartbeat.ping_due(now):
                    try:
                        await ws.send_str(encode_ping())
                    except (aiohttp.ClientError, OSError, RuntimeError):
                        return "reset", True
                    heartbeat.ping_sent(loop.time())
                    self.stats.pings_sent += 1
                wakeup = poll if heartbeat.paused else heartbeat.next_wakeup(loop.time())
                wakeup = min(wakeup, _STAMP_INTERVAL)
                done, _ = await asyncio.wait(
                    (reader, closing), timeout=wakeup, return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    # Let a handler call in progress finish before the reader is cancelled.
                    await self._hold_handler()
                    return "closing", True
                if reader in done:
                    reader.result()
                    return (outcome[0] if outcome else "reset"), True
        finally:
            for task in (reader, closing):
                task.cancel()
            await asyncio.gather(reader, closing, return_exceptions=True)

    async def _authenticate(self, ws: _WebSocket, deadline: float) -> str | None:
        """Wait for the AUTH reply; ``None`` once accepted, else why the connection ended."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning("no answer to AUTH from %s within %.1fs", self.url, self.timeout)
                return "auth_timeout"
            try:
                msg = await ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                logger.warning("no answer to AUTH from %s within %.1fs", self.url, self.timeout)
                return "auth_timeout"
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                data = msg.data
                kind = self._account(data)
                if kind is Kind.EVENT:
                    self.stats.events += 1
                    self.stats.last_event_at = time.time()
                    if self._recent is not None and not self._remember(data):
                        continue
                # Delivered before anything is raised: the handler sees the server's answer.
                await self._hand_over(data, kind)
                if kind is Kind.AUTH_OK:
                    return None
                if kind in (Kind.ERROR, Kind.AUTH_REJECTED):
                    raise _Rejected(f"server said: {_error_text(data)}")
                continue
            code = ws.close_code
            if code in _AUTH_CLOSE_CODES:
                raise _Rejected(f"connection closed with code {code}")
            if msg.type is aiohttp.WSMsgType.ERROR:
                return _error_reason(msg.data)
            if code in _NEUTRAL_CLOSE_CODES:
                return "closed"
            return f"closed_before_auth:{code}"

    async def _read(
        self,
        ws: _WebSocket,
        heartbeat: Heartbeat,
        live_since: float,
        outcome: list[str],
    ) -> None:
        # The hot path: everything it touches is a local, and an event written the way the
        # platform writes them costs a prefix test, a counter, the turn and the handler call.
        loop = asyncio.get_running_loop()
        handler = self._handler
        inbox = self._inbox
        assert inbox is not None
        recent = self._recent
        stats = self.stats
        wall = time.time
        receive = ws.receive
        turn = self._turn
        prefix = _EVENT_PREFIX
        reader = _READER
        text = aiohttp.WSMsgType.TEXT
        binary = aiohttp.WSMsgType.BINARY
        while True:
            msg = await receive()
            mtype = msg.type
            if mtype is text:
                data = msg.data
                if data.startswith(prefix):
                    # last_event_at is stamped by the connection loop, once a second at most:
                    # a clock read per event is a tenth of this path.
                    stats.events += 1
                    if recent is not None and not self._remember(data):
                        continue
                else:
                    kind = self._account(data)
                    if kind is Kind.ERROR:
                        # During authentication an error ends listen() with its own message;
                        # on a live connection it is only worth a warning.
                        logger.warning("server error message: %s", _error_text(data))
                    elif kind is Kind.PONG:
                        now = loop.time()
                        rtt = heartbeat.pong_received(now)
                        stats.pongs += 1
                        if rtt is not None:
                            stats.last_rtt = rtt
                        if now - live_since >= self.ping_interval:
                            # Healthy for a whole interval: the next loss starts from the
                            # shortest delay again.
                            self._backoff.reset()
                    elif kind is Kind.EVENT:
                        stats.events += 1
                        stats.last_event_at = wall()
                        if recent is not None and not self._remember(data):
                            continue
                    elif handler is None:
                        continue
            elif mtype is binary:
                data = msg.data
                self._account(data)
                if handler is None:
                    continue
            else:
                if mtype is aiohttp.WSMsgType.ERROR:
                    outcome.append(_error_reason(msg.data))
                    logger.warning("connection to %s failed: %s", self.url, _describe(msg.data))
                elif ws.close_code is not None and ws.close_code != 1006:
                    outcome.append("closed")
                    logger.info("server closed the connection with code %s", ws.close_code)
                else:
                    outcome.append("reset")
                return
            if handler is None:
                if not inbox.put_nowait(data):
                    self._reader_waiting = True
                    try:
                        await inbox.put(data)
                    finally:
                        self._reader_waiting = False
            elif turn.owner is None:
                turn.owner = reader
                try:
                    await handler(data)
                except Exception:
                    self._handler_failed()
                finally:
                    if turn.waiters:
                        turn.release()
                    else:
                        turn.owner = None
            else:
                self._reader_waiting = True
                try:
                    await self._call_handler(data, _READER)
                finally:
                    self._reader_waiting = False

    def _account(self, data: str | bytes) -> Kind:
        """Count and classify a frame that is not on the event fast path."""
        kind = classify(data)
        if kind is not Kind.EVENT:
            self.stats.control += 1
        if kind is Kind.MALFORMED or kind is Kind.BINARY:
            self.stats.malformed += 1
            logger.warning("received a frame that is not a NeuroIO message (%s)", kind.value)
        return kind

    async def _hand_over(self, data: str | bytes, kind: Kind) -> None:
        """Deliver one frame outside the reader: to the handler, or events to the inbox."""
        if self._handler is not None:
            await self._call_handler(data, _READER)
        elif kind is Kind.EVENT:
            assert self._inbox is not None
            await self._inbox.put(data)

    async def _call_handler(self, data: str | bytes, owner: str) -> None:
        """Call the handler once it is this caller's turn (one call at a time, in order)."""
        await self._turn.take(owner, self.stats)
        assert self._handler is not None
        try:
            await self._handler(data)
        except Exception:
            self._handler_failed()
        finally:
            self._turn.release()

    async def _hold_handler(self) -> None:
        """Wait (up to ``drain_timeout``) for the handler call in progress, then keep the turn."""
        if self._handler is None or self._turn.owner is None:
            return
        try:
            async with _timeout(self.drain_timeout):
                await self._turn.take(_CLOSER, self.stats)
        except asyncio.TimeoutError:
            logger.warning(
                "the event handler did not return within %.1fs of close(); cancelling it",
                self.drain_timeout,
            )

    def _handler_failed(self) -> None:
        self.stats.handler_errors += 1
        logger.exception("event handler raised; continuing with the next message")

    def _remember(self, data: str | bytes) -> bool:
        """Track the recovery cursor; ``False`` if this event id was already delivered."""
        key = event_key(data)
        if key is None:
            return True
        event_id, created = key
        assert self._recent is not None
        if not self._recent.add(event_id):
            self.stats.duplicate_events += 1
            return False
        if self._cursor_id is None or event_id > self._cursor_id:
            self._cursor_id = event_id
            self._cursor_created = created
        return True

    def _gap_start(self) -> GapStart:
        """Where the gap that just opened begins."""
        if self._cursor_id is None:
            # Nothing seen yet: recover what was created since shortly before the loss.
            return GapStart(since_time=datetime.now(timezone.utc))
        created = None
        if self._cursor_created is not None:
            with contextlib.suppress(msgspec.ValidationError):
                created = msgspec.convert(self._cursor_created, datetime)
                if created.tzinfo is None:
                    created = created.replace(tzinfo=timezone.utc)
        return GapStart(last_id=self._cursor_id, last_created=created)

    async def _recover(self) -> None:
        """Deliver the entries of every pending gap, oldest gap first."""
        assert self._session is not None
        client = EntriesClient(
            self._session,
            self.api_url,
            self._token,
            backoff=Backoff(self._backoff.initial, self._backoff.maximum),
            closing=self._closing_now,
        )
        while self._gaps and not self._closing_now():
            gap = self._gaps.pop(0)
            try:
                entries = await client.missed(gap)
            except BackfillError as exc:
                self.backfill_error = exc
                logger.error("gap recovery failed: %s", exc)
                self._gaps.clear()
                return
            for entry in self._limit(entries):
                event_id = entry["id"]
                assert self._recent is not None
                if not self._recent.add(event_id):
                    continue
                if self._cursor_id is None or event_id > self._cursor_id:
                    self._cursor_id = event_id
                    created = entry.get("created")
                    self._cursor_created = created if isinstance(created, str) else None
                frame = Backfilled(_encoder.encode({"id": event_id, "data": entry}).decode())
                self.stats.backfilled_events += 1
                if self._handler is not None:
                    await self._call_handler(frame, _RECOVERY)
                else:
                    assert self._inbox is not None
                    await self._inbox.put(frame)
            if entries:
                logger.info("recovered %d missed entries from the REST API", len(entries))

    def _limit(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply ``backfill_max_age`` and ``backfill_max_events``, logging what is skipped."""
        if self.backfill_max_age is not None:
            oldest = time.time() - self.backfill_max_age
            kept = [e for e in entries if not _older_than(e, oldest)]
            if len(kept) < len(entries):
                logger.warning(
                    "gap recovery skipped %d entries older than %.0fs (backfill_max_age)",
                    len(entries) - len(kept),
                    self.backfill_max_age,
                )
            entries = kept
        limit = self.backfill_max_events
        if limit is not None and len(entries) > limit:
            logger.warning(
                "gap recovery skipped the %d oldest of %d missed entries (backfill_max_events=%d)",
                len(entries) - limit,
                len(entries),
                limit,
            )
            entries = entries[len(entries) - limit :]
        return entries

    async def _stop_backfill(self) -> None:
        task = self._backfill_task
        self._backfill_task = None
        if task is None or task.done():
            return
        if self._turn.owner == _RECOVERY:
            await self._hold_handler()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EOFError):
            await task


_encoder = msgspec.json.Encoder()


def _older_than(entry: dict[str, Any], oldest: float) -> bool:
    created = entry.get("created")
    if not isinstance(created, str):
        return False
    try:
        moment = msgspec.convert(created, datetime)
    except msgspec.ValidationError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() < oldest


def _certificate_problem(error: BaseException) -> str:
    message = getattr(error, "verify_message", None) or str(error)
    return f"{message} (the certificate is not trusted for this host; pass ssl= with the right CA)"


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_text(data: str | bytes) -> str:
    try:
        value = parse_message(data)
    except Exception:
        return "unreadable error message"
    message = getattr(value, "message", None)
    return _redact.redact(message) if isinstance(message, str) else type(value).__name__


def _error_reason(exc: Any) -> str:
    code = getattr(exc, "code", None)
    if code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
        return "message_too_big"
    if isinstance(exc, aiohttp.WebSocketError):
        return "protocol_error"
    return "reset"


def _describe(exc: Any) -> str:
    text = str(exc) or type(exc).__name__
    return _redact.redact(text)
