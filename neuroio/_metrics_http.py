"""The HTTP server of ``/metrics``, ``/healthz`` and the status page: the one the bridge and
``listen`` share.

It serves on its owner's event loop (aiohttp), with no access log and no signal handling of
its own. What it answers is its owner's: ``metrics`` renders the Prometheus text (a coroutine,
so that an owner with a costly rendering can move it off the loop), ``health`` says whether
the owner is healthy and the JSON report (``200`` or ``503``)::

    server = MetricsServer(render_metrics, health)
    await server.start("127.0.0.1", 0)       # ConfigurationError when the port is in use
    logger.info("metrics on %s, health on /healthz", server.url("/metrics"))
    ...
    await server.stop()

With :attr:`MetricsServer.status` set before :meth:`~MetricsServer.start`, it also serves the
status page (``/``, ``/static/*``, ``/api/*``, :mod:`neuroio._status`). It binds the address
given; one that is not loopback is logged as a warning (the page shows the events' faces).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._status import StatusPage, is_loopback
from .exceptions import ConfigurationError, MissingExtraError

try:
    from prometheus_client import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("metrics", "--metrics-port") from exc

__all__ = ["Health", "MetricsServer"]

log = logging.getLogger("neuroio.metrics")

Health = Callable[[], tuple[bool, dict[str, Any]]]
"""Whether the owner is healthy, and the JSON report ``/healthz`` answers (on the loop)."""


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (JSON, 200 or 503), and
    the status page when :attr:`status` is set.

    Args:
        metrics: renders the metrics in the Prometheus text format (called on the loop,
            once per scrape).
        health: whether the owner is healthy, and the report (called on the loop).

    Attributes:
        host: the address given to :meth:`start`.
        port: the bound port once started (the real one with port 0).
        status: the status page served at ``/`` (set it before :meth:`start`); ``None``: none.
    """

    def __init__(self, metrics: Callable[[], Awaitable[bytes]], health: Health) -> None:
        self._render = metrics
        self._health = health
        self.host: str | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.status: StatusPage | None = None

    async def start(self, host: str, port: int | None) -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``host:port`` (``0`` or ``None``: a free port).

        Raises:
            ConfigurationError: the address cannot be bound (e.g. the port is in use).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        if self.status is not None:
            self.status.add_routes(app)
        # A watching page holds a request open: stop() ends its stream first, and the
        # server waits no longer than this for what is still running.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port or 0)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigurationError(
                f"metrics server cannot listen on {host}:{port}: {exc}"
            ) from exc
        self._runner = runner
        self.host = host
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        if not is_loopback(host):
            log.warning(
                "the metrics server and status page listen on %s, reachable from other "
                "machines: anyone who reaches it sees the events and their faces",
                self.url("/"),
            )
        if self.status is not None:
            self.status.bound(host, self.port)

    def url(self, path: str = "/metrics") -> str:
        """``http://host:port/path`` of the running server (IPv6 hosts in brackets)."""
        host = self.host or "127.0.0.1"
        where = f"[{host}]" if ":" in host else host
        return f"http://{where}:{self.port}{path}"

    async def stop(self) -> None:
        """Stop the HTTP server. Idempotent."""
        runner, self._runner = self._runner, None
        if self.status is not None:
            await self.status.close()
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, report = self._health()
        return web.json_response(report, status=200 if ok else 503)
