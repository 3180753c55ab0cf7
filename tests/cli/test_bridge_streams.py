"""``neuroio-events bridge --config FILE`` with ``[[stream]]`` tables, as a real subprocess:
``--check`` lists the streams (no token of the bridge's own needed), each mistake in a stream
table is one line, and a running bridge of three streams delivers every space's events once,
marked with its stream, with per-stream metrics and health."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

from neuroio.testing import Emulator

from ..helpers import eventually
from .conftest import StartCli, clean_env, free_port
from .test_bridge_cli import FAST


def token_files(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for k in range(1, count + 1):
        path = tmp_path / f"space-{k}.token"
        path.write_text(f"space-{k}-token\n")
        path.chmod(0o600)
        paths.append(path)
    return paths


def config(tmp_path: Path, body: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def stream_tables(paths: list[Path]) -> str:
    return "".join(
        f'[[stream]]\nname = "shop-{k}"\ntoken_file = "{p}"\n' for k, p in enumerate(paths, 1)
    )


async def test_check_lists_the_streams_without_a_token_of_its_own(
    cli: StartCli, tmp_path: Path
) -> None:
    paths = token_files(tmp_path, 2)
    body = f'to = ["file:{tmp_path}/out-{{stream}}.jsonl"]\n[streams]\nconnect_rate = 5\n'
    body += stream_tables(paths)
    body += '[[stream]]\nname = "shop-3"\ntoken_command = "cat /dev/null"\n'
    body += 'url = "wss://user:pw-9@events.example/ws"\n'
    proc = await cli("bridge", "--config", str(config(tmp_path, body)), "--check", env=clean_env())
    assert await proc.finish(timeout=15) == 0, proc.err
    out = proc.out
    assert "streams: 3" in out
    assert f"shop-1: token file {paths[0]}" in out
    assert "shop-3: token command cat ... (not run by --check)" in out
    assert "pw-9" not in out
    assert "connect_rate" in out and "5.0" in out
    assert "space-1-token" not in out + proc.err


async def test_a_bridge_of_three_streams_delivers_each_space_once(
    cli: StartCli, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    async with Emulator(spaces=3, seed=7) as emu:
        body = f'to = ["file:{out}"]\n[connection]\nurl = "{emu.url}"\n'
        body += f'api_url = "{emu.api_url}"\n[metrics]\nport = {port}\n'
        body += stream_tables(token_files(tmp_path, 3))
        path = config(tmp_path, body)
        proc = await cli(
            "bridge", "--config", str(path), "--spool", str(tmp_path / "spool.db"), *FAST
        )
        await emu.wait_for_clients(3, timeout=15)
        sent: dict[str, list[int]] = {}
        for k in (1, 2, 3):
            for entry in await emu.space(f"space-{k}-token").burst(10):
                sent.setdefault(f"shop-{k}", []).append(entry["id"])

        def got() -> list[dict[str, object]]:
            if not out.exists():
                return []
            return [json.loads(line) for line in out.read_text().splitlines()]

        await eventually(lambda: len(got()) >= 30, "30 events in the file", 15)

        def scrape(what: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{what}", timeout=5) as answer:
                return str(answer.read().decode())

        metrics = await asyncio.to_thread(scrape, "/metrics")
        health = json.loads(await asyncio.to_thread(scrape, "/healthz"))
        page = await asyncio.to_thread(scrape, "/")
        proc.send(signal.SIGTERM)
        assert await proc.finish(timeout=15) == 0, proc.err
    events = got()
    assert len(events) == 30
    for name, ids in sent.items():
        assert [e["id"] for e in events if e["stream"] == name] == ids
    for k in (1, 2, 3):
        assert f'neuroio_stream_events_total{{stream="shop-{k}"}} 10.0' in metrics
        assert f'neuroio_stream_live{{stream="shop-{k}"}} 1.0' in metrics
    assert 'neuroio_streams{state="live"} 3.0' in metrics
    assert health["status"] == "ok" and set(health["streams"]) == {"shop-1", "shop-2", "shop-3"}
    assert "3 of 3 streams live" in page and all(f"shop-{k}" in page for k in (1, 2, 3))
    assert "space-1-token" not in proc.err + metrics + json.dumps(health)
    assert "stream shop-" not in proc.err or "Traceback" not in proc.err


async def test_a_bad_fleet_uri_is_a_usage_error_before_anything_starts(
    cli: StartCli, tmp_path: Path
) -> None:
    body = 'to = ["memory:"]\n' + stream_tables(token_files(tmp_path, 1))
    path = config(tmp_path, body)
    uri = "nats://u:secret-pw-1@127.0.0.1:9?bucket=b&tll=5"
    proc = await cli("bridge", "--config", str(path), "--fleet", uri, "--check", env=clean_env())
    assert await proc.finish(timeout=15) == 2
    assert "unknown option 'tll' (did you mean 'ttl'?)" in proc.err
    assert len(proc.err.splitlines()) == 1 and "secret-pw-1" not in proc.err
    no_streams = config(tmp_path, 'to = ["memory:"]\n', "plain.toml")
    proc = await cli(
        "bridge", "--config", str(no_streams), "--fleet", "nats://127.0.0.1:9", "--check",
        env=clean_env(),
    )  # fmt: skip
    assert await proc.finish(timeout=15) == 2
    assert "a fleet shares named streams" in proc.err


async def test_the_streams_example_is_valid_and_its_token_files_are_read(
    cli: StartCli, tmp_path: Path
) -> None:
    """examples/streams.toml passes --check once its token files exist; a missing one is one
    line naming the stream's key."""
    example = Path(__file__).resolve().parents[2] / "examples" / "streams.toml"
    env = clean_env(NEUROIO_EXAMPLE_DIR=str(tmp_path), NEUROIO_TOKEN_DIR=str(tmp_path))
    (tmp_path / "shop-berlin").write_text("berlin-token-1\n")
    (tmp_path / "shop-berlin").chmod(0o600)
    proc = await cli("bridge", "--config", str(example), "--check", env=env)
    assert await proc.finish(timeout=15) == 2
    assert proc.err.startswith(f"Error: {example}: stream[1] (shop-paris).token_file: ")
    assert len(proc.err.splitlines()) == 1
    (tmp_path / "shop-paris").write_text("paris-token-2\n")
    (tmp_path / "shop-paris").chmod(0o600)
    proc = await cli("bridge", "--config", str(example), "--check", env=env)
    assert await proc.finish(timeout=15) == 0, proc.err
    assert "streams: 2" in proc.out and "token-1" not in proc.out + proc.err
