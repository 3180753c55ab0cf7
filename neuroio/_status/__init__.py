"""The status page: ``/`` on the metrics server, for a person with a browser.

The page (:mod:`._render`, the static files beside this module) shows the owner's state, a
chart of events per second, and the last events as cards with their face; it is rendered on
the server first (it says everything with JavaScript off), then kept live by server-sent
events on ``/api/events``. Its owner (the bridge, ``listen``) gives two things:

* a :class:`EventRing`, fed with each decoded event on the owner's hot path: one
  ``deque.append`` and one addition, nothing decoded, copied or formatted there. The cards'
  small summaries are made from the ring's last 50 events when a push is due (at most
  :data:`PUSH_INTERVAL` apart), however many events arrived between two pushes;
* a ``state`` coroutine answering the JSON-able state (:func:`._render.page` documents its
  keys), called at most once a second while someone watches.

State-changing requests (``POST /api/deadletters/retry``) are refused (403) unless they come
from the page itself: same origin (``Origin`` or ``Sec-Fetch-Site``) and the per-process
secret the page embeds (``<meta name="neuroio-csrf">``) in the ``X-NeuroIO-CSRF`` header. On a
loopback address the ``Host`` header must name loopback too, so a page of another site that
renames itself to 127.0.0.1 (DNS rebinding) cannot read the page nor its secret.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .. import _redact
from . import _render
from ._render import summarize

__all__ = [
    "CSRF_HEADER",
    "PUSH_INTERVAL",
    "EventRing",
    "Retry",
    "StatusPage",
    "is_loopback",
    "summarize",
]

log = logging.getLogger("neuroio.status")

CARDS = 50
"""Events the ring keeps and the page shows."""
PUSH_INTERVAL = 0.25
"""Least time between two pushes to a watching page: at most 4 a second, whatever the rate."""
STATE_INTERVAL = 1.0
"""Least time between two state refreshes pushed."""
RATE_SAMPLES = 300
"""Seconds of events-per-second history the chart shows (one sample a second)."""
CSRF_HEADER = "X-NeuroIO-CSRF"
"""The header a state-changing request carries the page's secret in."""

State = Callable[[], Awaitable[dict[str, Any]]]
"""The owner's state now, JSON-able (see :func:`._render.page`)."""
Retry = Callable[[str | None], Awaitable[int]]
"""Re-drives the dead letters of one sink (``None``: every sink); answers how many."""

