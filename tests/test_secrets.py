"""The API token never leaves the process that sends it: every artefact of a full bridge run
(and of a ``listen --record`` beside it) is searched for it.

The run: ``neuroio-events bridge`` with a file, Redis, NATS and webhook sink, metrics, JSON logs
at full verbosity and a forced reconnect (so the REST API is called with the token too), and
``neuroio-events listen --record`` on the same server. Then the token is looked for in: each
process's stdout, stderr and argv, the spool database and its -wal/-shm files, the file sink,
the Redis stream and its keys, the NATS messages and headers, the webhook requests' headers
and bodies, ``/metrics`` and ``/healthz``, the listen output and the recording.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.independent_server import IndependentServer

from .helpers import eventually

# Distinctive: any occurrence of it anywhere can only be a leak.
TOKEN = "SeCrEt-TOKEN-b9e2c4f81d7a43e5a06c9d3b2f1e8a7c"
WEBHOOK_SECRET = "hmac-key-5d1f9a7e3c2b4d6f8a0e2c4b6d8f0a1c"


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
    env["PYTHONWARNINGS"] = "default"
    env.update(extra)
    return env


class Child:
    """A ``python -m neuroio`` process with stdout and stderr in files."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.proc = proc
        self.out_path = out
        self.err_path = err

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def argv(self) -> bytes:
        """The process's command line as ``ps`` shows it to every user of the machine."""
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()

    async def stop(self, timeout: float = 10.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def start(tmp_path: Path, name: str, *args: str, env: dict[str, str]) -> Child:
    out, err = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "neuroio",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            env=env,
        )
    return Child(proc, out, err)


def lines_with_ids(path: Path) -> set[int]:
    if not path.exists():
        return set()
    complete = path.read_bytes().rpartition(b"\n")[0]
    return {json.loads(line)["id"] for line in complete.splitlines()}


class Hook:
    """A webhook receiver keeping every request's headers and body."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.ids: set[int] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        head = "".join(f"{k}: {v}\n" for k, v in request.headers.items())
        self.requests.append(f"{request.method} {request.path_qs}\n{head}\n".encode() + body)
        value = json.loads(body)
        self.ids.update(e["id"] for e in (value if isinstance(value, list) else [value]))
        return web.Response(status=204)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    await runner.cleanup()


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def redis_dump(redis_url: str, stream: str, delete: bool) -> bytes:
    """Every entry of the stream (ids, fields, values) and the names of its keys."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        dump = bytearray()
        for entry_id, fields in await client.xrange(stream) or []:
            assert isinstance(entry_id, bytes) and isinstance(fields, dict)
            dump += entry_id + b"".join(_b(k) + b"=" + _b(v) for k, v in fields.items())
            dump += b"\n"
        keys = [k async for k in client.scan_iter(f"{stream}*")]
        dump += b"\n".join(keys)
        if delete and keys:
            await client.delete(*keys)
        return bytes(dump)
    finally:
        await client.aclose()


