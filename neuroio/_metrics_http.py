"""The HTTP server of ``/metrics`` and ``/healthz``: the one the bridge and ``listen`` share.

It serves on its owner's event loop (aiohttp), with no access log and no signal handling of
its own. What it answers is its owner's: ``metrics`` renders the Prometheus text (a coroutine,
so that an owner with a costly rendering can move it off the loop), ``health`` says whether
the owner is healthy and the JSON report (``200`` or ``503``)::

    server = MetricsServer(render_metrics, health)
    await server.start("127.0.0.1", 0)       # ConfigurationError when the port is in use
    logger.info("metrics on %s, health on /healthz", server.url("/metrics"))
    ...
    await server.stop()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .exceptions import ConfigurationError, MissingExtraError

try:
    from prometheus_client import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("metrics", "--metrics-port") from exc

__all__ = ["Health", "MetricsServer"]

Health = Callable[[], tuple[bool, dict[str, Any]]]
"""Whether the owner is healthy, and the JSON report ``/healthz`` answers (on the loop)."""


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (JSON, 200 or 503).

    Args:
        metrics: renders the metrics in the Prometheus text format (called on the loop,
            once per scrape).
        health: whether the owner is healthy, and the report (called on the loop).

    Attributes:
        host: the address given to :meth:`start`.
        port: the bound port once started (the real one with port 0).
    """

    def __init__(self, metrics: Callable[[], Awaitable[bytes]], health: Health) -> None:
        self._render = metrics
        self._health = health
        self.host: str | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int | None) -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``host:port`` (``0`` or ``None``: a free port).

        Raises:
            ConfigurationError: the address cannot be bound (e.g. the port is in use).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
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

    def url(self, path: str = "/metrics") -> str:
        """``http://host:port/path`` of the running server (IPv6 hosts in brackets)."""
        host = self.host or "127.0.0.1"
        where = f"[{host}]" if ":" in host else host
        return f"http://{where}:{self.port}{path}"

    async def stop(self) -> None:
        """Stop the HTTP server. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, report = self._health()
        return web.json_response(report, status=200 if ok else 503)
