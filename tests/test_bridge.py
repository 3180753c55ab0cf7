"""The bridge pipeline (spool → sinks) and the Bridge (socket → spool → sinks, metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from neuroio.bridge import Bridge, BridgeConfig, Pipeline
from neuroio.exceptions import (
    AuthenticationError,
    ConfigurationError,
    PermanentSinkError,
    SinkError,
    SpoolError,
)
from neuroio.sinks import MemorySink, Sink, SpooledEvent
from neuroio.sinks.base import sink_error
from neuroio.spool import ROW_OVERHEAD, Spool

from .helpers import until
from .independent_server import IndependentServer

TOKEN = "bridge-secret-token-42"


def frame(event_id: int, **extra: object) -> str:
    data = {"id": event_id, "created": "2024-05-01T10:00:00Z", "result": "exact", **extra}
    return json.dumps({"id": event_id, "data": data})


@pytest.fixture
def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s  # type: ignore[misc]
    s.close()


async def run_pipeline(spool: Spool, sinks: Sequence[Sink], **options: float) -> Pipeline:
    options.setdefault("retry_delay", 0.01)
    options.setdefault("max_retry_delay", 0.05)
    pipeline = Pipeline(spool, sinks, **options)  # type: ignore[arg-type]
    await pipeline.start()
    return pipeline


# -- pipeline ----------------------------------------------------------------------------


async def test_events_reach_every_sink_in_order_as_sent(spool: Spool) -> None:
    """Event frames are spooled and delivered in order with every field; other frames are not."""
    a, b = MemorySink("a", max_batch=7), MemorySink("b")
    pipeline = await run_pipeline(spool, [a, b])
    try:
        await pipeline.handle('{"auth": "ok"}')
        await pipeline.handle('{"PING": "PONG"}')
        await pipeline.handle('{"error": "nope"}')
        for i in range(1, 101):
            await pipeline.handle(frame(i, unknown_field={"x": [1, 2]}))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert a.ids == b.ids == list(range(1, 101))
    assert json.loads(a.events[0].payload) == json.loads(frame(1, unknown_field={"x": [1, 2]}))
    assert b" " not in a.events[0].payload.replace(b"2024-05-01T10:00:00Z", b"")
    assert max(len(batch) for batch in [a.events]) and a.sends >= 100 // 7
    assert pipeline.received == 100 and spool.depth == 0


async def test_repeated_and_malformed_events(spool: Spool) -> None:
    """A repeated id is delivered once; an event frame without an integer id that SQLite can
    hold is dropped (counted), and the pipeline goes on."""
    sink = MemorySink()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await pipeline.handle(frame(1))
        await pipeline.handle('{"id": "x", "data": {}}')
        await pipeline.handle('{"id": 5, "data": []}')
        await pipeline.handle(f'{{"id":{10**400},"data":{{}}}}')
        await pipeline.handle(f'{{"id":{2**63},"data":{{}}}}')
        await pipeline.handle('{"id": 3, "data": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}")
        await pipeline.handle('{"id": 2, "data": {}}')
        await pipeline.wait_delivered(timeout=5)
        await pipeline.handle(frame(1))  # after delivery and prune
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [1, 2]
    assert pipeline.duplicates == 2 and pipeline.malformed == 5
    with pytest.raises(ValueError):
        await pipeline.put(2**63, b"{}")


async def test_sink_down_then_up_loses_nothing(spool: Spool) -> None:
    """A failing sink is retried; the spool grows meanwhile, the other sink is not held
    back, and once the sink recovers the backlog drains completely, in order."""
    down, up = MemorySink("down"), MemorySink("up")
    down.fail()
    pipeline = await run_pipeline(spool, [down, up])
    try:
        for i in range(1, 501):
            await pipeline.handle(frame(i))
        await up.wait_for(500)
        await until(lambda: down.sends >= 3)
        assert spool.depth == 500
        assert pipeline.status["down"].failures >= 2
        assert pipeline.status["down"].failing_since is not None
        assert pipeline.lag("down") == 500 and pipeline.lag("up") == 0
        assert pipeline.lag_seconds("down") > 0
        down.recover()
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert down.ids == up.ids == list(range(1, 501))
    assert spool.depth == 0
    assert pipeline.status["down"].failing_since is None


async def test_full_spool_blocks_the_handler_and_drops_nothing(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At the size limit the handler waits (the socket would pause) with one warning, and
    resumes once the sink drains the spool; every event arrives."""
    spool.close()
    one = len(frame(1).replace(" ", "")) + ROW_OVERHEAD
    small = Spool(tmp_path / "small.db", max_bytes=20 * one)
    sink = MemorySink()
    sink.fail()
    pipeline = await run_pipeline(small, [sink])
    feeder = asyncio.create_task(_feed(pipeline, range(1, 101)))
    try:
        with caplog.at_level(logging.WARNING, logger="neuroio.bridge"):
            await until(lambda: pipeline.paused_since is not None)
            assert not feeder.done()
            assert small.depth <= 21
            sink.recover()
            await asyncio.wait_for(feeder, 10)
            await pipeline.wait_delivered(timeout=10)
        full_warnings = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full_warnings) == 1
    finally:
        feeder.cancel()
        await pipeline.close()
        small.close()
    assert sink.ids == list(range(1, 101))


