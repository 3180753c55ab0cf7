"""The Bridge: socket → spool → sinks with metrics, its start-up errors and its run/close."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from neuroio.bridge import Bridge
from neuroio.bridge.spool import Spool
from neuroio.exceptions import (
    AuthenticationError,
    ConfigurationError,
    PermanentSinkError,
    SinkError,
    SpoolError,
)
from neuroio.sinks import MemorySink, SpooledEvent

from ..helpers import until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options, free_port


async def test_bridge_end_to_end_with_metrics(tmp_path: Path) -> None:
    """Events from a real socket reach a memory and a file sink; /metrics and /healthz
    report them, and the token appears nowhere."""
    sink = MemorySink()
    out = tmp_path / "events.jsonl"
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(
            TOKEN,
            [sink, f"file:{out}"],
            metrics_port=0,
            health_max_sink_failure=0.2,
            **bridge_options(server, tmp_path),  # type: ignore[arg-type]
        )
        async with bridge:
            await server.wait_live()
            sent = await server.emit(200)
            await sink.wait_for(200)
            assert bridge.pipeline is not None
            await bridge.pipeline.wait_delivered(timeout=5)
            listener, metrics_server = bridge.listener, bridge.metrics
            assert listener is not None and metrics_server is not None
            await until(lambda: listener.stats.pongs > 0)
            base = f"http://127.0.0.1:{metrics_server.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as r:
                    metrics = await r.text()
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200, await r.text()
                sink.fail(SinkError("down for the test"))
                await server.emit(1)
                await until(lambda: bridge.health()[0] is False)
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 503
                    report = await r.json()
                sink.recover()
            assert TOKEN not in repr(bridge) and TOKEN not in json.dumps(report)
    assert sink.ids[:200] == sent
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in lines][:200] == sent
    assert lines[0]["data"]["face_image"].endswith(f"/{sent[0]}.jpg")
    assert "neuroio_events_received_total 200.0" in metrics
    assert 'neuroio_sink_delivered_total{sink="memory"} 200.0' in metrics
    assert 'neuroio_connection_state{state="live"} 1.0' in metrics
    assert "neuroio_sink_delivery_seconds_bucket" in metrics
    assert "neuroio_pong_rtt_seconds" in metrics
    assert TOKEN not in metrics
    assert "sink memory failing" in report["problems"][0]


async def test_bridge_run_raises_on_rejected_token(tmp_path: Path) -> None:
    """run() ends with AuthenticationError and releases the spool."""
    async with IndependentServer("another-token") as server:
        bridge = Bridge(TOKEN, [MemorySink()], **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(bridge.run(), 10)
    Spool(tmp_path / "spool.db").close()  # lock released


async def test_bridge_close_ends_run(tmp_path: Path) -> None:
    """close() from another task makes run() return normally."""
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(TOKEN, [MemorySink()], **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        runner = asyncio.create_task(bridge.run())
        await server.wait_live()
        await bridge.close()
        await asyncio.wait_for(runner, 5)


async def test_start_up_errors_are_clear_and_release_everything(tmp_path: Path) -> None:
    """Bad URIs, unreachable sinks, a locked spool and a busy metrics port fail start-up
    with the documented exceptions, leaving nothing open."""
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        Bridge(TOKEN, ["ftp://user:hunter2@host/x"], spool=tmp_path / "s.db")
    try:
        Bridge(TOKEN, ["ftp://user:hunter2@host/x"])
    except ConfigurationError as exc:
        assert "hunter2" not in str(exc) and "***" in str(exc)
    with pytest.raises(ConfigurationError, match="at least one sink"):
        Bridge(TOKEN, [])
    with pytest.raises(ConfigurationError, match="same name"):
        Bridge(TOKEN, [MemorySink("m"), "memory:m"])

    url = "ws://127.0.0.1:9"
    dead_port = free_port()
    bridge = Bridge(
        TOKEN,
        [f"http://127.0.0.1:{dead_port}/hook"],
        url=url,
        spool=tmp_path / "s.db",
        require_sinks=True,  # by default the bridge starts without it (test_start_without_sinks)
    )
    with pytest.raises(SinkError, match="cannot connect"):
        await bridge.start()
    Spool(tmp_path / "s.db").close()  # the failed start released the spool

    with Spool(tmp_path / "s.db"):
        with pytest.raises(SpoolError, match="in use"):
            await Bridge(TOKEN, [MemorySink()], url=url, spool=tmp_path / "s.db").start()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bridge = Bridge(TOKEN, [MemorySink()], url=url, spool=tmp_path / "s.db", metrics_port=port)
        with pytest.raises(ConfigurationError, match="metrics server"):
            await bridge.start()
    Spool(tmp_path / "s.db").close()


async def test_permanent_error_from_sink_start_is_reported(tmp_path: Path) -> None:
    """A sink whose start() raises stops start-up with that error."""

    class Broken(MemorySink):
        async def start(self) -> None:
            raise PermanentSinkError("cannot")

    bridge = Bridge(TOKEN, [Broken()], url="ws://127.0.0.1:9", spool=tmp_path / "s.db")
    with pytest.raises(SinkError, match="cannot"):
        await bridge.start()


async def test_second_stop_request_abandons_a_send_that_hangs(tmp_path: Path) -> None:
    """request_stop() once: run() stops reading and waits for the send in flight; a second
    request abandons it, run() returns at once, and the spool keeps the unconfirmed events."""

    class Hanging(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.sending = asyncio.Event()

        async def send(self, events: Sequence[SpooledEvent]) -> None:
            self.sending.set()
            await asyncio.Event().wait()  # never answers

    sink = Hanging()
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(TOKEN, [sink], **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        runner = asyncio.create_task(bridge.run())
        await server.wait_live()
        sent = await server.emit(10)
        await asyncio.wait_for(sink.sending.wait(), 5)
        bridge.request_stop()
        assert bridge.should_exit and not bridge.force_exit
        assert bridge.listener is not None
        await until(
            lambda: bridge.listener is not None and bridge.listener.stats.state.value == "closed"
        )
        assert not runner.done()  # the send in flight has drain_timeout (5 s) to finish
        bridge.request_stop()
        assert bridge.force_exit
        await asyncio.wait_for(runner, 2)
    with Spool(tmp_path / "spool.db") as held:
        assert [e.id for e in held.read(0, 100)] == sent
