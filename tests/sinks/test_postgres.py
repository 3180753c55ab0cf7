"""PostgresSink against the real PostgreSQL: rows and columns, each id once, the table's shape,
malformed values, outages, a killed connection, and a bridge end to end."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from neuroio.bridge import Bridge
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.postgres import PostgresSink
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options
from ..helpers import eventually

pytestmark = pytest.mark.postgres


def entry(event_id: int, **fields: Any) -> dict[str, Any]:
    base = {
        "id": event_id,
        "created": "2024-05-01T10:00:00.250Z",
        "result": "exact",
        "confidence": 87.5,
        "pid": f"00000000-0000-0000-0000-{event_id:012d}",
        "age": 31,
        "source": {"id": 3, "name": "Main entrance"},
        "space": {"id": 17, "name": "Demo store"},
    }
    return {**base, **fields}


def event(event_id: int, received_at: float = 1_714_557_600.5, **top: Any) -> SpooledEvent:
    body = {"id": event_id, "data": entry(event_id), **top}
    return SpooledEvent(event_id, event_id, json.dumps(body).encode(), received_at)


def events(ids: range | list[int]) -> list[SpooledEvent]:
    return [event(i) for i in ids]


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A table name unique to the test, and a connection to inspect it; dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url)
    yield name, conn
    await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    await conn.close()


async def started(uri: str) -> PostgresSink:
    sink = from_uri(uri)
    assert isinstance(sink, PostgresSink)
    await sink.start()
    return sink


async def ids_of(conn: Any, table: str) -> list[int]:
    return [r["id"] for r in await conn.fetch(f'SELECT id FROM "{table}" ORDER BY id')]


async def test_rows_and_columns(postgres_url: str, db: tuple[str, Any]) -> None:
    """The table is created with its indexes; each event is one row whose columns hold the
    entry's fields and whose data is the whole event."""
    table, conn = db
    sink = await started(f"{postgres_url}?table={table}")
    try:
        await sink.send([event(1), event(2, backfilled=True), event(3, extra={"k": [1, 2]})])
    finally:
        await sink.aclose()
    rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY id')
    assert [r["id"] for r in rows] == [1, 2, 3]
    first = dict(rows[0])
    assert first["created"] == datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=timezone.utc)
    assert first["received_at"] == datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=timezone.utc)
    assert first["result"] == "exact"
    assert first["confidence"] == 87.5
    assert first["pid"] == "00000000-0000-0000-0000-000000000001"
    assert (first["source_id"], first["source_name"], first["space_id"]) == (3, "Main entrance", 17)
    assert [r["backfilled"] for r in rows] == [False, True, False]
    assert json.loads(first["data"]) == {"id": 1, "data": entry(1)}
    assert json.loads(rows[2]["data"])["extra"] == {"k": [1, 2]}
    indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", table)
    defs = " ".join(r["indexdef"] for r in indexes)
    assert "(created)" in defs and "(pid)" in defs and "(id)" in defs
    assert sink.added == 3


async def test_same_batch_twice_and_two_sinks_at_once_store_each_id_once(
    postgres_url: str, db: tuple[str, Any]
) -> None:
    """Two sinks (two bridges) starting together and inserting overlapping batches
    concurrently, then a retry of a batch: each id once."""
    table, conn = db
    uri = f"{postgres_url}?table={table}"
    a, b = PostgresSink(uri), PostgresSink(uri)
    try:
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.send(events(range(1, 2001))), b.send(events(range(1000, 3001))))
        await a.send(events(range(1, 2001)))  # a retry after an unanswered send
    finally:
        await a.aclose()
        await b.aclose()
    assert await ids_of(conn, table) == list(range(1, 3001))
    assert a.added + b.added == 3000


