"""Files the bridge creates are private (0600, directories 0700), whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroio._io import make_private_dirs, open_private
from neuroio.bridge import Bridge
from neuroio.bridge.spool import Spool
from neuroio.sinks import MemorySink
from neuroio.testing import Emulator

from ..helpers import until
from ._common import TOKEN, bridge_options


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def tree(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The mode of every file and every directory under ``root``, by relative path."""
    files: dict[str, int] = {}
    dirs: dict[str, int] = {}
    for entry in root.rglob("*"):
        (dirs if entry.is_dir() else files)[str(entry.relative_to(root))] = mode(entry)
    return files, dirs


async def test_every_file_a_running_bridge_creates_is_private(tmp_path: Path, umask: int) -> None:
    """A bridge with its spool in directories that do not exist yet, run under a umask that
    would leave files readable by others: while it runs, with events committed (so the
    write-ahead log and the shared-memory file exist), every file it created is 0600 and
    every directory 0700. (The spool's lock is on the database itself: no lock file.)"""
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, 0o755)  # an existing parent: left as it is
    sink = MemorySink()
    async with Emulator(tokens=[TOKEN]) as server:
        options = bridge_options(server, tmp_path)
        options["spool"] = root / "neuroio" / "spool.db"
        async with Bridge(TOKEN, [sink], **options):  # type: ignore[arg-type]
            await server.wait_for_clients(1)
            for _ in range(5):
                await server.emit()
            await until(lambda: len(sink.events) == 5)
            files, dirs = tree(root)
    assert set(files) == {"neuroio/spool.db", "neuroio/spool.db-wal", "neuroio/spool.db-shm"}
    assert files == dict.fromkeys(files, 0o600), files
    assert dirs == {"neuroio": 0o700}
    assert mode(root) == 0o755


def test_a_readable_spool_left_by_a_killed_bridge_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool whose database, log and shared-memory file are 0644 (left by a bridge killed
    while it ran, created by an older version): opening it takes the group and other
    permissions off all three, with one warning each, and keeps every event."""
    path = tmp_path / "spool.db"
    script = f"""
        import os
        from neuroio.bridge.spool import Spool
        spool = Spool({str(path)!r})
        spool.write([(i, b'{{"id":%d,"data":{{}}}}' % i, 1.0) for i in range(1, 4)])
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            os.chmod(os.path.join({str(tmp_path)!r}, name), 0o644)
        os._exit(0)  # killed: SQLite removes neither the log nor the shared memory
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=30)
    names = ("spool.db", "spool.db-wal", "spool.db-shm")
    assert [mode(tmp_path / n) for n in names] == [0o644] * 3
    with caplog.at_level(logging.WARNING, logger="neuroio.spool"), Spool(path) as spool:
        assert [mode(tmp_path / n) for n in names] == [0o600] * 3
        assert [e.id for e in spool.read(0)] == [1, 2, 3]
    warned = [r.getMessage() for r in caplog.records if "made private" in r.getMessage()]
    assert len(warned) == 3
    assert all("mode 644" in w and "mode 600" in w for w in warned)


def test_helpers_set_exact_modes_and_leave_existing_things_alone(
    tmp_path: Path, umask: int
) -> None:
    """open_private creates a file with exactly the mode asked (also a group-readable one)
    and leaves an existing file's mode; make_private_dirs creates only what is missing."""
    existing = tmp_path / "mine.txt"
    existing.write_text("x")
    os.chmod(existing, 0o644)
    os.close(open_private(existing, os.O_WRONLY | os.O_APPEND))
    assert mode(existing) == 0o644
    os.close(open_private(tmp_path / "new.log", os.O_WRONLY))
    os.close(open_private(tmp_path / "group.log", os.O_WRONLY, mode=0o640))
    assert (mode(tmp_path / "new.log"), mode(tmp_path / "group.log")) == (0o600, 0o640)
    (tmp_path / "a").mkdir()
    os.chmod(tmp_path / "a", 0o755)
    make_private_dirs(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o755, 0o700, 0o700]
