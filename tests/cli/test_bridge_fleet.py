"""A fleet of ``neuroio-events bridge --config F --fleet nats://...`` workers as real
subprocesses, sharing the streams of one emulator through the real NATS JetStream bucket,
delivering to the real Redis (effectively once): the streams spread, a SIGKILLed worker's
streams are taken over and recovered from their watermarks (nothing lost, nothing twice),
and a SIGTERMed worker hands its streams over at once."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from neuroio.testing import Emulator

from ..helpers import eventually
from .conftest import Cli, StartCli, clean_env, free_port
from .test_bridge_cli import FAST

redis_asyncio = pytest.importorskip("redis.asyncio")
pytest.importorskip("nats")

pytestmark = [pytest.mark.redis, pytest.mark.nats]

STREAMS = 6
TTL = 1.5


def write_config(tmp_path: Path, emu: Emulator, redis_url: str, key: str) -> Path:
    body = f'to = ["{redis_url}?stream={key}"]\n'
    body += f'[connection]\nurl = "{emu.url}"\napi_url = "{emu.api_url}"\n'
    for k in range(1, STREAMS + 1):
        token = tmp_path / f"space-{k}.token"
        token.write_text(f"space-{k}-token\n")
        token.chmod(0o600)
        body += f'[[stream]]\nname = "shop-{k}"\ntoken_file = "{token}"\n'
    path = tmp_path / "fleet.toml"
    path.write_text(body)
    return path


class Worker:
    def __init__(self, proc: Cli, port: int) -> None:
        self.proc = proc
        self.port = port

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as exc:  # 503: the report is still the body
            return dict(json.loads(exc.read()))
        except OSError:
            return {}

    async def held(self) -> list[str]:
        report = await asyncio.to_thread(self.health)
        return list(report.get("fleet", {}).get("held", []))


async def start_worker(
    cli: StartCli, config: Path, tmp_path: Path, fleet: str, name: str
) -> Worker:
    port = free_port()
    proc = await cli(
        "bridge", "--config", str(config), "--fleet", f"{fleet}&worker={name}",
        "--spool", str(tmp_path / f"{name}.db"), "--metrics-port", str(port), *FAST,
        env=clean_env(),
    )  # fmt: skip
    return Worker(proc, port)


async def test_a_fleet_shares_the_streams_and_loses_nothing_when_a_worker_dies(
    cli: StartCli, tmp_path: Path, redis_url: str, nats_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"fleet-{tag}"
    fleet = f"{nats_url}?bucket=test-fleet-{tag}&ttl={TTL}"
    redis = redis_asyncio.Redis.from_url(redis_url)
    async with Emulator(spaces=STREAMS, seed=11, push_while_disconnected=False) as emu:
        config = write_config(tmp_path, emu, redis_url, key)
        workers = [await start_worker(cli, config, tmp_path, fleet, f"w{i}") for i in (1, 2, 3)]

        async def spread() -> bool:
            held = [await w.held() for w in workers]
            names = [n for h in held for n in h]
            return sorted(names) == sorted(f"shop-{k}" for k in range(1, STREAMS + 1)) and all(
                len(h) == STREAMS // len(workers) for h in held
            )

        await eventually(spread, "two streams on each of three workers", 15)
        await eventually(
            lambda: len([c for c in emu.live_clients if c.authenticated]) == STREAMS,
            "every stream connected",
            10,
        )
        emitted: list[int] = []

        async def emit_round() -> None:
            for k in range(1, STREAMS + 1):
                emitted.extend(e["id"] for e in await emu.space(f"space-{k}-token").burst(5))

        await emit_round()
        victim = workers[0]
        victims = await victim.held()
        await victim.proc.kill()  # SIGKILL: no lease released, nothing flushed
        await emit_round()  # the victim's streams: only the REST API has these now
        survivors = workers[1:]

        async def taken_over() -> bool:
            held = [n for w in survivors for n in await w.held()]
            return all(v in held for v in victims)

        await eventually(taken_over, "the killed worker's streams taken over", TTL + 10)
        await emit_round()

        async def stored() -> int:
            return int(await redis.xlen(key))

        async def all_stored() -> bool:
            return await stored() >= len(emitted)

        try:
            await eventually(all_stored, f"{len(emitted)} events in Redis", 20)
        except BaseException:
            got = {json.loads(f[b"event"])["id"] for _, f in await redis.xrange(key)}
            logs = "\n".join(w.proc.err[-4000:] for w in workers)
            pytest.fail(f"missing {sorted(set(emitted) - got)} (killed: {victims}):\n{logs}")
        # A SIGTERMed worker hands its streams over at once (well before a lease expires).
        leaving, staying = survivors
        handed = await leaving.held()
        leaving.proc.send(signal.SIGTERM)
        assert await leaving.proc.finish(timeout=15) == 0, leaving.proc.err

        async def all_on_one() -> bool:
            return len(await staying.held()) == STREAMS

        await eventually(all_on_one, "every stream on the last worker", TTL)
        await emit_round()
        await eventually(all_stored, f"{len(emitted)} events in Redis", 20)
        assert handed
        entries = await redis.xrange(key)
        staying.proc.send(signal.SIGTERM)
        assert await staying.proc.finish(timeout=15) == 0, staying.proc.err
    ids = [json.loads(fields[b"event"])["id"] for _, fields in entries]
    assert sorted(ids) == sorted(emitted), "each event once"
    await redis.delete(key)
    await redis.aclose()