async def test_malformed_values_are_null_and_kept_in_data(
    postgres_url: str, db: tuple[str, Any]
) -> None:
    """Values of the wrong type leave their column NULL; the event is stored with every
    value in data. A payload that is not JSON, or holds U+0000, is stored too."""
    table, conn = db
    odd = entry(
        1,
        created="yesterday",
        confidence="high",
        result=7,
        pid="x" * 300,
        source={"id": "3", "name": ["a"]},
        space={"id": 2**70},
    )
    other = "2024-05-01 12:00:00.25+02:00"  # another form of a time, and another zone
    batch = [
        SpooledEvent(1, 1, json.dumps({"id": 1, "data": odd, "backfilled": "yes"}).encode(), 0.0),
        SpooledEvent(2, 2, json.dumps({"id": 2, "data": "not an object"}).encode(), 0.0),
        SpooledEvent(3, 3, b"not json {", 0.0),
        SpooledEvent(4, 4, json.dumps({"id": 4, "data": entry(4, pid="a\x00b")}).encode(), 0.0),
        SpooledEvent(5, 5, json.dumps({"id": 5, "data": entry(5, created=None)}).encode(), 0.0),
        SpooledEvent(6, 6, json.dumps({"id": 6, "data": entry(6, created=other)}).encode(), 0.0),
    ]
    sink = await started(f"{postgres_url}?table={table}")
    try:
        await sink.send(batch)
    finally:
        await sink.aclose()
    rows = {r["id"]: dict(r) for r in await conn.fetch(f'SELECT * FROM "{table}"')}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    first = rows[1]
    for column in ("created", "confidence", "result", "pid", "source_id", "source_name"):
        assert first[column] is None, column
    assert first["space_id"] is None and first["backfilled"] is False
    assert json.loads(first["data"])["data"] == odd
    assert rows[2]["created"] is None and json.loads(rows[2]["data"])["data"] == "not an object"
    assert json.loads(rows[3]["data"]) == "not json {"
    assert rows[4]["pid"] == "a\ufffdb" and rows[4]["result"] == "exact"
    assert json.loads(rows[4]["data"])["data"]["pid"] == "a\ufffdb"
    assert rows[5]["created"] is None and rows[5]["confidence"] == 87.5
    assert rows[6]["created"] == datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=timezone.utc)


async def test_a_table_of_another_shape_is_refused_at_start(
    postgres_url: str, db: tuple[str, Any]
) -> None:
    """An existing table with wrong types, missing columns and no key on id: a
    ConfigurationError at start naming the table and each difference; it is left as it was."""
    table, conn = db
    await conn.execute(
        f'CREATE TABLE "{table}" (id integer, created text, received_at timestamptz, '
        "result text NOT NULL, data json, note text NOT NULL)"
    )
    sink = from_uri(f"{postgres_url}?table={table}")
    with pytest.raises(ConfigurationError) as info:
        await sink.start()
    await sink.aclose()
    message = str(info.value)
    assert f'table "{table}" exists with another shape' in message
    assert "column id is integer (expected bigint)" in message
    assert "column created is text (expected timestamp with time zone)" in message
    assert "column data is json (expected jsonb)" in message
    assert "column pid is missing" in message and "column backfilled is missing" in message
    assert "column result is NOT NULL" in message
    assert "column note is NOT NULL without a default" in message
    assert "id is not its primary key" in message
    assert await conn.fetchval(f'SELECT count(*) FROM "{table}"') == 0


async def test_a_view_is_refused(postgres_url: str, db: tuple[str, Any]) -> None:
    table, conn = db
    await conn.execute(f'CREATE VIEW "{table}" AS SELECT 1 AS id')
    sink = from_uri(f"{postgres_url}?table={table}")
    try:
        with pytest.raises(ConfigurationError, match="not a table"):
            await sink.start()
    finally:
        await sink.aclose()
        await conn.execute(f'DROP VIEW "{table}"')


