"""A local NeuroIO events service: WebSocket events and the REST entries list, on one port.

:class:`Emulator` follows ``docs/protocol.md``: a client connects, sends
``{"action": "AUTH", "data": {"token": ...}}`` and gets ``{"auth": "ok"}`` (or
``{"error": ...}`` and close code 1008), answers ``{"action": "PING"}`` with
``{"PING": "PONG"}``, and pushes ``{"id": <id>, "data": {<entry>}}`` to every authenticated
client, in emission order. ``GET /v1/entries/`` on the same port serves everything emitted
(newest first, paginated, filtered) for gap recovery.

This module owns the lifecycle, emitting, and the steering and observing tests do; the parts
live beside it: the WebSocket side in ``_server``, the REST side in ``_rest``, the hostile
frames in ``_hostile``, replay in ``_replay``, the entries in ``_entries`` and their pictures
in ``_media`` (drawn by ``_faces``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl as ssl_module
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web

from ..exceptions import ConfigurationError
from ._connlog import ConnectionLog
from ._entries import OMIT, EntryFactory, entry_image_url
from ._frames import Frame, encoder
from ._hostile import hostile_frames
from ._media import MEDIA_PREFIX, MediaSide
from ._replay import SKIP, load_recording, play, replayed_entry
from ._rest import History, RestApi, RestOrder, RestShape, Stored, check_rest_options
from ._server import ClientRecord, WebSocketSide
from ._spaces import SPACE_ID_STRIDE, Space, space_token

__all__ = ["BOGUS_ID", "MAX_SPACES", "Emulator"]

_log = logging.getLogger("neuroio.emulator")

_CLOSE_GOING_AWAY = 1001
_MIN_TICK = 0.004  # the stream's shortest sleep, s
_MAX_BATCH = 2000  # events the stream emits in one go when behind

MAX_SPACES = 10_000
"""The most spaces one emulator serves (their ids stay below ``2**53``, exact in JSON)."""

BOGUS_ID = 2**62
"""The id :meth:`Emulator.push_unlisted` gives an event by default: far beyond any real one."""


class Emulator:
    """A faithful local NeuroIO events service (WebSocket + REST) for tests and demos.

    Args:
        host: address to listen on.
        port: port to listen on; 0 picks a free one (see :attr:`port`), kept across
            :meth:`restart` and a later :meth:`start`.
        tokens: accepted API tokens; ``None`` accepts any non-empty token. Also the
            :attr:`tokens` attribute, which may be changed at any time.
        rate: events per second streamed from :meth:`start` on; ``None``: none.
        stream_count: end that stream after this many events (in each space, with
            ``spaces``); ``None``: it never ends.
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
            :meth:`wait_replayed`), as :func:`neuroio.recording.read_recording` reads it.
        replay_speed: playback speed of ``replay``; 2.0 is twice as fast, 0 as fast as
            possible.
        close_timeout: seconds to wait for a client's answer to a close frame before
            aborting the TCP connection.
        compress: allow permessage-deflate if the client asks for it.
        clock_offset: seconds the server's clock is off (negative: behind): the ``created``
            of generated entries follows the shifted clock, so the REST ``date_from`` /
            ``date_to`` filters, which compare with ``created``, do too. Also the
            :attr:`clock_offset` attribute.
        rest_order: ``"desc"`` (newest first) or ``"asc"`` (oldest first): the order of
            ``GET /v1/entries/`` results. Also an attribute.
        rest_shape: ``"page"`` (``{"count", "next", "previous", "results"}``) or ``"list"``
            (a bare JSON list of entries, still honouring limit and offset). Also an
            attribute.
        spaces: serve this many spaces, each with its own token (``space-1-token``, ...,
            see :attr:`space_tokens`), entries (``space.id`` ``k``, ids from
            ``k * 10**9 + 1``), REST history and WebSocket audience; ``rate`` then applies
            to each space (the spaces take turns, so their events are spread over each
            second). Up to :data:`MAX_SPACES`. Emit with ``emu.space(token).emit()``.
            ``None``: one space, any accepted token sees every event. Not with ``tokens`` or
            ``replay``.
        connection_log: append a JSON line to this file when a connection opens, is
            authenticated and closes (see ``docs/emulator.md``; never a token); ``None``:
            no log.

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
        stream_count: int | None = None,
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
        clock_offset: float = 0.0,
        rest_order: RestOrder = "desc",
        rest_shape: RestShape = "page",
        spaces: int | None = None,
        connection_log: str | Path | None = None,
    ) -> None:
        _check_options(port, rate, auth_timeout, history_size, replay_speed, close_timeout)
        check_rest_options(rest_order, rest_shape)
        if spaces is not None:
            if (
                isinstance(spaces, bool)
                or not isinstance(spaces, int)
                or not 1 <= spaces <= MAX_SPACES
            ):
                raise ConfigurationError(
                    f"spaces must be a whole number in 1..{MAX_SPACES}, got {spaces!r}"
                )
            if tokens is not None:
                raise ConfigurationError("spaces generates the tokens: do not give tokens too")
            if replay is not None:
                raise ConfigurationError("replay plays one space: not with spaces")
            tokens = [space_token(k) for k in range(1, spaces + 1)]
        self.host = host
        self.tokens: set[str] | None = None if tokens is None else set(tokens)
        """Accepted tokens (``None``: any non-empty one); change it to accept or reject."""
        if self.tokens is not None and not all(isinstance(t, str) and t for t in self.tokens):
            raise ConfigurationError("tokens must be non-empty strings")
        # Revoked tokens are refused even when ``tokens`` is None (any token accepted).
        self._revoked: set[str] = set()
        if stream_count is not None and (
            isinstance(stream_count, bool) or not isinstance(stream_count, int) or stream_count < 0
        ):
            raise ConfigurationError(
                f"stream_count must be a whole number >= 0, got {stream_count!r}"
            )
        self.rate = rate
        self.stream_count = stream_count
        self.push_while_disconnected = push_while_disconnected
        self.auth_timeout = auth_timeout
        self.ignore_id_from = ignore_id_from
        self.close_timeout = close_timeout
        self.compress = compress
        self._rest_order: RestOrder = rest_order
        self._rest_shape: RestShape = rest_shape
        self.factory = EntryFactory(seed, clock_offset=clock_offset)
        """The generator behind :meth:`emit`; ``factory.make()`` builds entries to pass in."""
        self._ssl = ssl
        self._port = port
        self._bound_port: int | None = None
        self._history = History(history_size)
        self.emitted = 0
        """How many events :meth:`emit` (and the stream, burst and replay) emitted; with
        ``spaces``, in all spaces."""
        self._spaces: dict[str, Space] = {}
        for k in range(1, (spaces or 0) + 1):
            token = space_token(k)
            self._spaces[token] = Space(
                k,
                token,
                seed=seed,
                clock_offset=clock_offset,
                history_size=history_size,
                token_ok=self._token_ok,
                notify=self._notify,
                settings=self,
                emit=self._emit_in,
            )

        self._ws = WebSocketSide(
            self._history,
            settings=self,
            token_ok=self._token_ok,
            notify=self._notify,
            on_connection=self._on_connection,
            history_of=self._history_of if self._spaces else None,
            space_of=self._space_of if self._spaces else None,
        )
        self._connection_log = None if connection_log is None else ConnectionLog(connection_log)
        self.clients: list[ClientRecord] = self._ws.clients
        """One record per WebSocket connection ever accepted, in order."""
        self._rest = RestApi(
            self._history, token_ok=self._token_ok, notify=self._notify, settings=self
        )
        self.rest_requests: list[dict[str, str]] = self._rest.requests
        """The query parameters of each ``GET /v1/entries/`` request, in order."""
        self._media = MediaSide(
            self._history, notify=self._notify, find=self._find if self._spaces else None
        )
        self.media_requests: list[str] = self._media.requests
        """The path of each picture request (``/media/...``), in order, 404s too."""

        self._replay_path = Path(replay) if replay is not None else None
        self._replay_speed = replay_speed
        self._replay_frames: list[tuple[float, Frame]] | None = None
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
            ConfigurationError: the replay file cannot be read, or the connection log
                opened.
            OSError: the port cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        if self._replay_path is not None and self._replay_frames is None:
            self._replay_frames = load_recording(self._replay_path)
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._first_auth is None:
            self._first_auth = asyncio.Event()
            self._replay_done = asyncio.Event()
        if self._connection_log is not None:
            try:
                self._connection_log.open()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot open the connection log {self._connection_log.path}: "
                    f"{exc.strerror or exc}"
                ) from None
        app = web.Application()
        app.router.add_get("/", self._ws.handle)
        app.router.add_get("/v1/entries/", self._rest_handle)
        app.router.add_get("/v1/entries", self._rest_handle)
        self._media.add_routes(app)
        # Handlers end when their clients are closed, which stop() does first.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await self._listen(runner)
        except BaseException:
            await runner.cleanup()
            if self._connection_log is not None:
                self._connection_log.close()
            raise
        self._runner = runner
        # Generated entries link to the pictures served here (the port is known now).
        self.factory.media_url = self.media_url
        for space in self._spaces.values():
            space.factory.media_url = self.media_url
        if self.rate is not None:
            self.start_stream(self.rate, count=self.stream_count)
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
        await self._ws.disconnect_all(_CLOSE_GOING_AWAY, "server shutting down")
        await runner.cleanup()
        if self._connection_log is not None:
            self._connection_log.close()
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
            await self._ws.disconnect_all(_CLOSE_GOING_AWAY, "server restarting")
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
    def streaming(self) -> bool:
        """Whether the stream of ``rate`` (or :meth:`start_stream`) is emitting: false before,
        after :meth:`stop_stream` and once its ``count`` is reached."""
        task = self._stream_task
        return task is not None and not task.done()

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

    @property
    def media_url(self) -> str:
        """Base of the picture URLs, ``http://127.0.0.1:<port>/media`` (see
        ``docs/emulator.md``)."""
        return self.api_url + MEDIA_PREFIX

    def image_url(self, entry_id: int, kind: str = "face") -> str:
        """The URL where the emulator serves the ``kind`` (``"face"`` or ``"full"``) picture
        of the entry ``entry_id``, emitted or not (then it is a 404: handy in tests)."""
        return entry_image_url(self.media_url, entry_id, kind)

    def _url_host(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    # ------------------------------------------------------------------ REST answers

    @property
    def rest_order(self) -> RestOrder:
        """Order of REST results, ``"desc"`` or ``"asc"``; may be changed at any time."""
        return self._rest_order

    @rest_order.setter
    def rest_order(self, order: RestOrder) -> None:
        check_rest_options(order, self._rest_shape)
        self._rest_order = order

    @property
    def rest_shape(self) -> RestShape:
        """Shape of REST answers, ``"page"`` or ``"list"``; may be changed at any time."""
        return self._rest_shape

    @rest_shape.setter
    def rest_shape(self, shape: RestShape) -> None:
        check_rest_options(self._rest_order, shape)
        self._rest_shape = shape

    # ------------------------------------------------------------------ the server's clock

    @property
    def clock_offset(self) -> float:
        """Seconds the server's clock is off; setting it steps the clock at once."""
        return self.factory.clock_offset

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        self.factory.clock_offset = seconds

    def now(self) -> datetime:
        """The server's clock: the wall clock shifted by :attr:`clock_offset`."""
        return self.factory.now()

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

        Raises:
            ConfigurationError: the emulator serves several ``spaces`` (emit in one of them
                with ``emu.space(token).emit()``).
        """
        self._one_space("emit")
        return self._emit(entry, overrides)

    async def push_unlisted(
        self, entry: dict[str, Any] | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Push an event that the REST API never lists, as a platform pushing a bogus id.

        Like :meth:`emit` (same ``entry`` and ``overrides``), but the id is :data:`BOGUS_ID`
        unless one is given, the entry is not kept in the history (so neither REST nor the
        ``push_while_disconnected`` backlog has it), the factory's next id does not move and
        :attr:`emitted` does not count it.

        Returns:
            The entry pushed.
        """
        entry_id = overrides.pop("id", None)
        if entry_id is None:
            entry_id = entry.get("id", BOGUS_ID) if isinstance(entry, dict) else BOGUS_ID
        following = self.factory.next_id
        built = self._build_entry(entry, {**overrides, "id": entry_id})
        self.factory.next_id = following
        self._ws.push_event(_event_frame(built)[0])
        return built

    async def burst(self, n: int) -> list[dict[str, Any]]:
        """Emit ``n`` generated events back to back; returns them.

        Raises:
            ConfigurationError: the emulator serves several ``spaces`` (use
                ``emu.space(token).burst(n)``).
        """
        self._one_space("burst")
        out: list[dict[str, Any]] = []
        for i in range(n):
            out.append(self._emit(None, {}))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the senders write while a big burst is built
        return out

    def _build_entry(
        self, entry: dict[str, Any] | None, overrides: dict[str, Any]
    ) -> dict[str, Any]:
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
        return entry

    def _emit(self, entry: dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
        entry = self._build_entry(entry, overrides)
        frame, data_start = _event_frame(entry)
        self._history.add(entry, frame, data_start)
        self._ws.push_event(frame)
        self.emitted += 1
        if self._waiters:
            self._notify()
        return entry

    def start_stream(self, rate: float, *, count: int | None = None) -> None:
        """Emit generated events at ``rate`` per second (in each space, with ``spaces``)
        until :meth:`stop_stream`, or until ``count`` events (in each space) were emitted.

        Replaces a running stream. Falls behind (never ahead) when the machine cannot keep
        up; the count owed is caught up in batches.
        """
        if not rate > 0 or math.isinf(rate):
            raise ConfigurationError(f"rate must be a positive number, got {rate}")
        if self._stream_task is not None:
            self._stream_task.cancel()
        self.rate = rate
        self._stream_task = asyncio.create_task(self._run_stream(rate, count))

    async def stop_stream(self) -> None:
        """Stop the stream started by ``rate`` or :meth:`start_stream`."""
        task = self._stream_task
        self._stream_task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_stream(self, rate: float, count: int | None) -> None:
        # With spaces, ``rate`` is per space and the spaces take turns: emission i goes to
        # space i % n at t0 + i / (n * rate), so each space gets ``rate`` a second, its
        # events evenly spread and the spaces' events interleaved, instead of n at once.
        spaces = list(self._spaces.values())
        slots = len(spaces) or 1
        total = rate * slots
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        end = None if count is None else count * slots
        while end is None or sent < end:
            due = int((loop.time() - t0) * total) + 1 - sent
            if end is not None:
                due = min(due, end - sent)
            # Bounded batches keep the loop responsive when far behind.
            batch = min(due, _MAX_BATCH)
            for _ in range(batch):
                if spaces:
                    self._emit_in(spaces[sent % slots], None, {})
                else:
                    self._emit(None, {})
                sent += 1
            if batch == _MAX_BATCH:
                await asyncio.sleep(0)  # behind: let the senders write, then catch up
                continue
            # Everything due is out. Sleep at least one tick even when the next event is due
            # now: a clock of coarse resolution (uvloop's counts milliseconds and stands still
            # within a loop iteration) would otherwise spin here until it moves. Thousands of
            # events a second also need no wake-up each: a few per tick cost less CPU and
            # still spread them over the second.
            await asyncio.sleep(max(t0 + sent / total - loop.time(), _MIN_TICK))
        _log.info("the stream has ended: %d events emitted", sent)
        self._notify()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every frame queued so far has been written to the open connections.

        Raises:
            TimeoutError: some client's queue did not drain in time.
        """
        await self._ws.flush(timeout)

    # ------------------------------------------------------------------ spaces

    @property
    def space_tokens(self) -> list[str]:
        """The token of each space, in order (``[]`` without ``spaces``)."""
        return list(self._spaces)

    def space(self, token: str) -> Space:
        """The space whose token is ``token``: emit in it, read its history and requests.

        Raises:
            KeyError: no space has this token.
        """
        try:
            return self._spaces[token]
        except KeyError:
            raise KeyError("no space has this token") from None

    def _one_space(self, what: str) -> None:
        if self._spaces:
            raise ConfigurationError(
                f"this emulator serves {len(self._spaces)} spaces: "
                f"{what} in one with emu.space(token).{what}()"
            )

    def _emit_in(
        self, space: Space, entry: dict[str, Any] | None, overrides: dict[str, Any]
    ) -> dict[str, Any]:
        factory = space.factory
        if entry is None:
            overrides = {"space": {"id": space.id, "name": space.name}, **overrides}
            entry = factory.make(**overrides)
        elif overrides or "id" not in entry:
            entry = {k: v for k, v in entry.items() if k not in overrides}
            entry.update((k, v) for k, v in overrides.items() if v is not OMIT)
            entry.setdefault("id", factory.next_id)
        entry_id = entry.get("id")
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise ConfigurationError(f"an entry id must be an int, got {entry_id!r}")
        factory.observe(entry_id)
        frame, data_start = _event_frame(entry)
        space.history.add(entry, frame, data_start)
        self._ws.push_event(frame, space.token)
        space.emitted += 1
        self.emitted += 1
        if self._waiters:
            self._notify()
        return entry

    def _history_of(self, token: str) -> History:
        space = self._spaces.get(token)
        return self._history if space is None else space.history

    def _find(self, entry_id: int) -> Stored | None:
        # Ids of different spaces never meet: space k's start at k * SPACE_ID_STRIDE + 1.
        space = self._spaces.get(space_token(entry_id // SPACE_ID_STRIDE))
        return None if space is None else space.history.find(entry_id)

    async def _rest_handle(self, request: web.Request) -> web.Response:
        if self._spaces:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            space = self._spaces.get(token.strip()) if scheme == "Token" else None
            if space is not None:
                return await space.rest.handle(request)
        return await self._rest.handle(request)

    def _rests(self) -> list[RestApi]:
        return [self._rest, *(space.rest for space in self._spaces.values())]

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
        await self._ws.close_clients(code, reason, wait_closed=wait_closed)

    async def abort_clients(self) -> None:
        """Abort every open TCP connection: no close frame, queued frames are lost."""
        await self._ws.abort_clients()

    async def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on, as the platform does with a deactivated token.

        Its live connections are dropped with close code 1001 (a neutral one: the platform
        says nothing about the token then); the client's next AUTH with it gets
        ``{"error": ...}`` and close code 1008, and a REST request with it HTTP 401.
        Returns once those connections have ended.
        """
        self._revoked.add(token)
        if self.tokens is not None:
            self.tokens.discard(token)
        await self._ws.close_token(token, 1001, "going away")

    def accept(self, token: str) -> None:
        """Accept ``token`` from now on (a new or reactivated token of the same account).

        A token new to the emulator queues the events emitted from now on for its first
        connection, not the whole history.
        """
        if not isinstance(token, str) or not token:
            raise ConfigurationError("a token must be a non-empty string")
        self._revoked.discard(token)
        if self.tokens is not None:
            self.tokens.add(token)
        self._ws.queue_from_now(token)

    def freeze(self, *, new_clients: bool = False) -> None:
        """Make the open connections go silent, as over a dead network path.

        Their TCP connections stay open and what they send is still recorded, but they get
        no PONG, no AUTH answer and no events; events emitted meanwhile are lost for them
        (they stay in the REST history). Connections opened later are served normally,
        unless ``new_clients`` is true.
        """
        self._ws.freeze(new_clients=new_clients)

    def unfreeze(self) -> None:
        """Serve every connection normally again (what they missed is not re-sent)."""
        self._ws.unfreeze()

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is to every live client: ``str`` as text, ``bytes`` as binary."""
        if isinstance(frame, str):
            item = Frame(WSMsgType.TEXT, frame.encode("utf-8"))
        else:
            item = Frame(WSMsgType.BINARY, bytes(frame))
        self._ws.push_live(item)

    async def send_hostile(self, kinds: Iterable[str] | None = None) -> None:
        """Send malformed and abusive frames to every live client (see :data:`HOSTILE_KINDS`).

        Args:
            kinds: which ones, sent in catalogue order; ``None``: all (the last,
                ``bad_close_code``, ends the connections).

        Raises:
            ConfigurationError: an unknown kind.
        """
        for item in hostile_frames(kinds):
            self._ws.push_live(item)

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
        for rest in self._rests():
            rest.fail(status, count, retry_after)

    def heal_rest(self) -> None:
        """Serve REST requests normally again."""
        for rest in self._rests():
            rest.heal()

    def hold_rest(self, *, after: int = 0) -> None:
        """Answer the next ``after`` REST requests, then keep every later one waiting (a
        slow API) until :meth:`release_rest`: to make something happen between two
        requests of the client. :attr:`rest_held` says how many wait."""
        for rest in self._rests():
            rest.hold(after)

    def release_rest(self) -> None:
        """Answer the REST requests :meth:`hold_rest` keeps waiting, and hold no more."""
        for rest in self._rests():
            rest.release()

    @property
    def rest_held(self) -> int:
        """REST requests waiting at :meth:`hold_rest`'s gate now."""
        return sum(rest.held for rest in self._rests())

    # ------------------------------------------------------------------ observing

    @property
    def live_clients(self) -> list[ClientRecord]:
        """Records of the connections open and authenticated now."""
        return self._ws.live_clients

    def rest_request_count(
        self, *, path: str | None = None, has: Iterable[str] = (), **params: str
    ) -> int:
        """How many ``GET /v1/entries/`` requests came (failed ones too) that match.

        Args:
            path: only requests to this path (``"/v1/entries/"`` or ``"/v1/entries"``);
                ``None``: either.
            has: only requests whose query has each of these parameters, whatever its value.
            params: only requests whose query has each of these parameters with this value
                (as sent, a string: ``id_from="42"``).
        """
        return sum(rest.count(path, has, params) for rest in self._rests())

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

    # ------------------------------------------------------------------ glue for the parts

    def _token_ok(self, token: Any) -> bool:
        if not isinstance(token, str) or not token:
            return False
        if token in self._revoked:
            return False
        return self.tokens is None or token in self.tokens

    def _on_connection(self, record: ClientRecord, event: str) -> None:
        if event == "auth" and self._first_auth is not None:
            self._first_auth.set()
        if self._connection_log is not None:
            self._connection_log.write(record, event)

    def _space_of(self, token: str) -> int | None:
        space = self._spaces.get(token)
        return None if space is None else space.number

    async def _run_replay(self, frames: list[tuple[float, Frame]]) -> None:
        assert self._first_auth is not None and self._replay_done is not None
        try:
            await self._first_auth.wait()
            await play(frames, self._replay_speed, self._replay_one)
        finally:
            self._replay_done.set()
            self._notify()

    def _replay_one(self, frame: Frame) -> None:
        entry = replayed_entry(frame)
        if entry is SKIP:
            return
        if entry is not None:
            self._emit(entry, {})
            return
        # Anything else in the recording (errors, odd shapes, binary) is sent as it was.
        self._ws.push_live(frame)


def _event_frame(entry: dict[str, Any]) -> tuple[bytes, int]:
    """The event frame of ``entry``, and where its ``data`` starts in it."""
    prefix = b'{"id":%d,"data":' % entry["id"]
    return prefix + encoder.encode(entry) + b"}", len(prefix)


def _check_options(
    port: int,
    rate: float | None,
    auth_timeout: float | None,
    history_size: int,
    replay_speed: float,
    close_timeout: float,
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