async def _feed(pipeline: Pipeline, ids: range) -> None:
    for i in ids:
        await pipeline.handle(frame(i))


async def test_refused_event_is_dead_lettered_and_others_delivered(spool: Spool) -> None:
    """A permanent refusal dead-letters exactly the refused events; the rest go through."""
    sink = MemorySink(max_batch=50)
    sink.refuse = {13, 37}
    pipeline = await run_pipeline(spool, [sink])
    try:
        for i in range(1, 101):
            await pipeline.handle(frame(i))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [i for i in range(1, 101) if i not in (13, 37)]
    letters = spool.dead_letters()
    assert [d.event.id for d in letters] == [13, 37]
    assert "refuses" in letters[0].error and letters[0].sink == "memory"
    assert pipeline.status["memory"].dead_lettered == 2


async def test_unexpected_exception_in_a_sink_is_retried(spool: Spool) -> None:
    """A sink bug (any exception) does not end delivery: the batch is retried."""

    class Flaky(MemorySink):
        calls = 0

        async def send(self, events: Sequence[SpooledEvent]) -> None:
            self.calls += 1
            if self.calls <= 2:
                raise KeyError("bug")
            await super().send(events)

    sink = Flaky()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await pipeline.wait_delivered(timeout=5)
    finally:
        await pipeline.close()
    assert sink.ids == [1] and pipeline.status["memory"].failures == 2


async def test_retry_after_is_honoured(spool: Spool) -> None:
    """A SinkError with retry_after delays the next attempt at least that long."""
    sink = MemorySink()
    sink.fail(sink_error("busy", retry_after=0.3))
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        await until(lambda: sink.sends == 1)
        failed_at = time.monotonic()
        sink.recover()
        await pipeline.wait_delivered(timeout=5)
        assert time.monotonic() - failed_at >= 0.28
    finally:
        await pipeline.close()


async def test_backlog_survives_restart(tmp_path: Path) -> None:
    """Events spooled but not confirmed when the pipeline stops are delivered after a restart."""
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        sink = MemorySink()
        sink.fail()
        pipeline = await run_pipeline(spool, [sink])
        for i in range(1, 51):
            await pipeline.handle(frame(i))
        await pipeline.flush(timeout=5)
        await pipeline.close()
    with Spool(path) as spool:
        sink = MemorySink()
        pipeline = await run_pipeline(spool, [sink])
        await sink.wait_for(50)
        await pipeline.close()
    assert sink.ids == list(range(1, 51))


async def test_close_releases_a_blocked_handler(tmp_path: Path) -> None:
    """close() while the handler waits for room ends the wait with SpoolError, not a hang."""
    spool = Spool(tmp_path / "s.db", max_bytes=1)
    sink = MemorySink()
    sink.fail()
    pipeline = await run_pipeline(spool, [sink])
    try:
        await pipeline.handle(frame(1))
        blocked = asyncio.create_task(pipeline.handle(frame(2)))
        await until(lambda: pipeline.paused_since is not None)
        await pipeline.close()
        with pytest.raises(SpoolError):
            await asyncio.wait_for(blocked, 5)
    finally:
        spool.close()


def test_pipeline_rejects_duplicate_sink_names(spool: Spool) -> None:
    """Each sink needs its own cursor, so names must differ."""
    with pytest.raises(ConfigurationError, match="distinct"):
        Pipeline(spool, [MemorySink("x"), MemorySink("x")])


