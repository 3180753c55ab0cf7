"""What the spool and the SQLite sink share about SQLite: one write transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

__all__ = ["transaction"]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error, so no failed call leaves
    a transaction open behind it (a failed ``COMMIT`` on a full disk stays open otherwise).

    ``IMMEDIATE`` takes the write lock at the start, so another writer (a second bridge, the
    ``deadletters`` command) waits for it under ``busy_timeout`` instead of failing half-way.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
