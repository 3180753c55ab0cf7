"""A bridge with its status page, fed by the emulator, delivering to a webhook receiver that a
test can stop (a real outage), and to a sink that refuses every event (dead letters)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from neuroio.bridge import Bridge
from neuroio.exceptions import PermanentSinkError
from neuroio.sinks import Sink, SpooledEvent
from neuroio.stats import State
from neuroio.testing import Emulator

from ..helpers import until

TOKEN = "status-page-secret-token-42"


class RefusingSink(Sink):
    """Refuses every event for good: each becomes a dead letter."""

    def __init__(self) -> None:
        self.name = "refuser"

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        raise PermanentSinkError("refused for the test")


class RedrivingBridge(Bridge):
    """A bridge with the dead-letter re-drive the page calls when the bridge has one."""

    retried: list[str | None]

    async def retry_dead_letters(self, sink: str | None) -> int:
        self.retried.append(sink)
        return 7


class Receiver:
    """A webhook receiver on a free loopback port, answering 200; :meth:`stop` takes it down."""

    def __init__(self) -> None:
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            await request.read()
            self.received += 1
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?name=hook"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def status_bridge(
    tmp_path: Path, *, redrive: bool = False, **options: Any
) -> AsyncIterator[tuple[Emulator, Receiver, Bridge]]:
    """A started emulator, receiver and bridge (metrics and status page on a free port)."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with Emulator() as emulator:
            cls = RedrivingBridge if redrive else Bridge
            bridge = cls(
                TOKEN,
                [receiver.uri, RefusingSink()],
                spool=tmp_path / "spool.db",
                url=emulator.url,
                api_url=emulator.api_url,
                metrics_port=0,
                ping_interval=0.2,
                reconnect_delay=0.01,
                sink_retry_delay=0.01,
                sink_max_retry_delay=0.05,
                **options,
            )
            if isinstance(bridge, RedrivingBridge):
                bridge.retried = []
            async with bridge:
                yield emulator, receiver, bridge
    finally:
        await receiver.stop()


def page_url(bridge: Bridge, path: str = "/") -> str:
    assert bridge.metrics is not None
    return bridge.metrics.url(path)


async def live(bridge: Bridge) -> None:
    """Wait until the bridge's listener is connected and authenticated."""
    await until(lambda: bridge.listener is not None and bridge.listener.stats.state is State.LIVE)
