"""``neuroio-events bridge`` as a real subprocess: SIGKILLs, forced disconnects, SIGTERM, start-up
errors and metrics, against the independent server, the real Redis and NATS, and real SQLite."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neuroio.bridge.spool import Spool
from neuroio.testing import Emulator
from tests.independent_server import IndependentServer

from ..helpers import eventually
from .conftest import TOKEN, Cli, StartCli, clean_env, free_port

# Short timings so reconnects, retries and the end of a test take milliseconds.
FAST = (
    "--ping-interval",
    "0.2",
    "--reconnect-delay",
    "0.01",
    "--max-reconnect-delay",
    "0.1",
    "--sink-retry-delay",
    "0.01",
    "--sink-max-retry-delay",
    "0.1",
    "--no-uvloop",
)


def bridge_args(server: IndependentServer | Emulator, spool: Path, *sinks: str) -> list[str]:
    """Arguments of a bridge reading ``server`` (gap recovery from its REST API)."""
    args = ["bridge", "--url", server.url, "--api-url", server.api_url, "--spool", str(spool)]
    for sink in sinks:
        args += ["--to", sink]
    return [*args, *FAST]


def file_ids(path: Path) -> list[int]:
    """Ids of the complete lines of a file sink (a last line without newline is in progress)."""
    if not path.exists():
        return []
    complete = path.read_bytes().rpartition(b"\n")[0]
    return [json.loads(line)["id"] for line in complete.splitlines()]


async def file_reaches(path: Path, count: int, timeout: float = 10.0) -> None:
    """Wait until the file sink holds at least ``count`` lines."""
    await eventually(lambda: len(file_ids(path)) >= count, f"{count} lines in {path.name}", timeout)


class Brokers:
    """One Redis stream and one JetStream stream, unique to a test, deleted afterwards."""

    def __init__(self, redis_url: str, nats_url: str, tag: str) -> None:
        self.redis_url = redis_url
        self.nats_url = nats_url
        self.stream = f"test:{tag}"
        self.subject = f"test.{tag}"
        self.js_stream = f"T{tag.upper()}"

    @property
    def uris(self) -> tuple[str, str]:
        return (
            f"{self.redis_url}?stream={self.stream}",
            f"{self.nats_url}?subject={self.subject}&stream={self.js_stream}",
        )

    async def redis_ids(self) -> list[int]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            entries: Any = await client.xrange(self.stream)
            return [int(fields[b"id"]) for _, fields in entries]
        finally:
            await client.aclose()

    async def nats_ids(self) -> list[int]:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(self.js_stream)
            except NotFoundError:
                return []
            ids = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                data = (await js.get_msg(self.js_stream, seq)).data
                assert data is not None
                ids.append(json.loads(data)["id"])
            return ids
        finally:
            await nc.close()

    async def cleanup(self) -> None:
        import nats
        import redis.asyncio as aioredis
        from nats.js.errors import NotFoundError

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            keys = [k async for k in client.scan_iter(f"{self.stream}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
        nc = await nats.connect(self.nats_url)
        try:
            try:
                await nc.jetstream().delete_stream(self.js_stream)
            except NotFoundError:
                pass
        finally:
            await nc.close()


@pytest.fixture
async def brokers(redis_url: str, nats_url: str) -> AsyncIterator[Brokers]:
    tag = f"bridgecli{time.monotonic_ns()}"
    found = Brokers(redis_url, nats_url, tag)
    yield found
    await found.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[IndependentServer]:
    async with IndependentServer(TOKEN) as srv:
        yield srv


async def emit_spread(server: IndependentServer, total: int, chunk: int = 25) -> list[int]:
    """Emit ``total`` events in chunks, letting the loop run between chunks (over time)."""
    ids: list[int] = []
    while len(ids) < total:
        ids += await server.emit(min(chunk, total - len(ids)))
        await asyncio.sleep(0)
    return ids


def env() -> dict[str, str]:
    return clean_env(NEUROIO_API_TOKEN=TOKEN)


async def test_a_bridge_killed_before_its_first_event_recovers_what_came_meanwhile(
    cli: StartCli, tmp_path: Path
) -> None:
    """A bridge on a new spool SIGKILLed before any event reached it: the next start recovers
    every event the platform recorded meanwhile (where recovery starts, the REST API's newest
    entry, was stored at start-up), and none of those from before the first start."""
    out = tmp_path / "events.jsonl"
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        for _ in range(5):
            await server.emit()
        args = bridge_args(server, tmp_path / "spool.db", f"file:{out}")
        proc = await cli(*args, env=env())
        await server.wait_for_clients(1, timeout=10)
        proc.proc.send_signal(signal.SIGKILL)
        await proc.kill()
        missed = [(await server.emit())["id"] for _ in range(50)]
        proc = await cli(*args, env=env())
        await file_reaches(out, 50, timeout=15)
        proc.send(signal.SIGTERM)
        assert await proc.finish() == 0
    assert file_ids(out) == missed


# -- issue 4 and issue 5 "Done when" --------------------------------------------------------


@pytest.mark.redis
@pytest.mark.nats
async def test_three_sigkills_lose_nothing_and_brokers_hold_each_id_once(
    cli: StartCli, server: IndependentServer, brokers: Brokers, tmp_path: Path
) -> None:
    """2,000 events over time, the bridge (file + Redis + NATS, one spool) SIGKILLed three
    times mid-stream and restarted: the file holds every id, Redis and NATS each exactly once."""
    out = tmp_path / "events.jsonl"
    args = bridge_args(server, tmp_path / "spool.db", f"file:{out}", *brokers.uris)
    sent: list[int] = []
    for cycle in range(3):
        proc = await cli(*args, env=env())
        await server.wait_live(cycle + 1, timeout=10)
        sent += await emit_spread(server, 500)
        # Kill while the bridge is mid-stream: part of what was sent is not in the file yet.
        await file_reaches(out, len(sent) - 300)
        proc.proc.send_signal(signal.SIGKILL)
        await proc.kill()
        # Emitted while no bridge runs: only gap recovery at the next start brings these.
        sent += await server.emit(100)
    proc = await cli(*args, env=env())
    await server.wait_live(4, timeout=10)
    sent += await emit_spread(server, 200)
    assert len(sent) == 2000

    await eventually(lambda: set(file_ids(out)) >= set(sent), "every id in the file", 20)

    async def brokers_have_all() -> bool:
        return len(await brokers.redis_ids()) >= len(sent) and len(await brokers.nats_ids()) >= len(
            sent
        )

    await eventually(brokers_have_all, "every id in Redis and NATS", 20)
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    assert set(file_ids(out)) == set(sent)  # at least once, nothing else
    assert sorted(await brokers.redis_ids()) == sent  # exactly once
    assert sorted(await brokers.nats_ids()) == sent  # exactly once


async def test_forced_disconnects_and_sigkills_lose_nothing(
    cli: StartCli, server: IndependentServer, tmp_path: Path
) -> None:
    """2,000 events, three connections dropped by the server with events emitted while the
    bridge is away (the server never re-sends them), and three SIGKILLs: every id in the file."""
    out = tmp_path / "events.jsonl"
    args = bridge_args(server, tmp_path / "spool.db", f"file:{out}")
    sent: list[int] = []
    connections = 0
    for _ in range(3):
        proc = await cli(*args, env=env())
        connections += 1
        await server.wait_live(connections, timeout=10)
        sent += await emit_spread(server, 200)
        await server.drop_all()
        sent += await server.emit(100)  # during the disconnect: only in the REST API
        connections += 1
        await server.wait_live(connections, timeout=10)
        sent += await emit_spread(server, 200)
        await file_reaches(out, len(sent) - 200)
        proc.proc.send_signal(signal.SIGKILL)
        await proc.kill()
        sent += await server.emit(100)
    proc = await cli(*args, env=env())
    await server.wait_live(connections + 1, timeout=10)
    sent += await emit_spread(server, 200)
    assert len(sent) == 2000
    await eventually(lambda: set(file_ids(out)) >= set(sent), "every id in the file", 20)
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0
    missing = sorted(set(sent) - set(file_ids(out)))
    assert not missing
    assert set(file_ids(out)) == set(sent)


# -- SIGTERM --------------------------------------------------------------------------------


class Hook:
    """A webhook receiver that can be made to fail, recording the ids it accepted."""

    def __init__(self) -> None:
        self.status = 503
        self.ids: list[int] = []
        self.attempts = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.json()
        if self.status == 200:
            self.ids += [e["id"] for e in (body if isinstance(body, list) else [body])]
        return web.Response(status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hook?batch=100"
    yield receiver
    await runner.cleanup()


async def test_sigterm_exits_zero_promptly_and_the_spool_delivers_after_restart(
    cli: StartCli, server: IndependentServer, hook: Hook, tmp_path: Path
) -> None:
    """SIGTERM while a webhook sink keeps failing: exit 0 within a few seconds; the events it
    had not confirmed are in the spool and reach it after a restart (gap recovery off, so the
    spool alone must hold them)."""
    out = tmp_path / "events.jsonl"
    spool = tmp_path / "spool.db"
    args = bridge_args(server, spool, f"file:{out}", hook.url)
    proc = await cli(*args, env=env())
    await server.wait_live(1)
    sent = await emit_spread(server, 300)
    await eventually(lambda: file_ids(out) == sent, "every id in the file", 10)
    await eventually(lambda: hook.attempts > 0, "the webhook tried", 5)
    proc.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert await proc.finish(timeout=10) == 0
    assert time.monotonic() - stopped < 5
    assert hook.ids == []
    with Spool(spool) as held:
        assert held.depth == len(sent)  # received, kept for the sink that did not confirm

    hook.status = 200
    proc = await cli(*args, "--no-backfill", env=env())
    await eventually(lambda: sorted(hook.ids) == sent, "every id at the webhook", 10)
    proc.send(signal.SIGINT)
    assert await proc.finish() == 0
    assert file_ids(out) == sent  # the file sink had confirmed them: not written twice
    with Spool(spool) as held:
        assert held.depth == 0


# -- start-up errors ------------------------------------------------------------------------


async def run_to_exit(cli: StartCli, *args: str, **extra: str) -> tuple[int, str]:
    proc = await cli("bridge", *args, env=clean_env(**extra))
    code = await proc.finish(timeout=15)
    return code, proc.err


def one_error_line(err: str) -> str:
    """The single line of stderr, which must be an error and no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0]


