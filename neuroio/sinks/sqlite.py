"""``sqlite:PATH?table=neuroio_events``: events as rows of a SQLite table, a queryable history
with no server.

One row per event (columns in :mod:`neuroio.sinks._rows`): ``id INTEGER PRIMARY KEY``,
``created TEXT``, ``received_at TEXT`` (both ISO-8601 in UTC, ``2024-05-01T10:00:00.000Z``:
they sort and compare as text and work with SQLite's date functions), ``result TEXT``,
``confidence REAL``, ``pid TEXT``, ``source_id INTEGER``, ``source_name TEXT``, ``space_id
INTEGER``, ``backfilled INTEGER`` (0 or 1) and ``data TEXT`` (the whole event as received, as
JSON: query it with ``json_extract``). The database file and the table are created when
missing, with indexes on ``created`` and ``pid``; an existing table is used only if it has that
shape (checked at start-up: a :class:`~neuroio.exceptions.ConfigurationError` names the table
and each difference).

A batch is one transaction (``BEGIN IMMEDIATE``, one ``executemany`` of ``INSERT ... ON
CONFLICT (id) DO NOTHING``, ``COMMIT``): each event id stored once, across retries, restarts
after a SIGKILL, and several bridges writing the same file. Few writes, for SD cards: the
database is in WAL mode, so a commit appends the pages it changed to the log and rewrites
nothing in place; under load a batch grows instead of commits becoming more frequent.

SQLite runs on the sink's own thread, so the event loop goes on reading while it works.
Other programs may read the file at any time (WAL readers do not block the writer).

Query options (after a ``?``, which therefore cannot be part of the path): ``table`` (default
``neuroio_events``; letters, digits and ``_``), ``sync`` and ``name``. ``sync=full`` (the
default) flushes each commit to the disk before the batch counts as delivered, so a power cut
loses nothing confirmed; ``sync=normal`` skips that flush (SQLite's ``synchronous=NORMAL``):
fewer flushes, still safe if the bridge is killed, but a power cut can lose the last batches
confirmed, which the spool no longer holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..exceptions import ConfigurationError, SinkError
from ._rows import COLUMNS, DEFAULT_TABLE, identifier_problem, sqlite_rows
from ._uri import Choice, Text, parse_options
from .base import Sink, SpooledEvent

__all__ = ["SqliteSink"]

log = logging.getLogger("neuroio.sinks")

T = TypeVar("T")

_TYPES = {
    "id": "INTEGER",
    "created": "TEXT",
    "received_at": "TEXT",
    "result": "TEXT",
    "confidence": "REAL",
    "pid": "TEXT",
    "source_id": "INTEGER",
    "source_name": "TEXT",
    "space_id": "INTEGER",
    "backfilled": "INTEGER",
    "data": "TEXT",
}
_NULLABLE = ("created", "result", "confidence", "pid", "source_id", "source_name", "space_id")
_SPOOL_TABLES = frozenset({"segments", "cursors"})
_BUSY_TIMEOUT_MS = 10_000  # another writer of the same file (a second bridge) holds the lock
# The log is copied into the database every 4096 pages (16 MiB) rather than SQLite's 1000:
# a checkpoint flushes the database file too, so fewer of them mean fewer flushes (and, under
# load, about half the time per event). The log file keeps that size after a checkpoint, so
# later commits overwrite it instead of allocating new blocks.
_CHECKPOINT_PAGES = 4096
_JOURNAL_SIZE_LIMIT = _CHECKPOINT_PAGES * (4096 + 24) + 32

_TABLE = Text("table", DEFAULT_TABLE, check=identifier_problem)
_SYNC = Choice("sync", "full", choices=("normal", "full"))
_NAME = Text("name", "")
_OPTIONS = (_TABLE, _SYNC, _NAME)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class SqliteSink(Sink):
    """Inserts events into a SQLite table, each event id once.

    Args:
        path: the database file, created if missing (with its directories).
        table: the table, created if missing.
        sync: ``"full"`` (default): each batch is flushed to the disk before it counts as
            delivered; ``"normal"``: not flushed (a power cut can lose the last batches).
        name: the sink's name (default ``sqlite:PATH?table=TABLE``).

    Attributes:
        added: rows inserted by this sink; events already in the table are not counted.

    Raises:
        ConfigurationError: the path or the table name is invalid.
    """

    # The spool's largest commit: a batch read back from the spool (when the sink lags) then
    # decodes each stored segment once, not twice (about a third less work for the spool).
    max_batch = 4096

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = DEFAULT_TABLE,
        sync: Literal["normal", "full"] = "full",
        name: str | None = None,
    ) -> None:
        self.path = str(path)
        if not self.path or self.path == ":memory:":
            raise ConfigurationError(
                f"sink sqlite:{self.path}: expected sqlite:PATH of a database file"
            )
        problem = identifier_problem(table)
        if problem is not None:
            raise ConfigurationError(f"sink sqlite:{self.path}: table must {problem}")
        if sync not in ("normal", "full"):
            raise ConfigurationError(
                f"sink sqlite:{self.path}: sync must be normal or full, got {sync!r}"
            )
        self.table = table
        self.sync = sync
        self.name = name or f"sqlite:{self.path}?table={table}"
        self.added = 0
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        quoted = f'"{table}"'
        self._quoted = quoted
        self._insert = (
            f"INSERT INTO {quoted} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT (id) DO NOTHING"
        )

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> SqliteSink:
        """The sink ``sqlite:PATH[?table=T&sync=normal&name=N]`` names (``sqlite:///abs``
        works too). ``options`` are constructor arguments; they take precedence.

        Raises:
            ConfigurationError: no path, or an unknown option or a bad value in the query.
        """
        rest, _, query = uri[len("sqlite:") :].partition("?")
        path = rest[2:] if rest.startswith("//") else rest  # sqlite:///var/x.db is /var/x.db
        if not path or path == ":memory:":
            raise ConfigurationError(
                f"sink {uri!r}: expected sqlite:PATH of a database file (a history in memory "
                "would be lost at exit)"
            )
        parsed = parse_options(query, _OPTIONS, uri=uri, sink="SQLite")
        chosen = {"table": parsed[_TABLE], "sync": parsed[_SYNC], "name": parsed[_NAME] or None}
        return cls(path, **{**chosen, **options})

    def __repr__(self) -> str:
        return f"<SqliteSink {self.name}>"

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            # One thread per sink: its connection is only ever used there.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="neuroio-sqlite"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- opening ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open (or create) the database, create the table if it is missing, check its shape.

        Raises:
            SinkError: the file cannot be opened or is locked by another writer too long.
            ConfigurationError: the file is not a SQLite database, is a neuroio-events spool,
                cannot use WAL mode, or its table has another shape.
        """
        await self._run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"sink {self.name}: cannot open the database: {exc}") from exc
        try:
            self._prepare(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise ConfigurationError(
                    f"sink {self.name}: {self.path!r} is not a SQLite database or is damaged "
                    f"({exc})"
                ) from None
            raise SinkError(f"sink {self.name}: cannot prepare the table: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigurationError(
                f"sink {self.name}: cannot use write-ahead logging (journal mode {mode!r}); "
                "put the database on a local file system"
            )
        conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if _SPOOL_TABLES <= tables:
            raise ConfigurationError(
                f"sink {self.name}: {self.path!r} is a neuroio-events spool; give the sink a "
                "database file of its own"
            )
        if self.table.lower() not in {t.lower() for t in tables}:
            with _transaction(conn):
                self._create(conn)
        problems = self._shape_problems(conn)
        if problems:
            raise ConfigurationError(
                f"sink {self.name}: table {self._quoted} exists with another shape: "
                f"{'; '.join(problems)}. Use another table (?table=...) or make it match "
                "the sink's table (see docs/bridge.md)"
            )

    def _create(self, conn: sqlite3.Connection) -> None:
        columns = ", ".join(
            f"{c} {_TYPES[c]}"
            + (" PRIMARY KEY" if c == "id" else "")
            + (" NOT NULL" if c in ("received_at", "data") else "")
            + (" NOT NULL DEFAULT 0" if c == "backfilled" else "")
            for c in COLUMNS
        )
        # IF NOT EXISTS: another writer may have created it since the check (the transaction
        # is IMMEDIATE, so not while this one runs).
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self._quoted} ({columns})")
        for what in ("created", "pid"):
            index = f'"{self.table}_{what}_idx"'
            conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {self._quoted} ({what})")
        log.info("sink %s: created table %s", self.name, self._quoted)

    def _shape_problems(self, conn: sqlite3.Connection) -> list[str]:
        kind = conn.execute(
            "SELECT type FROM sqlite_master WHERE lower(name) = lower(?)", (self.table,)
        ).fetchone()
        if kind is None or kind[0] != "table":
            return ["it is not a table"]
        # cid, name, type, notnull, default, pk (and hidden, for table_xinfo)
        found = {str(r[1]).lower(): r for r in conn.execute(f"PRAGMA table_info({self._quoted})")}
        problems = []
        for column, expected in _TYPES.items():
            row = found.get(column)
            if row is None:
                problems.append(f"column {column} is missing")
            elif str(row[2]).upper() != expected:
                problems.append(f"column {column} is {row[2] or 'untyped'} (expected {expected})")
            elif column in _NULLABLE and row[3]:
                problems.append(f"column {column} is NOT NULL (it must accept NULL)")
        for name, row in found.items():
            if name not in _TYPES and row[3] and row[4] is None:
                problems.append(f"column {name} is NOT NULL without a default")
        keys = [name for name, row in found.items() if row[5]]
        if "id" in found and keys != ["id"]:
            problems.append("id is not its primary key (INTEGER PRIMARY KEY)")
        return problems

    # -- sending ---------------------------------------------------------------------------

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Insert the batch in one transaction; repeats of stored ids are skipped."""
        if not events:
            return
        if self._executor is None:
            raise SinkError(f"sink {self.name}: not started")
        try:
            self.added += await self._run(self._write, events)
        except ConfigurationError as exc:
            raise SinkError(str(exc)) from exc  # the table was changed under a running sink

    def _write(self, events: Sequence[SpooledEvent]) -> int:
        conn = self._connect()
        rows = sqlite_rows(events)
        before = conn.total_changes
        try:
            with _transaction(conn):
                conn.executemany(self._insert, rows)
        except sqlite3.Error as exc:
            # Opened again at the next batch: whatever broke (the table dropped, the file
            # replaced), the next attempt starts from a fresh connection and a checked table.
            self._close()
            raise SinkError(f"sink {self.name}: insert failed: {exc}") from exc
        return conn.total_changes - before

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def aclose(self) -> None:
        """Close the database and the sink's thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)
