"""A bridge started while its sinks are down: it receives and spools, says so on /healthz,
starts each sink with backoff and delivers everything once it answers; ``require_sinks``
stops it instead, and a sink that refuses the credentials stops it either way."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from neuroio.bridge import Bridge
from neuroio.bridge._starting import LateStart
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import MemorySink, from_uri

from ..cli.conftest import TOKEN as CLI_TOKEN
from ..cli.conftest import Cli, clean_env
from ..helpers import eventually, until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options, free_port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Servers:
    """Broker processes of the test's own, on ports chosen before they exist."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.folders: list[Path] = []

    def redis(self, port: int, *args: str) -> None:
        self._start(
            _binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", *args,
        )  # fmt: skip

    def nats(self, port: int, *args: str) -> None:
        store = self.tmp_path / f"jetstream-{port}"
        self._start(
            _binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store),
            *args,
        )  # fmt: skip

    def mosquitto(self, port: int, user: str, password: str) -> None:
        """A broker refusing anonymous clients, with one user."""
        # Readable by the broker, which drops to its own user when started as root: outside
        # tmp_path, whose parents are private.
        folder = Path(tempfile.mkdtemp(prefix="neuroio-mosquitto-"))
        self.folders.append(folder)
        passwords = folder / "passwords"
        subprocess.run(
            [_binary("mosquitto_passwd"), "-b", "-c", str(passwords), user, password],
            check=True, capture_output=True,
        )  # fmt: skip
        folder.chmod(0o755)
        passwords.chmod(0o644)
        config = folder / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        )
        self._start(_binary("mosquitto"), "-c", str(config))

    def _start(self, *argv: str) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    own = Servers(tmp_path)
    yield own
    own.stop()


class Receiver:
    """A webhook receiver, started on demand on a port chosen beforehand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ids: list[int] = []
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.ids += [e["id"] for e in body] if isinstance(body, list) else [body["id"]]
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _healthz(port: int | None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status, await response.json()


def _warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "neuroio.bridge" and name in r.getMessage()
    ]


async def test_sinks_down_at_start_up_get_everything_once_each_comes_up(
    tmp_path: Path, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis, NATS and a webhook all down when the bridge starts: it starts, receives and
    spools; /healthz is 503 naming each (last_error: unreachable), with one WARNING line per
    sink however many attempts; each brought up in turn gets every event, and /healthz is
    200 once all three answer."""
    caplog.set_level(logging.DEBUG, logger="neuroio.bridge")
    redis_port, nats_port, hook_port = free_port(), free_port(), free_port()
    stream = f"neuroio:test:{uuid.uuid4().hex}"
    subject = f"neuroio.test.{uuid.uuid4().hex}"
    js_stream = f"T{uuid.uuid4().hex}"
    redis_uri = f"redis://127.0.0.1:{redis_port}/0?stream={stream}&socket_connect_timeout=1"
    nats_uri = f"nats://127.0.0.1:{nats_port}?subject={subject}&stream={js_stream}&timeout=2"
    hook_uri = f"http://127.0.0.1:{hook_port}/hook"
    receiver = Receiver(hook_port)
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(
            TOKEN,
            [redis_uri, nats_uri, hook_uri],
            metrics_port=0,
            **bridge_options(server, tmp_path),  # type: ignore[arg-type]
        )
        try:
            async with bridge:
                assert bridge.metrics is not None and bridge.pipeline is not None
                port, pipeline = bridge.metrics.port, bridge.pipeline
                names = [s.name for s in bridge.sinks]
                await server.wait_live()
                sent = await server.emit(30)
                await until(lambda: pipeline.received == 30)

                status, report = await _healthz(port)
                assert status == 503
                for name, word in zip(
                    names, ("unreachable", "unreachable", "cannot connect"), strict=True
                ):
                    assert any(f"sink {name} not started" in p for p in report["problems"])
                    assert word in report["sinks"][name]["last_error"]
                    assert report["sinks"][name]["started"] is False
                # Retried with backoff, and still one warning line each.
                late = [s for s in pipeline.sinks if isinstance(s, LateStart)]
                assert len(late) == 3
                await until(lambda: all(s.attempts >= 4 for s in late))
                for name in names:
                    assert len(_warnings_about(caplog, name)) == 1, _warnings_about(caplog, name)

                servers.redis(redis_port)
                await until(lambda: pipeline.status[names[0]].delivered == 30, timeout=10)
                client = aioredis.Redis(port=redis_port)
                try:
                    entries: Any = await client.xrange(stream)
                finally:
                    await client.aclose()
                assert [int(fields[b"id"]) for _, fields in entries] == sent
                assert (await _healthz(port))[0] == 503  # NATS and the webhook still down

                servers.nats(nats_port)
                await until(lambda: pipeline.status[names[1]].delivered == 30, timeout=10)
                nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
                try:
                    info = await nc.jetstream().stream_info(js_stream)
                finally:
                    await nc.close()
                assert info.state.messages == 30

                await receiver.start()
                await until(lambda: receiver.ids == sent, timeout=10)
                status, report = await _healthz(port)
                assert status == 200, report
                assert all(s["started"] for s in report["sinks"].values())

                more = await server.emit(5)
                await until(lambda: receiver.ids == sent + more)
                await until(lambda: all(s.delivered == 35 for s in pipeline.status.values()))
                for name in names:
                    assert any("started after" in m for m in _warnings_about(caplog, name))
        finally:
            await receiver.stop()


