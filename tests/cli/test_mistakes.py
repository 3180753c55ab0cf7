"""Every mistake a new user or an operator makes is one line and an exit status, before
anything connects: bad URLs, a sink pointed at another server, and the wording of what
the CLI says while it retries. Each test runs the real CLI as a subprocess."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from neuroio._words import plural
from neuroio.emulator import Emulator

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env, free_port


def run_cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """``python -m neuroio *args`` to its end (for commands that must end at once)."""
    return subprocess.run(
        [sys.executable, "-m", "neuroio", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def one_error(stderr: str) -> str:
    """The one ``Error:`` line of ``stderr``; fails on a traceback or on several errors."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "wording"),
    [
        ("ws://", "names no host"),
        ("wss://127.0.0.1:99999/", "port out of range 1-65535"),
        ("ws://[::1", "is not a valid URL"),
        ("http://127.0.0.1:8080/", "must start with ws:// or wss://, got http://"),
    ],
)
def test_listen_refuses_a_url_that_can_never_connect(
    url: str, wording: str, token_file: Path
) -> None:
    result = run_cli("listen", "--token-file", str(token_file), "--url", url)
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert "--url" in line and wording in line
    assert "no connection to" not in result.stderr  # refused before any attempt


def test_bridge_and_doctor_share_the_url_check(token_file: Path, tmp_path: Path) -> None:
    bridge = run_cli(
        "bridge",
        "--token-file",
        str(token_file),
        "--url",
        "wss://127.0.0.1:99999/",
        "--spool",
        str(tmp_path / "spool.db"),
        "--to",
        f"file:{tmp_path / 'out.jsonl'}",
    )
    assert bridge.returncode == 2
    assert "port out of range" in one_error(bridge.stderr)
    assert not (tmp_path / "spool.db").exists()  # nothing started

    doctor = run_cli("doctor", "--token-file", str(token_file), "--url", "ws://[::1")
    assert doctor.returncode == 2
    assert "is not a valid URL" in one_error(doctor.stderr)
    assert doctor.stdout == ""  # no step ran


