"""A local NeuroIO events service: WebSocket events and the REST entries list, on one port.

:class:`Emulator` follows ``shared/seed/protocol.md``: a client connects, sends
``{"action": "AUTH", "data": {"token": ...}}`` and gets ``{"auth": "ok"}`` (or
``{"error": ...}`` and close code 1008), answers ``{"action": "PING"}`` with
``{"PING": "PONG"}``, and pushes ``{"id": <id>, "data": {<entry>}}`` to every authenticated
client, in emission order. ``GET /v1/entries/`` on the same port serves everything emitted
(newest first, paginated, filtered) for gap recovery.

Tests steer it (emit, burst, stream, freeze, close, abort, restart, failing REST, hostile
frames, replay of a recording) and inspect what clients did through :attr:`Emulator.clients`::

    async with Emulator(tokens={"secret"}) as emu:
        ...  # connect a client to emu.url with the token
        await emu.wait_for_clients(1)
        await emu.emit(result="exact")
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import itertools
import logging
import math
import socket
import ssl as ssl_module
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import msgspec
from aiohttp import WSMsgType, web

from ._entries import OMIT, EntryFactory
from .exceptions import ConfigurationError
from .protocol import Kind, classify

__all__ = ["HOSTILE_KINDS", "OMIT", "ClientRecord", "Emulator", "EntryFactory"]

_log = logging.getLogger(__name__)

AUTH_OK_FRAME = b'{"auth":"ok"}'
PONG_FRAME = b'{"PING":"PONG"}'
AUTH_FAILED_FRAME = b'{"error":"Authentication failed: invalid token"}'
AUTH_TIMEOUT_FRAME = b'{"error":"Authentication timeout"}'
REDACTED_AUTH = '{"action":"AUTH","data":{"token":"<redacted>"}}'

# Clients only send AUTH and PING; anything near this size is a client bug.
_MAX_CLIENT_MSG = 1024 * 1024
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 1000
_CLOSE_GOING_AWAY = 1001
_CLOSE_POLICY = 1008

HOSTILE_KINDS: tuple[str, ...] = (
    "not_json",
    "unexpected_shapes",
    "huge_numbers",
    "binary_invalid_utf8",
    "text_invalid_utf8",
    "deep_nesting",
    "oversized",
    "bad_close_code",
)
"""What :meth:`Emulator.send_hostile` can send, in the order it sends them.

