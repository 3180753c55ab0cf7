"""Gap recovery, high availability and SIGKILL: nothing lost across restarts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from neuroio.bridge import Bridge
from neuroio.bridge.spool import Spool

from ..helpers import until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options


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
        entries: Any = await client.xrange(f"test:{tag}")
        ids = [int(fields[b"id"]) for _, fields in entries]
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
            data = (await js.get_msg(f"T{tag.upper()}", seq)).data
            assert data is not None
            ids.append(json.loads(data)["id"])
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
                pipeline = bridge.pipeline
                assert pipeline is not None
                await until(lambda p=pipeline: p.received == 1000)  # type: ignore[misc]
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
                        # Awaited within this iteration: the lambda sees this cycle's sent.
                        await until(lambda: set(file_ids()) >= set(sent), timeout=20)  # noqa: B023
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
                await until(lambda: len(file_ids()) > len(sent) // 2, timeout=15)  # noqa: B023
            finally:
                proc.send_signal(signal.SIGKILL) if cycle < 3 else proc.terminate()
                await proc.wait()
            # Events emitted while no bridge runs: only gap recovery can bring them.
            sent += await server.emit(40)
    assert len(sent) == 3 * (300 + 40) + 200
    assert set(file_ids()) == set(sent)
    assert sorted(await redis_ids(redis_url, tag)) == sent
    assert sorted(await nats_ids(nats_url, tag)) == sent
