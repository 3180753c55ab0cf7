"""The spool with several streams: events keyed by (stream, id), stream numbers, the newest id
of each stream, damaged batches and dead letters of streams, and the single stream unchanged."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from neuroio.bridge._streams import DamagedShare, StreamSpool
from neuroio.bridge.spool import (
    LAST_EVENT_ID,
    DeadLetterStore,
    Spool,
    SpooledEvent,
    stream_id_ok,
)
from neuroio.exceptions import SpoolError

from ..test_spool import _damage


def created(event_id: int) -> str:
    return f"2026-01-01T00:00:{event_id % 60:02d}.{event_id:06d}Z"


def ev(event_id: int, stream: int = 0, at: float = 1000.0) -> tuple[int, bytes, float, int]:
    """An event of ``stream`` as the bridge spools it (``created`` derived from the id)."""
    body: dict[str, object] = {
        "id": event_id,
        "data": {"id": event_id, "created": created(event_id)},
    }
    if stream:
        body["stream"] = f"s{stream}"
    return (event_id, json.dumps(body).encode(), at, stream)


def pairs(events: Sequence[SpooledEvent]) -> list[tuple[int, int]]:
    return [(e.stream, e.id) for e in events]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


def test_the_same_id_in_two_streams_is_stored_twice_and_read_back_with_its_stream(
    path: Path,
) -> None:
    """An id is unique within its stream only: both copies are stored, and every SpooledEvent
    (returned by write, read back, after reopening) carries the real id and its stream."""
    with Spool(path, streams=True) as spool:
        stored = spool.write([ev(7, 1), ev(7, 2), ev(7), ev(8, 2)])
        assert pairs(stored) == [(1, 7), (2, 7), (0, 7), (2, 8)]
        assert [e.seq for e in stored] == [1, 2, 3, 4]
        got = spool.read(0)
        assert got == stored
        assert got[1].json()["stream"] == "s2" and got[1].payload == ev(7, 2)[1]
    with Spool(path, streams=True) as spool:
        assert spool.read(0) == stored


def test_repeats_within_a_stream_are_dropped_everywhere_the_spool_remembers_them(
    path: Path,
) -> None:
    """A repeated (stream, id) is stored once: in one batch, in a later batch, after reopening
    (ids not indexed yet), once the index was written, and after its row was pruned (within
    the recently-delivered window); the same id of another stream is still new."""
    with Spool(path, streams=True, prune_rows=1) as spool:
        spool.register(["a"])
        assert pairs(spool.write([ev(1, 1), ev(1, 1), ev(1, 2)])) == [(1, 1), (2, 1)]
        assert spool.write([ev(1, 1), ev(1, 2)]) == []
    with Spool(path, streams=True, prune_rows=1) as spool:
        assert spool.write([ev(1, 1), ev(1, 2)]) == []  # from the unindexed segments
        assert pairs(spool.write([ev(2, 1)])) == [(1, 2)]
        spool.ack("a", 1)  # a prune (of nothing yet): the ids are written to the index
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM ids").fetchone() == (3,)
        assert spool.write([ev(1, 1), ev(1, 2), ev(2, 1)]) == []
        spool.ack("a", 3)  # every row pruned, the ids kept in the window
        assert spool.read(0) == [] and spool.depth == 0
        assert spool.write([ev(1, 1), ev(2, 1), ev(1, 2)]) == []
        assert pairs(spool.write([ev(2, 2), ev(1, 3)])) == [(2, 2), (3, 1)]
    with Spool(path, streams=True) as spool:
        assert spool.write([ev(1, 1), ev(2, 2), ev(1, 3), ev(2, 1)]) == []


def test_newest_of_each_stream_survives_reopening_and_pruning(path: Path) -> None:
    """newest_of(n) is the highest id ever stored for stream n and its created, whatever the
    arrival order; it outlives the rows and reopening; newest_of(0) is last_event_id."""
    with Spool(path, streams=True, prune_rows=1) as spool:
        spool.register(["a"])
        assert spool.newest_of(1) == (None, None)
        spool.write([ev(5, 1), ev(9, 2), ev(3, 1), ev(4)])
        spool.write([ev(2, 2)])  # an older id (a recovered gap) moves nothing
        assert spool.newest_of(1) == (5, created(5))
        assert spool.get_state(f"{LAST_EVENT_ID}.1") == "5"  # before it is saved there
        assert spool.newest_of(2) == (9, created(9))
        assert (
            spool.newest_of(0)
            == (4, created(4))
            == (
                spool.last_event_id,
                spool.last_event_created,
            )
        )
    with Spool(path, streams=True, prune_rows=1) as spool:  # from the unindexed segments
        assert spool.newest_of(1) == (5, created(5))
        assert spool.newest_of(2) == (9, created(9))
        spool.ack("a", spool.last_seq)
        assert spool.read(0) == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM segments").fetchone() == (0,)
        state = dict(conn.execute("SELECT key, value FROM state").fetchall())
    assert state[f"{LAST_EVENT_ID}.1"] == "5" and state[f"{LAST_EVENT_ID}.2"] == "9"
    with Spool(path, streams=True) as spool:  # from state alone
        assert spool.newest_of(1) == (5, created(5))
        assert spool.newest_of(2) == (9, created(9))
        assert spool.newest_of(0) == (4, created(4))
        assert spool.newest_of(3) == (None, None)


def test_newest_of_a_stream_is_saved_again_after_a_failed_transaction(path: Path) -> None:
    """A prune whose transaction fails (after it wrote the newest ids) rolls their rows back;
    the spool saves them again with the next prune, so they outlive the pruned rows."""
    with Spool(path, streams=True, prune_rows=1) as spool:
        spool.register(["a"])
        spool.write([ev(5, 1), ev(6, 2)])
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER fail_prune BEFORE DELETE ON segments "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        with pytest.raises(SpoolError, match="injected failure"):
            spool.ack("a", 2)
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT count(*) FROM state").fetchone() == (0,)
            other.execute("DROP TRIGGER fail_prune")
        spool.ack("a", 2)
        assert spool.read(0) == []
    with Spool(path, streams=True) as spool:
        assert spool.newest_of(1) == (5, created(5))
        assert spool.newest_of(2) == (6, created(6))


def test_stream_numbers_are_given_once_and_kept(path: Path) -> None:
    """A name gets the next number (from 1) at its first use, the same one ever after."""
    with Spool(path, streams=True) as spool:
        assert spool.stream_numbers() == {}
        assert [spool.stream_number(n) for n in ("shop-1", "shop-2", "shop-1")] == [1, 2, 1]
    with Spool(path) as spool:  # numbering alone does not make a spool of several streams
        assert spool.stream_number("shop-3") == 3
        assert spool.stream_numbers() == {"shop-1": 1, "shop-2": 2, "shop-3": 3}


def test_a_crash_before_the_index_is_written_keeps_each_streams_dedupe(path: Path) -> None:
    """A bridge killed with ids not yet in the ``ids`` table: at the next open they are read
    back from the segments with their streams (dedupe and newest per stream intact)."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from neuroio.bridge.spool import Spool
        spool = Spool({str(path)!r}, streams=True)
        spool.register(["a"])
        for stream in (1, 2, 3):
            spool.write([(i, b'{{"id":%d,"data":{{"created":"c%d"}}}}' % (i, i), 1.0, stream)
                         for i in range(stream, 100)])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    with Spool(path, streams=True) as spool:
        assert spool.last_seq == 99 + 98 + 97
        assert spool.write([(i, b"{}", 1.0, s) for s in (1, 2, 3) for i in range(3, 100)]) == []
        assert pairs(spool.write([(2, b"{}", 1.0, 3), (1, b"{}", 1.0, 2)])) == [(3, 2), (2, 1)]
        assert [spool.newest_of(s) for s in (1, 2, 3)] == [(99, "c99")] * 3
        assert spool.newest_of(0) == (None, None)