# -- bridge ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridge_options(server: IndependentServer, tmp_path: Path) -> dict[str, object]:
    return {
        "url": server.url,
        "api_url": server.api_url,
        "spool": tmp_path / "spool.db",
        "ping_interval": 0.1,
        "ping_timeout": 1.0,
        "reconnect_delay": 0.01,
        "sink_retry_delay": 0.01,
        "sink_max_retry_delay": 0.05,
    }


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
            await until(lambda: bridge.listener.stats.pongs > 0)
            base = f"http://127.0.0.1:{bridge.metrics.port}"
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
    bridge = Bridge(TOKEN, [f"http://127.0.0.1:{dead_port}/hook"], url=url, spool=tmp_path / "s.db")
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


def test_config_field_names_are_the_cli_options() -> None:
    """from_options takes CLI option names and builds the same sinks and config."""
    bridge = Bridge.from_options(
        TOKEN,
        to=["memory:a", "file:/tmp/x.jsonl"],
        spool="/tmp/never-opened.db",
        spool_max_bytes=1 << 20,
        webhook_secret="s3cret",
        metrics_port=None,
        health_max_sink_failure=30.0,
    )
    assert [s.name for s in bridge.sinks] == ["a", "file:/tmp/x.jsonl"]
    assert bridge.config == BridgeConfig(
        to=("memory:a", "file:/tmp/x.jsonl"),
        spool="/tmp/never-opened.db",
        spool_max_bytes=1 << 20,
        webhook_secret="s3cret",
        health_max_sink_failure=30.0,
    )
    assert "s3cret" not in repr(bridge.config) and TOKEN not in repr(bridge)
    with pytest.raises(ConfigurationError, match="invalid bridge option"):
        Bridge.from_options(TOKEN, to=["memory:"], no_such_option=1)
    with pytest.raises(ConfigurationError):
        Bridge.from_options(TOKEN, to=["memory:"], spool_max_bytes=0)


async def test_permanent_error_from_sink_start_is_reported(tmp_path: Path) -> None:
    """A sink whose start() raises stops start-up with that error."""

    class Broken(MemorySink):
        async def start(self) -> None:
            raise PermanentSinkError("cannot")

    bridge = Bridge(TOKEN, [Broken()], url="ws://127.0.0.1:9", spool=tmp_path / "s.db")
    with pytest.raises(SinkError, match="cannot"):
        await bridge.start()


# -- recovery, high availability, SIGKILL ---------------------------------------------------


async def test_restart_recovers_events_sent_while_down(tmp_path: Path) -> None:
    """A bridge restarted on the same spool fetches what the platform sent meanwhile (the
    socket never replays), starting after the last event the spool committed."""
    out = tmp_path / "events.jsonl"
    async with IndependentServer(TOKEN) as server:
        options = bridge_options(server, tmp_path)
        async with Bridge(TOKEN, [f"file:{out}"], **options) as bridge:  # type: ignore[arg-type]
            await server.wait_live()
            first = await server.emit(30)
            assert bridge.pipeline is not None
            await until(lambda: bridge.pipeline is not None and bridge.pipeline.received == 30)
            await bridge.pipeline.wait_delivered(timeout=5)
        missed = await server.emit(20)
        with Spool(tmp_path / "spool.db") as spool:
            assert spool.last_event_id == first[-1]
        async with Bridge(TOKEN, [f"file:{out}"], **options) as bridge:  # type: ignore[arg-type]
            await until(lambda: bridge.pipeline is not None and bridge.pipeline.received == 20)
            assert bridge.pipeline is not None
            await bridge.pipeline.wait_delivered(timeout=5)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == first + missed


def redis_nats_uris(redis_url: str, nats_url: str, tag: str) -> tuple[str, str]:
    return (
        f"{redis_url}?stream=test:{tag}",
        f"{nats_url}?subject=test.{tag.lower()}&stream=T{tag.upper()}",
    )


async def redis_ids(redis_url: str, tag: str, cleanup: bool = True) -> list[int]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [int(fields[b"id"]) for _, fields in await client.xrange(f"test:{tag}")]
        if cleanup:
            keys = [k async for k in client.scan_iter(f"test:{tag}*")]
            if keys:
                await client.delete(*keys)
        return ids
    finally:
        await client.aclose()


async def nats_ids(nats_url: str, tag: str, cleanup: bool = True) -> list[int]:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(f"T{tag.upper()}")
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            ids.append(json.loads((await js.get_msg(f"T{tag.upper()}", seq)).data)["id"])
        if cleanup:
            await js.delete_stream(f"T{tag.upper()}")
        return ids
    finally:
        await nc.close()


