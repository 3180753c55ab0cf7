"""The SQLite spool: order, dedupe, cursors, pruning, limits, restarts and start-up errors."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroio.bridge.spool import ROW_OVERHEAD, Spool, default_spool_path
from neuroio.exceptions import ConfigurationError, SpoolError, SpoolFullError

from .helpers import small_tmpfs


def ev(event_id: int, at: float = 1000.0) -> tuple[int, bytes, float]:
    return (event_id, json.dumps({"id": event_id, "data": {"id": event_id}}).encode(), at)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


def test_write_assigns_contiguous_seq_and_read_returns_in_order(path: Path) -> None:
    """Stored events get seq 1, 2, 3 ... and read() returns them in that order, intact."""
    with Spool(path) as spool:
        stored = spool.write([ev(30), ev(10), ev(20)])
        assert [(e.seq, e.id) for e in stored] == [(1, 30), (2, 10), (3, 20)]
        got = spool.read(0)
        assert [e.id for e in got] == [30, 10, 20]
        assert got[0].payload == ev(30)[1]
        assert got[0].json() == {"id": 30, "data": {"id": 30}}
        assert [e.id for e in spool.read(1, limit=1)] == [10]
        assert spool.depth == 3 and spool.last_seq == 3


def test_repeated_ids_are_stored_once(path: Path) -> None:
    """A repeat inside one batch or in a later batch is skipped."""
    with Spool(path) as spool:
        assert len(spool.write([ev(1), ev(1), ev(2)])) == 2
        assert spool.write([ev(2), ev(3)])[0].id == 3
        assert [e.id for e in spool.read(0)] == [1, 2, 3]
        assert [e.seq for e in spool.read(0)] == [1, 2, 3]


def test_rows_pruned_only_when_every_sink_acked(path: Path) -> None:
    """Events stay until the slowest sink's cursor passed them; size accounting follows."""
    with Spool(path, prune_rows=1) as spool:
        spool.register(["a", "b"])
        for i in range(1, 6):
            spool.write([ev(i)])  # one commit each, as at a low rate
        per_row = len(ev(1)[1]) + ROW_OVERHEAD
        assert spool.size_bytes == 5 * per_row
        spool.ack("a", 5)
        assert spool.depth == 5 and spool.size_bytes == 5 * per_row
        spool.ack("b", 2)
        assert spool.depth == 3
        assert [e.id for e in spool.read(0)] == [3, 4, 5]
        assert spool.size_bytes == 3 * per_row
        spool.write(acks={"b": 5})
        assert spool.depth == 0 and spool.size_bytes == 0
        assert spool.cursors() == {"a": 5, "b": 5}


def test_a_commit_is_removed_once_all_its_events_are_confirmed(path: Path) -> None:
    """Events committed together are removed together, after the last one is confirmed."""
    with Spool(path, prune_rows=1) as spool:
        spool.register(["a"])
        spool.write([ev(i) for i in range(1, 4)])
        spool.ack("a", 2)
        assert spool.depth == 1 and [e.id for e in spool.read(2)] == [3]
        assert spool.size_bytes == 3 * (len(ev(1)[1]) + ROW_OVERHEAD)
        spool.ack("a", 3)
        assert spool.size_bytes == 0 and spool.read(0) == []


def test_prune_waits_for_a_range_unless_full(path: Path) -> None:
    """Confirmed events are deleted in ranges (prune_rows) or after prune_interval."""
    per_row = len(ev(1)[1]) + ROW_OVERHEAD
    with Spool(path, prune_rows=3, prune_interval=3600) as spool:
        spool.register(["a"])
        for i in range(1, 6):
            spool.write([ev(i)])
        spool.ack("a", 1)  # the first prune is immediate
        assert spool.size_bytes == 4 * per_row
        spool.ack("a", 3)
        assert spool.size_bytes == 4 * per_row
        spool.ack("a", 4)
        assert spool.size_bytes == 1 * per_row