def test_a_damaged_batch_reports_the_stream_of_each_id(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch of several streams that fails its checksum is reported with its real ids and
    their streams, also once moved aside; the same ids fetched again are stored again."""
    with Spool(path, streams=True) as spool:
        spool.register(["a"])
        spool.write([ev(1, 1), ev(1, 2)])
        spool.write([ev(2, 1), ev(2, 2), ev(3)])
    _damage(path, 3, "payloads", 10)
    with Spool(path, streams=True) as spool:
        assert pairs(spool.read(0)) == [(1, 1), (2, 1)]
        [batch] = spool.damaged()
        assert (batch.first_seq, batch.last_seq) == (3, 5)
        assert batch.ids == (2, 2, 3) and batch.streams == (1, 2, 0)
        assert "(ids 2, 2, 3 of streams 0, 1, 2) is damaged" in caplog.text
        assert pairs(spool.write([ev(2, 2), ev(2, 1)])) == [(2, 2), (1, 2)]
    with Spool(path, streams=True) as spool:
        [batch] = spool.damaged()
        assert batch.ids == (2, 2, 3) and batch.streams == (1, 2, 0)


def test_dead_letters_keep_their_stream(path: Path) -> None:
    """A dead letter of a stream is read back with its real id and stream, and chosen by id."""
    with Spool(path, streams=True) as spool:
        spool.register(["a"])
        [one, two] = spool.write([ev(4, 1), ev(4, 2)])
        spool.dead_letter("a", two, "refused")
        [letter] = spool.dead_letters()
        assert letter.event == two and one != two
        assert spool.request_redrive("a", 4) == (1, 1)
        [redrive] = spool.take_redrive("a")
        assert redrive.event == two
        with DeadLetterStore(path) as store:  # the deadletters command, beside the bridge
            [kept] = store.select(event_id=4)
            assert kept.event == two and kept.retry_pending
            assert store.select(event_id=2**43 + 4) == []


def test_ids_out_of_range_and_streams_not_enabled_are_refused_before_anything(
    path: Path, tmp_path: Path
) -> None:
    """write() raises ValueError, storing nothing, for an id a stream cannot key, a stream
    number out of range, or an event of a stream on a spool opened without streams=True."""
    assert stream_id_ok(0) and stream_id_ok(2**43 - 1)
    assert not stream_id_ok(2**43) and not stream_id_ok(-1)
    with Spool(path, streams=True) as spool:
        for bad in (ev(2**43, 1), ev(-1, 1), ev(1, 2**20), ev(1, -1)):
            with pytest.raises(ValueError, match="out of range"):
                spool.write([ev(1, 1), bad])
        assert spool.last_seq == 0
        spool.register(["a"])
        spool.write([ev(1, 1)])
        with pytest.raises(ValueError, match="stream 0 is out of range"):
            spool.write([ev(2**43)])  # stream 0 too, once the spool has several streams
        spool.ack("a", 1)  # delivered: a single-stream bridge may open it
    with Spool(path) as spool:
        with pytest.raises(ValueError, match="streams=True"):
            spool.write([ev(1, 1)])
        assert spool.last_seq == 1
    with Spool(tmp_path / "big.db", streams=True) as spool:
        spool.write([ev(2**50)])  # a single-stream spool takes ids of any size ...
        with pytest.raises(ValueError, match="beyond 2"):
            spool.write([ev(1, 1)])  # ... and then cannot take several streams
        assert spool.last_seq == 1


def test_a_single_stream_bridge_refuses_a_spool_with_undelivered_events_of_streams(
    path: Path,
) -> None:
    """Opening without streams=True fails, in one line, while events of several streams wait
    for delivery; once they are delivered the spool opens (and reads stream 0 as before)."""
    with Spool(path, streams=True) as spool:
        spool.register(["a"])
        spool.write([ev(1, 1), ev(2, 2)])
    with pytest.raises(SpoolError, match="several streams") as refused:
        Spool(path)
    assert "\n" not in str(refused.value) and "2 undelivered events" in str(refused.value)
    with Spool(path, streams=True) as spool:
        spool.ack("a", 2)
    with Spool(path) as spool:
        assert pairs(spool.write([ev(1), ev(2)])) == [(0, 1), (0, 2)]
        assert pairs(spool.read(2)) == [(0, 1), (0, 2)]


def test_the_single_stream_spool_is_unchanged(path: Path, tmp_path: Path) -> None:
    """Events of stream 0, given with or without their stream, make the same file as before
    streams existed: ids as keys, the segment's newest id, no ``streams`` table or flag."""
    other = tmp_path / "other.db"
    with Spool(path) as plain, Spool(other, streams=True) as explicit:
        plain.write([ev(3)[:3], ev(1)[:3]])
        explicit.write([ev(3), ev(1)])
        assert explicit.read(0) == plain.read(0)
        assert explicit.newest_of(0) == plain.newest_of(0) == (3, created(3))
    rows = []
    for spool_path in (path, other):
        with sqlite3.connect(spool_path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            assert "streams" not in tables
            assert conn.execute("SELECT * FROM meta WHERE key = 'streams'").fetchall() == []
            rows.append(conn.execute("SELECT * FROM segments").fetchall())
    assert rows[0] == rows[1]
    [(_, _, _, newest_id, newest_created, *_)] = rows[0]
    assert (newest_id, newest_created) == (3, created(3))


def test_a_low_numbered_stream_needs_no_lookups_once_higher_streams_wrote(path: Path) -> None:
    """Ids only grow within a stream: a batch above its stream's newest id is stored without
    looking the ``ids`` table up, whatever other (higher-numbered) streams hold."""
    with Spool(path, streams=True) as spool:
        spool.write([ev(i, s) for i in (1, 2) for s in range(1, 1001)])
        statements: list[str] = []
        assert spool._wconn is not None
        spool._wconn.set_trace_callback(statements.append)
        stored = spool.write([ev(3, 1), ev(3, 1000), ev(3, 7)])
        assert pairs(stored) == [(1, 3), (1000, 3), (7, 3)]
        assert not [s for s in statements if "FROM ids" in s]
        spool._wconn.set_trace_callback(None)
        assert spool.write([ev(2, 7)]) == []  # an older id is looked up


def test_each_stream_sees_its_own_part_of_the_spool(path: Path) -> None:
    """What a stream's gap recovery reads of the spool (StreamSpool): its newest event, its
    own state keys, its events only, the ids of a damaged batch that are its own; the batch
    is forgotten once every stream in it has recovered its ids."""
    with Spool(path, streams=True) as spool:
        spool.register(["a"])
        one, two = spool.stream_number("one"), spool.stream_number("two")
        spool.write([ev(1, one), ev(7, two)])
        spool.write([ev(2, one), ev(8, two)])
        share = DamagedShare()
        mine, theirs = StreamSpool(spool, one, share), StreamSpool(spool, two, share)
        assert (mine.last_event_id, theirs.last_event_id) == (2, 8)
        mine.set_state("resume_point", "x")
        assert mine.get_state("resume_point") == "x" and theirs.get_state("resume_point") is None
        assert [e.id for e in theirs.read(0)] == [7, 8]  # its own only
        assert [e.id for e in theirs.read(2)] == [8]
        assert theirs.read(4) == []
    _damage(path, 3, "payloads", 10)
    with Spool(path, streams=True) as spool:
        spool.read(0)  # finds the damage
        share = DamagedShare()
        mine, theirs = StreamSpool(spool, one, share), StreamSpool(spool, two, share)
        assert [b.ids for b in mine.damaged()] == [(2,)]
        assert [b.ids for b in theirs.damaged()] == [(8,)]
        mine.forget_damaged([3])
        assert spool.damaged_count == 1  # the other stream has not recovered its id yet
        theirs.forget_damaged([3])
        assert spool.damaged_count == 0