async def test_bad_sink_uri_is_a_usage_error_with_the_password_hidden(
    cli: StartCli, tmp_path: Path
) -> None:
    """A --to with an unknown scheme or a bad value: exit 2, one line naming the URI, the
    password in it shown as ***."""
    base = ("--url", "ws://127.0.0.1:9", "--spool", str(tmp_path / "s.db"))
    code, err = await run_to_exit(
        cli, *base, "--to", "kafka://user:hunter2@broker:9092/x", NEUROIO_API_TOKEN=TOKEN
    )
    assert code == 2
    line = one_error_line(err)
    assert "kafka://user:***@broker:9092/x" in line and "hunter2" not in err
    code, err = await run_to_exit(
        cli, *base, "--to", "redis://:hunter2@127.0.0.1:6379/0?maxlen=lots", NEUROIO_API_TOKEN=TOKEN
    )
    assert code == 2
    line = one_error_line(err)
    assert "redis://:***@127.0.0.1:6379" in line and "hunter2" not in err
    assert not (tmp_path / "s.db").exists()  # refused before anything was opened


async def test_missing_token_and_missing_sink_are_usage_errors(
    cli: StartCli, tmp_path: Path
) -> None:
    """No token, or no --to: exit 2 and a line saying what to give."""
    code, err = await run_to_exit(cli, "--to", f"file:{tmp_path / 'o'}")
    assert code == 2 and "no API token" in err and "--token-file" in err
    assert "Traceback" not in err
    code, err = await run_to_exit(cli, NEUROIO_API_TOKEN=TOKEN)
    assert code == 2 and "--to" in err and "Traceback" not in err


