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
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from neuroio.bridge import FAILING_MAX_PENDING, Bridge, Pipeline
from neuroio.bridge.spool import Spool
from neuroio.sinks import MemorySink
from neuroio.testing import Emulator

from ..helpers import small_tmpfs, until
from ..independent_server import IndependentServer
from ._common import TOKEN, bridge_options, feed, frame, run_pipeline

_DISK = "8m"
# Room given back: an eighth of the disk. With the spool's 64 KiB pages, the checkpoint that
# lets SQLite reuse its log needs room for the database's few pages (about 640 KiB here).
_FREED = 1024 * 1024
_STREAMED = 20_011


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    with small_tmpfs(tmp_path / "disk", _DISK) as where:
        yield where


def fill(disk: Path) -> Path:
    """Fill ``disk`` with a ballast file until the file system refuses a byte."""
    ballast = disk / "ballast"
    chunk = b"\0" * 4096
    # Appending: called again, it tops the ballast up to take back the room the spool's
    # checkpoints freed (a full disk's truncated log gives blocks back).
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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


@contextlib.contextmanager
def kept_full(disk: Path) -> Iterator[Path]:
    """The disk full, and kept full: a thread takes back at once every block the spool
    gives back (a failed commit makes it truncate its log), as another writer filling a real
    disk would; without it a commit may find room again before the test looks."""
    stop = threading.Event()
    ballast = fill(disk)

    def keep() -> None:
        while not stop.wait(0.001):  # pacing of a busy writer, not a synchronisation
            fill(disk)

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    try:
        yield ballast
    finally:
        stop.set()
        thread.join(5)


async def stream(pipeline: Pipeline, ids: range) -> None:
    """Hand events to the pipeline as a socket would: yielding to the loop between frames."""
    for i in ids:
        await pipeline.handle(frame(i))
        await asyncio.sleep(0)


async def assert_nothing_more_accepted(pipeline: Pipeline, disk: Path) -> None:
    """While commits keep failing, the handler accepts no more events: memory holds what
    was accepted before the failure was known (plus at most a small bound), not the outage.

    The disk is topped up first: after a failed commit the spool checkpoints and truncates
    its log, which gives blocks back, and a later commit may then succeed (as it should).
    """
    fill(disk)
    failures = pipeline.commit_failures
    await until(lambda: pipeline.commit_failures > failures, timeout=10)
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
        with kept_full(small_disk) as ballast:
            # More than the disk holds: still streaming when the first failure is known,
            # however long that first commit takes.
            feeder = asyncio.create_task(stream(pipeline, range(11, _STREAMED)))
            await until(lambda: pipeline.commit_failing_since is not None, timeout=10)
            await until(lambda: pipeline.paused_since is not None, timeout=10)
            assert feeder is not None and not feeder.done()
            await assert_nothing_more_accepted(pipeline, small_disk)
            assert "full" in str(pipeline.commit_error)
        free(ballast, _FREED)
        await asyncio.wait_for(feeder, 60)
        await pipeline.wait_delivered(timeout=60)
        assert pipeline.commit_failing_since is None and pipeline.paused_since is None
        await feed(pipeline, range(_STREAMED, _STREAMED + 100))  # and it goes on
        await pipeline.wait_delivered(timeout=30)
    finally:
        if feeder is not None:
            feeder.cancel()
        await pipeline.close()
        spool.close()
    assert sink.ids == list(range(1, _STREAMED + 100))


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
            for _ in range(100):
                # Until a commit fails: the spool may still reuse its log's blocks for a while.
                sent += await server.emit(100)
                with contextlib.suppress(TimeoutError):
                    await until(lambda: pipeline.commit_failing_since is not None, timeout=0.2)
                if pipeline.commit_failing_since is not None:
                    break
                fill(small_disk)
            assert pipeline.commit_failing_since is not None
            async with http.get(healthz) as answer:
                assert answer.status == 503
                report = await answer.json()
            assert any(p.startswith("spool commit failing for") for p in report["problems"])
            assert any("full" in p for p in report["problems"]), report
            sent += await server.emit(200)  # the handler is called again, and waits
            await until(lambda: pipeline.paused_since is not None, timeout=10)
            await assert_nothing_more_accepted(pipeline, small_disk)
            free(ballast, _FREED)
            await until(lambda: pipeline.received == len(sent), timeout=60)
            await pipeline.wait_delivered(timeout=30)
            async with http.get(healthz) as answer:
                assert answer.status == 200, await answer.text()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    # Each once; in the order sent unless the connection was lost meanwhile (a slow machine:
    # events recovered from the REST API come after the live ones that followed the gap).
    assert sorted(ids) == sorted(sent) and len(ids) == len(set(ids))


async def test_a_new_spool_whose_first_commit_fails_loses_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    """A new spool on a disk that fills before the first event is committed: after a restart
    with room, every event pushed meanwhile is recovered from the REST API, because the
    floor (the REST API's newest id) was stored before the first commit."""
    out = tmp_path / "events.jsonl"
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        await server.emit()  # history before the bridge: not for a new spool
        options = bridge_options(server, tmp_path)
        options["spool"] = small_disk / "spool.db"
        bridge = Bridge(TOKEN, [f"file:{out}"], **options)  # type: ignore[arg-type]
        async with bridge:
            assert bridge.pipeline is not None
            pipeline = bridge.pipeline
            await server.wait_for_clients(1)
            ballast = fill(small_disk)
            sent = [(await server.emit())["id"] for _ in range(2000)]
            await until(lambda: pipeline.commit_failing_since is not None, timeout=10)
            assert pipeline.received == 0
        os.unlink(ballast)
        async with Bridge(TOKEN, [f"file:{out}"], **options) as bridge:  # type: ignore[arg-type]
            await until(lambda: len(out.read_text().splitlines()) >= 2000, timeout=30)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == sent


async def test_events_pushed_while_paused_for_a_full_disk_are_recovered(
    small_disk: Path, tmp_path: Path
) -> None:
    """While the socket is paused for a full disk the connection is lost and the server
    pushes on: once a little room comes back the bridge commits what it held, reconnects
    and recovers from the REST API what was pushed meanwhile; nothing is lost or doubled."""
    out = tmp_path / "events.jsonl"
    async with Emulator(tokens=[TOKEN], push_while_disconnected=False) as server:
        options = bridge_options(server, tmp_path)
        options["spool"] = small_disk / "spool.db"
        bridge = Bridge(TOKEN, [f"file:{out}"], **options)  # type: ignore[arg-type]
        async with bridge:
            assert bridge.pipeline is not None
            pipeline = bridge.pipeline
            await server.wait_for_clients(1)
            sent = [(await server.emit())["id"] for _ in range(20)]
            await until(lambda: pipeline.received == 20, timeout=10)
            ballast = fill(small_disk)
            sent += [(await server.emit())["id"] for _ in range(300)]
            await until(lambda: pipeline.commit_failing_since is not None, timeout=10)
            sent += [(await server.emit())["id"] for _ in range(200)]
            await until(lambda: pipeline.paused_since is not None, timeout=10)
            await server.abort_clients()
            sent += [(await server.emit())["id"] for _ in range(300)]  # the socket is gone
            free(ballast, _FREED)
            await until(lambda: pipeline.received == len(sent), timeout=60)
            await pipeline.wait_delivered(timeout=30)
            assert bridge.recovered > 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sent and len(ids) == len(set(ids))
