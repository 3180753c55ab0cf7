"""One WebSocket connection of the listener, from the handshake to its verdict.

:class:`Connection` connects, sends AUTH and lets a :class:`~neuroio._protocol.session.Session`
judge the answer, then runs two tasks until the connection ends: the reader, which hands every
frame to the handler itself and reads the next one only when the handler returned (while the
handler is busy the socket is not read, so TCP pushes back on the server and memory stays
bounded), and the keepalive, which sends PINGs on schedule and judges the answers with
:class:`~neuroio._protocol.heartbeat.Heartbeat`. While the reader is not reading (in the
handler, or waiting for room or for its turn) PONGs wait unread in the socket, so the reader
tells the keepalive to stop judging and to start again when it reads; PINGs go out meanwhile.

:class:`Handoff` is the handler's side: one call at a time, in order, whoever delivers (the
reader, gap recovery, the connection hooks), or the bounded inbox the iterator empties.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import aiohttp

from . import _redact
from ._config import ConnectionOptions
from ._inbox import Inbox
from ._protocol.backoff import Backoff
from ._protocol.frames import EVENT_PREFIX, PING_FRAME, Kind, classify, encode_auth, error_text
from ._protocol.heartbeat import Heartbeat
from ._protocol.session import Accepted, Ending, LossReason, Lost, Session, Verdict
from .stats import ListenerStats, State

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp depends on async_timeout on 3.10
    from async_timeout import timeout as _timeout

__all__ = ["Connection", "Handoff", "Handler", "Hook"]

# The connection's lines are the listener's: users filter and silence them under that name.
logger = logging.getLogger("neuroio.listener")

Handler = Callable[[Any], Awaitable[Any]]
"""An async callable taking one frame (``str``, or ``bytes`` for binary frames)."""
Hook = Callable[[], Awaitable[None]]
"""An async callable run in the handler's turn (see :meth:`Handoff.run_hook`)."""

# Who holds the handler: the reader, the recovery task, a hook, close(), or a waiter it was
# handed to.
READER = "reader"
RECOVERY = "recovery"
HOOK = "hook"
CLOSER = "closer"
_HANDED = "handed"
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


class Handoff:
    """Delivers frames to the handler one at a time, or, without a handler, to the inbox.

    Args:
        handler: the user's raw handler; ``None`` for the iterator.
        inbox: where the iterator takes events from.
        stats: counts handler errors and the turn's queue.
        drain_timeout: how long :meth:`hold` waits for the handler call in progress.
    """

    __slots__ = ("handler", "inbox", "turn", "stats", "drain_timeout")

    def __init__(
        self,
        handler: Handler | None,
        inbox: Inbox[Any],
        stats: ListenerStats,
        drain_timeout: float,
    ) -> None:
        self.handler = handler
        self.inbox = inbox
        self.turn = _Turn()
        self.stats = stats
        self.drain_timeout = drain_timeout

    async def call(self, data: str | bytes, owner: str) -> None:
        """Call the handler once it is ``owner``'s turn (one call at a time, in order)."""
        await self.turn.take(owner, self.stats)
        assert self.handler is not None
        try:
            await self.handler(data)
        except Exception:
            self.failed("event handler")
        finally:
            self.turn.release()

    async def deliver(self, data: str | bytes, owner: str) -> None:
        """Deliver one frame: to the handler, or (an event) to the inbox."""
        if self.handler is not None:
            await self.call(data, owner)
        else:
            await self.inbox.put(data)

    async def run_hook(self, hook: Hook, what: str) -> None:
        """Await ``hook()`` in the handler's turn: after the frames before it, before those after.

        An exception is logged with its traceback and counted like a handler error.
        """
        await self.turn.take(HOOK, self.stats)
        try:
            await self._run(hook, what)
        finally:
            self.turn.release()

    async def run_hook_closing(self, hook: Hook, what: str) -> None:
        """Await ``hook()`` while :meth:`hold` keeps the turn; skipped if the drain failed."""
        if self.turn.owner not in (None, CLOSER):
            logger.warning("%s skipped: the event handler was still busy at close()", what)
            return
        await self._run(hook, what)

    async def _run(self, hook: Hook, what: str) -> None:
        try:
            await hook()
        except Exception:
            self.failed(what)

    async def hold(self) -> None:
        """Wait (up to ``drain_timeout``) for the handler call in progress, then keep the turn."""
        if self.handler is None or self.turn.owner is None:
            return
        try:
            async with _timeout(self.drain_timeout):
                await self.turn.take(CLOSER, self.stats)
        except asyncio.TimeoutError:
            logger.warning(
                "the event handler did not return within %.1fs of close(); cancelling it",
                self.drain_timeout,
            )

    def failed(self, what: str) -> None:
        """The handler (or a hook) raised: count it, log it with its traceback, go on."""
        self.stats.handler_errors += 1
        logger.exception("%s raised; continuing with the next message", what)