async def test_schema_qualified_table(postgres_url: str, db: tuple[str, Any]) -> None:
    """?table=schema.name creates the table in that schema (names fold to lower case); a
    missing schema is a ConfigurationError."""
    table, conn = db
    schema = f"s_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sink = await started(f"{postgres_url}?table={schema.upper()}.{table}")
        try:
            await sink.send(events(range(1, 11)))
        finally:
            await sink.aclose()
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{table}"') == 10
        missing = from_uri(f"{postgres_url}?table=no_{schema}.{table}")
        with pytest.raises(ConfigurationError, match="schema"):
            await missing.start()
        await missing.aclose()
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_server_down_is_a_sink_error_at_start() -> None:
    """Nothing listens on the port: SinkError at start saying so, without the password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = from_uri(f"postgresql://postgres:pw-secret-1@127.0.0.1:{port}/test?connect_timeout=2")
    with pytest.raises(SinkError, match="unreachable") as info:
        await sink.start()
    await sink.aclose()
    assert "pw-secret-1" not in str(info.value) and "pw-secret-1" not in repr(sink)


async def test_missing_database_and_unknown_role_are_clear_errors(postgres_url: str) -> None:
    base = postgres_url.rpartition("/")[0]
    missing = from_uri(f"{base}/no_such_db_{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await missing.start()
    await missing.aclose()
    role = from_uri(postgres_url.replace("postgres@", "no_such_role:pw-secret-2@", 1))
    with pytest.raises(ConfigurationError, match="no_such_role") as info:
        await role.start()
    await role.aclose()
    assert "pw-secret-2" not in str(info.value)


async def test_a_killed_connection_fails_one_batch_then_reconnects(
    postgres_url: str, db: tuple[str, Any]
) -> None:
    """The sink's own backend is terminated between two batches: the next send is a
    SinkError, the retry of that batch connects again and stores it, each id once."""
    table, conn = db
    sink = await started(f"{postgres_url}?table={table}")
    try:
        await sink.send(events(range(1, 101)))
        assert len(sink._conns) == 2
        backend = sink._conns[0].get_server_pid()
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", backend)
        batch = events(range(50, 1001))  # large enough to use both connections
        with pytest.raises(SinkError, match="insert failed"):
            await sink.send(batch)
        await sink.send(batch)
        assert backend not in [c.get_server_pid() for c in sink._conns]
    finally:
        await sink.aclose()
    assert await ids_of(conn, table) == list(range(1, 1001))


async def test_a_table_dropped_mid_run_is_created_again(
    postgres_url: str, db: tuple[str, Any]
) -> None:
    table, conn = db
    sink = await started(f"{postgres_url}?table={table}")
    try:
        await sink.send(events(range(1, 11)))
        await conn.execute(f'DROP TABLE "{table}"')
        with pytest.raises(SinkError, match="does not exist"):
            await sink.send(events(range(11, 21)))
        await sink.send(events(range(11, 21)))
    finally:
        await sink.aclose()
    assert await ids_of(conn, table) == list(range(11, 21))


def test_uris() -> None:
    """postgres:// and postgresql://, the name (password masked, ?name= wins), and bad URIs
    and options as one-line ConfigurationErrors without the password."""
    sink = from_uri("postgres://app:pw-secret-3@db.example:6543/events?table=History")
    assert isinstance(sink, PostgresSink)
    assert sink.name == "postgres://app:***@db.example:6543/events?table=History"
    assert sink.table == '"history"'
    assert "pw-secret-3" not in repr(sink)
    assert from_uri("postgresql://h/db?name=archive").name == "archive"
    assert PostgresSink("postgresql://h/db?table=audit.events").table == '"audit"."events"'
    assert PostgresSink("postgresql://h/db?connections=1")._connections == 1
    for uri, problem in [
        ("postgresql://app:pw-secret-3@h/db?table=a;drop", "table must be"),
        ("postgresql://app:pw-secret-3@h/db?table=a.b.c", "table must be"),
        ("postgresql://app:pw-secret-3@h/db?table=" + "x" * 64, "at most 63"),
        ("postgresql://app:pw-secret-3@h/db?colour=red", "unknown option 'colour'"),
        ("postgresql://app:pw-secret-3@h/db?timeout=soon", "timeout must"),
        ("postgresql://app:pw-secret-3@h/db?sslmode=maybe", "sslmode must"),
        ("postgresql://app:pw-secret-3@h/db?connections=0", "connections must be >= 1"),
        ("postgresql://app:pw-secret-3@h", "database"),
        ("postgresql://app:pw-secret-3@h:99999/db", "(?i)port"),
    ]:
        with pytest.raises(ConfigurationError, match=problem) as info:
            from_uri(uri)
        assert "pw-secret-3" not in str(info.value), uri
        assert "\n" not in str(info.value)


async def test_bridge_delivers_every_event_once(
    postgres_url: str, db: tuple[str, Any], tmp_path: Path
) -> None:
    """A real bridge against the emulator: every emitted event is one row, created and
    received in order of time."""
    table, conn = db
    uri = f"{postgres_url}?table={table}"
    async with Emulator(tokens=[TOKEN]) as server:
        bridge = Bridge(TOKEN, [uri], **bridge_options(server, tmp_path))  # type: ignore[arg-type]
        async with bridge:
            await server.wait_for_clients(1, timeout=10)
            before = time.time()
            sent = [(await server.emit())["id"] for _ in range(300)]

            async def all_stored() -> bool:
                count: int = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
                return count >= len(sent)

            await eventually(all_stored, "every event in the table", 15)
    rows = await conn.fetch(f'SELECT id, received_at, data FROM "{table}" ORDER BY id')
    assert [r["id"] for r in rows] == sent
    assert all(r["received_at"].timestamp() >= before - 1 for r in rows)
    assert json.loads(rows[0]["data"])["data"]["id"] == sent[0]
