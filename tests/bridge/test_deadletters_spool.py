"""Dead letters in the spool: redrive requests written beside an open spool, taken and settled
by the bridge's side in one transaction, purged, counted per sink."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from neuroio.bridge.spool import DeadLetterStore, Spool, SpooledEvent
from neuroio.exceptions import SpoolError


def event(seq: int, event_id: int) -> SpooledEvent:
    payload = json.dumps({"id": event_id, "data": {"id": event_id}}).encode()
    return SpooledEvent(seq, event_id, payload, 1000.0 + seq)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


def refused(spool: Spool) -> None:
    """Three dead letters of sink a (events 11, 12, 13), one of sink b (event 21)."""
    spool.register(["a", "b"])
    for seq, event_id in ((1, 11), (2, 12), (3, 13)):
        spool.dead_letter("a", event(seq, event_id), "422 Unprocessable")
    spool.dead_letter("b", event(4, 21), "400 Bad Request")


def test_retry_beside_an_open_spool_is_taken_and_settled_once(path: Path) -> None:
    """A store opened while the spool holds its lock asks for a retry; the spool's side takes
    the events of that sink only, and settling deletes dead letter and request together."""
    with Spool(path) as spool:
        refused(spool)
        with DeadLetterStore(path) as store:
            assert store.retry("a") == (3, 3)
            assert store.retry("a") == (3, 0)  # asked twice: still one request each
            assert [d.retry_pending for d in store.select()] == [True, True, True, False]
        assert spool.redrive_counts() == {"a": 3}
        assert spool.take_redrive("b") == []
        taken = spool.take_redrive("a", limit=2)
        assert [r.event for r in taken] == [event(1, 11), event(2, 12)]
        spool.finish_redrive("a", [r.number for r in taken])
        rest = spool.take_redrive("a")
        assert [r.event.id for r in rest] == [13]
        spool.finish_redrive("a", [rest[0].number])
        assert spool.take_redrive("a") == []
        assert spool.redrive_counts() == {}
        assert [(d.sink, d.event.id) for d in spool.dead_letters()] == [("b", 21)]
        assert spool.dead_letter_count == 1
        assert spool.dead_letter_counts() == {"b": 1}


def test_refused_again_keeps_the_dead_letter_with_the_new_reason(path: Path) -> None:
    """A redriven event the sink refuses again stays a dead letter (new reason), its request
    gone: a later retry asks again."""
    with Spool(path) as spool:
        refused(spool)
        with DeadLetterStore(path) as store:
            store.retry("a", 12)
        (taken,) = spool.take_redrive("a")
        spool.finish_redrive("a", [], [(taken.number, "422 still wrong")])
        with DeadLetterStore(path) as store:
            (letter,) = store.select("a", 12)
            assert letter.error == "422 still wrong"
            assert not letter.retry_pending
            assert store.retry("a", 12) == (1, 1)


def test_a_request_not_settled_survives_a_restart(path: Path) -> None:
    """Taken but not settled (the process died after sending): the next open takes it again;
    asked while no bridge runs: the next open takes it."""
    with Spool(path) as spool:
        refused(spool)
    with DeadLetterStore(path) as store:
        store.retry("b")
    with Spool(path) as spool:
        (taken,) = spool.take_redrive("b")
        assert taken.event == event(4, 21)
    with Spool(path) as spool:
        (again,) = spool.take_redrive("b")
        assert again.number == taken.number
        spool.finish_redrive("b", [again.number])
    with Spool(path) as spool:
        assert spool.take_redrive("b") == []
        assert spool.dead_letters("b") == []


def test_purge_from_outside_is_seen_by_the_counts(path: Path) -> None:
    """The store deletes dead letters (and their requests) while the spool is open; the per-sink
    counts read the file again once older than max_age."""
    with Spool(path) as spool:
        refused(spool)
        assert spool.dead_letter_counts() == {"a": 3, "b": 1}
        with DeadLetterStore(path) as store:
            store.retry()
            assert store.purge("a", 12) == 1
            assert store.purge("a") == 2
            assert store.purge("a") == 0
        assert spool.dead_letter_counts() == {"a": 3, "b": 1}  # cached (5 s)
        assert spool.dead_letter_counts(max_age=0) == {"b": 1}
        assert spool.dead_letter_count == 1
        assert spool.redrive_counts() == {"b": 1}
        spool.dead_letter("a", event(5, 14), "refused")
        assert spool.dead_letter_counts() == {"a": 1, "b": 1}


def test_trimmed_dead_letters_take_their_requests_with_them(path: Path) -> None:
    """Beyond dead_letter_max the oldest go, and so do their retry requests."""
    with Spool(path, dead_letter_max=2) as spool:
        spool.register(["a"])
        spool.dead_letter("a", event(1, 11), "r")
        spool.dead_letter("a", event(2, 12), "r")
        with DeadLetterStore(path) as store:
            store.retry("a")
        spool.dead_letter("a", event(3, 13), "r")
        assert [r.event.id for r in spool.take_redrive("a")] == [12]
        assert spool.dead_letter_counts() == {"a": 2}


def test_store_knows_sinks_and_never_creates_a_file(path: Path, tmp_path: Path) -> None:
    """sinks() has those with a cursor or dead letters; a missing file or another database is
    one SpoolError, and the store creates nothing."""
    with Spool(path) as spool:
        refused(spool)
        spool.register(["b", "c"])  # a's cursor goes, its dead letters stay
    with DeadLetterStore(path) as store:
        assert store.sinks() == {"a", "b", "c"}
        assert store.registered() == {"b", "c"}
    missing = tmp_path / "none.db"
    with pytest.raises(SpoolError, match="does not exist"):
        DeadLetterStore(missing)
    assert not missing.exists()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(SpoolError, match="not a neuroio-events spool"):
        DeadLetterStore(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"x" * 4096)
    with pytest.raises(SpoolError, match="not a SQLite database|corrupt"):
        DeadLetterStore(garbage)


def test_a_spool_without_the_redrive_table_gets_it(path: Path) -> None:
    """A spool written before redrive existed: the store lists it, a retry and the next open
    create the table (and the index the counts read)."""
    with Spool(path) as spool:
        refused(spool)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE redrive")
        conn.execute("DROP INDEX dead_letters_sink")
    with DeadLetterStore(path) as store:
        assert [d.retry_pending for d in store.select("b")] == [False]
        assert store.purge("b") == 1
        assert store.retry("a", 11) == (1, 1)
    with Spool(path) as spool:
        assert [r.event.id for r in spool.take_redrive("a")] == [11]
        plan = spool._reader().execute(
            "EXPLAIN QUERY PLAN SELECT sink, count(*) FROM dead_letters GROUP BY sink"
        )
        assert "dead_letters_sink" in " ".join(str(row) for row in plan)


def test_iterate_reads_in_chunks_in_order(path: Path) -> None:
    """iterate() pages through the selection in short reads, oldest first, nothing twice."""
    with Spool(path) as spool:
        refused(spool)
        with DeadLetterStore(path) as store:
            chunks = store.iterate(chunk=2, payloads=False)
            assert [d.event.id for d in chunks] == [11, 12, 13, 21]
            assert [d.event.id for d in store.iterate("a", chunk=1)] == [11, 12, 13]
            assert [d.event.payload for d in store.iterate("a", 12, chunk=1)] == [
                event(2, 12).payload
            ]
