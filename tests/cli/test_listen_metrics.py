"""``neuroio-events listen --metrics-port`` as a real subprocess against the emulator:
/metrics and /healthz while events flow, 503 once the server is gone, and the one-line
errors (the port in use, the metrics extra missing)."""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path

import aiohttp

from neuroio.emulator import Emulator

from ..helpers import eventually
from .conftest import TOKEN, Cli, StartCli, clean_env
from .rest_server import RestServer

# Every family ``listen`` documents (docs/cli.md, neuroio/_listener_metrics.py).
DOCUMENTED_METRICS = (
    "neuroio_events_received_total",
    "neuroio_events_backfilled_total",
    "neuroio_events_duplicate_total",
    "neuroio_frames_received_total",
    "neuroio_frames_malformed_total",
    "neuroio_handler_errors_total",
    "neuroio_connection_state",
    "neuroio_connection_live",
    "neuroio_reconnects_total",
    "neuroio_pong_rtt_seconds",
    "neuroio_last_event_age_seconds",
    "neuroio_backfill_failed",
    "neuroio_healthy",
)
FAST = (
    "--ping-interval", "0.2", "--ping-timeout", "0.5",
    "--reconnect-delay", "0.05", "--max-reconnect-delay", "0.2",
)  # fmt: skip


async def metrics_port(proc: Cli) -> int:
    """The port ``listen`` logged for its metrics server (started with --metrics-port 0)."""
    await proc.wait_stderr("/healthz")
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics, health on /healthz", proc.err)
    assert found, proc.err
    return int(found.group(1))


