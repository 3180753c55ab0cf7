"""``postgresql://user[:password]@host[:port]/db?table=neuroio_events``: events as rows of a
PostgreSQL table (also ``postgres://``), with asyncpg.

One row per event (columns in :mod:`neuroio.sinks._rows`): ``id bigint PRIMARY KEY``,
``created timestamptz``, ``received_at timestamptz``, ``result text``, ``confidence double
precision``, ``pid text``, ``source_id bigint``, ``source_name text``, ``space_id bigint``,
``backfilled boolean`` and ``data jsonb`` (the whole event as received). The table is created
when missing, with indexes on ``created`` and ``pid``; an existing table is used only if it has
that shape (checked at start-up: a :class:`~neuroio.exceptions.ConfigurationError` names the
table and each difference).

A batch is one statement, ``INSERT ... SELECT ... FROM jsonb_array_elements($1::jsonb) ON
CONFLICT (id) DO NOTHING``: one round trip, one transaction, and each event id stored once,
across retries, restarts after a SIGKILL, and several bridges writing the same table. The
batch's rows travel as one JSON array built on a worker thread, each event embedded as it was
received: the event loop copies one string instead of encoding eleven values per event (an
``unnest`` of eleven typed arrays, or ``executemany``, cost it about 6 µs per event), and the
server parses each event's JSON once, as it would for a ``jsonb`` parameter. A batch of at
least 500 events is split by id between ``connections`` connections (default 2), inserted in
parallel as that many transactions: while the server flushes one to its disk, it inserts the
other. A failed part fails the batch; the parts already stored are skipped when it is sent
again.

Query options: ``table`` (``name`` or ``schema.name``, default ``neuroio_events``; letters,
digits and ``_``, folded to lower case as PostgreSQL folds names), ``connect_timeout``
(default 10 s), ``timeout`` (per statement, default 30 s), ``sslmode`` (``disable``,
``allow``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``; by default asyncpg's, which
honours ``PGSSLMODE``), ``connections`` (default 2) and ``name``. Without a password in the
URI, asyncpg reads ``PGPASSWORD`` and ``~/.pgpass``.

Errors: the server unreachable is a :class:`~neuroio.exceptions.SinkError` (at start-up the
bridge does not start; later the batch is retried); a refused login, a missing database or
schema, or a missing privilege is a ``ConfigurationError`` at start-up. A batch that fails
mid-run (the connection lost, a statement timed out, the table dropped) is a ``SinkError``, and
the next attempt connects again and checks (or creates) the table first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError, MissingExtraError, PermanentSinkError, SinkError
from ._rows import COLUMNS, DEFAULT_TABLE, identifier_problem, postgres_batch
from ._uri import Choice, Duration, Int, Option, Text, parse_options, parse_url, redact_uri
from .base import Sink, SpooledEvent

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("postgres", "the postgresql:// sink") from exc

__all__ = ["PostgresSink"]

log = logging.getLogger("neuroio.sinks")

_TYPES = {
    "id": "bigint",
    "created": "timestamp with time zone",
    "received_at": "timestamp with time zone",
    "result": "text",
    "confidence": "double precision",
    "pid": "text",
    "source_id": "bigint",
    "source_name": "text",
    "space_id": "bigint",
    "backfilled": "boolean",
    "data": "jsonb",
}
# Columns a malformed event leaves NULL: a NOT NULL on one of them would refuse the event.
_NULLABLE = ("created", "result", "confidence", "pid", "source_id", "source_name", "space_id")
_TABLE = Text("table", DEFAULT_TABLE, check=lambda v: identifier_problem(v, qualified=True))
_NAME = Text("name", "")
_CONNECT_TIMEOUT = Duration("connect_timeout", 10.0)
_TIMEOUT = Duration("timeout", 30.0)
_SSLMODE = Choice(
    "sslmode",
    "",
    choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
)
_CONNECTIONS = Int("connections", 2, minimum=1)
_OPTIONS: tuple[Option[Any], ...] = (
    _TABLE,
    _NAME,
    _CONNECT_TIMEOUT,
    _TIMEOUT,
    _SSLMODE,
    _CONNECTIONS,
)
# A batch is split between the connections only when each part has at least this many events:
# below it, one statement is quicker than two.
_MIN_PART = 250

# Errors that say the database cannot be used as configured (not that it is down).
_CONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # wrong password, no such role, pg_hba
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InvalidSchemaNameError,  # no such schema
    asyncpg.InsufficientPrivilegeError,
)


# Values the server (or asyncpg, encoding an argument) will never take, whatever the retry.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # SQLSTATE class 22
    asyncpg.ProgramLimitExceededError,  # e.g. an index row too large
    asyncpg.exceptions._base.DataError,  # an argument asyncpg cannot encode
)

_FAILED = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a connection the server ended while it was idle
)


def _value_sql(n: int, column: str) -> str:
    """How the ``n``-th value of a row of the batch (``r``, a jsonb array) becomes ``column``."""
    if column == "data":
        return f"r->{n}"  # the event, a jsonb value as it is
    if column == "received_at":
        return f"to_timestamp((r->>{n})::float8)"
    if _TYPES[column] == "text":
        return f"r->>{n}"
    return f"(r->>{n})::{_TYPES[column]}"


def _quote(identifier: str) -> str:
    return '"' + identifier + '"'  # validated: letters, digits and _ only


def _index_name(table: str, what: str) -> str:
    name = f"{table}_{what}_idx"
    if len(name) <= 63:
        return name
    # PostgreSQL would cut a longer name: two long table names could then share an index name.
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"{table[: 63 - len(what) - 14]}_{digest}_{what}_idx"


class PostgresSink(Sink):
    """Inserts events into a PostgreSQL table, each event id once.

    Args:
        uri: ``postgresql://user[:password]@host[:port]/db?table=neuroio_events`` (see the
            module documentation for the options).

    Attributes:
        table: the table, as written in SQL (quoted, with its schema if given).
        added: rows inserted by this sink; events already in the table are not counted.

    Raises:
        ConfigurationError: the URI or an option is invalid.
    """

    # The spool's largest commit: a batch read back from the spool (when the sink lags) then
    # decodes each stored segment once, not twice (about a third less work for the spool).
    max_batch = 4096

    def __init__(self, uri: str) -> None:
        url = parse_url(
            uri,
            schemes=("postgresql", "postgres"),
            expected="postgresql://user[:password]@host[:port]/database",
        )
        options = parse_options(url.raw_query_string, _OPTIONS, uri=uri, sink="PostgreSQL")
        database = url.path.strip("/")
        if not database or "/" in database:
            raise ConfigurationError(
                f"sink {redact_uri(uri)}: expected postgresql://user@host[:port]/database "
                "(one database name after the host)"
            )
        parts = options[_TABLE].lower().split(".")
        self._table = parts[-1]
        self.table = ".".join(_quote(p) for p in parts)
        self._connect_timeout = options[_CONNECT_TIMEOUT]
        self._timeout = options[_TIMEOUT]
        self._ssl = options[_SSLMODE] or None
        # The address as the user spelled it: the name keys the sink's cursor in the spool.
        base = f"{url.scheme}://{urlsplit(uri).netloc}/{database}"
        self._dsn = base
        self.name = options[_NAME] or redact_uri(f"{base}?table={options[_TABLE]}")
        self.added = 0
        self._password = url.password or ""
        self._connections = options[_CONNECTIONS]
        self._conns: list[Any] = []
        # The batch is one JSON array of rows (see postgres_batch); each row's values are
        # taken out by position, and its data (the event) is a jsonb value already.
        values = ", ".join(_value_sql(n, column) for n, column in enumerate(COLUMNS))
        self._insert = (
            f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) SELECT {values} "
            "FROM jsonb_array_elements($1::jsonb) AS r ON CONFLICT (id) DO NOTHING"
        )

    def __repr__(self) -> str:
        return f"<PostgresSink {self.name}>"

    # -- connecting ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, create the table if it is missing, and check its shape.

        Raises:
            SinkError: the server is unreachable.
            ConfigurationError: the login is refused, the database or schema is missing, a
                privilege is missing, or the table has another shape.
        """
        try:
            await self._connect()
        except _CONFIGURATION_ERRORS as exc:
            raise ConfigurationError(f"sink {self.name}: {self._describe(exc)}") from None

    async def _connect(self) -> list[Any]:
        """The open connections, connecting (and preparing the table) first if needed."""
        if self._conns and not any(c.is_closed() for c in self._conns):
            return self._conns
        await self._drop()
        first = await self._open()
        try:
            await self._prepare_table(first)
        except _CONFIGURATION_ERRORS:
            first.terminate()
            raise
        except _FAILED as exc:
            first.terminate()
            reason = self._describe(exc)
            raise SinkError(f"sink {self.name}: cannot prepare the table: {reason}") from exc
        except BaseException:
            first.terminate()
            raise
        conns = [first]
        try:
            for _ in range(self._connections - 1):
                conns.append(await self._open())
        except BaseException:
            for conn in conns:
                conn.terminate()
            raise
        self._conns = conns
        return conns

    async def _open(self) -> Any:
        try:
            return await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                command_timeout=self._timeout,
                ssl=self._ssl,
                server_settings={"application_name": "neuroio-events"},
            )
        except _CONFIGURATION_ERRORS:
            raise
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            reason = self._describe(exc)
            raise SinkError(f"sink {self.name}: PostgreSQL is unreachable: {reason}") from exc
        except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            raise SinkError(f"sink {self.name}: cannot connect: {self._describe(exc)}") from exc

    async def _prepare_table(self, conn: Any) -> None:
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", self.table)
        if oid is None:
            await self._create_table(conn)
            oid = await conn.fetchval("SELECT to_regclass($1)::oid", self.table)
        problems = await self._shape_problems(conn, oid)
        if problems:
            raise ConfigurationError(
                f"sink {self.name}: table {self.table} exists with another shape: "
                f"{'; '.join(problems)}. Use another table (?table=...) or make it match "
                "the sink's table (see docs/bridge.md)"
            )

    async def _create_table(self, conn: Any) -> None:
        columns = ", ".join(
            f"{c} {_TYPES[c]}"
            + (" PRIMARY KEY" if c == "id" else "")
            + (" NOT NULL" if c in ("received_at", "data") else "")
            + (" NOT NULL DEFAULT false" if c == "backfilled" else "")
            for c in COLUMNS
        )
        # Two bridges starting at once: CREATE TABLE IF NOT EXISTS alone can still fail in one
        # of them (a race on the catalog), so creation is serialised per table name. The lock
        # is the session's and the check runs in a transaction begun after it was granted: a
        # transaction sees the catalog as of its start, so it sees a table the other created.
        key = "neuroio-events table " + self.table
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        try:
            async with conn.transaction():
                if await conn.fetchval("SELECT to_regclass($1)", self.table) is not None:
                    return
                await conn.execute(f"CREATE TABLE {self.table} ({columns})")
                for what in ("created", "pid"):
                    index = _quote(_index_name(self._table, what))
                    await conn.execute(f"CREATE INDEX {index} ON {self.table} ({what})")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
        log.info("sink %s: created table %s", self.name, self.table)

    async def _shape_problems(self, conn: Any, oid: int) -> list[str]:
        kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = $1", oid)
        if kind not in ("r", "p"):
            return ["it is not a table (a view or another kind of relation)"]
        rows = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull, atthasdef "
            "FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            oid,
        )
        found = {r["attname"]: r for r in rows}
        problems = []
        for column, expected in _TYPES.items():
            row = found.get(column)
            if row is None:
                problems.append(f"column {column} is missing")
            elif row["type"] != expected:
                problems.append(f"column {column} is {row['type']} (expected {expected})")
            elif column in _NULLABLE and row["attnotnull"]:
                problems.append(f"column {column} is NOT NULL (it must accept NULL)")
        for name, row in found.items():
            if name not in _TYPES and row["attnotnull"] and not row["atthasdef"]:
                problems.append(f"column {name} is NOT NULL without a default")
        unique = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 "
            "AND i.indpred IS NULL AND a.attname = 'id')",
            oid,
        )
        if "id" in found and not unique:
            problems.append("id is not its primary key (nor unique)")
        if not problems and not await conn.fetchval(
            "SELECT has_table_privilege($1::oid, 'INSERT')", oid
        ):
            problems.append("the user may not insert into it")
        return problems

    # -- sending ---------------------------------------------------------------------------

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Insert the batch (split between the connections when it is large); repeats of
        stored ids are skipped."""
        if not events:
            return
        try:
            conns = await self._connect()
        except ConfigurationError as exc:
            raise SinkError(str(exc)) from exc  # the table was changed under a running sink
        except _CONFIGURATION_ERRORS as exc:
            raise SinkError(f"sink {self.name}: {self._describe(exc)}") from exc
        parts = _split(events, len(conns))
        # Turning JSON into rows is CPU work: done off the loop, which goes on reading.
        batches = await asyncio.to_thread(lambda: [postgres_batch(p) for p in parts])
        # Each part is its own transaction: while one is flushed to the server's disk, the
        # other is parsed and inserted. One failed part fails the batch; the parts already
        # stored are skipped when it is sent again.
        pairs = zip(conns[: len(batches)], batches, strict=True)
        results = await asyncio.gather(
            *(conn.execute(self._insert, batch) for conn, batch in pairs), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        self.added += sum(int(r.rpartition(" ")[2]) for r in results if isinstance(r, str))
        for failure in failures:
            if not isinstance(failure, (*_REFUSED, *_FAILED)):
                await self._drop()
                raise failure
        refused = [f for f in failures if isinstance(f, _REFUSED)]
        if refused:
            # A value the server will never take (the rows are built so that none should):
            # refused for good, so the bridge isolates the event and keeps it as a dead letter
            # instead of retrying the batch forever.
            raise PermanentSinkError(
                f"sink {self.name}: PostgreSQL refused the data: {self._describe(refused[0])}"
            ) from refused[0]
        if failures:
            # Lost, timed out mid-statement, or refused (the table dropped or altered under
            # the sink): the next attempt starts from fresh connections and a checked table.
            await self._drop()
            reason = self._describe(failures[0])
            raise SinkError(f"sink {self.name}: insert failed: {reason}") from failures[0]

    async def _drop(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            if not conn.is_closed():
                conn.terminate()

    def _describe(self, exc: BaseException) -> str:
        """The error's text, never the password (asyncpg's messages should not hold it)."""
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, OSError):
            text = f"{type(exc).__name__}: {text}"
        return text.replace(self._password, "***") if self._password else text

    async def aclose(self) -> None:
        """Close the connections."""
        conns, self._conns = self._conns, []
        for conn in conns:
            if conn.is_closed():
                continue
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except _FAILED:
                conn.terminate()


def _split(events: Sequence[SpooledEvent], ways: int) -> list[Sequence[SpooledEvent]]:
    """``events`` in up to ``ways`` parts of consecutive ids (a small batch stays whole)."""
    ways = max(1, min(ways, len(events) // _MIN_PART))
    if ways == 1:
        return [events]
    ordered = sorted(events, key=lambda e: e.id)
    size = -(-len(ordered) // ways)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]