async def test_missing_extra_names_the_pip_install(cli: StartCli, tmp_path: Path) -> None:
    """A Redis sink without the redis package: exit 2 and the pip install line."""
    # A package named redis that fails to import, ahead of the real one on the path.
    fake = tmp_path / "shadow" / "redis"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named redis', name='redis')\n")
    code, err = await run_to_exit(
        cli,
        "--to",
        "redis://127.0.0.1:6379/0",
        "--spool",
        str(tmp_path / "s.db"),
        NEUROIO_API_TOKEN=TOKEN,
        PYTHONPATH=str(tmp_path / "shadow"),
    )
    assert code == 2
    assert "pip install 'neuroio-events[redis]'" in one_error_line(err)


async def test_spool_that_cannot_be_used_is_one_line_and_exit_1(
    cli: StartCli, tmp_path: Path
) -> None:
    """An unwritable spool location and a corrupt spool file: exit 1, one line with the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    sink = ("--to", f"file:{tmp_path / 'o.jsonl'}", "--url", "ws://127.0.0.1:9")
    code, err = await run_to_exit(
        cli, *sink, "--spool", str(blocker / "spool.db"), NEUROIO_API_TOKEN=TOKEN
    )
    assert code == 1
    assert str(blocker / "spool.db") in one_error_line(err)

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 4096)
    code, err = await run_to_exit(cli, *sink, "--spool", str(corrupt), NEUROIO_API_TOKEN=TOKEN)
    assert code == 1
    line = one_error_line(err)
    assert str(corrupt) in line and "corrupt" in line


async def test_unreachable_redis_at_start_up_is_one_line_and_exit_1(
    cli: StartCli, tmp_path: Path
) -> None:
    """A sink that cannot be reached when the bridge starts, with --require-sinks: exit 1,
    one line naming it (without it the bridge starts: test_start_without_sinks)."""
    code, err = await run_to_exit(
        cli,
        "--require-sinks",
        "--to",
        "redis://:hunter2@127.0.0.1:1/0",
        "--url",
        "ws://127.0.0.1:9",
        "--spool",
        str(tmp_path / "s.db"),
        NEUROIO_API_TOKEN=TOKEN,
    )
    assert code == 1
    line = one_error_line(err)
    assert "redis://:***@127.0.0.1:1/0" in line and "unreachable" in line
    assert "hunter2" not in err


async def test_rejected_token_exits_3_and_exhausted_retries_exit_4(
    cli: StartCli, tmp_path: Path
) -> None:
    """A token the server refuses: 3 with one line. No server at all and --max-retries: 4."""
    async with IndependentServer("another-token") as other:
        code, err = await run_to_exit(
            cli,
            *bridge_args(other, tmp_path / "a.db", f"file:{tmp_path / 'a'}")[1:],
            NEUROIO_API_TOKEN=TOKEN,
        )
    assert code == 3
    assert "authentication failed" in err and "Traceback" not in err
    assert "server error message" not in err  # said once, in the error line
    code, err = await run_to_exit(
        cli,
        "--url",
        f"ws://127.0.0.1:{free_port()}",
        "--max-retries",
        "2",
        "--reconnect-delay",
        "0.01",
        "--to",
        f"file:{tmp_path / 'b'}",
        "--spool",
        str(tmp_path / "b.db"),
        NEUROIO_API_TOKEN=TOKEN,
    )
    assert code == 4
    assert "Traceback" not in err


# -- metrics --------------------------------------------------------------------------------

DOCUMENTED_METRICS = (
    "neuroio_events_received_total",
    "neuroio_events_duplicate_total",
    "neuroio_events_malformed_total",
    "neuroio_frames_received_total",
    "neuroio_sink_delivered_total",
    "neuroio_sink_failures_total",
    "neuroio_sink_dead_lettered_total",
    "neuroio_sink_lag_events",
    "neuroio_sink_lag_seconds",
    "neuroio_sink_failing_seconds",
    "neuroio_sink_delivery_seconds",
    "neuroio_spool_events",
    "neuroio_spool_bytes",
    "neuroio_spool_max_bytes",
    "neuroio_spool_file_bytes",
    "neuroio_spool_dead_letters",
    "neuroio_spool_paused",
    "neuroio_connection_state",
    "neuroio_connection_live",
    "neuroio_reconnects_total",
    "neuroio_pong_rtt_seconds",
    "neuroio_last_event_age_seconds",
    "neuroio_healthy",
)


async def metrics_port(proc: Cli) -> int:
    """The port the bridge logged for its metrics server (started with --metrics-port 0)."""
    await proc.wait_stderr("/healthz")
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proc.err)
    assert found, proc.err
    return int(found.group(1))


async def test_metrics_port_0_serves_documented_metrics_and_health(
    cli: StartCli, server: IndependentServer, tmp_path: Path
) -> None:
    """--metrics-port 0 picks a free port (logged); /metrics has every documented metric and
    counts the events; /healthz is 200 while live, 503 once the server is gone; no token."""
    out = tmp_path / "events.jsonl"
    args = bridge_args(server, tmp_path / "spool.db", f"file:{out}")
    proc = await cli(*args, "--metrics-port", "0", env=env())
    port = await metrics_port(proc)
    base = f"http://127.0.0.1:{port}"
    await server.wait_live(1)
    sent = await server.emit(20)
    await eventually(lambda: file_ids(out) == sent, "events in the file", 5)
    async with aiohttp.ClientSession() as session:

        async def health() -> int:
            async with session.get(f"{base}/healthz") as answer:
                return answer.status

        await eventually(lambda: _is(health(), 200), "/healthz 200", 5)
        async with session.get(f"{base}/healthz") as answer:
            report = await answer.text()
        assert json.loads(report)["connection"] == "live"
        async with session.get(f"{base}/metrics") as answer:
            assert answer.status == 200
            metrics = await answer.text()
        for name in DOCUMENTED_METRICS:
            # A labelled family without samples yet (no reconnect so far) has its HELP only.
            assert re.search(rf"^# HELP {name} ", metrics, re.M), name
        assert re.search(r"^neuroio_events_received_total 20\.0$", metrics, re.M)
        delivered = rf'^neuroio_sink_delivered_total\{{sink="file:{out}"\}} 20\.0$'
        assert re.search(delivered, metrics, re.M)
        assert TOKEN not in metrics and TOKEN not in report

        server.reject = "silent"  # the next connection is refused: not live any more
        await server.drop_all()
        await eventually(lambda: _is(health(), 503), "/healthz 503", 5)
        async with session.get(f"{base}/metrics") as answer:
            metrics = await answer.text()
        assert re.search(r"^neuroio_reconnects_total\{reason=", metrics, re.M), metrics
        assert re.search(r"^neuroio_connection_live 0\.0$", metrics, re.M)
        assert TOKEN not in metrics
    proc.send(signal.SIGTERM)
    assert await proc.finish() == 0


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_second_signal_stops_at_once_while_a_send_hangs(
    cli: StartCli, server: IndependentServer, tmp_path: Path
) -> None:
    """A webhook that accepts the request and never answers: the first SIGTERM waits for the
    batch in flight; a second one stops at once, with status 0 and nothing lost (the spool
    still holds the unconfirmed events)."""
    release = asyncio.Event()
    requests = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()  # a connection opened and closed unused
            return
        requests.set()  # a request is in flight, and will never be answered
        await release.wait()
        writer.close()

    hang = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    spool = tmp_path / "spool.db"
    try:
        proc = await cli(*bridge_args(server, spool, f"http://127.0.0.1:{port}/"), env=env())
        await server.wait_live(1)
        sent = await server.emit(10)
        await asyncio.wait_for(requests.wait(), 5)
        proc.send(signal.SIGTERM)
        await proc.wait_stderr("SIGTERM received")
        proc.send(signal.SIGTERM)
        stopped = time.monotonic()
        assert await proc.finish(timeout=5) == 0
        assert time.monotonic() - stopped < 2
    finally:
        release.set()
        hang.close()
        await hang.wait_closed()
    with Spool(spool) as held:
        assert [e.id for e in held.read(0, 100)] == sent


# -- help and option parsing (no process) ---------------------------------------------------


def test_help_shows_every_option_with_its_default_and_variable() -> None:
    """bridge --help: the documented options, each value option with a NEUROIO_ variable,
    gap recovery on and unbounded by default, the listener-only --drain-timeout hidden."""
    from click.testing import CliRunner

    from neuroio.cli import cli as group

    result = CliRunner().invoke(group, ["bridge", "--help"], terminal_width=300)
    assert result.exit_code == 0, result.output
    text = result.output.partition("Options:")[2]
    for option, variable in (
        ("--to URI", "NEUROIO_BRIDGE_TO"),
        ("--spool PATH", "NEUROIO_BRIDGE_SPOOL"),
        ("--spool-max-bytes", "NEUROIO_BRIDGE_SPOOL_MAX_BYTES"),
        ("--spool-sync", "NEUROIO_BRIDGE_SPOOL_SYNC"),
        ("--webhook-secret", "NEUROIO_WEBHOOK_SECRET"),
        ("--metrics-port", "NEUROIO_BRIDGE_METRICS_PORT"),
        ("--metrics-host", "NEUROIO_BRIDGE_METRICS_HOST"),
        ("--health-max-sink-failure", "NEUROIO_BRIDGE_HEALTH_MAX_SINK_FAILURE"),
        ("--token-file", "NEUROIO_API_TOKEN_FILE"),
        ("--since", "NEUROIO_SINCE"),
    ):
        entry = re.search(rf"^ +{re.escape(option)}.*?(?=^ +-|\Z)", text, re.M | re.S)
        assert entry and f"env var: {variable}" in entry.group(), (option, entry)
    assert re.search(r"--backfill / --no-backfill .*default: backfill\]", text)
    assert re.search(r"--backfill-max-events [^-]*default: 0;", text)
    assert "--drain-timeout" not in text


@pytest.mark.parametrize(
    ("given", "size"),
    [("1073741824", 2**30), ("512MiB", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("2GB", 2 * 10**9)],
)
def test_spool_max_bytes_takes_sizes_with_units(given: str, size: int) -> None:
    """--spool-max-bytes accepts plain bytes and KiB/MiB/GiB/KB/MB/GB suffixes."""
    from neuroio.cli.bridge import ByteSize

    assert ByteSize().convert(given, None, None) == size


@pytest.mark.parametrize("given", ["", "0", "lots", "5 parsecs", "-1GiB"])
def test_spool_max_bytes_refuses_what_is_not_a_positive_size(given: str) -> None:
    """Anything else is a usage error naming the value."""
    import click

    from neuroio.cli.bridge import ByteSize

    with pytest.raises(click.BadParameter, match="size"):
        ByteSize().convert(given, None, None)