def test_the_config_file_url_goes_through_the_same_check(token_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[connection]\nurl = "ws://"\n')
    result = run_cli(
        "bridge",
        "--config",
        str(config),
        "--token-file",
        str(token_file),
        "--spool",
        str(tmp_path / "spool.db"),
        "--to",
        f"file:{tmp_path / 'out.jsonl'}",
    )
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert "connection.url" in line and "names no host" in line


@pytest.mark.parametrize("command", ["listen", "doctor"])
def test_a_bad_api_url_is_refused(command: str, token_file: Path) -> None:
    result = run_cli(
        command,
        "--token-file",
        str(token_file),
        "--url",
        "ws://127.0.0.1:1/",
        "--api-url",
        "ftp://x",
    )
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert "--api-url" in line and "must start with http:// or https://" in line


# ---------------------------------------------------------------- the REST URL of a local emulator


async def test_a_loopback_url_recovers_gaps_from_its_own_origin(
    cli: StartCli, token_file: Path
) -> None:
    async with Emulator(tokens={TOKEN}, rate=None, push_while_disconnected=False) as emu:
        first = await emu.emit()
        second = await emu.emit()
        # No live event will come: the two lines can only be recovered through REST, from
        # the emulator (http:// on the --url's host and port), not from production.
        child = await cli(
            "listen", "--token-file", str(token_file), "--url", emu.url,
            "--since", "0", "--count", "2", "--no-status",
        )  # fmt: skip
        lines = await child.lines(2, timeout=10)
        assert all(b'"id":%d' % e["id"] in b"".join(lines) for e in (first, second))
        assert await child.finish() == 0
        assert "api.neuroio.com" not in child.err


async def test_a_loopback_url_with_the_production_api_warns_once(
    cli: StartCli, token_file: Path
) -> None:
    async with Emulator(tokens={TOKEN}, rate=20) as emu:
        child = await cli(
            "listen", "--token-file", str(token_file), "--url", emu.url,
            "--api-url", "https://api.neuroio.com", "--count", "1", "--no-status",
        )  # fmt: skip
        await child.line(timeout=10)
        assert await child.finish() == 0
    warnings = [line for line in child.err.splitlines() if "production API" in line]
    assert len(warnings) == 1, child.err
    assert f"--api-url {emu.api_url}" in warnings[0]


# ---------------------------------------------------------------- sinks pointed at another server


def bridge_to(sink: str, token_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The events URL is a closed port: the sinks are started (and refused) before it matters.
    return run_cli(
        "bridge",
        "--token-file",
        str(token_file),
        "--url",
        f"ws://127.0.0.1:{free_port()}/",
        "--spool",
        str(tmp_path / "spool.db"),
        "--to",
        sink,
    )


def test_an_unknown_redis_option_is_a_usage_error(token_file: Path, tmp_path: Path) -> None:
    """Fixed before this suite (the typed option parser); pinned here."""
    result = bridge_to("redis://127.0.0.1:6379/0?stream=x&bogus=1", token_file, tmp_path)
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert "unknown option 'bogus'" in line and "TypeError" not in line


def test_a_nats_sink_at_a_redis_port_fails_fast_naming_what_answered(
    redis_url: str, token_file: Path, tmp_path: Path
) -> None:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    started = time.monotonic()
    result = bridge_to(f"nats://{host_port}?subject=x", token_file, tmp_path)
    assert time.monotonic() - started < 8  # was 11 s of silence
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert f"{host_port} does not speak NATS (it sent " in line and "-ERR" in line


async def test_a_nats_sink_at_an_http_server_names_the_answer(
    token_file: Path, tmp_path: Path
) -> None:
    async with Emulator(tokens={TOKEN}, rate=None) as emu:
        result = await asyncio.to_thread(
            bridge_to, f"nats://127.0.0.1:{emu.port}?subject=x", token_file, tmp_path
        )
    assert result.returncode == 2
    assert "does not speak NATS (it sent 'HTTP/1." in one_error(result.stderr)


def test_a_redis_sink_at_a_nats_port_is_one_short_line(
    nats_url: str, token_file: Path, tmp_path: Path
) -> None:
    host_port = nats_url.split("//", 1)[1].split("/", 1)[0]
    result = bridge_to(f"redis://{host_port}/0?stream=x", token_file, tmp_path)
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert f"{host_port} does not speak Redis (it sent b'INFO" in line
    assert "server_id" not in line or len(line) < 200  # not the whole banner
    assert "max_payload" not in line


# ---------------------------------------------------------------- wording


def test_plural() -> None:
    assert plural(0, "event") == "0 events"
    assert plural(1, "event") == "1 event"
    assert plural(2, "entry", "entries") == "2 entries"


def test_the_emulator_names_the_port_it_cannot_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("emulate", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in one_error(result.stderr)


def test_each_failed_connect_is_one_line_with_its_reason(token_file: Path) -> None:
    result = run_cli(
        "listen", "--token-file", str(token_file), "--url", f"ws://127.0.0.1:{free_port()}/",
        "--max-retries", "1", "--reconnect-delay", "0", "--no-status",
    )  # fmt: skip
    assert result.returncode == 4
    attempts = [line for line in result.stderr.splitlines() if "no connection to" in line]
    assert len(attempts) == 1, result.stderr  # the second attempt is the last: no retry
    assert "Connect call failed" in attempts[0] and "(connect_failed)" not in attempts[0]
    assert "cannot connect to" not in result.stderr
    assert "after 2 attempts (last failure:" in one_error(result.stderr)

    once = run_cli(
        "listen", "--token-file", str(token_file), "--url", f"ws://127.0.0.1:{free_port()}/",
        "--max-retries", "0", "--no-status",
    )  # fmt: skip
    assert "after 1 attempt (last failure:" in one_error(once.stderr)


async def test_health_and_sink_lines_read_well(
    cli: StartCli, token_file: Path, tmp_path: Path
) -> None:
    """``/healthz`` says what the connection state means; a failing sink's line names the
    sink once (its error is not prefixed with the name again)."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    app = web.Application()
    app.router.add_post("/hook", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink = f"http://127.0.0.1:{port}/hook"
    try:
        await _check_health_and_sink_lines(cli, token_file, tmp_path, sink)
    finally:
        await runner.cleanup()


async def _check_health_and_sink_lines(
    cli: StartCli, token_file: Path, tmp_path: Path, sink: str
) -> None:
    async with Emulator(tokens={TOKEN}, rate=20) as emu:
        child = await cli(
            "bridge", "--token-file", str(token_file), "--url", emu.url,
            "--spool", str(tmp_path / "spool.db"), "--to", sink, "--metrics-port", "0",
            "--sink-retry-delay", "0.05",
        )  # fmt: skip
        await child.wait_stderr("failed (attempt 1)", timeout=10)
        failing = next(line for line in child.err.splitlines() if "failed (attempt 1)" in line)
        assert failing.count(sink) == 1, failing
        assert "0 events held" in child.err or "events held" not in child.err
        await child.wait_stderr("metrics on http://")
        metrics = child.err.split("metrics on ", 1)[1].split("/metrics", 1)[0]
        await emu.stop()  # the connection is lost: the bridge backs off between attempts
        async with aiohttp.ClientSession() as session:

            async def says_reconnecting() -> bool:
                async with session.get(f"{metrics}/healthz") as answer:
                    return "connection is reconnecting (backoff)" in await answer.text()

            await eventually(says_reconnecting, "/healthz naming the backoff", timeout=10)
    assert "connection is backoff" not in child.err