def test_cursor_never_moves_back(path: Path) -> None:
    """An older acknowledgement does not rewind a cursor."""
    with Spool(path) as spool:
        spool.register(["a", "b"])
        spool.write([ev(1), ev(2)])
        spool.ack("a", 2)
        spool.ack("a", 1)
        assert spool.cursor("a") == 2


def test_repeat_after_prune_is_dropped_within_window(path: Path) -> None:
    """Delivered and pruned ids are remembered (bounded) so a late repeat is not re-delivered."""
    with Spool(path, dedupe_window=3, prune_rows=1) as spool:
        spool.register(["a"])
        spool.write([ev(i) for i in range(1, 6)])
        spool.ack("a", 5)
        assert spool.depth == 0
        assert spool.write([ev(5), ev(4), ev(3)]) == []
        # Only the newest 3 delivered ids are kept: 1 and 2 are forgotten.
        assert [e.id for e in spool.write([ev(1)])] == [1]


def test_restart_keeps_events_cursors_and_sequence(path: Path) -> None:
    """After close and reopen, unconfirmed events, cursors and seq numbering continue."""
    with Spool(path) as spool:
        spool.register(["a", "b"])
        for i in range(1, 4):
            spool.write([ev(i)])
        spool.ack("a", 3)
        spool.ack("b", 1)
        spool.set_state("backfill", '{"last_id": 3}')
    with Spool(path) as spool:
        assert spool.cursors() == {"a": 3, "b": 1}
        assert [e.id for e in spool.read(spool.cursor("b"))] == [2, 3]
        assert spool.write([ev(4)])[0].seq == 4
        assert spool.write([ev(2)]) == []
        assert spool.get_state("backfill") == '{"last_id": 3}'
        assert spool.size_bytes == 3 * (len(ev(2)[1]) + ROW_OVERHEAD)


def test_sequence_continues_after_everything_was_pruned(path: Path) -> None:
    """Seq numbers are never reused, even when the spool was emptied before a restart."""
    with Spool(path, prune_rows=1) as spool:
        spool.register(["a"])
        spool.write([ev(1), ev(2)])
        spool.ack("a", 2)
    with Spool(path) as spool:
        assert spool.write([ev(3)])[0].seq == 3


def test_new_sink_gets_backlog_and_removed_sink_releases_rows(path: Path) -> None:
    """A new sink starts at the oldest held event; a removed sink's cursor is dropped."""
    with Spool(path, prune_rows=1) as spool:
        spool.register(["a", "b"])
        spool.write([ev(i) for i in range(1, 5)])
        spool.ack("a", 4)
        spool.ack("b", 1)
        removed = spool.register(["a", "c"])
        assert removed == {"b": 3}
        assert spool.cursors() == {"a": 4, "c": 1}
        assert [e.id for e in spool.read(spool.cursor("c"))] == [2, 3, 4]
        removed = spool.register(["a"])
        assert spool.depth == 0


def test_full_when_limit_reached_and_room_after_prune(path: Path) -> None:
    """``full`` turns on at max_bytes and off once acknowledged rows are pruned."""
    per_row = len(ev(1)[1]) + ROW_OVERHEAD
    with Spool(path, max_bytes=3 * per_row, prune_rows=10**6, prune_interval=3600) as spool:
        spool.register(["a"])
        spool.write([ev(1)])
        spool.write([ev(2)])
        assert not spool.full
        spool.write([ev(3)])
        assert spool.full
        spool.ack("a", 1)
        assert not spool.full


def test_dead_letters_kept_and_bounded(path: Path) -> None:
    """Dead letters are listed oldest first and trimmed beyond dead_letter_max."""
    with Spool(path, dead_letter_max=2) as spool:
        stored = spool.write([ev(1), ev(2), ev(3)])
        for event in stored:
            spool.dead_letter("hook", event, f"HTTP 400 for {event.id}")
        letters = spool.dead_letters()
        assert [(d.sink, d.event.id, d.error) for d in letters] == [
            ("hook", 2, "HTTP 400 for 2"),
            ("hook", 3, "HTTP 400 for 3"),
        ]
        assert spool.dead_letter_count == 2
        assert spool.dead_letters("other") == []


