"""SqliteSink on real SQLite files: rows and columns, each id once, the table's shape,
malformed values, the options, errors, and a bridge end to end."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from neuroio.bridge import Bridge
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.sqlite import SqliteSink
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options
from ..helpers import eventually


def entry(event_id: int, **fields: Any) -> dict[str, Any]:
    base = {
        "id": event_id,
        "created": "2024-05-01T12:00:00.250+02:00",
        "result": "exact",
        "confidence": 87.5,
        "pid": f"00000000-0000-0000-0000-{event_id:012d}",
        "source": {"id": 3, "name": "Main entrance"},
        "space": {"id": 17, "name": "Demo store"},
    }
    return {**base, **fields}


def event(event_id: int, **top: Any) -> SpooledEvent:
    body = {"id": event_id, "data": entry(event_id), **top}
    return SpooledEvent(event_id, event_id, json.dumps(body).encode(), 1_714_557_600.5)


def events(ids: range) -> list[SpooledEvent]:
    return [event(i) for i in ids]


async def started(uri: str) -> SqliteSink:
    sink = from_uri(uri)
    assert isinstance(sink, SqliteSink)
    await sink.start()
    return sink


def rows(path: Path, table: str = "neuroio_events") -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY id')]


async def test_rows_and_columns(tmp_path: Path) -> None:
    """The file and the table are created (WAL mode, indexes on created and pid); each event
    is one row with the entry's fields, times as UTC ISO text, data the whole event."""
    path = tmp_path / "sub" / "history.db"
    sink = await started(f"sqlite:{path}")
    try:
        await sink.send([event(1), event(2, backfilled=True), event(3, extra={"k": [1, 2]})])
    finally:
        await sink.aclose()
    got = rows(path)
    assert [r["id"] for r in got] == [1, 2, 3]
    assert got[0] == {
        "id": 1,
        "created": "2024-05-01T10:00:00.250Z",
        "received_at": "2024-05-01T10:00:00.500Z",
        "result": "exact",
        "confidence": 87.5,
        "pid": "00000000-0000-0000-0000-000000000001",
        "source_id": 3,
        "source_name": "Main entrance",
        "space_id": 17,
        "backfilled": 0,
        "data": got[0]["data"],
    }
    assert json.loads(got[0]["data"]) == {"id": 1, "data": entry(1)}
    assert [r["backfilled"] for r in got] == [0, 1, 0]
    assert json.loads(got[2]["data"])["extra"] == {"k": [1, 2]}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in conn.execute('PRAGMA index_list("neuroio_events")')}
        assert {"neuroio_events_created_idx", "neuroio_events_pid_idx"} <= indexes
        # Queries a user would run: JSON fields and date functions work on the columns.
        age = conn.execute(
            "SELECT json_extract(data, '$.data.source.name'), "
            "julianday(received_at) - julianday(created) FROM neuroio_events WHERE id = 1"
        ).fetchone()
        assert age[0] == "Main entrance" and abs(age[1] * 86400 - 0.25) < 0.001
    assert sink.added == 3


async def test_same_batch_twice_and_two_sinks_at_once_store_each_id_once(
    tmp_path: Path,
) -> None:
    """Two sinks on one file and table (two bridges) inserting overlapping batches at once,
    then a retry of a batch: each id once."""
    path = tmp_path / "shared.db"
    uri = f"sqlite:{path}?table=shared"
    a, b = SqliteSink.from_uri(uri), SqliteSink.from_uri(uri)
    try:
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.send(events(range(1, 3001))), b.send(events(range(1500, 4501))))
        await a.send(events(range(1, 3001)))  # a retry after an unconfirmed send
    finally:
        await a.aclose()
        await b.aclose()
    assert [r["id"] for r in rows(path, "shared")] == list(range(1, 4501))
    assert a.added + b.added == 4500


async def test_malformed_values_are_null_and_kept_in_data(tmp_path: Path) -> None:
    """Values of the wrong type leave their column NULL; the event is stored with every
    value in data; a payload that is not JSON is kept as a JSON string."""
    path = tmp_path / "odd.db"
    odd = entry(
        1,
        created="yesterday",
        confidence="high",
        result=["exact"],
        pid=5,
        source="camera 3",
        space={"id": True},
    )
    batch = [
        SpooledEvent(1, 1, json.dumps({"id": 1, "data": odd, "backfilled": 1}).encode(), 0.0),
        SpooledEvent(2, 2, json.dumps({"id": 2, "data": [1, 2]}).encode(), 0.0),
        SpooledEvent(3, 3, b"\xff not json", 0.0),
        SpooledEvent(
            4, 4, json.dumps({"id": 4, "data": entry(4, created="2024-05-01")}).encode(), 0.0
        ),
    ]
    sink = await started(f"sqlite:{path}")
    try:
        await sink.send(batch)
    finally:
        await sink.aclose()
    got = {r["id"]: r for r in rows(path)}
    assert sorted(got) == [1, 2, 3, 4]
    first = got[1]
    for column in ("created", "confidence", "result", "pid", "source_id", "source_name"):
        assert first[column] is None, column
    assert first["space_id"] is None and first["backfilled"] == 0
    assert first["received_at"] == "1970-01-01T00:00:00.000Z"
    assert json.loads(first["data"])["data"] == odd
    assert json.loads(got[2]["data"])["data"] == [1, 2]
    assert json.loads(got[3]["data"]) == "\ufffd not json"
    assert got[4]["created"] is None and got[4]["pid"] == "00000000-0000-0000-0000-000000000004"


