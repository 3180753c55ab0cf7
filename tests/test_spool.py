"""The SQLite spool: order, dedupe, cursors, pruning, limits, restarts and start-up errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neuroio.exceptions import ConfigurationError, SpoolError
from neuroio.spool import ROW_OVERHEAD, Spool, default_spool_path


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
        f"from neuroio.spool import Spool; s = Spool({str(path)!r}); "
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
        from neuroio.spool import Spool
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