_STATIC = {
    "status.css": "text/css",
    "status.js": "text/javascript",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    # Face pictures live on the platform's storage (or the emulator): any http(s) host.
    "img-src 'self' http: https: data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class EventRing:
    """The last :data:`CARDS` events seen, kept as given (decoded JSON), and how many.

    :meth:`add` is the owner's hot path: it keeps a reference and counts, no more. The
    events kept are not changed by anyone afterwards (the owner is done with them).
    """

    __slots__ = ("_events", "count")

    def __init__(self, size: int = CARDS) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.count = 0
        """Events added so far."""

    def add(self, value: dict[str, Any]) -> None:
        """Keep ``value`` (``{"id": .., "data": {..}}``) as the newest event."""
        self._events.append(value)
        self.count += 1

    def since(self, count: int) -> list[dict[str, Any]]:
        """Summaries of the events added after the ring's ``count`` was ``count``, oldest
        first (at most the ring's size)."""
        new = min(self.count - count, len(self._events))
        if new <= 0:
            return []
        events = list(self._events)[-new:]
        return [summarize(event) for event in events]


class _RateHistory:
    """Events per second, one sample a second, from the ring's count."""

    def __init__(self, ring: EventRing) -> None:
        self._ring = ring
        self._samples: collections.deque[float] = collections.deque(maxlen=RATE_SAMPLES)
        self._last = (time.monotonic(), ring.count)

    def sample(self) -> None:
        now, count = time.monotonic(), self._ring.count
        then, before = self._last
        if now > then:
            self._samples.append((count - before) / (now - then))
        self._last = (now, count)

    @property
    def rates(self) -> list[float]:
        return [round(r, 2) for r in self._samples]


class StatusPage:
    """The routes of the status page, added to a metrics server's aiohttp application.

    Args:
        state: the owner's state (a coroutine; called on the loop).
        ring: where the owner keeps its last events (:meth:`EventRing.add`).
        retry: re-drives dead letters; ``None``: the owner cannot (the POST answers 501).
        title: what the page calls its owner ("bridge", "listener").
    """

    def __init__(
        self,
        state: State,
        ring: EventRing | None = None,
        *,
        retry: Retry | None = None,
        title: str = "bridge",
    ) -> None:
        self._state = state
        self.ring = ring if ring is not None else EventRing()
        self.retry = retry
        self.title = title
        self.secret = secrets.token_urlsafe(32)
        """Sent by the page with each state-changing request (never logged)."""
        self.started_at = time.time()
        self._rates = _RateHistory(self.ring)
        self._sampler: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._streams: set[web.StreamResponse] = set()
        self._host: str = "127.0.0.1"
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Add ``/``, ``/static/*`` and ``/api/*`` to ``app``."""
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/deadletters/retry", self._retry)

    def bound(self, host: str, port: int | None) -> None:
        """The server listens on ``host:port``: start sampling the event rate."""
        self._host, self._port = host, port
        self.started_at = time.time()
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample(), name="neuroio-status-rates")

    async def close(self) -> None:
        """End the live streams (so the server stops at once) and the sampler."""
        self._closing.set()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._rates.sample()

    # -- what is shown ---------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """The state the page shows now: the owner's, with uptime and the rate history."""
        state = dict(await self._state())
        state["title"] = self.title
        state["uptime"] = round(time.time() - self.started_at, 1)
        state["rates"] = self._rates.rates
        state["can_retry"] = self.retry is not None
        return state

    def _check_host(self, request: web.Request) -> None:
        """On a loopback bind, refuse a ``Host`` that does not name loopback (rebinding)."""
        if not _is_loopback(self._host):
            return
        host = urllib.parse.urlsplit(f"//{request.host}").hostname or ""
        if not _is_loopback(host):
            raise web.HTTPForbidden(text="this page answers only to a loopback Host\n")

    async def _index(self, request: web.Request) -> web.Response:
        self._check_host(request)
        state = await self.snapshot()
        body = _render.page(state, self.ring.since(0), csrf=self.secret)
        return web.Response(
            text=_redact.redact(body),
            content_type="text/html",
            charset="utf-8",
            headers=_SECURITY_HEADERS,
        )

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _STATIC.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        body = resources.files(__package__).joinpath(name).read_bytes()
        return web.Response(body=body, content_type=kind, headers=_SECURITY_HEADERS)

    async def _status(self, request: web.Request) -> web.Response:
        self._check_host(request)
        state = await self.snapshot()
        return web.Response(
            text=_encode({"state": state, "events": self.ring.since(0)}),
            content_type="application/json",
            headers=_SECURITY_HEADERS,
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: everything at once, then what changed, batched."""
        self._check_host(request)
        response = web.StreamResponse(
            headers={
                **_SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._streams.add(response)
        try:
            await self._stream(response)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page was closed, or the server is stopping
        finally:
            self._streams.discard(response)
        return response

    async def _stream(self, response: web.StreamResponse) -> None:
        seen = self.ring.count
        update: dict[str, Any] = {
            "state": await self.snapshot(),
            "events": self.ring.since(0),
            "reset": True,
        }
        await response.write(_sse(update))
        state_due = time.monotonic() + STATE_INTERVAL
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL)
            if self._closing.is_set():
                break
            update = {}
            count = self.ring.count
            if count != seen:
                update["events"] = self.ring.since(seen)
                seen = count
            now = time.monotonic()
            if now >= state_due:
                update["state"] = await self.snapshot()
                state_due = now + STATE_INTERVAL
            if update:
                await response.write(_sse(update))

    # -- actions ---------------------------------------------------------------------------

    def _check_origin(self, request: web.Request) -> None:
        """403 unless the request comes from this page: same origin and the page's secret."""
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        same = False
        if site is not None:
            same = site == "same-origin"
        if origin is not None:
            same = (site is None or same) and origin == f"{request.scheme}://{request.host}"
        token = request.headers.get(CSRF_HEADER, "")
        if not same or not hmac.compare_digest(token.encode(), self.secret.encode()):
            raise web.HTTPForbidden(text="refused: not a same-origin request from the page\n")

    async def _retry(self, request: web.Request) -> web.Response:
        self._check_host(request)
        self._check_origin(request)
        sink = request.query.get("sink") or None
        if self.retry is None:
            raise web.HTTPNotImplemented(text="this process cannot re-drive dead letters\n")
        try:
            count = await self.retry(sink)
        except KeyError:
            raise web.HTTPNotFound(text=f"no sink named {sink!r}\n") from None
        except NotImplementedError as exc:
            raise web.HTTPNotImplemented(text=f"{exc}\n") from None
        log.info(
            "dead letters of %s re-driven from the status page: %d", sink or "every sink", count
        )
        return web.json_response({"sink": sink, "retried": count}, headers=_SECURITY_HEADERS)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address."""
    return _is_loopback(host)


def _encode(value: Any) -> str:
    # The page never shows a secret: whatever a server put in an event or an error.
    return _redact.redact(json.dumps(value, separators=(",", ":"), allow_nan=False))


def _sse(update: dict[str, Any]) -> bytes:
    return f"data: {_encode(update)}\n\n".encode()
