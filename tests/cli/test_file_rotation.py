"""The file sink of a real ``neuroio-events bridge`` subprocess: SIGHUP after logrotate
renamed the file, rotation by size under umask 022, and ``file:-`` piped into ``head -1``."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.independent_server import IndependentServer

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env
from .test_bridge_cli import FAST


def bridge_args(server: IndependentServer, spool: Path, sink: str) -> list[str]:
    return [
        "bridge",
        "--url",
        server.url,
        "--api-url",
        server.api_url,
        "--spool",
        str(spool),
        "--to",
        sink,
        *FAST,
    ]


def env() -> dict[str, str]:
    return clean_env(NEUROIO_API_TOKEN=TOKEN)


def lines_of(path: Path) -> list[bytes]:
    """The complete lines of a file (a last line without newline is being written)."""
    if not path.exists():
        return []
    return path.read_bytes().rpartition(b"\n")[0].splitlines()


def ids_of(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in lines_of(path)]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
async def server() -> AsyncIterator[IndependentServer]:
    async with IndependentServer(TOKEN) as srv:
        yield srv


@pytest.fixture
def umask022() -> Iterator[None]:
    """The children inherit a usual umask, which would leave files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def emit_spread(server: IndependentServer, total: int, chunk: int = 10) -> list[int]:
    """Emit ``total`` events in small chunks, letting the loop (and the bridge) run between."""
    ids: list[int] = []
    while len(ids) < total:
        ids += await server.emit(min(chunk, total - len(ids)))
        await asyncio.sleep(0)
    return ids


async def test_sighup_after_a_rename_writes_a_new_file_and_loses_no_line(
    cli: StartCli, server: IndependentServer, tmp_path: Path
) -> None:
    """logrotate renames the file while events stream in, then sends SIGHUP: the lines
    written before the reopen complete in the renamed file, the next ones go to a new file
    at the path (0600), the bridge keeps running; across both files every event sent is
    there exactly once, and no line is torn."""
    out = tmp_path / "events.jsonl"
    rotated = tmp_path / "events.jsonl.1"
    proc = await cli(*bridge_args(server, tmp_path / "spool.db", f"file:{out}"), env=env())
    await server.wait_live(1)
    sent = await emit_spread(server, 100)
    await eventually(lambda: len(ids_of(out)) >= 50, "lines in the file", 10)

    streaming = asyncio.create_task(emit_spread(server, 300, chunk=3))
    out.rename(rotated)
    proc.send(signal.SIGHUP)
    await proc.wait_stderr("reopened", timeout=10)
    assert out.exists()
    sent += await streaming
    sent += await emit_spread(server, 50)

    def both() -> list[int]:
        return ids_of(rotated) + ids_of(out)

    await eventually(lambda: len(both()) >= len(sent), "every event in the two files", 15)
    proc.send(signal.SIGTERM)
    assert await proc.finish(timeout=10) == 0
    assert sorted(both()) == sorted(sent), "a line lost or written twice"
    assert len(both()) == len(sent)
    assert ids_of(out), "nothing written to the new file after SIGHUP"
    for path in (rotated, out):
        assert path.read_bytes().endswith(b"\n"), f"{path.name} ends in a torn line"
    assert max(ids_of(rotated)) < min(ids_of(out)), "the old file got lines after the reopen"
    assert mode_of(out) == 0o600
    assert "Traceback" not in proc.err


async def test_size_rotation_keeps_two_old_files_private(
    cli: StartCli, server: IndependentServer, tmp_path: Path, umask022: None
) -> None:
    """?rotate=1KiB&keep=2 under umask 022: at most two old files remain; the lines kept
    are the newest events, each once, in order, none torn; every file 0600 and the
    directories the bridge created 0700."""
    out = tmp_path / "logs" / "neuroio" / "events.jsonl"
    sink = f"file:{out}?rotate=1KiB&keep=2"
    proc = await cli(*bridge_args(server, tmp_path / "state" / "spool.db", sink), env=env())
    await server.wait_live(1)
    names = ("events.jsonl.2", "events.jsonl.1", "events.jsonl")

    def kept() -> list[int]:
        return [i for name in names for i in ids_of(out.parent / name)]

    async def written(event_id: int) -> None:
        await eventually(lambda: event_id in kept(), f"event {event_id} in the files", 10)

    sent: list[int] = []
    for _ in range(40):  # two events (about 500 bytes) at a time, each round delivered
        sent += await server.emit(2)
        await written(sent[-1])
    proc.send(signal.SIGTERM)
    assert await proc.finish(timeout=10) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(names)
    ids = kept()
    assert ids == sent[sent.index(ids[0]) :], "kept lines are not the newest, in order"
    assert len(ids) < len(sent), "no rotation happened"
    for name in names:
        assert (out.parent / name).read_bytes().endswith(b"\n"), f"{name}: a torn line"
    files = [out.parent / n for n in names]
    files += [p for p in (tmp_path / "state").iterdir()]
    assert {p.name: mode_of(p) for p in files} == {p.name: 0o600 for p in files}
    dirs = [tmp_path / "logs", out.parent, tmp_path / "state"]
    assert [mode_of(d) for d in dirs] == [0o700] * 3


async def test_file_stdout_into_head_ends_the_bridge_quietly(
    server: IndependentServer, tmp_path: Path
) -> None:
    """``bridge --to file:- | head -1`` in a real shell: head prints one event and exits;
    the bridge's next write finds the pipe closed and it exits 0 promptly, without a
    traceback or a retry; the events it could not write stay in the spool."""
    err = tmp_path / "bridge.err"
    args = [sys.executable, "-m", "neuroio", *bridge_args(server, tmp_path / "s.db", "file:-")]
    script = (
        f"{shlex.join(args)} 2>{shlex.quote(str(err))} | head -1; "
        'echo "bridge exit ${PIPESTATUS[0]}" >&2'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(),
    )
    try:
        await server.wait_live(1, timeout=10)
        emitted = await server.emit(1)
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert json.loads(first)["id"] == emitted[0]
        head_done = time.monotonic()
        # Events keep coming: the first write after head exited meets the closed pipe.
        while proc.returncode is None:
            await server.emit(1)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
            except asyncio.TimeoutError:
                pass
            assert time.monotonic() - head_done < 10, "the bridge goes on after head exited"
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = err.read_text()
    assert stdout == b""
    assert b"bridge exit 0" in stderr, (stderr, log)
    assert "standard output was closed by its reader" in log
    assert "Traceback" not in log
    assert "retrying" not in log
    assert "Error" not in log