``not_json``: text that is not JSON, or truncated JSON. ``unexpected_shapes``: JSON of
shapes the protocol never uses (``{"id": "x", "data": 5}``, ``{"PING": 7}``, ``[]``,
``null``, ...). ``huge_numbers``: ``{"id": 1e400, ...}`` and a 400-digit id.
``binary_invalid_utf8`` / ``text_invalid_utf8``: bytes that are not UTF-8, in a binary frame
and in a text frame. ``deep_nesting``: 100 000 levels of ``[``. ``oversized``: a text frame
over 8 MiB. ``bad_close_code``: a close frame with code 5000, which ends the connection.
"""

_OVERSIZED_BYTES = 8 * 1024 * 1024 + 1024


def _hostile_frames(kind: str) -> list[_Frame | _Close]:
    text = WSMsgType.TEXT
    if kind == "not_json":
        return [
            _Frame(text, b"this is not json"),
            _Frame(text, b'{"id": 1, "data": '),
            _Frame(text, b""),
        ]
    if kind == "unexpected_shapes":
        shapes = (
            b'{"id":"x","data":5}',
            b'{"PING":7}',
            b"[]",
            b"null",
            b'"text"',
            b"{}",
            b'{"id":-1,"data":[]}',
            b'{"id":null,"data":{}}',
            b'{"unexpected":{"nested":[1,2,3]}}',
            b'{"error":{"code":7}}',
        )
        return [_Frame(text, s) for s in shapes]
    if kind == "huge_numbers":
        digits = b"1" + b"0" * 400
        return [
            _Frame(text, b'{"id":1e400,"data":{"id":1e400,"confidence":-1e400}}'),
            _Frame(text, b'{"id":' + digits + b',"data":{"id":' + digits + b"}}"),
        ]
    if kind == "binary_invalid_utf8":
        return [_Frame(WSMsgType.BINARY, b'\xff\xfe{"id":1,"data":{"name":"\xc3\x28"}}')]
    if kind == "text_invalid_utf8":
        return [_Frame(text, b'{"id":1,"data":{"name":"\xc3\x28\xff"}}')]
    if kind == "deep_nesting":
        return [_Frame(text, b"[" * 100_000 + b"]" * 100_000)]
    if kind == "oversized":
        head = b'{"hostile":"oversized","padding":"'
        tail = b'"}'
        return [_Frame(text, head + b"x" * (_OVERSIZED_BYTES - len(head) - len(tail)) + tail)]
    if kind == "bad_close_code":
        return [_Close(5000, "out-of-range close code")]
    raise ConfigurationError(f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE_KINDS)}")


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

    @property
    def open(self) -> bool:
        """Whether the connection is still open."""
        return self.closed_at is None


class _Frame:
    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: WSMsgType, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload


class _Close:
    __slots__ = ("code", "reason", "sent")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        self.sent = asyncio.Event()


# What a client's send queue holds: ``bytes`` is an event frame (the hot path), the rest
# are other text/binary frames and the closing handshake.
_Item: TypeAlias = "bytes | _Frame | _Close"


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
        self.pending: deque[_Item] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.sender: asyncio.Task[None] | None = None
        self.auth_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.done = asyncio.Event()

    def push(self, item: _Item) -> None:
        if self.closing:
            return
        self.pending.append(item)
        self.idle.clear()
        self.wake.set()

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class _Stored:
    """One emitted entry as kept for the REST API: its event frame and the filterable fields."""

    __slots__ = (
        "seq",
        "id",
        "ts",
        "result",
        "liveness",
        "mood",
        "sex",
        "age",
        "source_id",
        "space_id",
        "frame",
        "data_start",
    )

    def __init__(self, seq: int, entry: dict[str, Any], frame: bytes, data_start: int) -> None:
        self.seq = seq
        self.id: int = entry["id"]
        self.ts = _timestamp(entry.get("created"))
        self.result = entry.get("result")
        self.liveness = entry.get("liveness")
        self.mood = entry.get("mood")
        self.sex = entry.get("sex")
        self.age = entry.get("age")
        self.source_id = _nested_id(entry.get("source"))
        self.space_id = _nested_id(entry.get("space"))
        self.frame = frame
        self.data_start = data_start

    def data(self) -> memoryview:
        return memoryview(self.frame)[self.data_start : -1]


def _nested_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


def _parse_time(value: str) -> float:
    # Python 3.10's fromisoformat does not take "Z"; the platform writes it.
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:  # the platform sometimes omits the zone: it means UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return _parse_time(value)
    except ValueError:
        return None


class _BadQuery(Exception):
    pass


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


class Emulator:
    """A faithful local NeuroIO events service (WebSocket + REST) for tests and demos.

    Args:
        host: address to listen on.
        port: port to listen on; 0 picks a free one (see :attr:`port`), kept across
            :meth:`restart` and a later :meth:`start`.
        tokens: accepted API tokens; ``None`` accepts any non-empty token. Also the
            :attr:`tokens` attribute, which may be changed at any time.
        rate: events per second streamed from :meth:`start` on; ``None``: none.
        seed: seed of the :class:`EntryFactory` behind :meth:`emit`.
        push_while_disconnected: ``True``: an event emitted while a token has no live
            authenticated client is pushed when one authenticates (handy in tests that emit
            before connecting). ``False``: it is not, as on the platform, where it can only be
            fetched from ``GET /v1/entries/``.
        auth_timeout: close (code 1008) a client that has not authenticated after this many
            seconds; ``None`` never does.
        ssl: serve ``wss://`` and ``https://`` with this context.
        history_size: how many emitted entries the REST API keeps (the oldest go first).
        ignore_id_from: make the REST API ignore ``id_from``/``entry_id_from``, like a
            platform that does not support them.
        replay: a recording to play back once the first client authenticates (see
            :meth:`wait_replayed`): JSON lines ``{"t": seconds, "frame": "<text>"}`` or
            ``{"t": seconds, "frame_b64": "<base64>"}``.
        replay_speed: playback speed of ``replay``; 2.0 is twice as fast, 0 as fast as
            possible.
        close_timeout: seconds to wait for a client's answer to a close frame before
            aborting the TCP connection.
        compress: allow permessage-deflate if the client asks for it.

    Raises:
        ConfigurationError: an option is invalid.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Iterable[str] | None = None,
        rate: float | None = None,
        seed: int | None = None,
        push_while_disconnected: bool = True,
        auth_timeout: float | None = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        history_size: int = 100_000,
        ignore_id_from: bool = False,
        replay: str | Path | None = None,
        replay_speed: float = 1.0,
        close_timeout: float = 2.0,
        compress: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be in 0..65535, got {port}")
        if rate is not None and not rate > 0:
            raise ConfigurationError(f"rate must be positive or None, got {rate}")
        if auth_timeout is not None and not auth_timeout > 0:
            raise ConfigurationError("auth_timeout must be positive or None")
        if history_size < 1:
            raise ConfigurationError("history_size must be at least 1")
        if not replay_speed >= 0 or math.isinf(replay_speed):
            raise ConfigurationError("replay_speed must be a finite number >= 0")
        if not close_timeout > 0:
            raise ConfigurationError("close_timeout must be positive")
        self.host = host
        self.tokens: set[str] | None = None if tokens is None else set(tokens)
        """Accepted tokens (``None``: any non-empty one); change it to accept or reject."""
        if self.tokens is not None and not all(isinstance(t, str) and t for t in self.tokens):
            raise ConfigurationError("tokens must be non-empty strings")
        self.rate = rate
        self.push_while_disconnected = push_while_disconnected
        self.auth_timeout = auth_timeout
        self.ignore_id_from = ignore_id_from
        self.close_timeout = close_timeout
        self.compress = compress
        self.factory = EntryFactory(seed)
        """The generator behind :meth:`emit`; ``factory.make()`` builds entries to pass in."""
        self._ssl = ssl
        self._port = port
        self._bound_port: int | None = None
        self._history: deque[_Stored] = deque(maxlen=history_size)
        self._ids_sorted = True
        self._next_seq = 0
        self.emitted = 0
        """How many events :meth:`emit` (and the stream, burst and replay) emitted."""

        self.clients: list[ClientRecord] = []
        """One record per WebSocket connection ever accepted, in order."""
        self._open: dict[int, _Client] = {}
        self._live: dict[str, list[_Client]] = {}
        self._cursor: dict[str, int] = {}
        self._frozen_new = False

        self.rest_requests: list[dict[str, str]] = []
        """The query parameters of each ``GET /v1/entries/`` request, in order."""
        self._rest_fail: tuple[int, float | None] | None = None
        self._rest_fail_left: int | None = None

        self._replay_path = Path(replay) if replay is not None else None
        self._replay_speed = replay_speed
        self._replay_frames: list[tuple[float, _Frame]] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._replay_done: asyncio.Event | None = None
        self._first_auth: asyncio.Event | None = None

        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._waiters = 0

    def __repr__(self) -> str:
        where = self.url if self._bound_port is not None else "not started"
        return (
            f"<Emulator {where} clients={len(self.clients)} live={len(self.live_clients)} "
            f"emitted={self.emitted}>"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen, and start the stream (``rate``) and the replay if configured.

        After a :meth:`stop`, starts again on the port it had.

        Raises:
            ConfigurationError: the replay file cannot be read.
            OSError: the port cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        if self._replay_path is not None and self._replay_frames is None:
            self._replay_frames = _load_recording(self._replay_path)
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._first_auth is None:
            self._first_auth = asyncio.Event()
            self._replay_done = asyncio.Event()
        app = web.Application()
        app.router.add_get("/", self._handle_ws)
        app.router.add_get("/v1/entries/", self._handle_entries)
        app.router.add_get("/v1/entries", self._handle_entries)
        # Handlers end when their clients are closed, which stop() does first.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await self._listen(runner)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.rate is not None:
            self.start_stream(self.rate)
        if self._replay_frames is not None and self._replay_task is None:
            # After a stop() the recording plays again from its start.
            assert self._replay_done is not None
            self._replay_done.clear()
            self._replay_task = asyncio.create_task(self._run_replay(self._replay_frames))
        _log.info("emulator serving %s and %s", self.url, self.api_url)
        self._notify()

    async def _listen(self, runner: web.AppRunner) -> None:
        port = self._bound_port if self._bound_port is not None else self._port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, port), family=family)
        try:
            site = web.SockSite(runner, sock, ssl_context=self._ssl)
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._site = site
        self._bound_port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop the stream and replay, close every client (code 1001) and the server."""
        if self._stream_task is not None:
            await self.stop_stream()
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        await self._stop_listening()
        await self._disconnect_all(_CLOSE_GOING_AWAY, "server shutting down")
        await runner.cleanup()
        _log.info("emulator stopped")
        self._notify()

    async def restart(self, *, downtime: float = 0.0, abort: bool = False) -> None:
        """Stop listening, disconnect every client, and listen again on the same port.

        History, tokens, the stream and the replay carry on (events emitted meanwhile go to
        the REST history, and are pushed later if ``push_while_disconnected``).

        Args:
            downtime: seconds during which connections are refused.
            abort: drop connections with a TCP abort instead of a close frame (code 1001).
        """
        runner = self._runner
        if runner is None:
            raise RuntimeError("the emulator is not running")
        await self._stop_listening()
        if abort:
            await self.abort_clients()
        else:
            await self._disconnect_all(_CLOSE_GOING_AWAY, "server restarting")
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self._listen(runner)
        _log.info("emulator restarted on %s", self.url)

    async def _stop_listening(self) -> None:
        site = self._site
        self._site = None
        if site is not None:
            await site.stop()

    async def serve_forever(self) -> None:
        """Start (if needed) and run until cancelled, then stop."""
        if self._runner is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether :meth:`start` has run and :meth:`stop` has not."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``port=0`` was given)."""
        if self._bound_port is None:
            raise RuntimeError("the emulator has not been started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The events URL, ``ws://127.0.0.1:<port>/`` (``wss://`` with ``ssl``)."""
        return f"{'wss' if self._ssl else 'ws'}://{self._url_host()}:{self.port}/"

    @property
    def api_url(self) -> str:
        """The REST base URL, ``http://127.0.0.1:<port>`` (``https://`` with ``ssl``)."""
        return f"{'https' if self._ssl else 'http'}://{self._url_host()}:{self.port}"

    def _url_host(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    # ------------------------------------------------------------------ emitting

    async def emit(self, entry: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """Push one event to every live authenticated client and add it to the history.

        Args:
            entry: the entry to send; ``None`` generates one with :attr:`factory`. An entry
                without ``id`` gets the factory's next id.
            overrides: fields replacing those of ``entry`` (or of the generated one).

        Returns:
            The entry sent.

        Frames are queued per client and written in emission order; use :meth:`flush` to
        wait until they are on the sockets.
        """
        return self._emit(entry, overrides)

    async def burst(self, n: int) -> list[dict[str, Any]]:
        """Emit ``n`` generated events back to back; returns them."""
        out: list[dict[str, Any]] = []
        for i in range(n):
            out.append(self._emit(None, {}))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the senders write while a big burst is built
        return out

    def _emit(self, entry: dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
        if entry is None:
            entry = self.factory.make(**overrides)
        else:
            if not isinstance(entry, dict):
                raise ConfigurationError(f"an entry is a dict, got {type(entry).__name__}")
            if overrides or "id" not in entry:
                entry = dict(entry)
                for key, value in overrides.items():
                    if value is OMIT:
                        entry.pop(key, None)
                    else:
                        entry[key] = value
                if "id" not in entry:
                    entry["id"] = self.factory.next_id
        entry_id = entry.get("id")
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise ConfigurationError(f"an entry id must be an int, got {entry_id!r}")
        self.factory.observe(entry_id)
        prefix = b'{"id":%d,"data":' % entry_id
        frame = prefix + _encoder.encode(entry) + b"}"
        history = self._history
        if history and entry_id <= history[-1].id:
            self._ids_sorted = False
        stored = _Stored(self._next_seq, entry, frame, len(prefix))
        self._next_seq += 1
        history.append(stored)
        for clients in self._live.values():
            for client in clients:
                if not client.frozen:
                    client.push(frame)
        self.emitted += 1
        if self._waiters:
            self._notify()
        return entry

    def start_stream(self, rate: float) -> None:
        """Emit generated events at ``rate`` per second until :meth:`stop_stream`.

        Replaces a running stream. Falls behind (never ahead) when the machine cannot keep
        up; the count owed is caught up in batches.
        """
        if not rate > 0 or math.isinf(rate):
            raise ConfigurationError(f"rate must be a positive number, got {rate}")
        if self._stream_task is not None:
            self._stream_task.cancel()
        self.rate = rate
        self._stream_task = asyncio.create_task(self._run_stream(rate))

    async def stop_stream(self) -> None:
        """Stop the stream started by ``rate`` or :meth:`start_stream`."""
        task = self._stream_task
        self._stream_task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_stream(self, rate: float) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        while True:
            due = int((loop.time() - t0) * rate) + 1 - sent
            # Bounded batches keep the loop responsive when far behind.
            for _ in range(min(due, 2000)):
                self._emit(None, {})
                sent += 1
            delay = t0 + sent / rate - loop.time()
            await asyncio.sleep(max(delay, 0.0))

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every frame queued so far has been written to the open connections.

        Raises:
            TimeoutError: some client's queue did not drain in time.
        """
        clients = [c for c in self._open.values() if not c.done.is_set()]
        try:
            await asyncio.wait_for(asyncio.gather(*(self._drained(c) for c in clients)), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"client queues did not drain within {timeout} s") from None

    @staticmethod
    async def _drained(client: _Client) -> None:
        await _first_of(client.idle, client.done)

    # ------------------------------------------------------------------ controls

    async def close_clients(
        self, code: int = 1000, reason: str = "", *, wait_closed: bool = False
    ) -> None:
        """Send a close frame to every open connection, after the frames already queued.

        Args:
            code: the close code (any 16-bit number, even one the protocol forbids).
            reason: the close reason (cut to 123 bytes).
            wait_closed: return only once the connections have ended, i.e. the client
                answered the close frame or ``close_timeout`` passed and the emulator
                aborted the TCP connection. By default, return once the frames are written.
        """
        pairs = [(client, _Close(code, reason)) for client in self._open.values()]
        for client, close in pairs:
            client.push(close)
        if wait_closed:
            await self._wait_closed([client for client, _ in pairs])
            return
        waits = [
            asyncio.ensure_future(_first_of(close.sent, client.done)) for client, close in pairs
        ]
        if waits:
            await asyncio.wait(waits)

    async def abort_clients(self) -> None:
        """Abort every open TCP connection: no close frame, queued frames are lost."""
        clients = list(self._open.values())
        for client in clients:
            client.record.closed_by = client.record.closed_by or "abort"
            client.closing = True
            client.pending.clear()
            client.abort()
        await self._wait_closed(clients)

    async def _disconnect_all(self, code: int, reason: str) -> None:
        clients = list(self._open.values())
        for client in clients:
            # Shutting down: what is still queued is dropped, the close goes out now.
            client.pending.clear()
            client.push(_Close(code, reason))
        await self._wait_closed(clients)

    async def _wait_closed(self, clients: list[_Client]) -> None:
        if not clients:
            return
        waits = [asyncio.ensure_future(c.done.wait()) for c in clients]
        _, pending = await asyncio.wait(waits, timeout=self.close_timeout + 1.0)
        for fut in pending:
            fut.cancel()
        for client in clients:
            if not client.done.is_set():  # pragma: no cover - a stuck handler
                client.abort()

    def freeze(self, *, new_clients: bool = False) -> None:
        """Make the open connections go silent, as over a dead network path.

        Their TCP connections stay open and what they send is still recorded, but they get
        no PONG, no AUTH answer and no events; events emitted meanwhile are lost for them
        (they stay in the REST history). Connections opened later are served normally,
        unless ``new_clients`` is true.
        """
        for client in self._open.values():
            client.frozen = True
        self._frozen_new = new_clients

    def unfreeze(self) -> None:
        """Serve every connection normally again (what they missed is not re-sent)."""
        for client in self._open.values():
            client.frozen = False
        self._frozen_new = False

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is to every live client: ``str`` as text, ``bytes`` as binary."""
        if isinstance(frame, str):
            item = _Frame(WSMsgType.TEXT, frame.encode("utf-8"))
        else:
            item = _Frame(WSMsgType.BINARY, bytes(frame))
        self._push_live(item)

    async def send_hostile(self, kinds: Iterable[str] | None = None) -> None:
        """Send malformed and abusive frames to every live client (see :data:`HOSTILE_KINDS`).

        Args:
            kinds: which ones, sent in catalogue order; ``None``: all (the last,
                ``bad_close_code``, ends the connections).

        Raises:
            ConfigurationError: an unknown kind.
        """
        wanted = HOSTILE_KINDS if kinds is None else tuple(kinds)
        items: list[_Frame | _Close] = []
        for kind in HOSTILE_KINDS:
            if kind in wanted:
                items.extend(_hostile_frames(kind))
        for kind in wanted:
            if kind not in HOSTILE_KINDS:
                raise ConfigurationError(
                    f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE_KINDS)}"
                )
        for item in items:
            self._push_live(item)

    def _push_live(self, item: _Item) -> None:
        for clients in self._live.values():
            for client in clients:
                if not client.frozen:
                    client.push(item)

    def fail_rest(
        self, status: int = 500, *, count: int | None = None, retry_after: float | None = None
    ) -> None:
        """Make the next ``count`` REST requests (``None``: all until :meth:`heal_rest`) fail.

        Args:
            status: the HTTP status to answer, 400..599.
            count: how many requests fail.
            retry_after: seconds to put in a ``Retry-After`` header (written as a decimal
                number, so tests can use fractions of a second).
        """
        if not 400 <= status <= 599:
            raise ConfigurationError(f"a failure status is 400..599, got {status}")
        if count is not None and count < 1:
            raise ConfigurationError("count must be at least 1 or None")
        self._rest_fail = (status, retry_after)
        self._rest_fail_left = count

    def heal_rest(self) -> None:
        """Serve REST requests normally again."""
        self._rest_fail = None
        self._rest_fail_left = None

    # ------------------------------------------------------------------ observing

    @property
    def live_clients(self) -> list[ClientRecord]:
        """Records of the connections open and authenticated now."""
        return [c.record for c in self._open.values() if c.token is not None]

    async def wait_for_clients(
        self, n: int, *, authenticated: bool = True, timeout: float = 5.0
    ) -> None:
        """Wait until at least ``n`` connections (authenticated ones by default) were seen.

        Counts every connection since the start, open or closed.

        Raises:
            TimeoutError: fewer were seen within ``timeout`` seconds.
        """

        def enough() -> bool:
            if authenticated:
                return sum(1 for r in self.clients if r.authenticated) >= n
            return len(self.clients) >= n

        what = "authenticated connections" if authenticated else "connections"
        await self.wait_until(enough, timeout=timeout, what=f"{n} {what}")

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str | None = None
    ) -> None:
        """Wait until ``predicate()`` is true, checking it after every change of state.

        A change is a start or stop, a connection, an AUTH, a frame received, a closed
        connection, a REST request, an emitted event or the end of the replay.

        Raises:
            TimeoutError: still false after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiters += 1
        try:
            while not predicate():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"waited {timeout} s for {what or 'the condition'} in vain")
                if self._changed is None:
                    self._changed = asyncio.Event()
                changed = self._changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiters -= 1

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = asyncio.Event()
            changed.set()

    async def wait_replayed(self, timeout: float = 10.0) -> None:
        """Wait until the whole ``replay`` recording has been played.

        Raises:
            ConfigurationError: the emulator has no ``replay``.
            RuntimeError: it has not been started.
            TimeoutError: not finished within ``timeout`` seconds.
        """
        if self._replay_path is None:
            raise ConfigurationError("this emulator has no replay file")
        done = self._replay_done
        if done is None:
            raise RuntimeError("the emulator has not been started")
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the replay did not finish within {timeout} s") from None
        task = self._replay_task
        if task is not None and task.done() and not task.cancelled():
            task.result()

    # ------------------------------------------------------------------ WebSocket side

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            autoclose=False,
            autoping=False,
            heartbeat=None,  # the protocol's own PING is the heartbeat
            max_msg_size=_MAX_CLIENT_MSG,
            compress=self.compress,
            timeout=self.close_timeout,
        )
        await ws.prepare(request)
        record = ClientRecord(id=len(self.clients) + 1, connected_at=time.monotonic())
        self.clients.append(record)
        client = _Client(record, ws, request)
        client.frozen = self._frozen_new
        self._open[record.id] = client
        client.sender = asyncio.create_task(self._run_sender(client))
        if self.auth_timeout is not None:
            client.auth_timer = asyncio.get_running_loop().call_later(
                self.auth_timeout, self._auth_timed_out, client
            )
        _log.debug("client %d connected", record.id)
        self._notify()
        try:
            await self._receive_loop(client)
        finally:
            await self._finish(client)
        return ws

    async def _receive_loop(self, client: _Client) -> None:
        ws = client.ws
        record = client.record
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                self._on_text(client, msg.data)
            elif kind is WSMsgType.BINARY:
                record.frames.append(msg.data)
                if not (client.frozen or client.closing):
                    client.push(
                        _Frame(WSMsgType.TEXT, b'{"error":"Binary frames are not supported"}')
                    )
                self._notify()
            elif kind is WSMsgType.PING:
                if not (client.frozen or client.closing):
                    with contextlib.suppress(Exception):
                        await ws.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                if client.closing:
                    # The answer to our close frame: the handshake is complete.
                    transport = client.request.transport
                    if transport is not None:
                        transport.close()
                else:
                    record.closed_by = "client"
                    record.close_code = msg.data
                    client.closing = True
                    client.pending.clear()
                    code = msg.data if _sendable_code(msg.data) else 1000
                    with contextlib.suppress(Exception):
                        await ws.close(code=code, drain=False)
                return
            elif kind is WSMsgType.PONG:
                continue
            else:  # CLOSED, CLOSING, ERROR: the connection is gone
                return

    def _on_text(self, client: _Client, text: str) -> None:
        record = client.record
        try:
            message = _decoder.decode(text)
        except (msgspec.DecodeError, UnicodeEncodeError):
            message = None
        action = message.get("action") if isinstance(message, dict) else None
        if action == "AUTH":
            record.frames.append(REDACTED_AUTH)
            data = message.get("data") if isinstance(message, dict) else None
            token = data.get("token") if isinstance(data, dict) else None
            record.auth_tokens.append(token if isinstance(token, str) else "")
            if not (client.frozen or client.closing):
                self._authenticate(client, token)
        else:
            record.frames.append(text)
            if action == "PING":
                record.ping_times.append(time.monotonic())
            if not (client.frozen or client.closing):
                if action == "PING":
                    client.push(_Frame(WSMsgType.TEXT, PONG_FRAME))
                elif isinstance(message, dict):
                    shown = action if isinstance(action, str) else None
                    error = f"Unknown action: {shown[:64]}" if shown else "Missing action"
                    client.push(_Frame(WSMsgType.TEXT, _encoder.encode({"error": error})))
                else:
                    client.push(
                        _Frame(
                            WSMsgType.TEXT,
                            b'{"error":"Invalid message: expected a JSON object"}',
                        )
                    )
        self._notify()

    def _authenticate(self, client: _Client, token: Any) -> None:
        if not self._token_ok(token):
            _log.debug("client %d: token rejected", client.record.id)
            client.push(_Frame(WSMsgType.TEXT, AUTH_FAILED_FRAME))
            client.push(_Close(_CLOSE_POLICY, "invalid token"))
            return
        assert isinstance(token, str)
        if client.auth_timer is not None:
            client.auth_timer.cancel()
            client.auth_timer = None
        client.push(_Frame(WSMsgType.TEXT, AUTH_OK_FRAME))
        if client.token == token:
            return  # a repeated AUTH on a live connection changes nothing
        if client.token is not None:
            self._leave(client)
        client.record.authenticated = True
        clients = self._live.setdefault(token, [])
        if not clients and self.push_while_disconnected:
            self._push_backlog(client, self._cursor.get(token, 0))
        clients.append(client)
        client.token = token
        _log.debug("client %d authenticated", client.record.id)
        if self._first_auth is not None:
            self._first_auth.set()

    def _token_ok(self, token: Any) -> bool:
        if not isinstance(token, str) or not token:
            return False
        return self.tokens is None or token in self.tokens

    def _push_backlog(self, client: _Client, from_seq: int) -> None:
        history = self._history
        if not history:
            return
        start = max(0, from_seq - history[0].seq)
        for stored in itertools.islice(history, start, None):
            client.push(stored.frame)

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
            self._cursor[token] = self._next_seq

    def _auth_timed_out(self, client: _Client) -> None:
        client.auth_timer = None
        if client.token is None and not client.frozen:
            _log.debug("client %d: no AUTH in time", client.record.id)
            client.push(_Frame(WSMsgType.TEXT, AUTH_TIMEOUT_FRAME))
            client.push(_Close(_CLOSE_POLICY, "authentication timeout"))

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
                elif isinstance(item, _Frame):
                    await ws.send_frame(item.payload, item.opcode)
                elif isinstance(item, _Close):
                    await self._send_close(client, item)
                    return
        except Exception as exc:  # the connection broke under us; the reader sees it too
            _log.debug("client %d: send failed: %r", record.id, exc)
            client.abort()
        finally:
            pending.clear()
            client.idle.set()

    async def _send_close(self, client: _Client, close: _Close) -> None:
        client.record.closed_by = "server"
        client.record.close_code = close.code
        # Written as a raw frame: aiohttp's close() would not wait for the client's answer
        # when the reader runs in another task, and it refuses nothing we may want to test.
        try:
            await client.ws.send_frame(_close_payload(close.code, close.reason), WSMsgType.CLOSE)
        finally:
            close.sent.set()
        client.closing = True
        client.close_timer = asyncio.get_running_loop().call_later(self.close_timeout, client.abort)

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
        self._notify()

    # ------------------------------------------------------------------ REST side

    async def _handle_entries(self, request: web.Request) -> web.Response:
        query = request.query
        self.rest_requests.append({k: v for k, v in query.items()})
        self._notify()
        if self._rest_fail is not None:
            status, retry_after = self._rest_fail
            if self._rest_fail_left is not None:
                self._rest_fail_left -= 1
                if self._rest_fail_left <= 0:
                    self.heal_rest()
            headers = {}
            if retry_after is not None:
                headers["Retry-After"] = format(retry_after, "g")
            if status == 429:
                detail = "Request was throttled."
            else:
                detail = "Simulated failure."
            return web.json_response({"detail": detail}, status=status, headers=headers)
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            return _unauthorized("Authentication credentials were not provided.")
        if scheme != "Token" or not self._token_ok(token.strip()):
            return _unauthorized("Invalid token.")
        try:
            limit, offset, selected, count = self._select(query)
        except _BadQuery as exc:
            return web.json_response({"detail": str(exc)}, status=400)
        next_url = None
        if offset + limit < count:
            next_url = self._page_url(request, limit, offset + limit)
        previous_url = None
        if offset > 0:
            previous_url = self._page_url(request, limit, max(0, offset - limit))
        body = b'{"count":%d,"next":%s,"previous":%s,"results":[%s]}' % (
            count,
            _encoder.encode(next_url),
            _encoder.encode(previous_url),
            b",".join(s.data() for s in selected),
        )
        return web.Response(body=body, content_type="application/json")

    @staticmethod
    def _page_url(request: web.Request, limit: int, offset: int) -> str:
        params = {k: v for k, v in request.query.items()}
        params["limit"] = str(limit)
        if offset:
            params["offset"] = str(offset)
        else:
            params.pop("offset", None)
        return str(request.url.with_query(params))

    def _select(self, query: Any) -> tuple[int, int, list[_Stored], int]:
        limit = _int_param(query, "limit")
        if limit is None or limit <= 0:
            limit = _DEFAULT_LIMIT
        limit = min(limit, _MAX_LIMIT)
        offset = max(_int_param(query, "offset") or 0, 0)
        id_from: int | None = None
        if not self.ignore_id_from:
            for name in ("id_from", "entry_id_from"):
                value = _int_param(query, name)
                if value is not None:
                    id_from = value if id_from is None else max(id_from, value)
        wanted = _Filters(
            date_from=_date_param(query, "date_from"),
            date_to=_date_param(query, "date_to"),
            result=_list_param(query, "result"),
            liveness=_list_param(query, "liveness"),
            mood=_list_param(query, "mood"),
            sex=_int_list_param(query, "sex"),
            age_from=_int_param(query, "age_from"),
            age_to=_int_param(query, "age_to"),
            sources=_int_list_param(query, "sources_ids"),
            spaces=_int_list_param(query, "spaces_ids"),
        )

        history = self._history
        if self._ids_sorted:
            start = 0
            if id_from is not None:
                start = bisect.bisect_left(history, id_from, key=_stored_id)
            # Newest first: walk from the right end, which deque does cheaply.
            candidates: Iterable[_Stored] = itertools.islice(
                reversed(history), len(history) - start
            )
            total = len(history) - start
        else:
            ordered = sorted(history, key=_stored_id, reverse=True)
            if id_from is not None:
                ordered = [s for s in ordered if s.id >= id_from]
            candidates = ordered
            total = len(ordered)
        if not wanted.active():
            selected = list(itertools.islice(candidates, offset, offset + limit))
            return limit, offset, selected, total
        count = 0
        selected = []
        end = offset + limit
        for stored in candidates:
            if wanted.match(stored):
                if offset <= count < end:
                    selected.append(stored)
                count += 1
        return limit, offset, selected, count

    # ------------------------------------------------------------------ replay

    async def _run_replay(self, frames: list[tuple[float, _Frame]]) -> None:
        assert self._first_auth is not None and self._replay_done is not None
        try:
            await self._first_auth.wait()
            loop = asyncio.get_running_loop()
            speed = self._replay_speed
            start = loop.time()
            t0 = frames[0][0] if frames else 0.0
            for n, (t, frame) in enumerate(frames):
                if speed > 0:
                    delay = start + (t - t0) / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif n % 1000 == 999:
                    await asyncio.sleep(0)
                self._replay_one(frame)
        finally:
            self._replay_done.set()
            self._notify()

    def _replay_one(self, frame: _Frame) -> None:
        if frame.opcode is WSMsgType.TEXT:
            raw = frame.payload.decode("utf-8", "replace")
            kind = classify(raw)
            if kind in (Kind.AUTH_OK, Kind.AUTH_REJECTED, Kind.PONG):
                return
            if kind is Kind.EVENT:
                with contextlib.suppress(msgspec.DecodeError):
                    value = _decoder.decode(frame.payload)
                    if isinstance(value, dict):
                        event_id = value.get("id")
                        data = value.get("data")
                        if (
                            isinstance(event_id, int)
                            and not isinstance(event_id, bool)
                            and isinstance(data, dict)
                        ):
                            data.setdefault("id", event_id)
                            if data["id"] == event_id:
                                self._emit(data, {})
                                return
        # Anything else in the recording (errors, odd shapes, binary) is sent as it was.
        self._push_live(frame)


@dataclass(frozen=True)
class _Filters:
    """The REST filters besides ids; ``None`` is "any"."""

    date_from: float | None
    date_to: float | None
    result: frozenset[str] | None
    liveness: frozenset[str] | None
    mood: frozenset[str] | None
    sex: frozenset[int] | None
    age_from: int | None
    age_to: int | None
    sources: frozenset[int] | None
    spaces: frozenset[int] | None

    def active(self) -> bool:
        return any(getattr(self, f) is not None for f in self.__dataclass_fields__)

    def match(self, s: _Stored) -> bool:
        if self.date_from is not None and (s.ts is None or s.ts < self.date_from):
            return False
        if self.date_to is not None and (s.ts is None or s.ts > self.date_to):
            return False
        if self.result is not None and s.result not in self.result:
            return False
        if self.liveness is not None and s.liveness not in self.liveness:
            return False
        if self.mood is not None and s.mood not in self.mood:
            return False
        if self.sex is not None and s.sex not in self.sex:
            return False
        age = s.age if isinstance(s.age, int) and not isinstance(s.age, bool) else None
        if self.age_from is not None and (age is None or age < self.age_from):
            return False
        if self.age_to is not None and (age is None or age > self.age_to):
            return False
        if self.sources is not None and s.source_id not in self.sources:
            return False
        return self.spaces is None or s.space_id in self.spaces


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _sendable_code(code: Any) -> bool:
    return isinstance(code, int) and (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 4999)


def _stored_id(stored: _Stored) -> int:
    return stored.id


def _unauthorized(detail: str) -> web.Response:
    return web.json_response(
        {"detail": detail}, status=401, headers={"WWW-Authenticate": 'Token realm="api"'}
    )


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _BadQuery(f"{name}: enter a whole number") from None


def _list_param(query: Any, name: str) -> frozenset[str] | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _int_list_param(query: Any, name: str) -> frozenset[int] | None:
    values = _list_param(query, name)
    if values is None:
        return None
    try:
        return frozenset(int(v) for v in values)
    except ValueError:
        raise _BadQuery(f"{name}: enter a comma-separated list of whole numbers") from None


def _date_param(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return _parse_time(value)
    except ValueError:
        raise _BadQuery(f"{name}: enter an ISO-8601 date and time") from None


def _load_recording(path: Path) -> list[tuple[float, _Frame]]:
    """Parse a recording: JSON lines ``{"t": float, "frame": str}`` or ``frame_b64``."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the replay file {path}: {exc}") from exc
    frames: list[tuple[float, _Frame]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise ConfigurationError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(item, dict):
            raise ConfigurationError(f"{where}: expected a JSON object")
        t = item.get("t")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise ConfigurationError(f"{where}: 't' must be a number of seconds")
        if isinstance(item.get("frame"), str):
            frame = _Frame(WSMsgType.TEXT, item["frame"].encode("utf-8", "surrogatepass"))
        elif isinstance(item.get("frame_b64"), str):
            try:
                payload = base64.b64decode(item["frame_b64"], validate=True)
            except ValueError as exc:
                raise ConfigurationError(f"{where}: 'frame_b64' is not base64") from exc
            frame = _Frame(WSMsgType.BINARY, payload)
        else:
            raise ConfigurationError(f"{where}: needs a 'frame' or a 'frame_b64' string")
        frames.append((float(t), frame))
    return frames