class Connection:
    """One connection to the events service, run to its verdict by :meth:`run`.

    Args:
        url: the events service.
        token: the API token, sent in the AUTH frame only.
        options: timeouts, intervals, sizes.
        ssl: the TLS context for ``wss://``; ``None`` verifies with the system's CAs.
        http: the aiohttp session the WebSocket is opened on.
        handoff: where frames go.
        backoff: reset once this connection proved healthy for a whole ping interval.
        closing: set when the listener is being closed.
        set_state: moves the listener's :class:`~neuroio.State`.
        remember: dedupe and cursor of gap recovery; ``False`` drops a duplicate event.
        on_connected: awaited in the handler's turn right after ``{"auth": "ok"}``.
        on_live: called once authenticated, before the reader starts (starts recovery).
    """

    __slots__ = (
        "url",
        "last_failure",
        "failure_is_error",
        "reader_task",
        "_token",
        "_options",
        "_ssl",
        "_http",
        "_handoff",
        "_stats",
        "_backoff",
        "_closing",
        "_set_state",
        "_remember",
        "_on_connected",
        "_on_live",
        "_session",
        "_heartbeat",
        "_live_since",
        "_not_reading",
        "_deferred",
        "_waker",
    )

    def __init__(
        self,
        *,
        url: str,
        token: str,
        options: ConnectionOptions,
        ssl: _ssl.SSLContext | None,
        http: aiohttp.ClientSession,
        handoff: Handoff,
        backoff: Backoff,
        closing: asyncio.Event,
        set_state: Callable[[State], None],
        remember: Callable[[str | bytes], bool] | None = None,
        on_connected: Hook | None = None,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.last_failure = ""
        """Why the connection could not be made, for the error after the last attempt."""
        self.failure_is_error = False
        """The failure is one no network hiccup explains (a TLS certificate, a handshake):
        the listener's one line about this attempt is then an error, not a warning."""
        self.reader_task: asyncio.Task[Ending] | None = None
        """The task that calls the handler while the connection is live."""
        self._token = token
        self._options = options
        self._ssl = ssl
        self._http = http
        self._handoff = handoff
        self._stats = handoff.stats
        self._backoff = backoff
        self._closing = closing
        self._set_state = set_state
        self._remember = remember
        self._on_connected = on_connected
        self._on_live = on_live
        self._session = Session()
        self._heartbeat = Heartbeat(options.ping_interval, options.ping_timeout)
        self._live_since = 0.0
        # The reader says it is not reading by holding the handler's turn, or with this flag
        # while it waits for room in the inbox or for its turn.
        self._not_reading = False
        # The keepalive found a PING overdue while the reader was not reading: the reader
        # restarts the heartbeat's clock as soon as it reads again.
        self._deferred = False
        self._waker: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Connection url={self.url!r} phase={self._session.phase.value}>"

    async def run(self) -> Ending:
        """Connect, authenticate and deliver frames until the connection ends; say why."""
        ws = await self._connect()
        if ws is None:
            return Lost(LossReason.CONNECT_FAILED)
        self._stats.connects += 1
        try:
            verdict = await self._serve(ws)
        finally:
            if not ws.closed:
                # A dead peer never answers the close frame: do not wait for it long.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(ws.close(code=1000), self._options.timeout)
        return verdict

    # ------------------------------------------------------------------ connect and AUTH

    async def _connect(self) -> _WebSocket | None:
        options = self._options
        try:
            async with _timeout(options.timeout):
                return await self._http.ws_connect(
                    self.url,
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=options.max_message_size,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=options.timeout),
                    ssl=self._ssl if self._ssl is not None else True,
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            # Never accepted, but retried: a certificate can be fixed on the server side
            # while this runs unattended. Loud, because it is not a network hiccup.
            # The listener logs the one line about this failed attempt, with this reason.
            problem = _certificate_problem(exc.certificate_error)
            self.last_failure = f"TLS certificate rejected: {problem}"
            self.failure_is_error = True
        except aiohttp.ClientSSLError as exc:
            self.last_failure = f"TLS handshake failed: {_describe(exc)}"
            self.failure_is_error = True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.last_failure = _describe(exc)
        return None

    async def _serve(self, ws: _WebSocket) -> Ending:
        deadline = asyncio.get_running_loop().time() + self._options.timeout
        self._set_state(State.AUTHENTICATING)
        await ws.send_str(encode_auth(self._token))
        verdict = await self._authenticate(ws, deadline)
        if not isinstance(verdict, Accepted):
            return verdict
        self._stats.authenticated += 1
        self._set_state(State.LIVE)
        logger.info("connected to %s and authenticated", self.url)
        if self._on_connected is not None:
            # Before the reader starts: no later frame of this connection can overtake it.
            await self._handoff.run_hook(self._on_connected, "on_connected")
        if self._on_live is not None:
            self._on_live()
        return await self._live(ws)

    async def _authenticate(self, ws: _WebSocket, deadline: float) -> Verdict:
        """Wait for the AUTH reply, delivering what comes before it; the session's verdict."""
        loop = asyncio.get_running_loop()
        session = self._session
        while True:
            # Not receive(timeout=0): aiohttp reads a zero timeout as "none".
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._auth_timed_out()
            try:
                msg = await ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                return self._auth_timed_out()
            if msg.type is aiohttp.WSMsgType.ERROR:
                return session.error(_error_reason(msg.data), ws.close_code)
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return session.closed(ws.close_code)
            data = msg.data
            kind = self._account(data)
            if kind is Kind.EVENT:
                self._stats.events += 1
                self._stats.last_event_at = time.time()
                if self._remember is not None and not self._remember(data):
                    continue
            # Delivered before anything is decided: the handler sees the server's answer.
            if self._handoff.handler is not None:
                await self._handoff.call(data, READER)
            elif kind is Kind.EVENT:
                await self._handoff.inbox.put(data)
            verdict = session.frame_received(kind, data)
            if verdict is not None:
                return verdict

    def _auth_timed_out(self) -> Ending:
        logger.warning("no answer to AUTH from %s within %.1fs", self.url, self._options.timeout)
        return self._session.timeout()

    # ------------------------------------------------------------------ the live connection

    async def _live(self, ws: _WebSocket) -> Ending:
        self._live_since = asyncio.get_running_loop().time()
        self._heartbeat.start(self._live_since)
        read = self._read_to_inbox if self._handoff.handler is None else self._read_to_handler
        # Counted before the reader starts: a burst it reads before the keepalive first runs
        # (uvloop can do that) still moves last_event_at.
        events_before = self._stats.events
        reader = self.reader_task = asyncio.create_task(read(ws), name="neuroio-reader")
        keepalive = asyncio.create_task(
            self._keepalive(ws, events_before), name="neuroio-keepalive"
        )
        closing = asyncio.create_task(self._closing.wait(), name="neuroio-closing")
        tasks = (reader, keepalive, closing)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                # Let a handler call in progress finish before the reader is cancelled.
                await self._handoff.hold()
                return self._session.closing()
            return (reader if reader in done else keepalive).result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keepalive(self, ws: _WebSocket, events_seen: int) -> Ending:
        """Send PINGs on schedule and judge the PONGs while the reader reads
        (``events_seen``: the event count when the connection went live)."""
        loop = asyncio.get_running_loop()
        heartbeat = self._heartbeat
        stats = self._stats
        inbox = self._handoff.inbox
        while True:
            now = loop.time()
            if stats.events != events_seen:
                # The hot path counts events; the wall clock is read here, once a second at
                # most: a clock read per event is a tenth of that path.
                events_seen = stats.events
                stats.last_event_at = time.time()
            if inbox.high_water > stats.queue_high_water:
                stats.queue_high_water = inbox.high_water
            if heartbeat.is_dead(now):
                if self._reading():
                    logger.warning(
                        "no PONG from %s within %.1fs of a PING: connection is dead",
                        self.url,
                        heartbeat.timeout,
                    )
                    return self._session.timeout()
                heartbeat.pause()
                self._deferred = True
            if heartbeat.ping_due(now):
                try:
                    await ws.send_str(PING_FRAME)
                except (aiohttp.ClientError, OSError, RuntimeError):
                    return self._session.error(LossReason.RESET)
                heartbeat.ping_sent(loop.time())
                stats.pings_sent += 1
            await self._sleep(min(heartbeat.next_wakeup(loop.time()), _STAMP_INTERVAL))

    def _reading(self) -> bool:
        return not self._not_reading and self._handoff.turn.owner != READER

    async def _sleep(self, delay: float) -> None:
        # A future rather than asyncio.sleep: the reader wakes it when it resumes judgement.
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        self._waker = waker
        handle = loop.call_later(delay, _wake, waker)
        try:
            await waker
        finally:
            handle.cancel()
            self._waker = None

    def _reading_again(self) -> None:
        """The reader reads again after a pause: overdue PINGs get a fresh ``ping_timeout``."""
        self._deferred = False
        self._heartbeat.resume(asyncio.get_running_loop().time())
        if self._waker is not None:
            _wake(self._waker)

    # The hot paths: one loop per consumer, so that neither tests which one it feeds per
    # frame. Everything they touch is a local, and an event written the way the platform
    # writes them costs a prefix test, a counter, the turn and the handler call (or a put);
    # every other frame goes through _control.

    async def _read_to_handler(self, ws: _WebSocket) -> Ending:
        handoff = self._handoff
        handler = handoff.handler
        assert handler is not None
        turn = handoff.turn
        remember = self._remember
        stats = self._stats
        control = self._control
        receive = ws.receive
        prefix = EVENT_PREFIX
        reader = READER
        text = aiohttp.WSMsgType.TEXT
        binary = aiohttp.WSMsgType.BINARY
        while True:
            msg = await receive()
            mtype = msg.type
            if mtype is text:
                data = msg.data
                if data.startswith(prefix):
                    # last_event_at is stamped by the keepalive, once a second at most.
                    stats.events += 1
                    if remember is not None and not remember(data):
                        continue
                elif not control(data, True):
                    continue
            elif mtype is binary:
                data = msg.data
                self._account(data)
            else:
                return self._ended(ws, msg.data if mtype is aiohttp.WSMsgType.ERROR else None)
            if turn.owner is None:
                turn.owner = reader  # also tells the keepalive: not reading
                try:
                    await handler(data)
                except Exception:
                    handoff.failed("event handler")
                finally:
                    if turn.waiters:
                        turn.release()
                    else:
                        turn.owner = None
                if self._deferred:
                    self._reading_again()
            else:
                await self._wait(handoff.call(data, reader))

    async def _read_to_inbox(self, ws: _WebSocket) -> Ending:
        inbox = self._handoff.inbox
        remember = self._remember
        stats = self._stats
        control = self._control
        receive = ws.receive
        prefix = EVENT_PREFIX
        text = aiohttp.WSMsgType.TEXT
        binary = aiohttp.WSMsgType.BINARY
        while True:
            msg = await receive()
            mtype = msg.type
            if mtype is text:
                data = msg.data
                if data.startswith(prefix):
                    stats.events += 1
                    if remember is not None:
                        if len(inbox) >= inbox.maxsize:
                            # Room before the tracker: an event is marked seen only once it
                            # is queued, so one dropped with a connection lost meanwhile is
                            # left for gap recovery instead of skipped as a duplicate.
                            await self._wait(inbox.room())
                        if not remember(data):
                            continue
                elif not control(data, False):
                    continue
            elif mtype is binary:
                self._account(msg.data)
                continue
            else:
                return self._ended(ws, msg.data if mtype is aiohttp.WSMsgType.ERROR else None)
            if not inbox.put_nowait(data):
                await self._wait(inbox.put(data))

    def _control(self, data: str, deliver_all: bool) -> bool:
        """A text frame off the event fast path; whether it goes to the consumer.

        ``deliver_all``: a raw handler gets every frame but a duplicate event; the iterator
        only events.
        """
        kind = self._account(data)
        if kind is Kind.EVENT:
            stats = self._stats
            stats.events += 1
            stats.last_event_at = time.time()
            return self._remember is None or self._remember(data)
        if kind is Kind.ERROR:
            # During authentication an error ends listen() with its own message; on a live
            # connection it is only worth a warning.
            logger.warning("server error message: %s", error_text(data))
        elif kind is Kind.PONG:
            self._pong()
        return deliver_all

    def _pong(self) -> None:
        now = asyncio.get_running_loop().time()
        stats = self._stats
        rtt = self._heartbeat.pong_received(now)
        stats.pongs += 1
        if rtt is not None:
            stats.last_rtt = rtt
        self._backoff.answered(now - self._live_since, self._heartbeat.interval)

    async def _wait(self, step: Awaitable[None]) -> None:
        """Await ``step`` (room in the inbox, the handler's turn) without being judged."""
        self._not_reading = True
        try:
            await step
        finally:
            self._not_reading = False
        if self._deferred:
            self._reading_again()

    def _ended(self, ws: _WebSocket, error: BaseException | None) -> Ending:
        """The socket ended: with a transport ``error``, or closed (``None``)."""
        if error is not None:
            logger.warning("connection to %s failed: %s", self.url, _describe(error))
            return self._session.error(_error_reason(error), ws.close_code)
        if ws.close_code is not None and ws.close_code != 1006:
            logger.info("server closed the connection with code %s", ws.close_code)
        return self._session.closed(ws.close_code)

    def _account(self, data: str | bytes) -> Kind:
        """Count and classify a frame that is not on the event fast path."""
        kind = classify(data)
        if kind is not Kind.EVENT:
            self._stats.control += 1
        if kind is Kind.MALFORMED or kind is Kind.BINARY:
            self._stats.malformed += 1
            logger.warning("received a frame that is not a NeuroIO message (%s)", kind.value)
        return kind


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


def _certificate_problem(error: BaseException) -> str:
    message = getattr(error, "verify_message", None) or str(error)
    return f"{message} (the certificate is not trusted for this host; pass ssl= with the right CA)"


def _error_reason(exc: Any) -> LossReason:
    code = getattr(exc, "code", None)
    if code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
        return LossReason.MESSAGE_TOO_BIG
    if isinstance(exc, aiohttp.WebSocketError):
        return LossReason.PROTOCOL_ERROR
    return LossReason.RESET


def _describe(exc: Any) -> str:
    text = str(exc) or type(exc).__name__
    return _redact.redact(text)
