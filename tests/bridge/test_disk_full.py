"""A full disk under the spool: /healthz fails at once, the socket pauses with few events held,
and commits resume by themselves once a little room comes back, losing nothing.

Each test mounts its own small tmpfs (root only) so that filling it touches no other disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from neuroio.bridge import FAILING_MAX_PENDING, Bridge, Pipeline
from neuroio.sinks import MemorySink
from neuroio.spool import Spool

from ..helpers import until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options, feed, frame, run_pipeline

_DISK = "8m"
# Room given back: an eighth of the disk. With the spool's 64 KiB pages, the checkpoint that
# lets SQLite reuse its log needs room for the database's few pages (about 640 KiB here).
_FREED = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_DISK}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` with a ballast file until the file system refuses a byte."""
    ballast = disk / "ballast"
    chunk = b"\0" * 4096
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last pages: the file system may still take less than a chunk.
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 64):
                pass
    finally:
        os.close(fd)
    return ballast


async def stream(pipeline: Pipeline, ids: range) -> None:
    """Hand events to the pipeline as a socket would: yielding to the loop between frames."""
    for i in ids:
        await pipeline.handle(frame(i))
        await asyncio.sleep(0)


async def assert_nothing_more_accepted(pipeline: Pipeline) -> None:
    """While commits keep failing, the handler accepts no more events: memory holds what
    was accepted before the failure was known (plus at most a small bound), not the outage."""
    held = pipeline.uncommitted
    failures = pipeline.commit_failures
    await until(lambda: pipeline.commit_failures >= failures + 3, timeout=10)
    assert pipeline.paused_since is not None
    assert pipeline.uncommitted <= max(held, FAILING_MAX_PENDING)


def free(ballast: Path, size: int) -> None:
    """Give back ``size`` bytes of the ballast (a little room, not all of it)."""
    os.truncate(ballast, max(0, ballast.stat().st_size - size))


async def test_commits_resume_by_themselves_after_a_little_room_comes_back(
    small_disk: Path,
) -> None:
    """With the disk full, the handler blocks once a few events wait uncommitted (never
    thousands in memory); after a little room is freed, everything accepted is committed and
    delivered in order, and the pipeline keeps committing afterwards without a restart."""
    spool = Spool(small_disk / "spool.db")
    sink = MemorySink()
    pipeline = await run_pipeline(spool, [sink])
    feeder = None
    try:
        await feed(pipeline, range(1, 11))
        await pipeline.wait_delivered(timeout=5)
        ballast = fill(small_disk)
        feeder = asyncio.create_task(stream(pipeline, range(11, 3011)))
        await until(lambda: pipeline.commit_failing_since is not None, timeout=10)
        await until(lambda: pipeline.paused_since is not None, timeout=10)
        assert feeder is not None and not feeder.done()
        await assert_nothing_more_accepted(pipeline)
        assert "full" in str(pipeline.commit_error)
        free(ballast, _FREED)
        await asyncio.wait_for(feeder, 60)
        await pipeline.wait_delivered(timeout=60)
        assert pipeline.commit_failing_since is None and pipeline.paused_since is None
        await feed(pipeline, range(3011, 3111))  # and it goes on
        await pipeline.wait_delivered(timeout=30)
    finally:
        if feeder is not None:
            feeder.cancel()
        await pipeline.close()
        spool.close()
    assert sink.ids == list(range(1, 3111))


async def test_healthz_fails_at_once_when_the_disk_is_full_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    """A bridge whose spool's disk fills: /healthz answers 503 naming the failing commit
    while events keep coming, then 200 again once a little room is freed; every event the
    server sent reaches the file sink once."""
    out = tmp_path / "events.jsonl"
    async with IndependentServer(TOKEN) as server:
        options = bridge_options(server, tmp_path)
        options["spool"] = small_disk / "spool.db"
        bridge = Bridge(TOKEN, [f"file:{out}"], metrics_port=0, **options)  # type: ignore[arg-type]
        async with bridge, aiohttp.ClientSession() as http:
            assert bridge.metrics is not None and bridge.pipeline is not None
            pipeline = bridge.pipeline
            healthz = f"http://127.0.0.1:{bridge.metrics.port}/healthz"
            await server.wait_live()
            sent = await server.emit(20)
            await until(lambda: pipeline.received == 20, timeout=10)
            async with http.get(healthz) as answer:
                assert answer.status == 200, await answer.text()
            ballast = fill(small_disk)
            sent += await server.emit(500)
            await until(lambda: pipeline.commit_failing_since is not None, timeout=10)
            async with http.get(healthz) as answer:
                assert answer.status == 503
                report = await answer.json()
            assert any(p.startswith("spool commit failing for") for p in report["problems"])
            assert any("full" in p for p in report["problems"]), report
            sent += await server.emit(200)  # the handler is called again, and waits
            await until(lambda: pipeline.paused_since is not None, timeout=10)
            await assert_nothing_more_accepted(pipeline)
            free(ballast, _FREED)
            await until(lambda: pipeline.received == len(sent), timeout=60)
            await pipeline.wait_delivered(timeout=30)
            async with http.get(healthz) as answer:
                assert answer.status == 200, await answer.text()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == sent
