"""The connection log's checks, on hand-written lines and records: no emulator, no sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuroio.testing import ClientRecord, connect_rate, overlaps, read_connection_log


def line(conn: int, event: str, t: float, space: int | None = 1) -> dict[str, Any]:
    return {"conn": conn, "space": space, "event": event, "t": t, "by": None}


def test_overlaps_per_space_from_log_lines() -> None:
    """Space 1: conn 1 holds 0-10, conn 2 authenticates at 8 (2 s together); space 2: two
    connections one after the other never overlap; a handshake without AUTH counts for none."""
    lines = [
        line(1, "open", 0.0, None),
        line(1, "auth", 0.0),
        line(3, "open", 1.0, None),
        line(3, "auth", 1.0, 2),
        line(3, "close", 5.0, 2),
        line(4, "auth", 5.0, 2),  # the next one the moment the first closed: no overlap
        line(2, "auth", 8.0),
        line(1, "close", 10.0),
        line(5, "open", 11.0, None),
        line(5, "close", 11.5, None),
        line(2, "close", 20.0),
        line(4, "close", 20.0, 2),
    ]
    assert overlaps(lines) == {1: 2.0, 2: 0.0}


def test_overlaps_longest_pair_and_open_connections() -> None:
    """The longest pair counts, not the whole time some pair overlapped; connections still
    open end at ``now`` (by default at the latest time seen)."""
    lines = [
        line(1, "auth", 0.0),
        line(2, "auth", 5.0),
        line(1, "close", 10.0),
        line(3, "auth", 9.0),  # overlaps conn 2 from 9 on, still open
        line(2, "close", 15.0),
    ]
    assert overlaps(lines) == {1: 6.0}  # conns 2 and 3, 9..15 (1 and 2 share 5 s)
    assert overlaps(lines, now=30.0) == {1: 6.0}
    assert overlaps([line(1, "auth", 0.0), line(2, "auth", 1.0)], now=4.0) == {1: 3.0}


def test_overlaps_a_new_auth_moves_the_connection() -> None:
    """An AUTH with another space's token on a live connection ends its time in the first."""
    lines = [
        line(1, "auth", 0.0, 1),
        line(2, "auth", 1.0, 1),
        line(1, "auth", 4.0, 2),
        line(1, "close", 9.0, 2),
        line(2, "close", 9.0, 1),
    ]
    assert overlaps(lines) == {1: 3.0, 2: 0.0}


def test_overlaps_from_client_records() -> None:
    """The emulator's records give the same answer; one space's key is None."""
    records = [
        ClientRecord(id=1, connected_at=0.0, authenticated_at=0.1, closed_at=6.0),
        ClientRecord(id=2, connected_at=4.0, authenticated_at=4.1, closed_at=None),
        ClientRecord(id=3, connected_at=5.0),  # never authenticated
    ]
    assert overlaps(records) == {None: pytest.approx(1.9)}
    assert overlaps(records, now=100.0) == {None: pytest.approx(1.9)}
    assert overlaps([]) == {}


def test_connect_rate_busiest_half_open_window() -> None:
    """Handshakes ("open" lines, or records' connected_at) in the busiest [t, t + window)."""
    steady = [line(i, "open", i * 0.05, None) for i in range(41)]  # 20 a second, 2 s
    assert connect_rate(steady) == 20.0
    burst = [*steady, line(99, "open", 0.5, None), line(100, "auth", 0.5)]
    assert connect_rate(burst) == 21.0
    assert connect_rate(steady, window=2.0) == 20.0
    records = [ClientRecord(id=i, connected_at=t) for i, t in enumerate([0.0, 0.1, 0.2, 3.0])]
    assert connect_rate(records) == 3.0
    assert connect_rate(records, window=0.15) == pytest.approx(2 / 0.15)
    assert connect_rate([]) == 0.0
    with pytest.raises(ValueError, match="window"):
        connect_rate([], window=0)


def test_read_connection_log_skips_a_cut_last_line(tmp_path: Path) -> None:
    """A log whose writer was killed mid-line reads up to the last whole line; a bad line
    before the last is an error naming it."""
    path = tmp_path / "conn.jsonl"
    path.write_text('{"conn":1,"space":null,"event":"open","t":1.0,"by":null}\n{"conn":1,"sp')
    assert read_connection_log(path) == [
        {"conn": 1, "space": None, "event": "open", "t": 1.0, "by": None}
    ]
    path.write_text('{"conn":1\n{"conn":1,"space":null,"event":"open","t":1.0,"by":null}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_connection_log(path)