def test_state_set_and_delete(path: Path) -> None:
    """get_state/set_state store strings; None deletes."""
    with Spool(path) as spool:
        assert spool.get_state("k") is None
        spool.set_state("k", "v1")
        spool.set_state("k", "v2")
        assert spool.get_state("k") == "v2"
        spool.set_state("k", None)
        assert spool.get_state("k") is None


def test_garbage_file_is_a_clear_error(path: Path) -> None:
    """A file that is not SQLite fails at open with a message saying what to do."""
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(SpoolError, match="corrupt or not a SQLite database"):
        Spool(path)


def test_damaged_database_fails_quick_check(path: Path) -> None:
    """A spool whose pages were damaged is refused at open, not later."""
    with Spool(path) as spool:
        spool.write([ev(i) for i in range(1, 2000)])
    # Checkpoint so the data is in the main file, then overwrite pages in its middle.
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(8192))
    with pytest.raises(SpoolError, match="corrupt"):
        Spool(path)


def test_other_sqlite_database_is_refused(path: Path) -> None:
    """Pointing --spool at somebody else's database does not touch it."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="not a neuroio-events spool"):
        Spool(path)


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    """A spool path whose directory cannot be created fails at open."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="cannot create its directory"):
        Spool(blocker / "sub" / "spool.db")


