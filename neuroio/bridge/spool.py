"""The bridge's durable spool: a SQLite database (WAL mode) between the socket and the sinks.

An event counts as received once it is committed here. Each event has a ``seq``: its position
in the spool, contiguous. Each sink reads the spool in order with its own cursor, and events are
removed once every sink's cursor has passed them. Layout:

``segments``
    the events of one commit in one row: their ids, receive times, lengths and JSON documents
    packed side by side (the documents deflated when that saves room), the commit's newest
    id, and a CRC-32 of the whole row (and one of its ids alone). A commit appends one row and
    touches nothing else, so a small commit writes one 4 KiB page to the write-ahead log. A
    row whose checksum fails is moved to ``damaged`` when it is read, never delivered;
    readers go on past it.
``ids``
    the ids of the events held, and those of the most recently removed events (about
    ``dedupe_window`` of them): a repeated event is stored once, even when it arrives after
    the first copy was delivered and removed. Filled in batches (at each prune, or every
    few thousand events), not at each commit; the ids not yet in it are kept in memory and
    rebuilt from ``segments`` at open.
``cursors``
    per sink, the ``seq`` of the last event that sink confirmed (one small row per sink).
``dead_letters``
    events a sink refused for good, with the reason (bounded by ``dead_letter_max``).
``redrive``
    requests to deliver dead letters again (``neuroio-events deadletters retry``): one row
    per dead letter, written by :class:`DeadLetterStore` from another process while the
    bridge runs. The bridge's worker of that sink sends the event, then deletes the dead
    letter and the request in one transaction (see :meth:`Spool.finish_redrive`).
``damaged``
    stored batches that failed their checksum: their seq range, their ids when those are
    intact, and the error. See :meth:`Spool.damaged`.
``state``
    key/value pairs a caller stores with :meth:`Spool.set_state`, and the highest event id
    committed and its ``created`` (saved here when rows are pruned; until then the newest
    segment holds them).
``meta``
    the last ``seq`` given and the ``seq`` up to which ``ids`` is filled; ``streams`` once
    an event of a stream numbered 1 or more was stored.
``streams``
    the persistent number of each stream name (see :meth:`Spool.stream_number`); created by
    the first call, so the spool of a single-stream bridge never has it.

Streams: a bridge with several streams keeps them all in one spool, each event keyed by its
stream number and id. The single stream of a bridge without ``[[stream]]`` is number 0, and
its events are stored exactly as before streams existed (the id is the key). An event of
stream ``n >= 1`` is keyed ``(n << 43) | id`` (its id below ``2**43``, see
:func:`stream_id_ok`) wherever an id is stored: the ``ids`` table, the ids packed in
``segments``, ``damaged`` and ``dead_letters``. The stream thus survives a crash with the
ids not yet indexed, dedupe stays one lookup per key, and reads split the key back into
:attr:`~neuroio.sinks.base.SpooledEvent.stream` and ``id``. Once such an event is stored,
``meta`` records it, and only a ``Spool(..., streams=True)`` may use the spool while it holds
undelivered events or dead letters: a single-stream bridge would deliver the events of every
stream as its own. The newest id of stream ``n`` and its ``created`` are kept in ``state``
under :data:`LAST_EVENT_ID` and :data:`LAST_EVENT_CREATED` suffixed with ``.n``.

Disk writes: pages are 4 KiB; a commit of one event writes one page to the log, an
acknowledgement one page, and a prune (every ``prune_interval`` seconds or ``prune_rows``
events) a few. The log is checkpointed into the database every 16 MiB, and its file is
kept at that size so that later commits overwrite it instead of allocating new blocks (which
also lets a commit succeed on a full disk once a checkpoint has run). Delivered rows are
deleted in batches; nothing is vacuumed.

The database, its write-ahead log and its shared-memory file are private (mode ``0600``, any
group or other permission of an existing spool taken off with a warning), and the
directories created for it ``0700``, whatever the umask: events describe people.

Only one bridge may use a spool: the database file itself is locked (``flock`` on its
inode) for as long as the spool is open, so a symbolic or hard link to it cannot get a
second bridge in, and the kernel releases the lock if the process is killed. The one
exception is :class:`DeadLetterStore` (the ``deadletters`` command): it does not take that
lock, and only reads dead letters, writes ``redrive`` requests and deletes dead letters, each
in one short transaction that SQLite serialises with the bridge's own (``busy_timeout``).

Every method is synchronous and thread-safe, so the bridge calls them from worker threads and
the event loop keeps reading the socket while SQLite works.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from .._io import PRIVATE_FILE_MODE, make_private, make_private_dirs, open_private
from .._sqlite import transaction
from .._words import plural
from ..exceptions import ConfigurationError, SpoolError, SpoolFullError
from ..sinks.base import SpooledEvent

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LAST_EVENT_CREATED",
    "LAST_EVENT_ID",
    "ROW_OVERHEAD",
    "DamagedBatch",
    "DeadLetter",
    "DeadLetterStore",
    "Redrive",
    "Spool",
    "SpooledEvent",
    "default_spool_path",
    "stream_id_ok",
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

_SCHEMA_VERSION = 2
_OUR_TABLES = frozenset(
    {"segments", "ids", "cursors", "dead_letters", "redrive", "state", "meta", "damaged", "streams"}
)
# The key of an event of stream n >= 1 is (n << _STREAM_SHIFT) | id: ids below 2**43 (about
# 8.8e12, far above the platform's), and 2**20 - 1 streams, within SQLite's signed 64 bits.
_STREAM_SHIFT = 43
_ID_LIMIT = 1 << _STREAM_SHIFT
_ID_MASK = _ID_LIMIT - 1
_STREAM_LIMIT = 1 << (63 - _STREAM_SHIFT)
# Added to schema 2 without a version change, at the first stream_number(): a bridge without
# streams never creates it, so its spool stays as it was.
_STREAMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE
)
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    newest_id INTEGER,
    newest_created TEXT,
    crc INTEGER,
    ids_crc INTEGER,
    codec INTEGER NOT NULL DEFAULT 0,
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
CREATE TABLE IF NOT EXISTS damaged (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    ids BLOB,
    error TEXT NOT NULL,
    at REAL NOT NULL
)
"""
# Added to schema 2 without a version change (an older bridge ignores the table): created at
# every open when missing, by the bridge or by the deadletters command.
_REDRIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS redrive (
    dead_letter INTEGER PRIMARY KEY,
    at REAL NOT NULL
)
"""
# Counting dead letters per sink reads this index, not the rows with their payloads.
_DEAD_LETTER_INDEX = "CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters(sink)"
# The dead-letter counts per sink are read again from the file at most this often: the
# deadletters command deletes rows from another process.
DEAD_LETTER_RECOUNT = 5.0
# Schema 1 (64 KiB pages, ids and state written at every commit) becomes 2 in place.
_UPGRADE_1 = (
    "ALTER TABLE segments ADD COLUMN newest_id INTEGER",
    "ALTER TABLE segments ADD COLUMN newest_created TEXT",
    "ALTER TABLE segments ADD COLUMN crc INTEGER",
    "ALTER TABLE segments ADD COLUMN ids_crc INTEGER",
    "ALTER TABLE segments ADD COLUMN codec INTEGER NOT NULL DEFAULT 0",
)
# SQLite allows at least 32766 host parameters since 3.32; stay well below for older builds.
_IN_CHUNK = 900

_IDS_PER_INSERT = 500
# 4 KiB pages: a commit rewrites whole pages into the log, so the page is the unit of wear.
# (64 KiB pages cost 335 KiB of writes per event at a low rate.)
_PAGE_SIZE = 4096
# Checkpoint every 16 MiB of log: the pages of rows inserted and pruned between two
# checkpoints are copied into the database once, in their final state (at a high rate the
# freed pages are reused many times over inside one log).
_CHECKPOINT_PAGES = 4096
_JOURNAL_SIZE_LIMIT = _CHECKPOINT_PAGES * (_PAGE_SIZE + 24) + 32
# Below this much free space, checkpoint every few pages (see Spool._watch_space).
_LOW_SPACE = 64 << 20
_LOW_SPACE_CHECKPOINT_PAGES = 16
# Ids not yet in the ``ids`` table are written there once this many wait (memory bound).
_INDEX_AFTER = 10_000
_SQLITE_FULL = 13
_LITTLE = sys.byteorder == "little"
_HEADER = struct.Struct("<qqq")
_PLAIN, _DEFLATE = 0, 1  # segments.codec
_WBITS = 12


_Event = tuple[int, bytes, float] | tuple[int, bytes, float, int]
"""An event to store: ``(id, payload, received_at)`` of stream 0, or with its stream."""


def stream_id_ok(event_id: int) -> bool:
    """Whether an event of a stream numbered 1 or more may have this id (``0 <= id < 2**43``):
    :meth:`Spool.write` raises :class:`ValueError` for a batch holding one that may not."""
    return 0 <= event_id < _ID_LIMIT


def _key(stream: int, event_id: int) -> int:
    """The key an event is stored under: its id in stream 0, else its stream and id packed."""
    return (stream << _STREAM_SHIFT) | event_id if stream else event_id


def _split(key: int) -> tuple[int, int]:
    """``(stream, id)`` of a key of a spool with streams (a negative key is of stream 0)."""
    if key < _ID_LIMIT:
        return 0, key
    return key >> _STREAM_SHIFT, key & _ID_MASK


def _event_key(event: SpooledEvent) -> int:
    return _key(event.stream, event.id) if event.stream else event.id


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


def _checksum(
    first_seq: int,
    last_seq: int,
    size: int,
    ids: bytes,
    times: bytes,
    lengths: bytes,
    payloads: bytes,
) -> int:
    """CRC-32 of a segment: its seq range and size, then every blob."""
    crc = zlib.crc32(_HEADER.pack(first_seq, last_seq, size))
    for part in (ids, times, lengths, payloads):
        crc = zlib.crc32(part, crc)
    return crc


def _compress(data: bytes) -> tuple[int, bytes]:
    """``(codec, stored bytes)``: raw deflate when it saves room, else the bytes as they are.

    Smaller rows are fewer pages written per commit: JSON events shrink to about 40 %, so a
    4 KiB page holds twice as many and a new page (and its bookkeeping pages) is needed half
    as often. A small window keeps the cost per commit low (about 15 us for one event).
    """
    if len(data) < 128:
        return _PLAIN, data
    packer = zlib.compressobj(1, zlib.DEFLATED, -_WBITS, 5)
    packed = packer.compress(data) + packer.flush()
    return (_DEFLATE, packed) if len(packed) < len(data) else (_PLAIN, data)


def _segment_payloads(row: Sequence[Any]) -> tuple[str | None, bytes]:
    """A ``segments`` row's JSON documents, and why it cannot be delivered (``None``: intact)."""
    first_seq, last_seq, size, crc, _ids_crc, ids, times, lengths, payloads, codec = row
    count = last_seq - first_seq + 1
    blobs = (ids, times, lengths, payloads)
    if count <= 0 or not all(isinstance(b, bytes) for b in blobs):
        return "its seq range or columns are damaged", b""
    if crc is not None and _checksum(first_seq, last_seq, size, *blobs) != crc:
        return "checksum mismatch", b""
    if len(ids) != 8 * count or len(times) != 8 * count or len(lengths) != 4 * count:
        return "its columns do not match its seq range", b""
    if codec == _DEFLATE:
        try:
            payloads = zlib.decompress(payloads, -_WBITS)
        except zlib.error as exc:
            return f"its payloads cannot be decompressed ({exc})", b""
    elif codec != _PLAIN:
        return f"unknown codec {codec!r}", b""
    if sum(_unpack("I", lengths)) != len(payloads):
        return "its lengths do not match its payloads", b""
    return None, payloads