def sample(metrics: str, name: str) -> float:
    """The value of the unlabelled sample ``name``."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    assert found, f"no {name} in:\n{metrics}"
    return float(found.group(1))


async def test_metrics_and_health_while_events_flow_then_503_without_the_server(
    cli: StartCli, token_file: Path
) -> None:
    """--metrics-port 0 picks a free port (logged); /metrics has every documented family,
    counts the events, the PONG round trip and the last event's age; /healthz is 200 while
    live, 503 naming the state once the emulator is gone; the token is in neither."""
    async with Emulator(tokens={TOKEN}, seed=5) as emu:
        proc = await cli(
            "listen", "--url", emu.url, "--token-file", str(token_file),
            "--metrics-port", "0", *FAST,
        )  # fmt: skip
        port = await metrics_port(proc)
        base = f"http://127.0.0.1:{port}"
        await emu.wait_for_clients(1)
        sent = await emu.burst(20)
        lines = await proc.lines(20)
        assert [json.loads(line)["id"] for line in lines] == [e["id"] for e in sent]
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> tuple[int, str]:
                async with session.get(base + path) as answer:
                    return answer.status, await answer.text()

            status, body = await get("/healthz")
            assert status == 200, body
            report = json.loads(body)
            assert report["status"] == "ok" and report["connection"] == "live"
            assert report["events"] == 20 and report["problems"] == []
            assert report["backfill_error"] is None

            async def known(name: str) -> bool:
                return f"{name} NaN" not in (await get("/metrics"))[1]

            await eventually(lambda: known("neuroio_pong_rtt_seconds"), "a PONG RTT", 5)
            # The last event's time is read by the keepalive task once per tick, and it
            # counts from its first tick (the first PONG says it ran): one event more.
            sent.append(await emu.emit())
            assert json.loads(await proc.line())["id"] == sent[-1]["id"]
            await eventually(
                lambda: known("neuroio_last_event_age_seconds"), "the last event's age", 5
            )
            status, metrics = await get("/metrics")
            assert status == 200
            for name in DOCUMENTED_METRICS:
                # A labelled family without samples yet (no reconnect so far) has HELP only.
                assert re.search(rf"^# HELP {name} ", metrics, re.M), name
            assert sample(metrics, "neuroio_events_received_total") == 21
            assert sample(metrics, "neuroio_connection_live") == 1
            assert sample(metrics, "neuroio_healthy") == 1
            # uvloop's clock counts milliseconds: a loopback round trip may read 0.
            assert 0 <= sample(metrics, "neuroio_pong_rtt_seconds") < 1
            assert 0 <= sample(metrics, "neuroio_last_event_age_seconds") < 5
            assert 'neuroio_connection_state{state="live"} 1.0' in metrics
            assert TOKEN not in metrics and TOKEN not in body

            await emu.stop()

            async def unhealthy() -> bool:
                return (await get("/healthz"))[0] == 503

            await eventually(unhealthy, "/healthz 503 once the emulator is gone", 5)
            status, body = await get("/healthz")
            report = json.loads(body)
            assert report["status"] == "failing"
            words = {"connecting": "connecting", "backoff": "reconnecting (backoff)"}
            assert report["problems"] == [f"connection is {words[report['connection']]}"]
            assert report["connection"] in ("connecting", "backoff")
            _, metrics = await get("/metrics")
            assert re.search(r"^neuroio_reconnects_total\{reason=\"\w+\"\} [1-9]", metrics, re.M)
            assert sample(metrics, "neuroio_connection_live") == 0
            assert sample(metrics, "neuroio_healthy") == 0
            assert TOKEN not in metrics and TOKEN not in body
        proc.send(signal.SIGTERM)
        assert await proc.finish() == 0


async def test_a_port_in_use_is_one_line(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """The metrics port taken: one line naming the address, exit 2 (as the bridge), no
    connection made."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await cli(
            "listen", "--url", emulator.url, "--token-file", str(token_file),
            "--metrics-port", str(port),
        )  # fmt: skip
        assert await proc.finish() == 2
    lines = proc.err.strip().splitlines()
    assert len(lines) == 1, proc.err
    assert lines[0].startswith(f"Error: metrics server cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in proc.err
    assert emulator.live_clients == []


async def test_without_the_metrics_extra_metrics_port_is_one_line(
    cli: StartCli, emulator: Emulator, token_file: Path, tmp_path: Path
) -> None:
    """prometheus-client not importable: --metrics-port is one line with the pip command,
    exit 2; without --metrics-port, listen does not need it."""
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('prometheus_client shadowed')\n")
    env = clean_env(PYTHONPATH=str(shadow.parent))
    args = ("listen", "--url", emulator.url, "--token-file", str(token_file))
    proc = await cli(*args, "--metrics-port", "0", env=env)
    assert await proc.finish() == 2
    assert proc.err.strip().splitlines() == [
        "Error: --metrics-port needs the optional dependencies of the 'metrics' extra: "
        "run  pip install 'neuroio-events[metrics]'"
    ]
    plain = await cli(*args, "--count", "1", env=env)
    await emulator.wait_for_clients(1)
    await emulator.burst(1)
    assert await plain.finish() == 0
    assert len(plain.out.splitlines()) == 1


async def test_a_failed_gap_recovery_shows_in_health_without_failing_it(
    cli: StartCli, emulator: Emulator, token_file: Path
) -> None:
    """--backfill against an entries API answering HTML: /healthz stays 200 (live events go
    on) and names the error; neuroio_backfill_failed is 1; the log has the one ERROR line."""
    async with RestServer(200, "text/html", b"<html><body>Bad gateway</body></html>") as api:
        proc = await cli(
            "listen", "--url", emulator.url, "--token-file", str(token_file),
            "--backfill", "--api-url", api.url, "--metrics-port", "0",
        )  # fmt: skip
        port = await metrics_port(proc)
        await proc.wait_stderr("gap recovery failed")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                assert answer.status == 200
                report = await answer.json()
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                metrics = await answer.text()
        assert report["backfill_error"].startswith(
            "the entries API answered HTTP 200 text/html, not JSON: "
            "'<html><body>Bad gateway</body></html>'"
        )
        assert sample(metrics, "neuroio_backfill_failed") == 1
        assert sample(metrics, "neuroio_healthy") == 1
        sent = await emulator.emit()
        assert json.loads(await proc.line())["id"] == sent["id"]
        proc.send(signal.SIGTERM)
        assert await proc.finish() == 0
    assert proc.err.count("gap recovery failed") == 1 and "Traceback" not in proc.err
