"""A NeuroIO events server written independently of ``neuroio.emulator``.

It is built on the ``websockets`` library rather than aiohttp and shares no code with the
package, so a bug common to the listener and the emulator cannot hide behind both. It speaks
the protocol of ``docs/protocol.md``: AUTH, PING/PONG, error, events, and the REST list
``GET /v1/entries/`` over the same port.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


@dataclass
class Conn:
    """One client connection as the server saw it."""

    ws: ServerConnection
    authenticated: bool = False
    pings: list[float] = field(default_factory=list)
    frozen: bool = False


class IndependentServer:
    """Plain protocol server: ``reject`` is ``None`` (accept the token), ``"error"`` (answer
    ``{"error": ...}``), ``"close"`` (close with code 4001) or ``"silent"`` (close with 1000,
    no answer). Like the platform, it never re-sends an event to a client that was away when
    it was emitted; the REST list has them all."""

    def __init__(self, token: str = "secret-token") -> None:
        self.token = token
        self.token_rest = token
        self.reject: str | None = None
        self.conns: list[Conn] = []
        self.history: list[dict[str, Any]] = []
        self.auth_attempts = 0
        self._server: Server | None = None
        self._next_id = 1000
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> IndependentServer:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ping_interval=None,
            process_request=self._rest,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def live(self) -> list[Conn]:
        return [c for c in self.conns if c.authenticated and c.ws.state.name == "OPEN"]

    async def wait_live(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` connections in total have authenticated, one of them live now."""
        deadline = time.monotonic() + timeout
        while not (sum(c.authenticated for c in self.conns) >= n and self.live()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} authenticated connections not seen")
            await asyncio.sleep(0.005)

    async def emit(
        self, count: int = 1, fields: Callable[[int], dict[str, Any]] | None = None
    ) -> list[int]:
        """Push ``count`` new entries to every live connection; ``fields(id)`` gives fields
        that replace the defaults (an exact match of one person at one door)."""
        ids: list[int] = []
        for _ in range(count):
            self._next_id += 1
            entry = {
                "id": self._next_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "result": "exact",
                "confidence": 88.5,
                "source": {"id": 1, "name": "door"},
                "pid": "0b7e3c1c-4d0e-4b7c-9a52-9f2a0d6b1e11",
                "face_image": f"https://example.invalid/faces/{self._next_id}.jpg",
            }
            if fields is not None:
                entry.update(fields(self._next_id))
            self.history.append(entry)
            ids.append(self._next_id)
            frame = json.dumps({"id": entry["id"], "data": entry})
            for conn in self.live():
                if not conn.frozen:
                    try:
                        await conn.ws.send(frame)
                    except ConnectionClosed:
                        pass
        return ids

    async def drop_all(self, code: int = 1011) -> None:
        for conn in list(self.live()):
            await conn.ws.close(code)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        self.conns.append(conn)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                action = msg.get("action")
                if action == "AUTH":
                    self.auth_attempts += 1
                    ok = msg.get("data", {}).get("token") == self.token and self.reject is None
                    if ok:
                        conn.authenticated = True
                        await ws.send(json.dumps({"auth": "ok"}))
                    elif self.reject == "close":
                        await ws.close(4001, "unauthorized")
                    elif self.reject == "silent":
                        await ws.close(1000)
                    else:
                        await ws.send(json.dumps({"error": "Invalid token."}))
                        await ws.close(1008)
                elif action == "PING":
                    conn.pings.append(time.monotonic())
                    if not conn.frozen:
                        await ws.send(json.dumps({"PING": "PONG"}))
        except ConnectionClosed:
            pass

    def _rest(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        url = urllib.parse.urlsplit(request.path)
        if url.path.rstrip("/") != "/v1/entries":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != f"Token {self.token_rest}":
            return _json(401, {"detail": "Invalid token."})
        query = dict(urllib.parse.parse_qsl(url.query))
        limit = int(query.get("limit", 20))
        offset = int(query.get("offset", 0))
        id_from = int(query.get("id_from", 0))
        rows = sorted((e for e in self.history if e["id"] >= id_from), key=lambda e: -e["id"])
        page = rows[offset : offset + limit]
        nxt = None
        if offset + limit < len(rows):
            q = dict(query, offset=str(offset + limit), limit=str(limit))
            nxt = f"{self.api_url}/v1/entries/?{urllib.parse.urlencode(q)}"
        return _json(200, {"count": len(rows), "next": nxt, "previous": None, "results": page})


def _json(status: int, body: Any) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, HTTPStatus(status).phrase, headers, data)