def _decode_segment(
    first_seq: int, ids: bytes, times: bytes, lengths: bytes, payloads: bytes, split: bool = False
) -> list[SpooledEvent]:
    """A segment's events; ``split``: the ids are keys of a spool with streams."""
    id_list = _unpack("q", ids)
    time_list = _unpack("d", times)
    events = []
    offset = 0
    view = memoryview(payloads)
    for i, length in enumerate(_unpack("I", lengths)):
        key = id_list[i]
        if split and key >= _ID_LIMIT:
            events.append(
                SpooledEvent(
                    first_seq + i,
                    key & _ID_MASK,
                    bytes(view[offset : offset + length]),
                    time_list[i],
                    key >> _STREAM_SHIFT,
                )
            )
        else:
            events.append(
                SpooledEvent(
                    first_seq + i, key, bytes(view[offset : offset + length]), time_list[i]
                )
            )
        offset += length
    return events


def _split_ids(keys: Iterable[int], split: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(ids, streams)`` of stored keys (all of stream 0 unless ``split``)."""
    if not split:
        ids = tuple(keys)
        return ids, (0,) * len(ids)
    pairs = [_split(key) for key in keys]
    return tuple(p[1] for p in pairs), tuple(p[0] for p in pairs)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        if isinstance(code, int):
            return code & 0xFF == _SQLITE_FULL
        return "disk is full" in str(exc)
    return False


def _flock_holder(fd: int) -> str:
    """The pid holding a ``flock`` on the file open as ``fd``, from ``/proc/locks`` (Linux)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if "FLOCK" in fields and inode in fields:
                    return fields[fields.index(inode) - 1]
    except OSError:
        pass
    return "unknown"


_decoder = msgspec.json.Decoder()


def default_spool_path() -> Path:
    """``$XDG_DATA_HOME/neuroio-events/spool.db`` (``~/.local/share/...`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "neuroio-events" / "spool.db"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a sink refused for good, kept in the spool for inspection.

    Attributes:
        sink: the sink (route) that refused it.
        event: the event as spooled.
        error: why (the sink's last refusal).
        at: when it was refused (``time.time()``; the last refusal after a retry).
        number: its row in the spool (``0`` when unknown): what a retry request names.
        retry_pending: a retry was asked for and the bridge has not delivered it yet.
    """

    sink: str
    event: SpooledEvent
    error: str
    at: float
    number: int = 0
    retry_pending: bool = False


@dataclass(frozen=True, slots=True)
class Redrive:
    """A dead letter to deliver again to its sink (see :meth:`Spool.take_redrive`).

    Attributes:
        number: the dead letter's row (given back to :meth:`Spool.finish_redrive`).
        event: the event to send.
    """

    number: int
    event: SpooledEvent


def _selection(
    sink: str | None, event_id: int | None, prefix: str = "", split: bool = False
) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (possibly empty) choosing dead letters by sink and event id (in
    every stream when ``split``: the ids stored are keys)."""
    terms: list[str] = []
    params: list[Any] = []
    if sink is not None:
        terms.append(f"{prefix}sink = ?")
        params.append(sink)
    if event_id is not None:
        terms.append(f"{prefix}id % {_ID_LIMIT} = ?" if split else f"{prefix}id = ?")
        params.append(event_id)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def _request_redrive(
    conn: sqlite3.Connection, sink: str | None, event_id: int | None, split: bool
) -> tuple[int, int]:
    """Write a ``redrive`` request for each selected dead letter that has none (in the
    caller's transaction); ``(selected, newly requested)``."""
    where, params = _selection(sink, event_id, split=split)
    selected: int = conn.execute(f"SELECT count(*) FROM dead_letters{where}", params).fetchone()[0]
    added: int = conn.execute(
        f"INSERT OR IGNORE INTO redrive(dead_letter, at) SELECT n, ? FROM dead_letters{where}",
        [time.time(), *params],
    ).rowcount
    return selected, added


def _exists(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the database has a table or index of this name."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return row is not None


class DeadLetterStore:
    """The dead letters of a spool, for the ``deadletters`` command: works while a bridge
    holds the spool.

    It does not take the bridge's lock: it opens the existing database file (never creating
    one), reads in WAL mode beside the bridge, and each change is one short ``BEGIN
    IMMEDIATE`` transaction that waits for the bridge's (``busy_timeout`` of 5 s). A retry
    only writes ``redrive`` requests; the running bridge delivers them (or the next one to
    start), so the command never sends anything itself.

    Args:
        path: the spool's database file.

    Raises:
        SpoolError: no such file, not a spool, a spool of a newer schema, or SQLite failed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SpoolError(f"spool {str(self.path)!r} does not exist")
        try:
            self._conn = sqlite3.connect(
                f"file:{self.path.resolve()}?mode=rw", uri=True, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {str(self.path)!r}: cannot open: {exc}") from exc
        try:
            self._check()
        except BaseException:
            self._conn.close()
            raise

    def _check(self) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_dead = _exists(conn, "dead_letters")
        except sqlite3.DatabaseError as exc:
            raise SpoolError(
                f"spool {str(self.path)!r} is corrupt or not a SQLite database ({exc})"
            ) from exc
        if version > _SCHEMA_VERSION:
            raise SpoolError(
                f"spool {str(self.path)!r} was written by a newer neuroio-events "
                f"(schema {version}); upgrade"
            )
        if version < 1 or not has_dead:
            raise SpoolError(f"{str(self.path)!r} is not a neuroio-events spool")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'streams'").fetchone()
        except sqlite3.Error as exc:
            raise self._failed("read failed", exc) from exc
        # A spool of several streams: dead letters' ids are keys of (stream, id).
        self._split = bool(row and row[0])

    def _failed(self, what: str, exc: sqlite3.Error) -> SpoolError:
        return SpoolError(f"spool {str(self.path)!r}: {what}: {exc}")

    def sinks(self) -> set[str]:
        """Every sink the spool knows: those with a cursor, and those with dead letters."""
        try:
            rows = self._conn.execute(
                "SELECT sink FROM cursors UNION SELECT DISTINCT sink FROM dead_letters"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._failed("read failed", exc) from exc
        return {row[0] for row in rows}

    def registered(self) -> set[str]:
        """The sinks of the bridge that last started on this spool (those with a cursor)."""
        try:
            return {row[0] for row in self._conn.execute("SELECT sink FROM cursors")}
        except sqlite3.Error as exc:
            raise self._failed("read failed", exc) from exc

    def select(
        self, sink: str | None = None, event_id: int | None = None, *, payloads: bool = True
    ) -> list[DeadLetter]:
        """The dead letters of ``sink`` (or all) with event id ``event_id`` (or all), oldest
        first; ``payloads=False`` leaves each event's payload empty (``b""``)."""
        return list(self.iterate(sink, event_id, payloads=payloads))

    def iterate(
        self,
        sink: str | None = None,
        event_id: int | None = None,
        *,
        payloads: bool = True,
        chunk: int = 500,
    ) -> Iterator[DeadLetter]:
        """:meth:`select`, read ``chunk`` rows at a time: memory stays bounded, and each read
        is a short transaction, so a slow reader of the output never holds a snapshot that
        would keep the bridge's checkpoints from recycling the write-ahead log."""
        where, params = _selection(sink, event_id, "d.", self._split)
        where = (where + " AND" if where else " WHERE") + " d.n > ?"
        payload = "d.payload" if payloads else "x''"
        after = 0
        while True:
            try:
                pending = "r.dead_letter IS NOT NULL" if _exists(self._conn, "redrive") else "0"
                join = " LEFT JOIN redrive r ON r.dead_letter = d.n" if pending != "0" else ""
                rows = self._conn.execute(
                    f"SELECT d.n, d.sink, d.seq, d.id, {payload}, d.received_at, d.error, "
                    f"d.at, {pending} FROM dead_letters d{join}{where} ORDER BY d.n LIMIT ?",
                    [*params, after, chunk],
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._failed("read failed", exc) from exc
            for n, name, seq, id_, data, received, error, at, p in rows:
                event = _kept_event(seq, id_, bytes(data), received, self._split)
                yield DeadLetter(name, event, error, at, n, bool(p))
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def retry(self, sink: str | None = None, event_id: int | None = None) -> tuple[int, int]:
        """Ask for the selected dead letters to be delivered again, each to its own sink.

        A dead letter already waiting for its retry is not asked twice, so it is delivered
        once however often this runs.

        Returns:
            ``(selected, newly requested)``.
        """
        try:
            with transaction(self._conn):
                self._conn.execute(_REDRIVE_SCHEMA)
                return _request_redrive(self._conn, sink, event_id, self._split)
        except sqlite3.Error as exc:
            raise self._failed("cannot write the retry requests", exc) from exc

    def purge(self, sink: str | None = None, event_id: int | None = None) -> int:
        """Delete the selected dead letters (and their retry requests); how many."""
        where, params = _selection(sink, event_id, split=self._split)
        try:
            with transaction(self._conn):
                if _exists(self._conn, "redrive"):
                    self._conn.execute(
                        f"DELETE FROM redrive WHERE dead_letter IN "
                        f"(SELECT n FROM dead_letters{where})",
                        params,
                    )
                removed: int = self._conn.execute(
                    f"DELETE FROM dead_letters{where}", params
                ).rowcount
        except sqlite3.Error as exc:
            raise self._failed("cannot delete dead letters", exc) from exc
        return removed

    def close(self) -> None:
        """Close the database (the bridge's lock was never taken). Idempotent."""
        self._conn.close()

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class DamagedBatch:
    """A stored batch whose checksum failed: moved aside, never delivered.

    Attributes:
        first_seq, last_seq: the seq range it held (readers go on after ``last_seq``).
        ids: the event ids it held when those are intact (to recover from the REST API),
            ``None`` when the ids themselves are damaged.
        error: what was wrong, for the log.
        at: when it was found (``time.time()``).
        streams: the stream number of each of ``ids`` (``0`` for the single stream);
            ``None`` with them.
    """

    first_seq: int
    last_seq: int
    ids: tuple[int, ...] | None
    error: str
    at: float
    streams: tuple[int, ...] | None = None


class Spool:
    """The SQLite spool. Opening it creates, checks and locks the database.

    Args:
        path: the database file; ``None`` for :func:`default_spool_path`. Parent directories
            are created.
        max_bytes: :attr:`full` once the stored events take this much (their JSON plus
            :data:`ROW_OVERHEAD` per event). The file itself is larger by SQLite's pages,
            indexes and write-ahead log. ``None`` for no limit.
        synchronous: ``"normal"`` (default) writes each commit to the write-ahead log without
            waiting for the disk: a committed event survives the process being killed
            (SIGKILL, a crash), and the log reaches the disk within the kernel's writeback
            delay (about 30 s) and at every checkpoint. A power loss or kernel crash can
            lose the commits of those last seconds, never corrupts the database, and loses
            no event in the end when gap recovery can fetch them again from the REST API
            (the newest id is lost with them, so the next start asks for them; sinks may see
            them twice). ``"full"`` syncs the log at every commit, so a committed event
            survives a power loss too; it costs one disk flush per commit and about twice
            the bytes written per event at a low rate (each commit's partly filled block is
            written again by the next one): see ``docs/reliability.md``.
        dedupe_window: how many ids of already delivered and pruned events are remembered to
            drop repeats.
        dead_letter_max: dead letters kept; the oldest are removed beyond it.
        check: run SQLite's ``quick_check`` at open (reads the whole file).
        prune_rows, prune_interval: confirmed rows are deleted once this many are ready or
            this many seconds passed since the last prune (deleting in ranges writes fewer
            pages); at once when the spool is full.
        streams: the bridge has several streams: :meth:`write` takes events of streams
            numbered 1 or more. ``False`` (a single-stream bridge) refuses a spool that holds
            undelivered events or dead letters of such streams.

    Raises:
        SpoolError: the file is not a spool, is corrupt, cannot be created or written, is
            locked by another bridge, or (``streams=False``) holds events of several streams.
        ConfigurationError: an option is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        synchronous: Literal["full", "normal"] = "normal",
        dedupe_window: int = 100_000,
        dead_letter_max: int = 100_000,
        check: bool = True,
        prune_rows: int = 2000,
        prune_interval: float = 10.0,
        streams: bool = False,
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
        self.streams = streams
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._lock_fd: int | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._closed = False
        self._space_checked = -math.inf
        self._low_space = False
        self._disk_full = False
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

    # -- errors ----------------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> SpoolError:
        if _is_full(exc):
            return SpoolFullError(
                f"spool {str(self.path)!r}: {what}: the disk is full "
                f"({self._free_bytes()} bytes free)"
            )
        return SpoolError(f"spool {str(self.path)!r}: {what}: {exc}")

    def _write_failed(self, conn: sqlite3.Connection, what: str, exc: BaseException) -> SpoolError:
        """The error of a failed commit, after making the next one possible again."""
        if _is_full(exc):
            self._disk_full = True
            self._checkpoint(conn)
        return self._fail(what, exc)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # Commits between two checkpoints grow the log; on a full disk it cannot grow.
        # Copying it into the database (which only needs room for its live pages) and
        # truncating it gives its blocks back, so a later commit needs little room.
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            log.debug("spool %s: checkpoint on a full disk failed: %s", self.path, error)
        else:
            self._disk_full = False

    def _free_bytes(self) -> int | str:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return "unknown"
        return st.f_bavail * st.f_frsize

    # -- opening ---------------------------------------------------------------------------

    def _open(self, check: bool) -> None:
        try:
            make_private_dirs(self.path.parent)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc) from exc
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise SpoolError(f"spool {str(self.path)!r}: the file is not readable and writable")
        self._lock()
        try:
            self._wconn = self._connect()
            conn = self._wconn
            new = conn.execute("PRAGMA page_count").fetchone()[0] == 0
            if new:
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only a new file takes it
            else:
                self._repage(conn)
            self._configure(conn)
            if check and not new:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise SpoolError(
                        f"spool {str(self.path)!r} is corrupt ({'; '.join(problems[:3])}); "
                        "move it aside to start with an empty spool"
                    )
            self._create_schema(conn)
            if not (_exists(conn, "redrive") and _exists(conn, "dead_letters_sink")):
                with transaction(conn):
                    conn.execute(_REDRIVE_SCHEMA)
                    conn.execute(_DEAD_LETTER_INDEX)
            self._rconn = self._connect()
            self._load_counters(conn)
            self._check_streams(conn)
            # Once the file is known to be a spool (another file is never touched): an older
            # spool may be readable by others, and the log and shared-memory files of a
            # bridge that was killed outlive it with their mode. SQLite gives the files it
            # creates the database's mode on most builds; this holds on the others too.
            self._make_private(self._files())
        except sqlite3.DatabaseError as exc:
            # sqlite3 reports a garbage file as "file is not a database" on the first statement.
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise SpoolError(
                    f"spool {str(self.path)!r} is corrupt or not a SQLite database ({exc}); "
                    "move it aside to start with an empty spool"
                ) from exc
            raise self._fail("cannot open", exc) from exc

    def _repage(self, conn: sqlite3.Connection) -> None:
        """Rewrite a spool of another page size (schema 1 used 64 KiB) once, with 4 KiB pages.

        The only ``VACUUM`` the spool runs: large pages cost many times the bytes written per
        event for as long as the file lives. Needs room for a copy of the file; without it
        the spool goes on with its old pages.
        """
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        if size == _PAGE_SIZE or conn.execute("PRAGMA user_version").fetchone()[0] != 1:
            return  # only a spool of schema 1: another database is never touched
        try:
            conn.execute("PRAGMA journal_mode = DELETE")  # the page size cannot change in WAL
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            log.warning(
                "spool %s: cannot rewrite its %d-byte pages as %d-byte pages (%s); going on "
                "with the larger pages, which write more per event",
                self.path,
                size,
                _PAGE_SIZE,
                exc,
            )
        else:
            log.info("spool %s: rewritten with %d-byte pages", self.path, _PAGE_SIZE)

    def _configure(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(
                f"spool {str(self.path)!r}: cannot use write-ahead logging (journal mode "
                f"{mode!r}); put the spool on a local file system"
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
        # The log file keeps its size after a checkpoint (up to this limit): commits overwrite
        # it in place instead of growing a file again, which also works on a full disk.
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        # Freed pages are not overwritten with zeros: that would be one more write per page.
        conn.execute("PRAGMA secure_delete = OFF")

    def _files(self) -> tuple[Path, Path, Path]:
        """The database, its write-ahead log and its shared-memory file."""
        return (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        )

    def _make_private(self, paths: Iterable[Path]) -> None:
        """Take every permission of group and others off ``paths``: events describe people."""
        for path in paths:
            try:
                former = make_private(path)
            except OSError as exc:
                log.warning(
                    "spool %s: cannot make %s private (%s); other users may read the events",
                    self.path,
                    path.name,
                    exc.strerror or exc,
                )
                continue
            if former is not None:
                log.warning(
                    "spool %s: %s could be read by other users (mode %03o); made private "
                    "(mode %03o)",
                    self.path,
                    path.name,
                    former,
                    former & PRIVATE_FILE_MODE,
                )

    def _lock(self) -> None:
        # The lock is on the database file's own inode, so a symbolic or hard link to the
        # same file meets the same lock (a lock file beside the path would not). Created
        # here, before SQLite opens it, so that it is private from its first byte.
        try:
            fd = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            raise self._fail("cannot open", exc) from exc
        self._lock_fd = fd
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, single bridge assumed
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            real = os.path.realpath(self.path)
            same = "" if real == os.path.abspath(self.path) else f" (the same file as {real!r})"
            raise SpoolError(
                f"spool {str(self.path)!r}{same} is in use by another bridge "
                f"(pid {_flock_holder(fd)}); give each bridge its own --spool"
            ) from None
        except OSError as exc:
            raise self._fail("cannot lock", exc) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
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
        with transaction(conn):
            if version == 1:
                for statement in _UPGRADE_1:
                    conn.execute(statement)
                # Schema 1 wrote every id at its commit: the ids table is complete.
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) SELECT 'indexed_upto', "
                    "max(coalesce((SELECT max(last_seq) FROM segments), 0), "
                    "coalesce((SELECT value FROM meta WHERE key = 'last_seq'), 0))"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        if version == 1:
            log.info("spool %s: upgraded to schema %d", self.path, _SCHEMA_VERSION)

    def _load_counters(self, conn: sqlite3.Connection) -> None:
        held, size, max_seq, min_seq = conn.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(size), 0), "
            "max(last_seq), min(first_seq) FROM segments"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        cursor_max = conn.execute("SELECT max(seq) FROM cursors").fetchone()[0]
        damaged_max = conn.execute("SELECT max(last_seq) FROM damaged").fetchone()[0]
        self._last_seq: int = max(
            max_seq or 0, cursor_max or 0, damaged_max or 0, meta.get("last_seq", 0)
        )
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
        # Dead letters per sink: moved by this process's changes, and read again from the
        # file every DEAD_LETTER_RECOUNT seconds (the deadletters command deletes rows).
        self._dl_lock = threading.Lock()
        self._dl_counts: dict[str, int] = {}
        self._dl_version = 0
        self._dl_counted = -math.inf
        self._damaged_count: int = conn.execute("SELECT count(*) FROM damaged").fetchone()[0]
        self._skip: dict[int, DamagedBatch] = {}  # found damaged, not yet moved aside
        self._load_streams(conn, meta)
        self._load_newest(conn)
        self._load_unindexed(conn, meta.get("indexed_upto", 0))

    def _check_streams(self, conn: sqlite3.Connection) -> None:
        """Refuse, without ``streams=True``, a spool whose events of several streams are not
        all delivered: a single-stream bridge would deliver them as its own."""
        if self.streams or not self._split:
            return
        dead = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE id >= ?", (_ID_LIMIT,)
        ).fetchone()[0]
        if self.depth or dead:
            raise SpoolError(
                f"spool {str(self.path)!r} holds events of a bridge with several streams "
                f"({plural(self.depth, 'undelivered event')}, {plural(dead, 'dead letter')} "
                "of its streams); run that bridge's configuration, or use another --spool"
            )

    def _load_streams(self, conn: sqlite3.Connection, meta: Mapping[str, int]) -> None:
        # Keys are split into (stream, id) once an event of a stream >= 1 was stored; until
        # then every key is an id of stream 0, whatever its value.
        self._split: bool = bool(meta.get("streams", 0))
        self._stream_numbers: dict[str, int] = (
            dict(conn.execute("SELECT name, number FROM streams").fetchall())
            if _exists(conn, "streams")
            else {}
        )
        # The newest id of each stream >= 1 and its created, or the event itself until its
        # created is asked for: decoding a payload per stream per commit would cost more
        # than the rest of a commit of several streams. Then the streams whose newest is not
        # saved in ``state`` yet (a new set replaces it when saved: see _volatile).
        self._newest_of: dict[int, tuple[int, str | SpooledEvent | None]] = {}
        self._unsaved: set[int] = set()
        ids: dict[int, int] = {}
        created: dict[int, str] = {}
        prefixes = (LAST_EVENT_ID + ".", LAST_EVENT_CREATED + ".")
        rows = conn.execute(
            "SELECT key, value FROM state WHERE key >= ? AND key < ?",
            ("last_event_", "last_event`"),  # ` follows _: the range of the prefix
        )
        for key, value in rows:
            for kind, prefix in enumerate(prefixes):
                number = key[len(prefix) :] if key.startswith(prefix) else ""
                if number.isdigit() and int(number) > 0:
                    if kind == 1:
                        created[int(number)] = value
                    elif value.isdigit():
                        ids[int(number)] = int(value)
        for stream, newest in ids.items():
            self._newest_of[stream] = (newest, created.get(stream))

    def _load_newest(self, conn: sqlite3.Connection) -> None:
        state = dict(
            conn.execute(
                "SELECT key, value FROM state WHERE key IN (?, ?)",
                (LAST_EVENT_ID, LAST_EVENT_CREATED),
            ).fetchall()
        )
        saved = state.get(LAST_EVENT_ID)
        self._newest_id: int | None = (
            int(saved) if saved is not None and saved.lstrip("-").isdigit() else None
        )
        self._newest_created: str | None = state.get(LAST_EVENT_CREATED)
        row = conn.execute(
            "SELECT newest_id, newest_created FROM segments WHERE newest_id IS NOT NULL "
            "ORDER BY newest_id DESC LIMIT 1"
        ).fetchone()
        if row is not None and (self._newest_id is None or row[0] > self._newest_id):
            self._newest_id, self._newest_created = row[0], row[1]
        self._newest_saved = self._newest_id if saved is not None else None

    def _load_unindexed(self, conn: sqlite3.Connection, indexed_upto: int) -> None:
        # The ids of segments committed after the last batch written to ``ids``.
        self._indexed_upto: int = indexed_upto
        self._unindexed: dict[int, int] = {}
        rows = conn.execute(
            "SELECT first_seq, last_seq, ids, ids_crc FROM segments WHERE last_seq > ?",
            (indexed_upto,),
        )
        for first_seq, last_seq, ids, ids_crc in rows:
            if not isinstance(ids, bytes) or len(ids) != 8 * (last_seq - first_seq + 1):
                continue  # damaged: moved aside when read
            if ids_crc is not None and zlib.crc32(ids) != ids_crc:
                continue
            for i, event_id in enumerate(_unpack("q", ids)):
                if first_seq + i > indexed_upto:
                    self._unindexed[event_id] = first_seq + i
        if self._split:
            self._load_unindexed_newest()

    def _load_unindexed_newest(self) -> None:
        """The newest of each stream >= 1 among the ids not indexed yet: ``state`` has them
        up to the last index write, these segments are newer (their ``created`` is read from
        the payloads of the few segments holding a stream's newest)."""
        best: dict[int, tuple[int, int]] = {}  # stream: (id, seq)
        for key, seq in self._unindexed.items():
            stream, event_id = _split(key)
            if stream and event_id > best.get(stream, (-1, 0))[0]:
                best[stream] = (event_id, seq)
        wanted: dict[int, list[int]] = {}  # seq: streams
        for stream, (event_id, seq) in best.items():
            saved = self._newest_of.get(stream)
            if saved is None or event_id > saved[0]:
                self._newest_of[stream] = (event_id, None)
                self._unsaved.add(stream)
                wanted.setdefault(seq, []).append(stream)
        if not wanted:
            return
        for event in self._events_at(sorted(wanted)):
            if event.stream in wanted.get(event.seq, ()):
                self._newest_of[event.stream] = (event.id, _created(event))

    def _events_at(self, seqs: list[int]) -> list[SpooledEvent]:
        """The intact stored events at these seqs (at open: the write connection)."""
        assert self._wconn is not None
        found: list[SpooledEvent] = []
        wanted = set(seqs)
        for seq in seqs:
            if found and found[-1].seq >= seq:
                continue  # in the segment read last
            try:
                row = self._wconn.execute(
                    f"SELECT {self._ROW} FROM segments WHERE first_seq <= ? "
                    "ORDER BY first_seq DESC LIMIT 1",
                    (seq,),
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise
                continue  # a damaged row: its created stays unknown, read() moves it aside
            if row is None:
                continue
            problem, payloads = _segment_payloads(row)
            if problem is not None:
                continue
            events = _decode_segment(row[0], row[5], row[6], row[7], payloads, True)
            found.extend(e for e in events if e.seq in wanted)
        return found

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
    def damaged_count(self) -> int:
        """Damaged batches moved aside and not yet :meth:`forget_damaged`."""
        return self._damaged_count + len(self._skip)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def last_event_id(self) -> int | None:
        """The highest event id ever committed to this spool (kept after pruning)."""
        return self._newest_id

    @property
    def last_event_created(self) -> str | None:
        """The ``created`` of that event, as the platform wrote it (``None`` if unknown)."""
        return self._newest_created

    def newest_of(self, stream: int) -> tuple[int | None, str | None]:
        """The highest event id ever committed for stream number ``stream`` and its
        ``created`` (kept after pruning); ``(None, None)`` before its first event.
        ``newest_of(0)`` is ``(last_event_id, last_event_created)``."""
        if not stream:
            return self._newest_id, self._newest_created
        newest = self._newest_of.get(stream)
        if newest is None:
            return None, None
        event_id, created = newest
        # Not kept decoded: a writer may replace it meanwhile (decoded when next saved).
        return event_id, _created(created) if isinstance(created, SpooledEvent) else created

    def stream_number(self, name: str) -> int:
        """The number (``1`` or more) of the stream called ``name``: given at its first use,
        the same after the spool is opened again.

        Raises:
            SpoolError: SQLite failed, or every number is taken (about a million).
        """
        with self._wlock:
            number = self._stream_numbers.get(name)
            if number is not None:
                return number
            conn = self._writer()
            number = max(self._stream_numbers.values(), default=0) + 1
            if number >= _STREAM_LIMIT:
                raise SpoolError(
                    f"spool {str(self.path)!r}: no stream number left for {name!r} "
                    f"(at most {_STREAM_LIMIT - 1} streams)"
                )
            try:
                with transaction(conn):
                    conn.execute(_STREAMS_SCHEMA)
                    conn.execute("INSERT INTO streams(name, number) VALUES (?, ?)", (name, number))
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot store a stream number", exc) from exc
            self._stream_numbers[name] = number
            return number

    def stream_numbers(self) -> dict[str, int]:
        """Every stream name this spool numbered, with its number."""
        with self._wlock:
            return dict(self._stream_numbers)

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
        events: Sequence[_Event] = (),
        acks: Mapping[str, int] | None = None,
    ) -> list[SpooledEvent]:
        """Store events and sink acknowledgements in one transaction, then prune.

        Args:
            events: ``(event id, compact JSON, received_at)`` of stream 0, or ``(event id,
                compact JSON, received_at, stream number)``, in arrival order. An event whose
                stream and id are already in the spool, repeated in the batch, or among the
                recently delivered is skipped; the same id in another stream is stored.
            acks: sink name to the ``seq`` of the last event it confirmed. A cursor never
                moves back; names not registered are ignored.

        Returns:
            The events newly stored, with their ``seq``.

        Raises:
            ValueError: an event of a stream numbered 1 or more while the spool was opened
                without ``streams=True``, or with a stream number or an id out of range (see
                :func:`stream_id_ok`; ids of stream 0 too once the spool holds several
                streams). Nothing of this call is stored.
            SpoolFullError: the disk is full; nothing of this call is stored, and the same
                call succeeds once there is room.
            SpoolError: SQLite failed otherwise (I/O error); nothing of this call is stored.
        """
        with self._wlock:
            conn = self._writer()
            streams = self._streams_of(events)
            self._watch_space(conn)
            if self._disk_full:
                # Before anything grows the log again: a checkpoint needs the room first.
                self._checkpoint(conn)
            try:
                return self._write(conn, events, streams, acks, force=False)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise self._fail("write failed", exc) from exc
                error = self._write_failed(conn, "write failed", exc)
            # The checkpoint gave the log's blocks back and a forced prune frees pages for the
            # new rows: once is enough when a little room came back.
            try:
                stored = self._write(conn, events, streams, acks, force=True)
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "write failed", exc) from error
            self._disk_full = False
            return stored

    def _streams_of(self, events: Sequence[_Event]) -> list[int] | None:
        """The stream of each event, ``None`` when all are of stream 0 and their keys are
        their ids; raises ``ValueError`` for an event the spool cannot key."""
        if not self._split and all(len(event) == 3 or not event[3] for event in events):
            return None  # the single stream: exactly as before streams existed
        streams = [event[3] if len(event) == 4 else 0 for event in events]
        several = any(streams)
        if not several and not self._split:
            return None  # ids of stream 0 of any size while the spool has no other stream
        if several and not self.streams:
            raise ValueError(
                "events of streams numbered 1 or more need a Spool opened with streams=True"
            )
        for event, stream in zip(events, streams, strict=True):
            if stream and not 0 < stream < _STREAM_LIMIT:
                raise ValueError(f"stream number {stream} is out of range [1, {_STREAM_LIMIT})")
            if not (stream_id_ok(event[0]) if stream else event[0] < _ID_LIMIT):
                raise ValueError(
                    f"event id {event[0]} of stream {stream} is out of range [0, 2**43) in a "
                    "spool with several streams"
                )
        newest = self._newest_id
        if several and not self._split and newest is not None and newest >= _ID_LIMIT:
            raise ValueError(
                f"the spool holds event ids of stream 0 up to {newest}, beyond 2**43: it "
                "cannot hold several streams"
            )
        return streams if several else None

    def _write(
        self,
        conn: sqlite3.Connection,
        events: Sequence[_Event],
        streams: list[int] | None,
        acks: Mapping[str, int] | None,
        *,
        force: bool,
    ) -> list[SpooledEvent]:
        before = self._volatile()
        try:
            with transaction(conn):
                if force:
                    # Prune first, so that the new rows take the freed pages.
                    moved = self._ack(conn, acks) if acks else False
                    pruned = self._maintain(conn, [], force=True)
                    stored = self._insert(conn, events, streams) if events else []
                else:
                    stored = self._insert(conn, events, streams) if events else []
                    moved = self._ack(conn, acks) if acks else False
                    pruned = None
                    if (
                        moved
                        or self._prune_deferred
                        or len(self._unindexed) + len(stored) >= _INDEX_AFTER
                    ):
                        pruned = self._maintain(conn, stored)
        except BaseException:
            self._restore(before)
            raise
        if force:
            if pruned is not None:
                self._stored([], indexed=True)
            self._stored(stored, indexed=False)
        else:
            self._stored(stored, indexed=pruned is not None)
        if pruned is not None:
            self._apply_prune(pruned)
        return stored

    def _watch_space(self, conn: sqlite3.Connection) -> None:
        """Checkpoint often while the disk is nearly full (checked once a second).

        A checkpoint needs room in the database for the pages the log holds; with a long log
        that is more than a nearly full disk has left, and every later commit would fail.
        With frequent checkpoints the log stays short and its pages are already in place.
        """
        now = time.monotonic()
        if now - self._space_checked < 1.0:
            return
        self._space_checked = now
        free = self._free_bytes()
        low = isinstance(free, int) and free < _LOW_SPACE
        if low == self._low_space:
            return
        self._low_space = low
        pages = _LOW_SPACE_CHECKPOINT_PAGES if low else _CHECKPOINT_PAGES
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        if low:
            log.warning(
                "spool %s: %s bytes free on its disk: checkpointing every %d pages",
                self.path,
                free,
                pages,
            )

    def _volatile(self) -> tuple[Any, ...]:
        """The in-memory state a transaction may change, to restore if it fails."""
        return (
            dict(self._cursors),
            self._prune_checked,
            self._pruned_at,
            self._prune_deferred,
            self._ids_trimmed,
            self._newest_saved,
            self._unsaved,  # never changed in place once saved: _save_newest replaces it
            self._split,
        )

    def _restore(self, before: tuple[Any, ...]) -> None:
        (
            self._cursors,
            self._prune_checked,
            self._pruned_at,
            self._prune_deferred,
            self._ids_trimmed,
            self._newest_saved,
            self._unsaved,
            self._split,
        ) = before

    def _stored(self, stored: list[SpooledEvent], *, indexed: bool) -> None:
        """Count a committed batch in memory."""
        if indexed:
            self._unindexed.clear()
            self._indexed_upto = self._last_seq + len(stored)
        else:
            for event in stored:
                self._unindexed[_event_key(event)] = event.seq
        self._last_seq += len(stored)
        zero = self._note_streams(stored, saved=indexed) if self._split and stored else stored
        if zero:
            best = max(zero, key=lambda e: e.id)
            if self._newest_id is None or best.id > self._newest_id:
                self._newest_id, self._newest_created = best.id, _created(best)
        self._held += len(stored)
        self._bytes += sum(len(e.payload) for e in stored) + ROW_OVERHEAD * len(stored)

    def _note_streams(self, stored: list[SpooledEvent], *, saved: bool) -> list[SpooledEvent]:
        """Move the newest of each stream >= 1 in a committed batch (``saved``: already in
        ``state`` by the same commit); returns the batch's events of stream 0."""
        for stream, best in _best_of_streams(stored).items():
            newest = self._newest_of.get(stream)
            if newest is None or best.id > newest[0]:
                self._newest_of[stream] = (best.id, best)
                if not saved:
                    self._unsaved.add(stream)
        return [e for e in stored if not e.stream]

    def _apply_prune(self, pruned: tuple[int, int, int]) -> None:
        upto, held, size = pruned
        if held:
            self._pruned_upto = upto
            self._held -= held
            self._bytes -= size

    def _seen(
        self, conn: sqlite3.Connection, ids: list[int], streams: list[int] | None = None
    ) -> set[int]:
        """Which of ``ids`` (keys; of the streams ``streams``, ``None``: all of stream 0) the
        spool holds or delivered recently."""
        # Ids only grow in practice: a batch entirely above every id ever stored cannot
        # repeat one, so the lookups are only needed for older ids (recovered gaps). Each
        # stream has its own ids, so its own newest: compared by key, as a stream's keys
        # grow with its ids.
        if streams is not None:
            older = self._older(ids, streams)
        else:
            newest = self._newest_id
            if newest is None and not self._last_seq:
                return set()
            older = ids if newest is None else [i for i in ids if i <= newest]
        seen = {i for i in older if i in self._unindexed}
        older = [i for i in older if i not in seen]
        for start in range(0, len(older), _IN_CHUNK):
            some_ids = older[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(some_ids))
            seen.update(
                row[0]
                for row in conn.execute(f"SELECT id FROM ids WHERE id IN ({marks})", some_ids)
            )
        return seen

    def _older(self, keys: list[int], streams: list[int]) -> list[int]:
        """The keys not above their stream's newest (or of a stream whose newest is
        unknown while the spool is not new): those that may repeat a stored event."""
        bounds: dict[int, int | None] = {}
        older = []
        for key, stream in zip(keys, streams, strict=True):
            if stream in bounds:
                bound = bounds[stream]
            else:
                newest = self._newest_id if not stream else self._newest_of.get(stream, (None,))[0]
                bound = bounds[stream] = None if newest is None else _key(stream, newest)
            if bound is None:
                if self._last_seq:
                    older.append(key)
            elif key <= bound:
                older.append(key)
        return older

    def _insert(
        self, conn: sqlite3.Connection, events: Sequence[_Event], streams: list[int] | None
    ) -> list[SpooledEvent]:
        if streams is None:
            keys = [e[0] for e in events]
        else:
            keys = [_key(stream, e[0]) for e, stream in zip(events, streams, strict=True)]
        seen = self._seen(conn, keys, streams)
        stored: list[SpooledEvent] = []
        stored_keys: list[int] = []
        seq = self._last_seq
        for i, event in enumerate(events):
            key = keys[i]
            if key in seen:
                continue
            seen.add(key)
            seq += 1
            stored_keys.append(key)
            if streams is None or not streams[i]:
                stored.append(SpooledEvent(seq, event[0], event[1], event[2]))
            else:
                stored.append(SpooledEvent(seq, event[0], event[1], event[2], streams[i]))
        if not stored:
            return stored
        if streams is not None and not self._split:
            # Keys are split from now on (restored if this transaction fails).
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('streams', 1) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            )
            self._split = True
        # One row for the whole commit, and nothing else touched: a small commit writes a
        # single page to the log.
        first, last = stored[0].seq, stored[-1].seq
        size = sum(len(e.payload) for e in stored) + ROW_OVERHEAD * len(stored)
        ids = _pack("q", stored_keys)
        times = _pack("d", [e.received_at for e in stored])
        lengths = _pack("I", [len(e.payload) for e in stored])
        codec, payloads = _compress(b"".join(e.payload for e in stored))
        # The newest of stream 0 (that of other streams is in ``state`` and, until the
        # next index write, read back from the ids at open).
        zero = stored if streams is None else [e for e in stored if not e.stream]
        best = max(zero, key=lambda e: e.id) if zero else None
        conn.execute(
            "INSERT INTO segments(first_seq, last_seq, size, newest_id, newest_created, crc, "
            "ids_crc, codec, ids, times, lengths, payloads) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                first,
                last,
                size,
                None if best is None else best.id,
                None if best is None else _created(best),
                _checksum(first, last, size, ids, times, lengths, payloads),
                zlib.crc32(ids),
                codec,
                ids,
                times,
                lengths,
                payloads,
            ),
        )
        return stored

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

    def _maintain(
        self, conn: sqlite3.Connection, stored: list[SpooledEvent], force: bool = False
    ) -> tuple[int, int, int] | None:
        """Prune when due; then (or when many wait) write the waiting ids to ``ids`` and the
        counters to ``meta`` and ``state``. ``None`` when nothing was written."""
        upto = self._prune_due(force)
        if upto is None and len(self._unindexed) + len(stored) < _INDEX_AFTER:
            return None
        pairs = [v for item in self._unindexed.items() for v in item]
        pairs.extend(v for e in stored for v in (_event_key(e), e.seq))
        step = 2 * _IDS_PER_INSERT
        for k in range(0, len(pairs), step):
            chunk = pairs[k : k + step]
            conn.execute(_ids_sql(len(chunk) // 2), chunk)
        last_seq = self._last_seq + len(stored)
        conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("last_seq", last_seq), ("indexed_upto", last_seq)],
        )
        self._save_newest(conn, stored)
        pruned = self._delete_confirmed(conn, upto) if upto is not None else None
        return pruned or (self._pruned_upto, 0, 0)

    def _save_newest(self, conn: sqlite3.Connection, stored: list[SpooledEvent]) -> None:
        # The newest id outlives its segment: saved in ``state`` before segments are deleted.
        if self._split:
            self._save_newest_of(conn, stored)
            stored = [e for e in stored if not e.stream]
        newest, created = self._newest_id, self._newest_created
        if stored:
            best = max(stored, key=lambda e: e.id)
            if newest is None or best.id > newest:
                newest, created = best.id, _created(best)
        if newest is None or newest == self._newest_saved:
            return
        rows = [(LAST_EVENT_ID, str(newest))]
        if created is not None:
            rows.append((LAST_EVENT_CREATED, created))
        conn.executemany(
            "INSERT INTO state(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rows,
        )
        self._newest_saved = newest  # restored with the rest if the transaction fails

    def _save_newest_of(self, conn: sqlite3.Connection, stored: list[SpooledEvent]) -> None:
        """:meth:`_save_newest` for the streams >= 1 whose newest moved since last saved."""
        best = _best_of_streams(stored)
        rows = []
        for stream in sorted(self._unsaved | best.keys()):
            known = self._newest_of.get(stream)
            event = best.get(stream)
            created: str | SpooledEvent | None
            if event is not None and (known is None or event.id > known[0]):
                newest, created = event.id, _created(event)
            elif known is not None:
                newest, created = known[0], known[1]
                if isinstance(created, SpooledEvent):
                    created = _created(created)
                    self._newest_of[stream] = (newest, created)  # the same newest, decoded
            else:
                continue
            rows.append((f"{LAST_EVENT_ID}.{stream}", str(newest)))
            if created is not None:
                rows.append((f"{LAST_EVENT_CREATED}.{stream}", created))
        if rows:
            conn.executemany(
                "INSERT INTO state(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                rows,
            )
        self._unsaved = set()  # a new set: the old one is restored if the transaction fails

    def _prune_due(self, force: bool) -> int | None:
        """The seq up to which rows can be deleted now, or ``None`` (not due, or nothing)."""
        if not self._cursors:
            return None
        upto = min(self._cursors.values())
        if upto <= self._prune_checked:
            self._prune_deferred = False
            return None
        now = time.monotonic()
        # Deleting in larger ranges costs fewer page writes per row; a full spool prunes at
        # once.
        if (
            upto - self._prune_checked < self.prune_rows
            and now - self._pruned_at < self.prune_interval
            and not (self.full or force or self._low_space)
        ):
            self._prune_deferred = True
            return None
        self._prune_deferred = False
        self._pruned_at = now
        self._prune_checked = upto
        return upto

    def _delete_confirmed(self, conn: sqlite3.Connection, upto: int) -> tuple[int, int, int] | None:
        """Delete the segments every sink confirmed; returns (pruned_upto, events, size)."""
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
                with transaction(conn):
                    for name in removed:
                        conn.execute("DELETE FROM cursors WHERE sink = ?", (name,))
                    for name in wanted:
                        if name not in self._cursors:
                            conn.execute(
                                "INSERT INTO cursors(sink, seq, updated_at) VALUES (?, ?, ?)",
                                (name, start, now),
                            )
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot register sinks", exc) from exc
            self._cursors = {name: self._cursors.get(name, start) for name in wanted}
        for name, backlog in removed.items():
            if backlog:
                log.warning(
                    "sink %s is no longer configured: its cursor is removed with %s it "
                    "had not confirmed",
                    name,
                    plural(backlog, "event"),
                )
        if removed:
            # Rows held only for the removed sinks can go now.
            with self._wlock:
                self._prune_now()
        return removed

    def _prune_now(self) -> None:
        conn = self._writer()
        before = self._volatile()
        try:
            with transaction(conn):
                pruned = self._maintain(conn, [], force=True)
        except sqlite3.Error as exc:
            self._restore(before)
            raise self._write_failed(conn, "prune failed", exc) from exc
        if pruned is not None:
            self._stored([], indexed=True)
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
        """Up to ``limit`` stored events with ``seq > after``, in order.

        A stored batch whose checksum fails is not returned: it is moved aside (see
        :meth:`damaged`), logged as an error naming its seq range and ids, and the events
        after it are returned as usual.
        """
        with self._rlock:
            try:
                out, damaged = self._read_segments(self._reader(), after, limit)
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        if damaged:
            self._set_aside(damaged)
        return out[:limit]

    _ROW = "first_seq, last_seq, size, crc, ids_crc, ids, times, lengths, payloads, codec"

    def _read_segments(
        self, conn: sqlite3.Connection, after: int, limit: int
    ) -> tuple[list[SpooledEvent], list[DamagedBatch]]:
        row = conn.execute(
            "SELECT first_seq FROM segments WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
            (after + 1,),
        ).fetchone()
        begin = row[0] if row is not None else after + 1
        try:
            # One pass over whole rows; a row SQLite itself cannot read (a broken overflow
            # chain) fails the pass, and the second one fetches row by row to find it.
            rows = conn.execute(
                f"SELECT {self._ROW} FROM segments WHERE first_seq >= ? ORDER BY first_seq",
                (begin,),
            )
            return self._collect(conn, after, limit, ((r[0], r) for r in rows))
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise
        keys = conn.execute(
            "SELECT first_seq FROM segments WHERE first_seq >= ? ORDER BY first_seq", (begin,)
        ).fetchall()
        return self._collect(conn, after, limit, ((k[0], None) for k in keys))

    def _collect(
        self,
        conn: sqlite3.Connection,
        after: int,
        limit: int,
        rows: Iterator[tuple[int, Sequence[Any] | None]],
    ) -> tuple[list[SpooledEvent], list[DamagedBatch]]:
        out: list[SpooledEvent] = []
        damaged: list[DamagedBatch] = []
        for first_seq, row in rows:
            if len(out) >= limit:
                break
            if first_seq in self._skip:
                continue
            events, bad = self._segment(conn, first_seq, row)
            if bad is not None:
                damaged.append(bad)
                continue
            if events and events[0].seq <= after:
                events = events[after + 1 - events[0].seq :]
            out.extend(events)
        return out, damaged

    def _segment(
        self, conn: sqlite3.Connection, first_seq: int, row: Sequence[Any] | None = None
    ) -> tuple[list[SpooledEvent], DamagedBatch | None]:
        """One segment's events, verified; or the reason it cannot be delivered."""
        if row is None:
            try:
                row = conn.execute(
                    f"SELECT {self._ROW} FROM segments WHERE first_seq = ?", (first_seq,)
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, I/O: not the row's fault
                return [], self._damaged(conn, first_seq, None, f"SQLite cannot read it ({exc})")
        if row is None:
            return [], None
        problem, payloads = _segment_payloads(row)
        if problem is not None:
            return [], self._damaged(conn, first_seq, row, problem)
        return _decode_segment(row[0], row[5], row[6], row[7], payloads, self._split), None

    def _damaged(
        self, conn: sqlite3.Connection, first_seq: int, row: Sequence[Any] | None, problem: str
    ) -> DamagedBatch:
        # Its range ends before the next segment, whatever its own (maybe damaged) last_seq.
        nxt = conn.execute(
            "SELECT min(first_seq) FROM segments WHERE first_seq > ?", (first_seq,)
        ).fetchone()[0]
        last = self._last_seq if nxt is None else nxt - 1
        ids: tuple[int, ...] | None = None
        streams: tuple[int, ...] | None = None
        if row is not None:
            if isinstance(row[1], int) and row[1] >= first_seq:
                last = min(last, row[1])
            raw = row[5]
            if isinstance(raw, bytes) and len(raw) % 8 == 0 and zlib.crc32(raw) == row[4]:
                ids, streams = _split_ids(_unpack("q", raw), self._split)
        return DamagedBatch(first_seq, last, ids, problem, time.time(), streams)

    def _set_aside(self, damaged: list[DamagedBatch]) -> None:
        """Move damaged segments to the ``damaged`` table (or at least skip them)."""
        for batch in damaged:
            with self._rlock:  # readers test _skip under this lock
                if batch.first_seq in self._skip:
                    continue
                self._skip[batch.first_seq] = batch
            shown = "unreadable" if batch.ids is None else _id_range(batch.ids)
            if batch.streams and any(batch.streams):
                shown += f" of streams {_id_range(tuple(sorted(set(batch.streams))))}"
            log.error(
                "spool %s: the batch of seq %d-%d (ids %s) is damaged (%s): moved aside, not "
                "delivered; recover those events from the REST API",
                self.path,
                batch.first_seq,
                batch.last_seq,
                shown,
                batch.error,
            )
        with self._wlock:
            self._store_damaged()

    def _store_damaged(self) -> None:
        if not self._skip or self._wconn is None or self._closed:
            return
        conn = self._wconn
        batches = list(self._skip.values())
        try:
            with transaction(conn):
                held, size = self._remove_damaged(conn, batches)
        except sqlite3.Error as exc:
            # Still skipped in memory; stored at the next read.
            log.error("spool %s: cannot move damaged batches aside: %s", self.path, exc)
            return
        with self._rlock:
            for batch in batches:
                del self._skip[batch.first_seq]
            self._damaged_count += len(batches)
        # Their events are no longer held: the same ids, fetched again, must be stored.
        for batch in batches:
            for event_id, seq in list(self._unindexed.items()):
                if batch.first_seq <= seq <= batch.last_seq:
                    del self._unindexed[event_id]
        self._held = max(0, self._held - held)
        self._bytes = max(0, self._bytes - size)

    def _remove_damaged(
        self, conn: sqlite3.Connection, batches: list[DamagedBatch]
    ) -> tuple[int, int]:
        held = size = 0
        for batch in batches:
            conn.execute(
                "INSERT OR REPLACE INTO damaged(first_seq, last_seq, ids, error, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    batch.first_seq,
                    batch.last_seq,
                    None if batch.ids is None else _pack("q", _keys_of(batch)),
                    batch.error,
                    batch.at,
                ),
            )
            try:
                row = conn.execute(
                    "SELECT size FROM segments WHERE first_seq = ?", (batch.first_seq,)
                ).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is not None and isinstance(row[0], int):
                size += max(0, row[0])
            held += batch.last_seq - batch.first_seq + 1
            conn.execute("DELETE FROM segments WHERE first_seq = ?", (batch.first_seq,))
            conn.execute(
                "DELETE FROM ids WHERE seq BETWEEN ? AND ?", (batch.first_seq, batch.last_seq)
            )
        return held, size

    def damaged(self, limit: int = 1000) -> list[DamagedBatch]:
        """The damaged batches moved aside, oldest first: their seq ranges, and their ids
        when intact, so that the events can be recovered from the REST API."""
        with self._rlock:
            try:
                rows = (
                    self._reader()
                    .execute(
                        "SELECT first_seq, last_seq, ids, error, at FROM damaged "
                        "ORDER BY first_seq LIMIT ?",
                        (limit,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
            pending = list(self._skip.values())
        found = []
        for first, last, ids, error, at in rows:
            if ids is None:
                found.append(DamagedBatch(first, last, None, error, at))
            else:
                event_ids, streams = _split_ids(_unpack("q", ids), self._split)
                found.append(DamagedBatch(first, last, event_ids, error, at, streams))
        found.extend(pending)
        return sorted(found, key=lambda b: b.first_seq)[:limit]

    def forget_damaged(self, first_seqs: Iterable[int]) -> None:
        """Delete damaged batches from :meth:`damaged` (their events were recovered)."""
        keys = [(seq,) for seq in first_seqs]
        with self._wlock:
            conn = self._writer()
            try:
                with transaction(conn):
                    removed = 0
                    for key in keys:
                        removed += conn.execute(
                            "DELETE FROM damaged WHERE first_seq = ?", key
                        ).rowcount
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot forget damaged batches", exc) from exc
            self._damaged_count -= removed

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
        times = row[2]
        if not isinstance(times, bytes) or len(times) != 8 * (row[1] - row[0] + 1):
            return None  # damaged: read() moves it aside
        return float(_unpack("d", times)[seq - row[0]])

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, sink: str, event: SpooledEvent, error: str) -> None:
        """Keep an event that ``sink`` refused for good."""
        with self._wlock:
            conn = self._writer()
            trimmed = 0
            try:
                with transaction(conn):
                    conn.execute(
                        "INSERT INTO dead_letters(sink, seq, id, payload, received_at, error, at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            sink,
                            event.seq,
                            _event_key(event),
                            event.payload,
                            event.received_at,
                            error,
                            time.time(),
                        ),
                    )
                    if self._dead_letters + 1 > self.dead_letter_max:
                        cut = (self.dead_letter_max,)
                        conn.execute(
                            "DELETE FROM redrive WHERE dead_letter <= "
                            "(SELECT max(n) FROM dead_letters) - ?",
                            cut,
                        )
                        trimmed = conn.execute(
                            "DELETE FROM dead_letters WHERE n <= "
                            "(SELECT max(n) FROM dead_letters) - ?",
                            cut,
                        ).rowcount
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot store a dead letter", exc) from exc
            self._dead_letters += 1 - max(trimmed, 0)
            with self._dl_lock:
                self._dl_version += 1
                self._dl_counts[sink] = self._dl_counts.get(sink, 0) + 1
                if trimmed > 0:
                    self._dl_counted = -math.inf  # which sinks lost rows: counted again
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
            DeadLetter(
                name, _kept_event(seq, id_, bytes(payload), received, self._split), error, at
            )
            for name, seq, id_, payload, received, error, at in rows
        ]

    def dead_letter_counts(self, max_age: float = DEAD_LETTER_RECOUNT) -> dict[str, int]:
        """Dead letters kept per sink (sinks with none left out). Thread-safe.

        Kept in memory as this process changes them, and counted again from the file (an
        index scan) when the last count is older than ``max_age`` seconds, since the
        ``deadletters`` command deletes rows from another process.
        """
        with self._dl_lock:
            fresh = time.monotonic() - self._dl_counted < max_age
            if fresh:
                return {k: v for k, v in self._dl_counts.items() if v > 0}
            version = self._dl_version
        with self._rlock:
            try:
                rows = (
                    self._reader()
                    .execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink")
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        counts = {str(name): int(n) for name, n in rows}
        with self._dl_lock:
            # A change of this process since the read began: the memory is newer; the file
            # is read again at the next call.
            if version == self._dl_version:
                self._dl_counts = counts
                self._dl_counted = time.monotonic()
                self._dead_letters = sum(counts.values())
            return {k: v for k, v in self._dl_counts.items() if v > 0}

    def request_redrive(
        self, sink: str | None = None, event_id: int | None = None
    ) -> tuple[int, int]:
        """Ask, from the bridge's own process, for dead letters to be delivered again (what
        :meth:`DeadLetterStore.retry` does from another); ``(selected, newly requested)``."""
        with self._wlock:
            conn = self._writer()
            try:
                with transaction(conn):
                    return _request_redrive(conn, sink, event_id, self._split)
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot write the retry requests", exc) from exc

    def redrive_counts(self) -> dict[str, int]:
        """Per sink, the dead letters waiting to be delivered again (a short read)."""
        with self._rlock:
            try:
                rows = (
                    self._reader()
                    .execute(
                        # CROSS JOIN keeps redrive (usually empty) as the outer loop: the
                        # planner would otherwise walk every dead letter.
                        "SELECT d.sink, count(*) FROM redrive r "
                        "CROSS JOIN dead_letters d ON d.n = r.dead_letter GROUP BY d.sink"
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        return {str(name): int(n) for name, n in rows}

    def take_redrive(self, sink: str, limit: int = 1000) -> list[Redrive]:
        """The oldest dead letters of ``sink`` waiting to be delivered again (nothing is
        changed: :meth:`finish_redrive` does that once the sink answered)."""
        with self._rlock:
            try:
                rows = (
                    self._reader()
                    .execute(
                        "SELECT d.n, d.seq, d.id, d.payload, d.received_at FROM redrive r "
                        "CROSS JOIN dead_letters d ON d.n = r.dead_letter WHERE d.sink = ? "
                        "ORDER BY r.dead_letter LIMIT ?",
                        (sink, limit),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._fail("read failed", exc) from exc
        return [
            Redrive(n, _kept_event(seq, id_, bytes(payload), received, self._split))
            for n, seq, id_, payload, received in rows
        ]

    def finish_redrive(
        self, sink: str, delivered: Iterable[int], refused: Iterable[tuple[int, str]] = ()
    ) -> None:
        """Record the sink's answer to redriven dead letters, in one transaction: those it
        confirmed are deleted with their requests; those it refused again keep their dead
        letter, with the new reason, and lose their request (a later retry asks again).

        Until this commits, the requests stay: a bridge killed after the send delivers the
        events once more at its next start, never loses them.
        """
        done = [(n,) for n in delivered]
        again = [(reason, time.time(), n) for n, reason in refused]
        with self._wlock:
            conn = self._writer()
            try:
                with transaction(conn):
                    removed = 0
                    for key in done:
                        removed += conn.execute(
                            "DELETE FROM dead_letters WHERE n = ?", key
                        ).rowcount
                    conn.executemany("UPDATE dead_letters SET error = ?, at = ? WHERE n = ?", again)
                    conn.executemany(
                        "DELETE FROM redrive WHERE dead_letter = ?",
                        done + [(n,) for _, _, n in again],
                    )
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot record a redrive", exc) from exc
            self._dead_letters = max(0, self._dead_letters - removed)
            with self._dl_lock:
                self._dl_version += 1
                self._dl_counts[sink] = max(0, self._dl_counts.get(sink, 0) - removed)

    # -- state -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        if key == LAST_EVENT_ID:
            return None if self._newest_id is None else str(self._newest_id)
        if key == LAST_EVENT_CREATED:
            return self._newest_created
        name, dot, number = key.rpartition(".")
        if dot and name in (LAST_EVENT_ID, LAST_EVENT_CREATED) and number.isdigit():
            # A stream's newest, as for stream 0: the in-memory value, newer than the saved.
            newest, created = self.newest_of(int(number))
            if name == LAST_EVENT_CREATED:
                return created
            return None if newest is None else str(newest)
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
        """Store ``value`` under ``key`` durably; ``None`` deletes it.

        Works on a spool just created, before any event: a caller records where recovery
        must start before the first commit, and that survives a first commit that fails.

        Raises:
            SpoolFullError: the disk is full.
            SpoolError: SQLite failed otherwise.
        """
        with self._wlock:
            conn = self._writer()
            try:
                with transaction(conn):
                    if value is None:
                        conn.execute("DELETE FROM state WHERE key = ?", (key,))
                    else:
                        conn.execute(
                            "INSERT INTO state(key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (key, value),
                        )
            except sqlite3.Error as exc:
                raise self._write_failed(conn, "cannot store state", exc) from exc

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
            # Closed after SQLite's own descriptors: closing any descriptor of the file drops
            # the process's POSIX locks on it, which SQLite relies on.
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CreatedData(msgspec.Struct):
    created: Any = None


class _CreatedOf(msgspec.Struct):
    data: _CreatedData | None = None


# Decodes only what _created needs (the other fields are skipped, not built): a third of the
# time of decoding the whole event, and a spool of many streams reads one per stream.
_created_decoder = msgspec.json.Decoder(_CreatedOf)


def _created(event: SpooledEvent) -> str | None:
    """The ``created`` of a stored event's data, as the platform wrote it."""
    try:
        data = _created_decoder.decode(event.payload).data
    except msgspec.DecodeError:  # not JSON, or not an object whose data is an object
        return None
    created = None if data is None else data.created
    return created if isinstance(created, str) else None


def _kept_event(seq: int, key: int, payload: bytes, received: float, split: bool) -> SpooledEvent:
    """A dead letter's event, from the key it is stored under."""
    if split and key >= _ID_LIMIT:
        return SpooledEvent(seq, key & _ID_MASK, payload, received, key >> _STREAM_SHIFT)
    return SpooledEvent(seq, key, payload, received)


def _keys_of(batch: DamagedBatch) -> list[int]:
    """The stored keys of a damaged batch's ids."""
    assert batch.ids is not None
    streams = batch.streams or (0,) * len(batch.ids)
    return [_key(stream, event_id) for event_id, stream in zip(batch.ids, streams, strict=True)]


def _best_of_streams(events: Iterable[SpooledEvent]) -> dict[int, SpooledEvent]:
    """The event of the highest id of each stream >= 1 among ``events``."""
    best: dict[int, SpooledEvent] = {}
    for event in events:
        if event.stream:
            known = best.get(event.stream)
            if known is None or event.id > known.id:
                best[event.stream] = event
    return best


def _id_range(ids: tuple[int, ...]) -> str:
    if not ids:
        return "none"
    if len(ids) <= 5:
        return ", ".join(map(str, ids))
    return f"{min(ids)}..{max(ids)} ({len(ids)} ids)"