class Flaky(MemorySink):
    """A memory sink whose start() answers from a script (an exception, or None: starts),
    recording every start() and aclose()."""

    def __init__(self, script: Sequence[Exception | None], name: str = "flaky") -> None:
        super().__init__(name)
        self.script = list(script)
        self.calls: list[str] = []
        self.go = asyncio.Event()
        """Set to let start() succeed once the script is used up."""

    async def start(self) -> None:
        self.calls.append("start")
        if self.script:
            error = self.script.pop(0)
            if error is not None:
                raise error
            return
        if not self.go.is_set():
            raise SinkError(f"sink {self.name}: unreachable for the test")

    async def aclose(self) -> None:
        self.calls.append("aclose")


async def test_each_failed_start_is_closed_before_the_next_and_new_reasons_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failed start() is followed by aclose() before the next attempt (nothing
    half-open piles up); a sink that answers but refuses its configuration is an ERROR,
    still retried; once started, the events spooled meanwhile are delivered, and the bridge
    closes the sink once at the end."""
    caplog.set_level(logging.DEBUG, logger="neuroio.bridge")
    refused = ConfigurationError("sink flaky: credentials rejected for the test")
    sink = Flaky([SinkError("sink flaky: unreachable for the test"), refused, refused])
    async with IndependentServer(TOKEN) as server:
        bridge = Bridge(TOKEN, [sink], **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        async with bridge:
            assert bridge.pipeline is not None
            status = bridge.pipeline.status["flaky"]
            await server.wait_live()
            sent = await server.emit(10)
            await until(lambda: sink.calls.count("start") >= 6)
            ok, report = bridge.health()
            assert not ok and report["problems"] == [
                f"sink flaky not started for {status.failing_for():.0f} s"
            ]
            assert sink.ids == []
            sink.go.set()
            await sink.wait_for(10)
            assert bridge.health()[0]
            assert status.failing_since is None
        assert sink.ids == sent
    starts = sink.calls.count("start")
    assert sink.calls == ["start", "aclose"] * starts
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in messages if "credentials rejected" in m[1]] == [
        (logging.ERROR, messages[1][1])
    ]
    assert "starts without it" in messages[0][1]


async def test_a_stop_before_the_sink_answers_keeps_its_events_for_the_next_start(
    tmp_path: Path,
) -> None:
    """Stopped while a sink never answered: run() returns promptly, and what was spooled
    for it is delivered by the next bridge on the same spool."""
    down = Flaky([])
    async with IndependentServer(TOKEN) as server:
        options = bridge_options(server, tmp_path)
        bridge = Bridge(TOKEN, [down], **options)  # type: ignore[arg-type]
        runner = asyncio.create_task(bridge.run())
        await server.wait_live()
        sent = await server.emit(20)
        await until(lambda: bridge.pipeline is not None and bridge.pipeline.received == 20)
        bridge.request_stop()
        await asyncio.wait_for(runner, 3)
        assert down.calls[-1] == "aclose" and down.ids == []

        up = MemorySink("flaky")
        async with Bridge(TOKEN, [up], **options):  # type: ignore[arg-type]
            await up.wait_for(20)
        assert up.ids[:20] == sent


async def test_require_sinks_fails_at_start_up_and_releases_the_spool(tmp_path: Path) -> None:
    """require_sinks=True: a sink unreachable at start-up is a SinkError from start(), and
    the spool is released."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bridge = Bridge(
        TOKEN, [dead], url="ws://127.0.0.1:9", spool=tmp_path / "s.db", require_sinks=True
    )
    with pytest.raises(SinkError, match="unreachable"):
        await bridge.start()
    Spool(tmp_path / "s.db").close()


async def test_credentials_refused_by_redis_fail_at_start_up(
    tmp_path: Path, servers: Servers
) -> None:
    """Redis with requirepass: a wrong password, or none, is a ConfigurationError from
    start() (not retried), without the password, and the spool is released."""
    port = free_port()
    servers.redis(port, "--requirepass", "right-password")
    probe = aioredis.Redis(port=port, password="right-password")
    try:
        await eventually(_pings(probe), "own redis-server answering", timeout=5)
    finally:
        await probe.aclose()
    for uri, hint in (
        (f"redis://:wrong-password@127.0.0.1:{port}/0", ""),
        (f"redis://127.0.0.1:{port}/0", "(the URI gives no password)"),
    ):
        bridge = Bridge(TOKEN, [uri], url="ws://127.0.0.1:9", spool=tmp_path / "s.db")
        with pytest.raises(ConfigurationError, match="rejected the credentials") as caught:
            await bridge.start()
        assert "wrong-password" not in str(caught.value) and hint in str(caught.value)
        Spool(tmp_path / "s.db").close()