async def test_a_table_of_another_shape_is_refused_at_start(tmp_path: Path) -> None:
    """An existing table of another shape: a ConfigurationError at start naming the table
    and each difference; the table is left as it was."""
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE events (id TEXT, created TEXT, received_at REAL, result TEXT NOT NULL, "
            "data BLOB, note TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO events VALUES ('a', 'b', 1.0, 'c', x'00', 'd')")
    sink = from_uri(f"sqlite:{path}?table=events")
    with pytest.raises(ConfigurationError) as info:
        await sink.start()
    await sink.aclose()
    message = str(info.value)
    assert 'table "events" exists with another shape' in message
    assert "column id is TEXT (expected INTEGER)" in message
    assert "column received_at is REAL (expected TEXT)" in message
    assert "column data is BLOB (expected TEXT)" in message
    assert "column pid is missing" in message and "column backfilled is missing" in message
    assert "column result is NOT NULL" in message
    assert "column note is NOT NULL without a default" in message
    assert "id is not its primary key" in message
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


async def test_a_spool_or_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.db"
    Spool(spool_path).close()
    sink = from_uri(f"sqlite:{spool_path}")
    with pytest.raises(ConfigurationError, match="is a neuroio-events spool"):
        await sink.start()
    await sink.aclose()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file at all" * 200)
    sink = from_uri(f"sqlite:{junk}")
    with pytest.raises(ConfigurationError, match="not a SQLite database"):
        await sink.start()
    await sink.aclose()


async def test_an_unopenable_file_is_a_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = from_uri(f"sqlite:{blocker}/sub/history.db")
    with pytest.raises(SinkError, match="cannot open the database"):
        await sink.start()
    await sink.aclose()


async def test_sync_option_and_a_dropped_table_is_created_again(tmp_path: Path) -> None:
    """?sync=normal sets synchronous=NORMAL (FULL by default). A failed batch (the table
    dropped under the sink) is a SinkError; the retry opens afresh, creates the table, and
    stores the batch."""
    path = tmp_path / "h.db"
    full = await started(f"sqlite:{path}")
    normal = await started(f"sqlite:{path}?sync=normal&table=other")
    try:
        assert full._conn is not None and normal._conn is not None
        assert full._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert normal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        await full.send(events(range(1, 11)))
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE neuroio_events")
        with pytest.raises(SinkError, match="insert failed"):
            await full.send(events(range(11, 21)))
        await full.send(events(range(11, 21)))
    finally:
        await full.aclose()
        await normal.aclose()
    assert [r["id"] for r in rows(path)] == list(range(11, 21))


def test_uris(tmp_path: Path) -> None:
    """sqlite:PATH and sqlite:///abs, the default name and ?name=, and bad URIs and options as
    one-line ConfigurationErrors."""
    sink = from_uri("sqlite:data/history.db")
    assert isinstance(sink, SqliteSink)
    assert (sink.path, sink.table, sink.sync) == ("data/history.db", "neuroio_events", "full")
    assert sink.name == "sqlite:data/history.db?table=neuroio_events"
    absolute = from_uri(f"sqlite://{tmp_path}/h.db?table=Log&sync=NORMAL&name=history")
    assert isinstance(absolute, SqliteSink)
    assert (absolute.path, absolute.table, absolute.sync) == (f"{tmp_path}/h.db", "Log", "normal")
    assert absolute.name == "history"
    for uri, problem in [
        ("sqlite:", "expected sqlite:PATH"),
        ("sqlite::memory:", "lost at exit"),
        ("sqlite:h.db?table=a.b", "table must be"),
        ("sqlite:h.db?table=1abc", "table must be"),
        ("sqlite:h.db?sync=off", "sync must be one of normal, full"),
        ("sqlite:h.db?colour=red", "unknown option 'colour' for the SQLite sink"),
    ]:
        with pytest.raises(ConfigurationError, match=problem) as info:
            from_uri(uri)
        assert "\n" not in str(info.value)


async def test_bridge_delivers_every_event_once(tmp_path: Path) -> None:
    """A real bridge against the emulator: every emitted event is one row."""
    path = tmp_path / "history.db"
    async with Emulator(tokens=[TOKEN]) as server:
        bridge = Bridge(
            TOKEN,
            [f"sqlite:{path}"],
            **bridge_options(server, tmp_path),  # type: ignore[arg-type]
        )
        async with bridge:
            await server.wait_for_clients(1, timeout=10)
            sent = [(await server.emit())["id"] for _ in range(300)]

            def all_stored() -> bool:
                with sqlite3.connect(path) as conn:
                    count: int = conn.execute("SELECT count(*) FROM neuroio_events").fetchone()[0]
                return count >= len(sent)

            await eventually(all_stored, "every event in the table", 15)
    got = rows(path)
    assert [r["id"] for r in got] == sent
    assert json.loads(got[-1]["data"])["data"]["id"] == sent[-1]