@pytest.mark.redis
@pytest.mark.nats
async def test_two_bridges_store_each_event_once(
    tmp_path: Path, redis_url: str, nats_url: str
) -> None:
    """Two bridges on the same token writing to the same Redis stream and NATS stream:
    every event is stored exactly once in each."""
    tag = f"ha{time.monotonic_ns()}"
    uris = redis_nats_uris(redis_url, nats_url, tag)
    async with IndependentServer(TOKEN) as server:
        a_opts = bridge_options(server, tmp_path / "a")
        b_opts = bridge_options(server, tmp_path / "b")
        async with Bridge(TOKEN, uris, **a_opts) as a, Bridge(TOKEN, uris, **b_opts) as b:  # type: ignore[arg-type]
            await server.wait_live(2)
            await until(lambda: len(server.live()) == 2)
            sent = await server.emit(1000)
            for bridge in (a, b):
                await until(
                    lambda br=bridge: br.pipeline is not None and br.pipeline.received == 1000
                )  # type: ignore[misc]
                assert bridge.pipeline is not None
                await bridge.pipeline.wait_delivered(timeout=10)
    assert sorted(await redis_ids(redis_url, tag)) == sent
    assert sorted(await nats_ids(nats_url, tag)) == sent


_CHILD = """
import asyncio, sys, logging
from neuroio.bridge import Bridge
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

async def main():
    url, api_url, spool, out, redis_uri, nats_uri = sys.argv[1:7]
    bridge = Bridge(
        "{token}", [f"file:{{out}}", redis_uri, nats_uri], url=url, api_url=api_url,
        spool=spool, ping_interval=0.2, reconnect_delay=0.01, sink_retry_delay=0.01,
        sink_max_retry_delay=0.1,
    )
    await bridge.run()

asyncio.run(main())
"""


@pytest.mark.redis
@pytest.mark.nats
@pytest.mark.slow
async def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path, redis_url: str, nats_url: str
) -> None:
    """A bridge process SIGKILLed three times while events stream, and restarted: the file
    holds every id, Redis and NATS hold every id exactly once."""
    import signal
    import sys

    tag = f"kill{time.monotonic_ns()}"
    redis_uri, nats_uri = redis_nats_uris(redis_url, nats_url, tag)
    out = tmp_path / "events.jsonl"
    code = _CHILD.format(token=TOKEN)

    def file_ids() -> list[int]:
        if not out.exists():
            return []
        # The bridge may be writing: a last line without its newline is not complete yet.
        complete = out.read_bytes().rpartition(b"\n")[0]
        return [json.loads(line)["id"] for line in complete.splitlines()]

    async with IndependentServer(TOKEN) as server:
        args = [server.url, server.api_url, str(tmp_path / "spool.db"), str(out)]
        sent: list[int] = []
        for cycle in range(4):
            log_file = open(tmp_path / f"child{cycle}.log", "wb")  # noqa: SIM115
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *args, redis_uri, nats_uri, stderr=log_file
            )
            log_file.close()
            try:
                await server.wait_live(cycle + 1, timeout=15)
                if cycle == 3:
                    sent += await server.emit(200)
                    try:
                        await until(lambda s=sent: set(file_ids()) >= set(s), timeout=20)
                    except TimeoutError:
                        missing = sorted(set(sent) - set(file_ids()))
                        raise AssertionError(
                            f"file misses {len(missing)}: {missing[:20]}"
                        ) from None
                    # Each sink has its own pace: wait for the brokers too (bounded).
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        have = await redis_ids(redis_url, tag, cleanup=False)
                        have_nats = await nats_ids(nats_url, tag, cleanup=False)
                        if len(have) >= len(sent) and len(have_nats) >= len(sent):
                            break
                        await asyncio.sleep(0.02)
                    break
                for _ in range(5):
                    sent += await server.emit(60)
                    await asyncio.sleep(0)  # let frames go out mid-stream
                await until(lambda s=sent: len(file_ids()) > len(s) // 2, timeout=15)
            finally:
                proc.send_signal(signal.SIGKILL) if cycle < 3 else proc.terminate()
                await proc.wait()
            # Events emitted while no bridge runs: only gap recovery can bring them.
            sent += await server.emit(40)
    assert len(sent) == 3 * (300 + 40) + 200
    assert set(file_ids()) == set(sent)
    assert sorted(await redis_ids(redis_url, tag)) == sent
    assert sorted(await nats_ids(nats_url, tag)) == sent