def _pings(client: aioredis.Redis) -> Any:
    async def ping() -> bool:
        try:
            return bool(await client.ping())
        except (OSError, aioredis.ConnectionError):
            return False

    return ping


async def _cli(*args: str) -> Cli:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "neuroio", "bridge", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean_env(NEUROIO_API_TOKEN=CLI_TOKEN),
    )  # fmt: skip
    return Cli(proc, args)


@pytest.fixture
async def started() -> AsyncIterator[list[Cli]]:
    children: list[Cli] = []
    yield children
    for child in children:
        await child.kill()


async def test_cli_starts_without_the_sink_and_require_sinks_exits_1(
    tmp_path: Path, started: list[Cli]
) -> None:
    """The CLI: an unreachable sink is one warning and the bridge runs (SIGTERM: 0);
    --require-sinks, or ``sink.require = true`` in the file, exits 1 with one line."""
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    base = ("--to", dead, "--url", "ws://127.0.0.1:9", "--no-uvloop")
    child = await _cli(*base, "--spool", str(tmp_path / "a.db"))
    started.append(child)
    await child.wait_stderr("the bridge starts without it")
    child.send(signal.SIGTERM)
    assert await child.finish(timeout=10) == 0
    assert "hunter2" not in child.err

    config = tmp_path / "bridge.toml"
    config.write_text("[sink]\nrequire = true\n")
    for extra in (("--require-sinks",), ("--config", str(config))):
        child = await _cli(*base, "--spool", str(tmp_path / "b.db"), *extra)
        started.append(child)
        assert await child.finish(timeout=10) == 1
        lines = child.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), child.err
        assert "redis://:***@127.0.0.1" in lines[0] and "unreachable" in lines[0]
        assert "hunter2" not in child.err


async def test_cli_refused_credentials_exit_2_with_one_line(
    tmp_path: Path, servers: Servers, started: list[Cli]
) -> None:
    """The CLI against a Redis that refuses the password: status 2, one line."""
    port = free_port()
    servers.redis(port, "--requirepass", "right-password")
    probe = aioredis.Redis(port=port, password="right-password")
    try:
        await eventually(_pings(probe), "own redis-server answering", timeout=5)
    finally:
        await probe.aclose()
    uri = f"redis://:hunter2@127.0.0.1:{port}/0"
    child = await _cli("--to", uri, "--url", "ws://127.0.0.1:9", "--spool", str(tmp_path / "s.db"))
    started.append(child)
    assert await child.finish(timeout=10) == 2
    lines = child.err.strip().splitlines()
    assert len(lines) == 1 and "rejected the credentials" in lines[0], child.err
    assert "hunter2" not in child.err


# aio-pika, failing a login, sometimes leaves its own Connection.close() coroutine to the
# garbage collector; the sink's connection was never opened, so nothing is leaked.
@pytest.mark.filterwarnings("ignore:coroutine 'Connection.close' was never awaited")
async def test_nats_amqp_and_mqtt_report_refused_credentials_as_configuration_errors(
    tmp_path: Path, servers: Servers, amqp_url: str
) -> None:
    """Each broker's "wrong credentials" answer at start() is a ConfigurationError (the
    bridge does not start), never a SinkError (which would be retried); no password shows."""
    nats_port, mqtt_port = free_port(), free_port()
    servers.nats(nats_port, "--user", "neuroio", "--pass", "right-password")
    servers.mosquitto(mqtt_port, "neuroio", "right-password")
    await eventually(_listening(nats_port), "own nats-server listening", timeout=5)
    await eventually(_listening(mqtt_port), "own mosquitto listening", timeout=5)
    amqp = amqp_url.replace("guest:guest@", "guest:wrong-password@")
    for uri, words in (
        (f"nats://neuroio:wrong-password@127.0.0.1:{nats_port}?timeout=1", "NATS rejected"),
        (f"{amqp}?exchange=neuroio-test-{uuid.uuid4().hex}", "refused the login"),
        (f"mqtt://neuroio:wrong-password@127.0.0.1:{mqtt_port}/t?timeout=2", "refused the login"),
        (f"mqtt://127.0.0.1:{mqtt_port}/t?timeout=2", "refused the login"),
    ):
        sink = from_uri(uri)
        try:
            with pytest.raises(ConfigurationError, match=words) as caught:
                await sink.start()
        finally:
            await sink.aclose()
        assert "wrong-password" not in str(caught.value)


def _listening(port: int) -> Any:
    async def connects() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    return connects