def test_read_only_file_is_a_clear_error(path: Path) -> None:
    """A spool file that cannot be written fails at open."""
    Spool(path).close()
    path.chmod(0o400)
    try:
        if not os.access(path, os.W_OK):
            with pytest.raises(SpoolError):
                Spool(path)
            return
    finally:
        path.chmod(0o600)
    # Root ignores file modes, not the immutable attribute (ext4 and most Linux filesystems).
    if shutil.which("chattr") is None:
        pytest.skip("root ignores file modes and chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"root ignores file modes and chattr +i failed: {made.stderr.strip()}")
    try:
        with pytest.raises(SpoolError):
            Spool(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_second_open_is_refused_while_locked(path: Path) -> None:
    """Two bridges cannot share a spool: the second open names the holder's pid."""
    with Spool(path):
        with pytest.raises(SpoolError, match=f"in use by another bridge \\(pid {os.getpid()}\\)"):
            Spool(path)
    Spool(path).close()  # released on close


def test_lock_released_when_holder_is_killed(path: Path) -> None:
    """A SIGKILLed holder's lock goes away with it."""
    code = (
        f"from neuroio.bridge.spool import Spool; s = Spool({str(path)!r}); "
        "print('ok', flush=True); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ok"
            with pytest.raises(SpoolError, match="in use"):
                Spool(path)
        finally:
            proc.kill()
    Spool(path).close()


def test_bad_options_are_configuration_errors(path: Path) -> None:
    """Out-of-range options are refused before anything is opened."""
    with pytest.raises(ConfigurationError):
        Spool(path, max_bytes=0)
    with pytest.raises(ConfigurationError):
        Spool(path, synchronous="off")  # type: ignore[arg-type]
    assert not path.exists()


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default spool lives in $XDG_DATA_HOME, else ~/.local/share."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_spool_path() == tmp_path / "neuroio-events" / "spool.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_spool_path() == tmp_path / "home" / ".local/share/neuroio-events/spool.db"


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_sigkill_mid_write_loses_no_committed_event(path: Path, synchronous: str) -> None:
    """A process killed while committing leaves every event whose write() returned."""
    code = textwrap.dedent(
        f"""
        import sys
        from neuroio.bridge.spool import Spool
        spool = Spool({str(path)!r}, synchronous={synchronous!r})
        spool.register(["a"])
        n = 0
        while True:
            batch = [(n + i, b'{{"id":%d,"data":{{}}}}' % (n + i), 1.0) for i in range(50)]
            spool.write(batch)
            n += 50
            if n % 500 == 0:
                spool.ack("a", n - 250)
            sys.stdout.write(f"{{n}}\\n")
            sys.stdout.flush()
        """
    )
    last = 0
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            last = int(line)
            if last >= 5000:
                break
        proc.send_signal(signal.SIGKILL)
    with Spool(path) as spool:
        cursor = spool.cursor("a")
        held = [e.id for e in spool.read(cursor, limit=10**6)]
        # Every id the child reported committed is either delivered (<= cursor) or held.
        assert held[0] == cursor
        assert held == list(range(cursor, held[-1] + 1))
        assert held[-1] + 1 >= last


# ------------------------------------------------------------------ disk writes per commit


def _wal_size(path: Path) -> int:
    return os.stat(f"{path}-wal").st_size


def test_a_small_commit_writes_one_page_to_the_log(path: Path) -> None:
    """One event, or one acknowledgement, appends a single 4 KiB page to the write-ahead log:
    nothing else is rewritten at each commit (ids, counters, state wait for the next prune)."""
    frame = 4096 + 24  # a log frame is a page and its header
    with Spool(path, prune_interval=3600) as spool:
        spool.register(["a"])
        spool.write([ev(1)])
        spool.ack("a", 1)  # the first prune is immediate
        before = _wal_size(path)
        spool.write([ev(2)])
        assert _wal_size(path) - before == frame
        spool.ack("a", 2)
        assert _wal_size(path) - before == 2 * frame
        spool.write([ev(3)], {"a": 2})  # an ack that does not move writes nothing more
        assert _wal_size(path) - before == 3 * frame


def test_ids_and_newest_id_survive_a_restart_before_any_prune(path: Path) -> None:
    """Ids and the newest id, not written at each commit, are rebuilt from the stored rows:
    after a restart a repeat is still dropped and last_event_id is right."""
    with Spool(path, prune_interval=3600) as spool:
        spool.register(["a"])
        spool.write([ev(5), ev(7)])
        spool.write([ev(6)])
    with Spool(path) as spool:
        assert spool.last_event_id == 7
        assert spool.write([ev(6), ev(7), ev(8)])[0].id == 8
        assert [e.id for e in spool.read(0)] == [5, 7, 6, 8]


def test_a_previous_version_spool_is_upgraded_in_place(path: Path, tmp_path: Path) -> None:
    """A spool written by the previous schema (64 KiB pages, ids at every commit) opens with
    its events, cursors, newest id and remembered ids, rewritten once with 4 KiB pages, and
    takes new events."""
    source = subprocess.run(
        ["git", "show", "3b6f9e2:neuroio/spool.py"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
    )
    if source.returncode != 0:
        pytest.skip(f"the previous spool is not in this checkout: {source.stderr.strip()}")
    old_module = tmp_path / "old_spool.py"
    old_module.write_text(source.stdout)
    code = textwrap.dedent(
        f"""
        import importlib.util, sys, neuroio
        spec = importlib.util.spec_from_file_location("neuroio._old_spool", {str(old_module)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        spool = module.Spool({str(path)!r}, prune_rows=1)
        spool.register(["a"])
        spool.write([(i, b'{{"id":%d,"data":{{}}}}' % i, 1.0) for i in range(1, 6)])
        spool.ack("a", 2)
        spool.close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with Spool(path) as spool:
        assert spool._wconn is not None
        assert spool._wconn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert spool.cursors() == {"a": 2}
        assert [e.id for e in spool.read(2)] == [3, 4, 5]
        assert spool.last_event_id == 5
        assert spool.write([(1, b'{"id":1}', 1.0), (4, b'{"id":4}', 1.0)]) == []
        assert spool.write([ev(6)])[0].seq == 6
        spool.ack("a", 6)
    with Spool(path) as spool:
        assert spool.depth == 0 and spool.last_event_id == 6


# ------------------------------------------------------------------------------ the lock


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_to_a_locked_spool_is_refused(path: Path, tmp_path: Path, link: str) -> None:
    """The lock is on the file itself: a symbolic or hard link to an open spool is refused
    with the holder's pid, so no second bridge (and no second log) gets in."""
    other = tmp_path / "other" / "alias.db"
    other.parent.mkdir()
    with Spool(path) as spool:
        spool.write([ev(1)])
        if link == "symlink":
            other.symlink_to(path)
        else:
            os.link(path, other)
        with pytest.raises(SpoolError, match=f"in use by another bridge \\(pid {os.getpid()}\\)"):
            Spool(other)
        assert not Path(f"{other}-wal").exists()
        assert [e.id for e in spool.read(0)] == [1]
    with Spool(other) as spool:  # released on close
        assert [e.id for e in spool.read(0)] == [1]


def test_a_hard_link_held_by_another_process_names_its_pid(path: Path, tmp_path: Path) -> None:
    """Another process holding the spool through another name is named by its pid."""
    alias = tmp_path / "alias.db"
    Spool(path).close()
    os.link(path, alias)
    code = (
        f"from neuroio.bridge.spool import Spool; s = Spool({str(alias)!r}); "
        "print('ok', flush=True); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ok"
            with pytest.raises(SpoolError, match=f"in use by another bridge \\(pid {proc.pid}\\)"):
                Spool(path)
        finally:
            proc.kill()


# ------------------------------------------------------------------------------ checksums


def _damage(path: Path, first_seq: int, column: str, offset: int) -> None:
    """Flip one byte of a stored segment's blob with sqlite3, as a bad sector would."""
    conn = sqlite3.connect(path)
    (blob,) = conn.execute(
        f"SELECT {column} FROM segments WHERE first_seq = ?", (first_seq,)
    ).fetchone()
    damaged = bytearray(blob)
    damaged[offset] ^= 0x5A
    conn.execute(
        f"UPDATE segments SET {column} = ? WHERE first_seq = ?", (bytes(damaged), first_seq)
    )
    conn.commit()
    conn.close()


def _three_batches(path: Path) -> None:
    with Spool(path) as spool:
        spool.register(["a"])
        spool.write([ev(1), ev(2)])
        spool.write([ev(3), ev(4)])
        spool.write([ev(5)])


def test_altered_payload_bytes_are_never_delivered(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch whose JSON bytes were altered is moved aside with an error naming its seq range
    and ids, reported by damaged(); the batches around it are delivered intact."""
    _three_batches(path)
    _damage(path, 3, "payloads", 10)
    with Spool(path) as spool:
        got = spool.read(0)
        assert [e.id for e in got] == [1, 2, 5]
        for event in got:
            assert event.json()["id"] == event.id
        [batch] = spool.damaged()
        assert (batch.first_seq, batch.last_seq, batch.ids) == (3, 4, (3, 4))
        assert "checksum" in batch.error
        assert spool.damaged_count == 1 and spool.depth == 5
        assert "seq 3-4 (ids 3, 4) is damaged" in caplog.text
        spool.ack("a", got[-1].seq)
        assert spool.depth == 0
    with Spool(path) as spool:  # moved aside for good, still reported
        assert spool.read(0) == []
        assert [b.first_seq for b in spool.damaged()] == [3]
        spool.forget_damaged([3])
        assert spool.damaged() == [] and spool.damaged_count == 0


def test_a_damaged_length_field_neither_stalls_nor_delivers_garbage(path: Path) -> None:
    """A damaged length (which SQLite's quick_check cannot see) is caught by the checksum:
    readers go on past the batch, so a sink reaches the newest event."""
    _three_batches(path)
    _damage(path, 1, "lengths", 0)
    with Spool(path) as spool:
        cursor = spool.cursor("a")
        delivered: list[int] = []
        for _ in range(3):
            batch = spool.read(cursor, limit=1)
            if not batch:
                break
            delivered.extend(e.id for e in batch)
            cursor = batch[-1].seq
            spool.ack("a", cursor)
        assert delivered == [3, 4, 5]
        assert spool.read(cursor) == [] and spool.depth == 0
        [damaged] = spool.damaged()
        assert (damaged.first_seq, damaged.last_seq, damaged.ids) == (1, 2, (1, 2))


def test_damaged_ids_are_reported_as_unknown_with_the_seq_range(path: Path) -> None:
    """When the ids themselves are damaged, the batch is reported by its seq range alone."""
    _three_batches(path)
    _damage(path, 3, "ids", 3)
    with Spool(path) as spool:
        assert [e.id for e in spool.read(0)] == [1, 2, 5]
        [batch] = spool.damaged()
        assert (batch.first_seq, batch.last_seq, batch.ids) == (3, 4, None)


# ---------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (root only)."""
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        yield mnt


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all but ``leave`` bytes of the disk."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    with open(ballast, "ab") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def _shrink(ballast: Path, by: int) -> None:
    os.truncate(ballast, max(0, ballast.stat().st_size - by))


def big(event_id: int) -> tuple[int, bytes, float]:
    """An event of about 760 bytes that does not compress (the spool deflates its rows)."""
    note = base64.b64encode(os.urandom(525)).decode()
    return (event_id, json.dumps({"id": event_id, "data": {"note": note}}).encode(), 1.0)


def test_a_full_disk_fails_a_commit_precisely_and_recovers_with_a_little_room(
    small_disk: Path,
) -> None:
    """On a full disk a commit raises SpoolFullError (path and free space in one line) and
    stores nothing; once a little room is back, commits go on for good, not just once."""
    path = small_disk / "spool.db"
    spool = Spool(path, max_bytes=None)
    try:
        spool.register(["a"])
        ballast = _fill(small_disk, 200_000)
        n = 0
        with pytest.raises(SpoolFullError) as failed:
            for _ in range(1000):
                spool.write([big(n + k) for k in range(1, 11)])
                n += 10
        message = str(failed.value)
        assert str(path) in message and "bytes free" in message and "\n" not in message
        assert spool.last_seq == n and len(spool.read(0, limit=10_000)) == n
        _shrink(ballast, 64 << 10)
        for _ in range(300):  # steady state: each event delivered and pruned as it goes
            stored = spool.write([big(n + 1)], {"a": n})
            assert [e.id for e in stored] == [n + 1]
            n += 1
        assert spool.depth == 1
    finally:
        spool.close()
    with Spool(path) as spool:
        assert [e.id for e in spool.read(spool.cursor("a"))] == [n]


def test_state_written_on_a_new_spool_survives_a_first_commit_that_fails(
    small_disk: Path,
) -> None:
    """A new spool on a nearly full disk takes the state written before any event (where
    recovery must start); the first batch fails; after a restart with room the state is
    there and the batch commits."""
    path = small_disk / "spool.db"
    ballast = _fill(small_disk, 160_000)
    spool = Spool(path)
    try:
        spool.register(["a"])
        spool.set_state("recover_after", '{"last_id": 41}')
        with pytest.raises(SpoolFullError):
            spool.write([big(i) for i in range(42, 442)])
        assert spool.get_state("recover_after") == '{"last_id": 41}'
    finally:
        spool.close()
    _shrink(ballast, 600_000)
    with Spool(path) as spool:
        assert spool.get_state("recover_after") == '{"last_id": 41}'
        assert spool.last_seq == 0
        assert len(spool.write([big(i) for i in range(42, 442)])) == 400


def test_rows_are_compressed_and_read_back_byte_for_byte(path: Path) -> None:
    """Batches are stored deflated when that saves room and read back exactly; damage to the
    compressed bytes is caught like any other."""
    from neuroio.testing import EntryFactory

    factory = EntryFactory()
    events = [
        (i, b'{"id":%d,"data":' % i + json.dumps(factory.make()).encode() + b"}", 1.0)
        for i in range(1, 11)
    ]
    with Spool(path) as spool:
        spool.register(["a"])
        spool.write(events[:5])
        spool.write(events[5:])
        assert [(e.id, e.payload) for e in spool.read(0)] == [(i, p) for i, p, _ in events]
    conn = sqlite3.connect(path)
    stored, codecs = conn.execute(
        "SELECT sum(length(payloads)), min(codec) FROM segments"
    ).fetchone()
    conn.close()
    assert codecs == 1 and stored < 0.7 * sum(len(p) for _, p, _ in events)
    _damage(path, 6, "payloads", 20)
    with Spool(path) as spool:
        assert [e.id for e in spool.read(0)] == [1, 2, 3, 4, 5]
        assert [b.ids for b in spool.damaged()] == [(6, 7, 8, 9, 10)]