async def nats_dump(nats_url: str, stream: str, delete: bool) -> tuple[bytes, int]:
    """Every message of the JetStream stream (headers and data), and how many there are."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return b"", 0
        dump = bytearray()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            dump += (
                repr(msg.headers).encode()
                + (msg.subject or "").encode()
                + (msg.data or b"")
                + b"\n"
            )
        if delete:
            await js.delete_stream(stream)
        return bytes(dump), info.state.messages
    finally:
        await nc.close()


@pytest.mark.redis
@pytest.mark.nats
async def test_no_artefact_of_a_full_bridge_run_holds_the_token(
    tmp_path: Path, redis_url: str, nats_url: str, hook: tuple[Hook, str]
) -> None:
    """Grep every artefact of a bridge run with every sink, metrics, JSON logs at -vv, gap
    recovery, and a listen --record beside it: the token is in none of them."""
    receiver, hook_url = hook
    tag = f"secrets{time.monotonic_ns()}"
    stream, js_stream = f"test:{tag}", f"T{tag.upper()}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    out = tmp_path / "events.jsonl"
    spool = tmp_path / "spool.db"
    record = tmp_path / "listen.rec"
    listen_out = tmp_path / "listen.jsonl"
    artefacts: dict[str, bytes] = {}

    async with IndependentServer(TOKEN) as server:
        bridge = await start(
            tmp_path,
            "bridge",
            "bridge",
            "--url",
            server.url,
            "--api-url",
            server.api_url,
            "--token-file",
            str(token_file),
            "--spool",
            str(spool),
            "--to",
            f"file:{out}",
            "--to",
            f"{redis_url}?stream={stream}",
            "--to",
            f"{nats_url}?subject=test.{tag}&stream={js_stream}",
            "--to",
            hook_url,
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            "-vv",
            "--ping-interval",
            "0.1",
            "--reconnect-delay",
            "0.01",
            "--no-uvloop",
            env=child_env(NEUROIO_WEBHOOK_SECRET=WEBHOOK_SECRET),
        )
        listen = await start(
            tmp_path,
            "listen",
            "listen",
            "--url",
            server.url,
            "--api-url",
            server.api_url,
            "--backfill",
            "--record",
            str(record),
            "--output",
            str(listen_out),
            "--format",
            "jsonl",
            "--log-format",
            "json",
            "-vv",
            "--ping-interval",
            "0.1",
            "--reconnect-delay",
            "0.01",
            env=child_env(NEUROIO_API_TOKEN=TOKEN),
        )
        children = (bridge, listen)
        try:
            await server.wait_live(2, timeout=10)
            await eventually(lambda: len(server.live()) == 2, "both clients live", 10)
            sent = set(await server.emit(50))
            await server.drop_all()
            sent |= set(await server.emit(20))  # recovered through the REST API, with the token
            await server.wait_live(4, timeout=10)
            await eventually(lambda: len(server.live()) == 2, "both clients live again", 10)
            sent |= set(await server.emit(30))

            await eventually(lambda: lines_with_ids(out) == sent, "file sink complete", 10)
            await eventually(lambda: receiver.ids == sent, "webhook complete", 10)
            await eventually(lambda: lines_with_ids(listen_out) == sent, "listen complete", 10)

            async def brokers_complete() -> bool:
                redis_entries = (await redis_dump(redis_url, stream, False)).count(b"event=")
                _, nats_count = await nats_dump(nats_url, js_stream, False)
                return redis_entries == len(sent) and nats_count == len(sent)

            await eventually(brokers_complete, "Redis and NATS complete", 10)

            await eventually(lambda: "/healthz" in bridge.err, "metrics port logged", 5)
            port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", bridge.err)
            assert port, bridge.err
            async with aiohttp.ClientSession() as session:
                for page in ("/metrics", "/healthz"):
                    url = f"http://127.0.0.1:{port.group(1)}{page}"
                    async with session.get(url) as answer:
                        artefacts[page] = await answer.read()
                        assert answer.status == 200, artefacts[page]
            assert b"neuroio_events_received_total" in artefacts["/metrics"]

            # What every user of the machine sees in ps: the token came from a file or the
            # environment, so it is not there (the control proves the right thing was read).
            for name, child in (("bridge", bridge), ("listen", listen)):
                argv = child.argv()
                assert (b"--spool" in argv) if name == "bridge" else (b"--record" in argv)
                artefacts[f"{name} argv"] = argv
            for suffix in ("", "-wal", "-shm"):
                live_file = Path(f"{spool}{suffix}")
                if live_file.exists():
                    artefacts[f"spool{suffix} (running)"] = live_file.read_bytes()
            assert artefacts["spool-wal (running)"]  # the WAL exists while the bridge runs
        finally:
            codes = [await child.stop() for child in children]
    assert codes == [0, 0], [child.err for child in children]

    for name in ("bridge", "listen"):
        artefacts[f"{name} stdout"] = (tmp_path / f"{name}.stdout").read_bytes()
        artefacts[f"{name} stderr"] = (tmp_path / f"{name}.stderr").read_bytes()
    for path in (spool, Path(f"{spool}-wal"), Path(f"{spool}-shm"), out, record, listen_out):
        if path.exists():
            artefacts[path.name] = path.read_bytes()
    artefacts["redis"] = await redis_dump(redis_url, stream, True)
    artefacts["nats"], _ = await nats_dump(nats_url, js_stream, True)
    for i, request in enumerate(receiver.requests):
        artefacts[f"webhook request {i}"] = request

    # The artefacts are real: each holds what it should.
    assert b'"level":"debug"' in artefacts["bridge stderr"]  # -vv really logged at DEBUG
    assert b"X-NeuroIO-Signature: sha256=" in receiver.requests[0]
    assert artefacts["listen.rec"].count(b'"frame"') >= len(sent)
    assert str(min(sent)).encode() in artefacts["redis"]
    assert str(min(sent)).encode() in artefacts["nats"]
    for line in artefacts["bridge stderr"].splitlines():
        json.loads(line)  # --log-format json: every stderr line is one JSON object

    leaks = [name for name, data in artefacts.items() if TOKEN.encode() in data]
    assert not leaks, f"the token is in: {leaks}"
    secret_leaks = [name for name, data in artefacts.items() if WEBHOOK_SECRET.encode() in data]
    assert not secret_leaks, f"the webhook secret is in: {secret_leaks}"


async def test_token_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    """A token file with mode 0644 works but logs a warning with the chmod to run; the token
    itself is not shown."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    with RefusingUrl() as url:
        child = await start(
            tmp_path,
            "bridge",
            "bridge",
            "--url",
            url,
            "--max-retries",
            "0",
            "--token-file",
            str(token_file),
            "--spool",
            str(tmp_path / "spool.db"),
            "--to",
            f"file:{tmp_path / 'out.jsonl'}",
            env=child_env(),
        )
        code = await asyncio.wait_for(child.proc.wait(), 15)
    err = child.err
    assert code == 4, err  # no server: the warning came before any connection
    assert "can be read by other users" in err and f"chmod 600 {token_file}" in err
    assert TOKEN not in err and TOKEN.encode() not in child.out_path.read_bytes()


class RefusingUrl:
    """A ``ws://`` URL on a loopback port where nothing listens (reserved while in use)."""

    def __enter__(self) -> str:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return f"ws://127.0.0.1:{self._sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
