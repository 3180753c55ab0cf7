"""A loopback HTTP server answering every request with one fixed answer: an entries API that
is not one (HTML from a gateway, JSON of another shape, a refusal)."""

from __future__ import annotations

from aiohttp import web


class RestServer:
    """Serves ``status``, ``media`` (the Content-Type) and ``body`` to every GET.

    Attributes:
        url: ``http://127.0.0.1:<port>`` once entered.
    """

    def __init__(self, status: int, media: str, body: bytes) -> None:
        self.answer = (status, media, body)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        status, media, body = self.answer
        return web.Response(status=status, body=body, headers={"Content-Type": media})

    async def __aenter__(self) -> RestServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
