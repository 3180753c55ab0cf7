"""The bridge's durable spool: a SQLite database (WAL mode) between the socket and the sinks.

An event counts as received once it is committed here. Each event has a ``seq``: its position
in the spool, contiguous. Each sink reads the spool in order with its own cursor, and events are
removed once every sink's cursor has passed them. Layout:

``segments``
    the events of one commit in one row: their ids, receive times, lengths and JSON documents
    packed side by side. Writing a few large rows instead of many small ones is what lets a
    commit keep up with tens of thousands of events a second; a segment is deleted once every
    sink confirmed its last event.
``ids``
    every event id in the spool, and those of the most recently removed events (about
    ``dedupe_window`` of them): a repeated event is stored once, even when it arrives after
    the first copy was delivered and removed.
``cursors``
    per sink, the ``seq`` of the last event that sink confirmed.
``dead_letters``
    events a sink refused for good, with the reason (bounded by ``dead_letter_max``).
``state``
    key/value pairs: the highest event id committed and its ``created`` (kept up to date
    with every commit, so a restarted bridge knows where gap recovery starts), and any
    other state a caller stores with :meth:`Spool.set_state`.

Only one process may use a spool: a ``<spool>.lock`` file is locked (``flock``) for as long as
the spool is open, and the kernel releases it if the process is killed.

Every method is synchronous and thread-safe, so the bridge calls them from worker threads and
the event loop keeps reading the socket while SQLite works.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from .exceptions import ConfigurationError, SpoolError
from .sinks.base import SpooledEvent

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LAST_EVENT_CREATED",
    "LAST_EVENT_ID",
    "ROW_OVERHEAD",
    "DeadLetter",
    "Spool",
    "SpooledEvent",
    "default_spool_path",
]

log = logging.getLogger("neuroio.spool")

DEFAULT_MAX_BYTES = 1 << 30
"""Default limit of the data held in the spool: 1 GiB."""

ROW_OVERHEAD = 48
"""Bytes counted per stored event on top of its JSON: the row's other columns and index entry."""

LAST_EVENT_ID = "last_event_id"
"""State key: the highest event id committed (see :attr:`Spool.last_event_id`)."""
LAST_EVENT_CREATED = "last_event_created"
"""State key: the ``created`` of that event, as the platform wrote it."""

