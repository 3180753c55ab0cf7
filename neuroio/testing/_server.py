"""The emulator's WebSocket side: one :class:`ClientRecord` and one send queue per connection.

:class:`WebSocketSide` accepts connections, answers AUTH and PING as ``docs/protocol.md``
says, keeps the authenticated connections of each token, queues every frame per connection
(one sender task each, so every connection gets frames in emission order), and runs the
controls tests use on open connections: close, abort, freeze.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from aiohttp import WSMsgType, web

from ._frames import (
    AUTH_FAILED_FRAME,
    AUTH_OK_FRAME,
    AUTH_TIMEOUT_FRAME,
    PONG_FRAME,
    REDACTED_AUTH,
    Close,
    Frame,
    Item,
    close_payload,
    decoder,
    encoder,
)
from ._rest import History

__all__ = ["ClientRecord", "WebSocketSettings", "WebSocketSide"]

# The emulator's modules share one logger name: the token-redacting filter guards it.
_log = logging.getLogger("neuroio.emulator")

# Clients only send AUTH and PING; anything near this size is a client bug.
_MAX_CLIENT_MSG = 1024 * 1024
_CLOSE_POLICY = 1008
_BINARY_REFUSED = b'{"error":"Binary frames are not supported"}'
_NOT_AN_OBJECT = b'{"error":"Invalid message: expected a JSON object"}'


@dataclass(eq=False)
class ClientRecord:
    """What one WebSocket connection did; one per connection ever accepted.

    Attributes:
        id: 1 for the first connection, then 2, 3, ...
        connected_at: ``time.monotonic()`` when the WebSocket handshake completed.
        closed_at: ``time.monotonic()`` when the connection ended, ``None`` while open.
        auth_tokens: the token of each AUTH frame, in order (hidden from ``repr``).
        authenticated: whether an AUTH was accepted on this connection.
        ping_times: ``time.monotonic()`` of each PING received.
        frames: every frame received, text as ``str`` and binary as ``bytes``; an AUTH frame
            is stored as ``REDACTED_AUTH`` so the token is only in :attr:`auth_tokens`.
        close_code: the code of the close frame that ended the connection (the client's if
            it closed first, the emulator's if it did); ``None`` if the connection ended
            without one (abort, network loss).
        closed_by: ``"client"``, ``"server"``, ``"abort"`` (TCP abort by the emulator) or
            ``"lost"`` (the TCP connection ended with no close frame); ``None`` while open.
        events_sent: event frames written to this connection.
        authenticated_at: ``time.monotonic()`` when an AUTH was accepted (the last one that
            joined a token's audience), ``None`` until then.
        space: the 1-based space of the accepted token in an emulator serving several
            spaces, ``None`` otherwise (and until authenticated).
        peer: the client's address, ``"host:port"``, as the emulator saw it.
    """

    id: int
    connected_at: float
    closed_at: float | None = None
    auth_tokens: list[str] = field(default_factory=list, repr=False)
    authenticated: bool = False
    ping_times: list[float] = field(default_factory=list)
    frames: list[str | bytes] = field(default_factory=list, repr=False)
    close_code: int | None = None
    closed_by: str | None = None
    events_sent: int = 0
    authenticated_at: float | None = None
    space: int | None = None
    peer: str | None = None

    @property
    def open(self) -> bool:
        """Whether the connection is still open."""
        return self.closed_at is None


class _Client:
    """The emulator's side of one connection: its socket, its send queue, its state."""

    __slots__ = (
        "record",
        "ws",
        "request",
        "token",
        "frozen",
        "closing",
        "pending",
        "wake",
        "idle",
        "sender",
        "auth_timer",
        "close_timer",
        "done",
    )

    def __init__(
        self, record: ClientRecord, ws: web.WebSocketResponse, request: web.Request
    ) -> None:
        self.record = record
        self.ws = ws
        self.request = request
        self.token: str | None = None
        self.frozen = False
        self.closing = False
        self.pending: deque[Item] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.sender: asyncio.Task[None] | None = None
        self.auth_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()

    @property
    def silent(self) -> bool:
        """Frozen or closing: nothing more is answered on this connection."""
        return self.frozen or self.closing

    def push(self, item: Item) -> None:
        if self.closing:
            return
        self.pending.append(item)
        self.idle.clear()
        self.wake.set()

    def answer(self, payload: bytes) -> None:
        """Queue a text frame, unless the connection is silent."""
        if not self.silent:
            self.push(Frame(WSMsgType.TEXT, payload))

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class WebSocketSettings(Protocol):
    """The options :class:`WebSocketSide` reads when it needs them (the emulator's attributes)."""

    push_while_disconnected: bool
    auth_timeout: float | None
    close_timeout: float
    compress: bool


async def first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _sendable_code(code: Any) -> bool:
    return isinstance(code, int) and (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 4999)


class WebSocketSide:
    """Every connection of an emulator, open or closed.

    Args:
        history: the entries emitted, for the backlog of ``push_while_disconnected``.
        settings: the owner's options, read when needed so they can change at any time.
        token_ok: whether a token is accepted.
        notify: called after every change of state (it wakes the emulator's waiters).
        on_connection: called with a record and ``"open"`` after the handshake, ``"auth"``
            after an AUTH that joined a token's audience, ``"close"`` once it ended.
        history_of: the history of a token's space, for its backlog (an emulator serving
            several spaces keeps one per space); ``None``: ``history`` for every token.
        space_of: the space number of a token (:attr:`ClientRecord.space`); ``None``: none.
    """

    def __init__(
        self,
        history: History,
        *,
        settings: WebSocketSettings,
        token_ok: Callable[[Any], bool],
        notify: Callable[[], None],
        on_connection: Callable[[ClientRecord, str], None],
        history_of: Callable[[str], History] | None = None,
        space_of: Callable[[str], int | None] | None = None,
    ) -> None:
        self._history = history
        self._history_of: Callable[[str], History] = history_of or (lambda _token: history)
        self._settings = settings
        self._token_ok = token_ok
        self._notify = notify
        self._on_connection = on_connection
        self._space_of = space_of
        self.clients: list[ClientRecord] = []
        self._open: dict[int, _Client] = {}
        self._live: dict[str, list[_Client]] = {}
        self._cursor: dict[str, int] = {}
        self._frozen_new = False

    @property
    def live_clients(self) -> list[ClientRecord]:
        """Records of the connections open and authenticated now."""
        return [c.record for c in self._open.values() if c.token is not None]

    # ------------------------------------------------------------------ pushing

    def push_event(self, frame: bytes, token: str | None = None) -> None:
        """Queue an event frame for every live, unfrozen connection (only those
        authenticated with ``token`` if given: the audience of one space)."""
        audiences = self._live.values() if token is None else (self._live.get(token, ()),)
        for clients in audiences:
            for client in clients:
                if not client.frozen:
                    client.push(frame)

    def push_live(self, item: Item) -> None:
        """Queue any item for every live, unfrozen connection."""
        for clients in self._live.values():
            for client in clients:
                if not client.frozen:
                    client.push(item)

    async def flush(self, timeout: float) -> None:
        """Wait until every frame queued so far is written to the open connections."""
        clients = [c for c in self._open.values() if not c.done.is_set()]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(first_of(c.idle, c.done) for c in clients)), timeout
            )
        except asyncio.TimeoutError:
            raise TimeoutError(f"client queues did not drain within {timeout} s") from None

    # ------------------------------------------------------------------ controls

    async def close_clients(self, code: int, reason: str, *, wait_closed: bool) -> None:
        """Queue a close frame on every open connection (see :meth:`Emulator.close_clients`)."""
        pairs = [(client, Close(code, reason)) for client in self._open.values()]
        for client, close in pairs:
            client.push(close)
        if wait_closed:
            await self._wait_closed([client for client, _ in pairs])
            return
        waits = [
            asyncio.ensure_future(first_of(close.sent, client.done)) for client, close in pairs
        ]
        if waits:
            await asyncio.wait(waits)

    async def close_token(self, token: str, code: int, reason: str) -> None:
        """Close, dropping what is queued, every connection authenticated with ``token``."""
        clients = list(self._live.get(token, ()))
        for client in clients:
            client.pending.clear()
            client.push(Close(code, reason))
        await self._wait_closed(clients)

    def queue_from_now(self, token: str) -> None:
        """A token new to this server queues only the events emitted from now on."""
        self._cursor.setdefault(token, self._history_of(token).next_seq)

    async def abort_clients(self) -> None:
        """Abort every open TCP connection: no close frame, queued frames are lost."""
        clients = list(self._open.values())
        for client in clients:
            client.record.closed_by = client.record.closed_by or "abort"
            client.closing = True
            client.pending.clear()
            client.abort()
        await self._wait_closed(clients)

    async def disconnect_all(self, code: int, reason: str) -> None:
        """Close every connection now, dropping what is still queued."""
        clients = list(self._open.values())
        for client in clients:
            client.pending.clear()
            client.push(Close(code, reason))
        await self._wait_closed(clients)

    async def _wait_closed(self, clients: list[_Client]) -> None:
        if not clients:
            return
        waits = [asyncio.ensure_future(c.done.wait()) for c in clients]
        _, pending = await asyncio.wait(waits, timeout=self._settings.close_timeout + 1.0)
        for fut in pending:
            fut.cancel()
        for client in clients:
            if not client.done.is_set():  # pragma: no cover - a stuck handler
                client.abort()

    def freeze(self, *, new_clients: bool) -> None:
        """Make the open connections (and later ones if ``new_clients``) go silent."""
        for client in self._open.values():
            client.frozen = True
        self._frozen_new = new_clients

    def unfreeze(self) -> None:
        """Serve every connection normally again."""
        for client in self._open.values():
            client.frozen = False
        self._frozen_new = False

    # ------------------------------------------------------------------ one connection

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one WebSocket connection until it ends."""
        settings = self._settings
        ws = web.WebSocketResponse(
            autoclose=False,
            autoping=False,
            heartbeat=None,  # the protocol's own PING is the heartbeat
            max_msg_size=_MAX_CLIENT_MSG,
            compress=settings.compress,
            timeout=settings.close_timeout,
        )
        await ws.prepare(request)
        record = ClientRecord(
            id=len(self.clients) + 1, connected_at=time.monotonic(), peer=_peer(request)
        )
        self.clients.append(record)
        client = _Client(record, ws, request)
        client.frozen = self._frozen_new
        self._open[record.id] = client
        client.sender = asyncio.create_task(self._run_sender(client))
        if settings.auth_timeout is not None:
            client.auth_timer = asyncio.get_running_loop().call_later(
                settings.auth_timeout, self._auth_timed_out, client
            )
        _log.debug("client %d connected", record.id)
        self._on_connection(record, "open")
        self._notify()
        try:
            await self._receive_loop(client)
        finally:
            await self._finish(client)
        return ws

    async def _receive_loop(self, client: _Client) -> None:
        ws = client.ws
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                self._on_text(client, msg.data)
            elif kind is WSMsgType.BINARY:
                client.record.frames.append(msg.data)
                client.answer(_BINARY_REFUSED)
                self._notify()
            elif kind is WSMsgType.PING:
                if not client.silent:
                    with contextlib.suppress(Exception):
                        await ws.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                await self._on_close(client, msg.data)
                return
            elif kind is not WSMsgType.PONG:  # CLOSED, CLOSING, ERROR: the connection is gone
                return

    async def _on_close(self, client: _Client, code: Any) -> None:
        if client.closing:
            # The answer to our close frame: the handshake is complete.
            transport = client.request.transport
            if transport is not None:
                transport.close()
            return
        record = client.record
        record.closed_by = "client"
        record.close_code = code
        client.closing = True
        client.pending.clear()
        with contextlib.suppress(Exception):
            await client.ws.close(code=code if _sendable_code(code) else 1000, drain=False)

    def _on_text(self, client: _Client, text: str) -> None:
        record = client.record
        try:
            message = decoder.decode(text)
        except (msgspec.DecodeError, UnicodeEncodeError):
            message = None
        action = message.get("action") if isinstance(message, dict) else None
        if action == "AUTH":
            record.frames.append(REDACTED_AUTH)
            data = message.get("data") if isinstance(message, dict) else None
            token = data.get("token") if isinstance(data, dict) else None
            record.auth_tokens.append(token if isinstance(token, str) else "")
            if not client.silent:
                self._authenticate(client, token)
        else:
            record.frames.append(text)
            if action == "PING":
                record.ping_times.append(time.monotonic())
            client.answer(_answer_to(message, action))
        self._notify()

    def _authenticate(self, client: _Client, token: Any) -> None:
        if not self._token_ok(token):
            _log.debug("client %d: token rejected", client.record.id)
            client.push(Frame(WSMsgType.TEXT, AUTH_FAILED_FRAME))
            client.push(Close(_CLOSE_POLICY, "invalid token"))
            return
        assert isinstance(token, str)
        if client.auth_timer is not None:
            client.auth_timer.cancel()
            client.auth_timer = None
        client.push(Frame(WSMsgType.TEXT, AUTH_OK_FRAME))
        if client.token == token:
            return  # a repeated AUTH on a live connection changes nothing
        if client.token is not None:
            self._leave(client)
        record = client.record
        record.authenticated = True
        record.authenticated_at = time.monotonic()
        record.space = None if self._space_of is None else self._space_of(token)
        clients = self._live.setdefault(token, [])
        if not clients and self._settings.push_while_disconnected:
            backlog = self._history_of(token).frames_since(self._cursor.get(token, 0))
            for frame in backlog:
                client.push(frame)
        clients.append(client)
        client.token = token
        _log.debug("client %d authenticated", record.id)
        self._on_connection(record, "auth")

    def _leave(self, client: _Client) -> None:
        token = client.token
        if token is None:
            return
        client.token = None
        clients = self._live.get(token)
        if clients is None:
            return
        with contextlib.suppress(ValueError):
            clients.remove(client)
        if not clients:
            del self._live[token]
            # Everything emitted until now counted as delivered for this token.
            self._cursor[token] = self._history_of(token).next_seq

    def _auth_timed_out(self, client: _Client) -> None:
        client.auth_timer = None
        if client.token is None and not client.frozen:
            _log.debug("client %d: no AUTH in time", client.record.id)
            client.push(Frame(WSMsgType.TEXT, AUTH_TIMEOUT_FRAME))
            client.push(Close(_CLOSE_POLICY, "authentication timeout"))

    async def _run_sender(self, client: _Client) -> None:
        ws = client.ws
        pending = client.pending
        record = client.record
        text = WSMsgType.TEXT
        try:
            while True:
                if not pending:
                    client.idle.set()
                    client.wake.clear()
                    await client.wake.wait()
                    continue
                item = pending.popleft()
                if type(item) is bytes:
                    await ws.send_frame(item, text)
                    record.events_sent += 1
                elif isinstance(item, Frame):
                    await ws.send_frame(item.payload, item.opcode)
                elif isinstance(item, Close):
                    await self._send_close(client, item)
                    return
        except Exception as exc:  # the connection broke under us; the reader sees it too
            _log.debug("client %d: send failed: %r", record.id, exc)
            client.abort()
        finally:
            pending.clear()
            client.idle.set()

    async def _send_close(self, client: _Client, close: Close) -> None:
        client.record.closed_by = "server"
        client.record.close_code = close.code
        # Written as a raw frame: aiohttp's close() would not wait for the client's answer
        # when the reader runs in another task, and it refuses nothing we may want to test.
        try:
            await client.ws.send_frame(close_payload(close.code, close.reason), WSMsgType.CLOSE)
        finally:
            close.sent.set()
        client.closing = True
        client.close_timer = asyncio.get_running_loop().call_later(
            self._settings.close_timeout, client.abort
        )

    async def _finish(self, client: _Client) -> None:
        record = client.record
        client.closing = True
        for timer in (client.auth_timer, client.close_timer):
            if timer is not None:
                timer.cancel()
        if record.closed_by is None:
            record.closed_by = "lost"
        if record.closed_by in ("abort", "lost"):
            record.close_code = None
        sender = client.sender
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        transport = client.request.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        self._leave(client)
        self._open.pop(record.id, None)
        record.closed_at = time.monotonic()
        client.done.set()
        _log.debug("client %d closed (%s, code %s)", record.id, record.closed_by, record.close_code)
        self._on_connection(record, "close")
        self._notify()


def _peer(request: web.Request) -> str | None:
    transport = request.transport
    peer = None if transport is None else transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def _answer_to(message: Any, action: Any) -> bytes:
    """The answer to a client's frame other than AUTH."""
    if action == "PING":
        return PONG_FRAME
    if isinstance(message, dict):
        shown = action if isinstance(action, str) else None
        error = f"Unknown action: {shown[:64]}" if shown else "Missing action"
        return encoder.encode({"error": error})
    return _NOT_AN_OBJECT