_SCHEMA_VERSION = 1
_OUR_TABLES = frozenset({"segments", "ids", "cursors", "dead_letters", "state", "meta"})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    ids BLOB NOT NULL,
    times BLOB NOT NULL,
    lengths BLOB NOT NULL,
    payloads BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ids (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id INTEGER NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# SQLite allows at least 32766 host parameters since 3.32; stay well below for older builds.
_IN_CHUNK = 900

_IDS_PER_INSERT = 500
_PAGE_SIZE = 65536
_CHECKPOINT_BYTES = 40 << 20
_LITTLE = sys.byteorder == "little"


def _ids_sql(rows: int) -> str:
    return "INSERT OR IGNORE INTO ids(id, seq) VALUES " + ",".join(["(?, ?)"] * rows)


def _pack(kind: str, values: list[Any]) -> bytes:
    packed = array(kind, values)
    if not _LITTLE:  # stored little-endian, so a spool moves between machines
        packed.byteswap()
    return packed.tobytes()


def _unpack(kind: str, data: bytes) -> array[Any]:
    packed = array(kind)
    packed.frombytes(data)
    if not _LITTLE:
        packed.byteswap()
    return packed


def _decode_segment(
    first_seq: int, ids: bytes, times: bytes, lengths: bytes, payloads: bytes
) -> list[SpooledEvent]:
    id_list = _unpack("q", ids)
    time_list = _unpack("d", times)
    events = []
    offset = 0
    view = memoryview(payloads)
    for i, length in enumerate(_unpack("I", lengths)):
        events.append(
            SpooledEvent(
                first_seq + i, id_list[i], bytes(view[offset : offset + length]), time_list[i]
            )
        )
        offset += length
    return events


_decoder = msgspec.json.Decoder()


def default_spool_path() -> Path:
    """``$XDG_DATA_HOME/neuroio-events/spool.db`` (``~/.local/share/...`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "neuroio-events" / "spool.db"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a sink refused for good, kept in the spool for inspection."""

    sink: str
    event: SpooledEvent
    error: str
    at: float


class Spool:
    """The SQLite spool. Opening it creates, checks and locks the database.

    Args:
        path: the database file; ``None`` for :func:`default_spool_path`. Parent directories
            are created.
        max_bytes: :attr:`full` once the stored events take this much (their JSON plus
            :data:`ROW_OVERHEAD` per event). The file itself is larger by SQLite's pages,
            indexes and write-ahead log. ``None`` for no limit.
        synchronous: ``"full"`` (default) syncs the write-ahead log to disk at every commit,
            so a committed event survives a power loss; ``"normal"`` syncs only at checkpoints,
            which is faster and still survives the process being killed, but a power loss or
            kernel crash can lose the last commits (never corrupts the database).
        dedupe_window: how many ids of already delivered and pruned events are remembered to
            drop repeats.
        dead_letter_max: dead letters kept; the oldest are removed beyond it.
        check: run SQLite's ``quick_check`` at open (reads the whole file).
        prune_rows, prune_interval: confirmed rows are deleted once this many are ready or
            this many seconds passed since the last prune (deleting in ranges is cheaper);
            at once when the spool is full.

    Raises:
        SpoolError: the file is not a spool, is corrupt, cannot be created or written, or is
            locked by another bridge.
        ConfigurationError: an option is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        synchronous: Literal["full", "normal"] = "full",
        dedupe_window: int = 100_000,
        dead_letter_max: int = 100_000,
        check: bool = True,
        prune_rows: int = 2000,
        prune_interval: float = 0.5,
    ) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigurationError(f"spool max_bytes must be positive, got {max_bytes}")
        if synchronous not in ("full", "normal"):
            raise ConfigurationError(
                f"spool synchronous must be 'full' or 'normal', got {synchronous!r}"
            )
        if dedupe_window < 0 or dead_letter_max < 0:
            raise ConfigurationError("spool dedupe_window and dead_letter_max must be >= 0")
        self.path = Path(path) if path is not None else default_spool_path()
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.dedupe_window = dedupe_window
        self.dead_letter_max = dead_letter_max
        self.prune_rows = prune_rows
        self.prune_interval = prune_interval
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._lock_fd: int | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._open(check)
        except BaseException:
            self._release()
            raise

    def __repr__(self) -> str:
        return (
            f"Spool(path={str(self.path)!r}, depth={self.depth}, size_bytes={self._bytes}, "
            f"max_bytes={self.max_bytes})"
        )

    # -- opening ---------------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> SpoolError:
        return SpoolError(f"spool {str(self.path)!r}: {what}: {exc}")

    def _open(self, check: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc) from exc
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise SpoolError(f"spool {str(self.path)!r}: the file is not readable and writable")
        self._lock()
        try:
            self._wconn = self._connect()
            conn = self._wconn
            conn.execute("PRAGMA busy_timeout = 5000")
            # Large pages for a new spool: segments are big blobs, and each page of a blob's
            # overflow chain is one read when the segment is deleted. No effect on an
            # existing file.
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(
                    f"spool {str(self.path)!r}: cannot use write-ahead logging (journal mode "
                    f"{mode!r}); put the spool on a local file system"
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            # Checkpoint every ~40 MB of log instead of 4 MB: rows inserted and pruned between
            # two checkpoints are copied into the database once, in their final state.
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_BYTES // _PAGE_SIZE}")
            if check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise SpoolError(
                        f"spool {str(self.path)!r} is corrupt ({'; '.join(problems[:3])}); "
                        "move it aside to start with an empty spool"
                    )
            self._create_schema(conn)
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA busy_timeout = 5000")
            self._load_counters(conn)
        except sqlite3.DatabaseError as exc:
            # sqlite3 reports a garbage file as "file is not a database" on the first statement.
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise SpoolError(
                    f"spool {str(self.path)!r} is corrupt or not a SQLite database ({exc}); "
                    "move it aside to start with an empty spool"
                ) from exc
            raise self._fail("cannot open", exc) from exc

    def _lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._fail("cannot create its lock file", exc) from exc
        self._lock_fd = fd
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, single bridge assumed
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SpoolError(
                f"spool {str(self.path)!r} is in use by another bridge (pid {holder}); "
                "give each bridge its own --spool"
            ) from None
        except OSError as exc:
            raise self._fail("cannot lock", exc) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        tables.discard("sqlite_sequence")
        if version > _SCHEMA_VERSION:
            raise SpoolError(
                f"spool {str(self.path)!r} was written by a newer neuroio-events "
                f"(schema {version}); upgrade, or use another --spool"
            )
        if version == 0 and tables - _OUR_TABLES:
            raise SpoolError(
                f"{str(self.path)!r} is a SQLite database but not a neuroio-events spool "
                f"(it has tables {sorted(tables - _OUR_TABLES)}); choose another --spool"
            )
        if version == _SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _load_counters(self, conn: sqlite3.Connection) -> None:
        held, size, max_seq, min_seq = conn.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(size), 0), "
            "max(last_seq), min(first_seq) FROM segments"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        cursor_max = conn.execute("SELECT max(seq) FROM cursors").fetchone()[0]
        self._last_seq: int = max(max_seq or 0, cursor_max or 0, meta.get("last_seq", 0))
        self._held: int = held
        self._bytes: int = size
        # Events with seq <= this are gone (their segments were deleted).
        self._pruned_upto: int = (min_seq - 1) if min_seq is not None else self._last_seq
        self._prune_checked = self._pruned_upto
        self._pruned_at = -math.inf
        self._prune_deferred = False
        self._ids_trimmed = self._pruned_upto
        self._cursors: dict[str, int] = dict(
            conn.execute("SELECT sink, seq FROM cursors").fetchall()
        )
        self._dead_letters: int = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        row = conn.execute("SELECT value FROM state WHERE key = ?", (LAST_EVENT_ID,)).fetchone()
        self._newest_id: int | None = (
            int(row[0]) if row and str(row[0]).lstrip("-").isdigit() else None
        )

    # -- properties ------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest stored event (0 before the first)."""
        return self._last_seq

    @property
    def depth(self) -> int:
        """Events stored and not yet confirmed by every sink."""
        if not self._cursors:
            return self._held
        return max(0, self._last_seq - min(self._cursors.values()))

    @property
    def size_bytes(self) -> int:
        """Size of the stored events as counted against ``max_bytes``."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether the stored events reached ``max_bytes``."""
        return self.max_bytes is not None and self._bytes >= self.max_bytes

    @property
    def dead_letter_count(self) -> int:
        """Dead letters currently kept."""
        return self._dead_letters

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def file_bytes(self) -> int:
        """Bytes the database and its write-ahead log take on disk."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total

    # -- writing ---------------------------------------------------------------------------

    def _writer(self) -> sqlite3.Connection:
        if self._wconn is None or self._closed:
            raise SpoolError(f"spool {str(self.path)!r} is closed")
        return self._wconn

    def write(
        self,
        events: Sequence[tuple[int, bytes, float]] = (),
        acks: Mapping[str, int] | None = None,
    ) -> list[SpooledEvent]:
        """Store events and sink acknowledgements in one transaction, then prune.

        Args:
            events: ``(event id, compact JSON, received_at)`` in arrival order. An id already
                in the spool, repeated in the batch, or among the recently delivered ids is
                skipped.
            acks: sink name to the ``seq`` of the last event it confirmed. A cursor never
                moves back; names not registered are ignored.

        Returns:
            The events newly stored, with their ``seq``.

        Raises:
            SpoolError: SQLite failed (disk full, I/O error); nothing of this call is stored.
        """
        with self._wlock:
            conn = self._writer()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    stored = self._insert(conn, events) if events else []
                    newest = self._record_newest(conn, stored)
                    moved = self._ack(conn, acks) if acks else False
                    pruned = self._prune(conn) if moved or self._prune_deferred else None
                    if stored:
                        conn.execute(
                            "INSERT INTO meta(key, value) VALUES ('last_seq', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (stored[-1].seq,),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    # The in-memory cursors may have moved inside the transaction: reload.
                    self._cursors = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
                    raise
            except sqlite3.Error as exc:
                raise self._fail("write failed", exc) from exc
            self._last_seq += len(stored)
            if newest is not None:
                self._newest_id = newest
            self._held += len(stored)
            self._bytes += sum(len(e.payload) for e in stored) + ROW_OVERHEAD * len(stored)
            if pruned is not None:
                self._apply_prune(pruned)
            return stored

    def _apply_prune(self, pruned: tuple[int, int, int]) -> None:
        self._pruned_upto, held, size = pruned
        self._held -= held
        self._bytes -= size

    def _insert(
        self, conn: sqlite3.Connection, events: Sequence[tuple[int, bytes, float]]
    ) -> list[SpooledEvent]:
        ids = [e[0] for e in events]
        seen: set[int] = set()
        newest = self._newest_id
        # Ids only grow in practice: a batch entirely above every id ever stored cannot
        # repeat one, so the lookups are only needed for older ids (recovered gaps).
        older = ids if newest is None else [i for i in ids if i <= newest]
        if newest is None and not self._last_seq:
            older = []
        for start in range(0, len(older), _IN_CHUNK):
            some_ids = older[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(some_ids))
            for table in ("ids",):
                seen.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM {table} WHERE id IN ({marks})", some_ids
                    )
                )
        stored: list[SpooledEvent] = []
        seq = self._last_seq
        for event_id, payload, received_at in events:
            if event_id in seen:
                continue
            seen.add(event_id)
            seq += 1
            stored.append(SpooledEvent(seq, event_id, payload, received_at))
        if stored:
            # One row for the whole commit: a few large writes cost SQLite far less than
            # many small ones.
            conn.execute(
                "INSERT INTO segments(first_seq, last_seq, size, ids, times, lengths, payloads) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored[0].seq,
                    stored[-1].seq,
                    sum(len(e.payload) for e in stored) + ROW_OVERHEAD * len(stored),
                    _pack("q", [e.id for e in stored]),
                    _pack("d", [e.received_at for e in stored]),
                    _pack("I", [len(e.payload) for e in stored]),
                    b"".join(e.payload for e in stored),
                ),
            )
            pairs = [v for e in stored for v in (e.id, e.seq)]
            step = 2 * _IDS_PER_INSERT
            for k in range(0, len(pairs), step):
                chunk = pairs[k : k + step]
                conn.execute(_ids_sql(len(chunk) // 2), chunk)
        return stored

    def _record_newest(self, conn: sqlite3.Connection, stored: list[SpooledEvent]) -> int | None:
        # The highest event id ever spooled, and its ``created``, for gap recovery after a
        # restart. Written in the same transaction as the events, so it never runs ahead.
        if not stored:
            return None
        best = max(stored, key=lambda e: e.id)
        if self._newest_id is not None and best.id <= self._newest_id:
            return None
        created: Any = None
        try:
            data = best.json().get("data")
            if isinstance(data, dict):
                created = data.get("created")
        except (msgspec.DecodeError, AttributeError):
            pass
        rows = [(LAST_EVENT_ID, str(best.id))]
        if isinstance(created, str):
            rows.append((LAST_EVENT_CREATED, created))
        conn.executemany(
            "INSERT INTO state(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rows,
        )
        return best.id

    @property
    def last_event_id(self) -> int | None:
        """The highest event id ever committed to this spool (kept after pruning)."""
        return self._newest_id

    def _ack(self, conn: sqlite3.Connection, acks: Mapping[str, int]) -> bool:
        now = time.time()
        moved = False
        for name, seq in acks.items():
            current = self._cursors.get(name)
            if current is None or seq <= current:
                continue
            seq = min(seq, self._last_seq)
            conn.execute(
                "UPDATE cursors SET seq = ?, updated_at = ? WHERE sink = ?", (seq, now, name)
            )
            self._cursors[name] = seq
            moved = True
        return moved

    def _prune(self, conn: sqlite3.Connection, force: bool = False) -> tuple[int, int, int] | None:
        """Delete the segments every sink confirmed; returns (pruned_upto, events, size)."""
        if not self._cursors:
            return None
        upto = min(self._cursors.values())
        if upto <= self._prune_checked:
            self._prune_deferred = False
            return None
        now = time.monotonic()
        # Deleting in larger ranges costs less per row; a full spool prunes at once.
        if (
            upto - self._prune_checked < self.prune_rows
            and now - self._pruned_at < self.prune_interval
        ):
            if not (self.full or force):
                self._prune_deferred = True
                return None
        self._prune_deferred = False
        self._pruned_at = now
        self._prune_checked = upto
        # Segments are contiguous: those entirely at or below ``upto`` end before the one
        # holding ``upto + 1`` (which stays, partly confirmed).
        row = conn.execute(
            "SELECT first_seq, last_seq FROM segments WHERE first_seq <= ? "
            "ORDER BY first_seq DESC LIMIT 1",
            (upto + 1,),
        ).fetchone()
        if row is None:
            return None
        cut = row[0] if row[1] > upto else row[0] + 1
        held, size, last = conn.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(size), 0), "
            "max(last_seq) FROM segments WHERE first_seq < ?",
            (cut,),
        ).fetchone()
        if not held:
            return None
        conn.execute("DELETE FROM segments WHERE first_seq < ?", (cut,))
        # The ids of removed events are kept (about dedupe_window of them) to drop late
        # repeats; trimming scans the table, so it is done once per quarter window.
        keep_from = last - self.dedupe_window
        if keep_from - self._ids_trimmed >= max(1, self.dedupe_window // 4):
            conn.execute("DELETE FROM ids WHERE seq <= ?", (keep_from,))
            self._ids_trimmed = keep_from
        return last, held, size

    # -- sinks -----------------------------------------------------------------------------

    def register(self, names: Iterable[str]) -> dict[str, int]:
        """Make the cursors match the configured sinks.

        A new sink starts at the oldest event still held, so it receives the backlog the
        spool keeps. The cursor of a sink no longer configured is deleted, so it does not hold
        rows forever; its undelivered events stay only as long as another sink needs them.

        Returns:
            The removed sinks with the number of events they had not confirmed.

        Raises:
            SpoolError: SQLite failed.
        """
        wanted = list(dict.fromkeys(names))
        with self._wlock:
            conn = self._writer()
            removed = {
                name: self._last_seq - seq
                for name, seq in self._cursors.items()
                if name not in wanted
            }
            start = min(self._cursors.values(), default=self._pruned_upto)
            start = max(start, self._pruned_upto)
            now = time.time()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name in removed:
                        conn.execute("DELETE FROM cursors WHERE sink = ?", (name,))
                    for name in wanted:
                        if name not in self._cursors:
                            conn.execute(
                                "INSERT INTO cursors(sink, seq, updated_at) VALUES (?, ?, ?)",
                                (name, start, now),
                            )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fail("cannot register sinks", exc) from exc
            self._cursors = {name: self._cursors.get(name, start) for name in wanted}
        for name, backlog in removed.items():
            if backlog:
                log.warning(
                    "sink %s is no longer configured: its cursor is removed with %d events it "
                    "had not confirmed",
                    name,
                    backlog,
                )
        if removed:
            # Rows held only for the removed sinks can go now.
            with self._wlock:
                self._prune_now()
        return removed

    def _prune_now(self) -> None:
        conn = self._writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                pruned = self._prune(conn, force=True)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail("prune failed", exc) from exc
        if pruned:
            self._apply_prune(pruned)

    def cursors(self) -> dict[str, int]:
        """Each registered sink's cursor (the ``seq`` of the last event it confirmed)."""
        with self._wlock:
            return dict(self._cursors)

    def cursor(self, name: str) -> int:
        """One sink's cursor; ``KeyError`` if it is not registered."""
        return self._cursors[name]

    def ack(self, name: str, seq: int) -> None:
        """Record that sink ``name`` confirmed every event up to ``seq``."""
        self.write(acks={name: seq})

    # -- reading ---------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        if self._rconn is None or self._closed:
            raise SpoolError(f"spool {str(self.path)!r} is closed")
        return self._rconn

    def read(self, after: int, limit: int = 1000) -> list[SpooledEvent]:
        """Up to ``limit`` stored events with ``seq > after``, in order."""
        out: list[SpooledEvent] = []
        with self._rlock:
            try:
                conn = self._reader()
                row = conn.execute(
                    "SELECT first_seq FROM segments WHERE first_seq <= ? "
                    "ORDER BY first_seq DESC LIMIT 1",
                    (after + 1,),
                ).fetchone()
                begin = row[0] if row is not None else after + 1
                cursor = conn.execute(
                    "SELECT first_seq, ids, times, lengths, payloads FROM segments "
                    "WHERE first_seq >= ? ORDER BY first_seq",
                    (begin,),
                )
                while len(out) < limit:
                    segment = cursor.fetchone()
                    if segment is None:
                        break
                    events = _decode_segment(*segment)
                    if events and events[0].seq <= after:
                        events = events[after + 1 - events[0].seq :]
                    out.extend(events)
                cursor.close()
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        return out[:limit]

    def received_at(self, seq: int) -> float | None:
        """When the event at ``seq`` was received, or ``None`` if it is not stored."""
        with self._rlock:
            try:
                row = (
                    self._reader()
                    .execute(
                        "SELECT first_seq, last_seq, times FROM segments WHERE first_seq <= ? "
                        "ORDER BY first_seq DESC LIMIT 1",
                        (seq,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        if row is None or row[1] < seq:
            return None
        return float(_unpack("d", row[2])[seq - row[0]])

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, sink: str, event: SpooledEvent, error: str) -> None:
        """Keep an event that ``sink`` refused for good."""
        with self._wlock:
            conn = self._writer()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        "INSERT INTO dead_letters(sink, seq, id, payload, received_at, error, at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            sink,
                            event.seq,
                            event.id,
                            event.payload,
                            event.received_at,
                            error,
                            time.time(),
                        ),
                    )
                    trimmed = 0
                    if self._dead_letters + 1 > self.dead_letter_max:
                        trimmed = conn.execute(
                            "DELETE FROM dead_letters WHERE n <= "
                            "(SELECT max(n) FROM dead_letters) - ?",
                            (self.dead_letter_max,),
                        ).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fail("cannot store a dead letter", exc) from exc
            self._dead_letters += 1 - max(trimmed, 0)
        if trimmed > 0:
            log.warning("dead-letter table is at its limit: removed the %d oldest", trimmed)

    def dead_letters(self, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """The oldest kept dead letters, of one sink or of all."""
        query = "SELECT sink, seq, id, payload, received_at, error, at FROM dead_letters"
        params: tuple[Any, ...] = ()
        if sink is not None:
            query += " WHERE sink = ?"
            params = (sink,)
        query += " ORDER BY n LIMIT ?"
        with self._rlock:
            try:
                rows = self._reader().execute(query, (*params, limit)).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        return [
            DeadLetter(name, SpooledEvent(seq, id_, bytes(payload), received), error, at)
            for name, seq, id_, payload, received, error, at in rows
        ]

    # -- state -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        with self._rlock:
            try:
                row = (
                    self._reader()
                    .execute("SELECT value FROM state WHERE key = ?", (key,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Store ``value`` under ``key`` durably; ``None`` deletes it."""
        with self._wlock:
            conn = self._writer()
            try:
                if value is None:
                    conn.execute("DELETE FROM state WHERE key = ?", (key,))
                else:
                    conn.execute(
                        "INSERT INTO state(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
            except sqlite3.Error as exc:
                raise self._fail("cannot store state", exc) from exc

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the lock. Idempotent."""
        with self._wlock, self._rlock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._rconn = self._wconn = None
        if self._lock_fd is not None:
            # Closing the descriptor drops the flock; the lock file stays for the next bridge.
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
