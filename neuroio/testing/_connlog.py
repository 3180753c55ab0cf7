"""The emulator's connection log, and two checks read from it.

``Emulator(connection_log=path)`` (``emulate --connection-log FILE``) appends one JSON line
per connection event, never a token::

    {"conn":7,"space":null,"event":"open","t":1764600000.12,"by":null,"peer":"127.0.0.1:50412"}
    {"conn":7,"space":3,"event":"auth","t":1764600000.13,"by":null}
    {"conn":7,"space":3,"event":"close","t":1764600042.5,"by":"client"}

``open`` is the WebSocket handshake (with the client's address, so a harness can tell which
process held a connection), ``auth`` an accepted AUTH, ``close`` the end of the connection
(``by`` is :attr:`ClientRecord.closed_by`); ``t`` is the wall clock (``time.time()``).
``space`` is the 1-based space of the token in an emulator serving several, else ``null``.

The checks are pure functions of either that log (:func:`read_connection_log`) or the
emulator's own :class:`ClientRecord` list: :func:`overlaps` (how long two connections of one
space were authenticated at once: a stream held twice) and :func:`connect_rate` (the most
handshakes in any window: a connect-rate limit kept or not).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._server import ClientRecord

__all__ = ["ConnectionLog", "connect_rate", "overlaps", "read_connection_log"]

Records = Iterable[ClientRecord | Mapping[str, Any]]


class ConnectionLog:
    """Appends the lines of ``path``; one ``write`` (and so one ``os.write``) per line, so
    a reader never sees half a line of a live emulator, and a killed one loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def open(self) -> None:
        """Open the file for appending (created ``0o644`` if missing).

        Raises:
            OSError: it cannot be opened.
        """
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        """Close the file; later events are not written."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def write(self, record: ClientRecord, event: str) -> None:
        """Append the line of ``event`` (``"open"``, ``"auth"`` or ``"close"``) of ``record``."""
        fd = self._fd
        if fd is None:
            return
        line: dict[str, Any] = {
            "conn": record.id,
            "space": record.space,
            "event": event,
            "t": time.time(),
            "by": record.closed_by if event == "close" else None,
        }
        if event == "open":
            line["peer"] = record.peer
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())


def read_connection_log(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a connection log, parsed, in file order.

    A last line cut short (the emulator killed mid-write) is skipped.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line other than the last is not JSON.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out: list[dict[str, Any]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON") from None
    return out


def _intervals(
    records: Records, now: float | None
) -> tuple[list[tuple[int | None, float, float | None]], float]:
    """``(space, authenticated from, until or None while open)`` of every authentication,
    and the latest time seen (where open ones end unless ``now`` is given)."""
    spans: list[tuple[int | None, float, float | None]] = []
    latest = float("-inf")
    current: dict[Any, tuple[int | None, float]] = {}
    for item in records:
        if isinstance(item, ClientRecord):
            for t in (item.connected_at, item.authenticated_at, item.closed_at):
                if t is not None:
                    latest = max(latest, t)
            if item.authenticated_at is not None:
                spans.append((item.space, item.authenticated_at, item.closed_at))
            continue
        t = float(item["t"])
        latest = max(latest, t)
        conn, event = item["conn"], item["event"]
        if event == "auth" or event == "close":
            begun = current.pop(conn, None)
            if begun is not None:  # a new AUTH on a live connection ends the previous one
                spans.append((begun[0], begun[1], t))
        if event == "auth":
            current[conn] = (item.get("space"), t)
    spans.extend((space, t, None) for space, t in current.values())
    return spans, latest if now is None else now


def overlaps(records: Records, *, now: float | None = None) -> dict[int | None, float]:
    """Per space, the longest time two authenticated connections of it were open at once.

    Args:
        records: :class:`ClientRecord`\\ s (times from ``time.monotonic()``) or the lines of
            a connection log (wall-clock times), not both.
        now: where connections still open end; ``None``: at the latest time in ``records``
            (pass ``time.monotonic()`` for the records of a running emulator).

    Returns:
        ``{space: seconds}`` for every space with an authenticated connection (``0.0`` if
        never two at once); the key is ``None`` for an emulator serving one space.
    """
    spans, end = _intervals(records, now)
    by_space: dict[int | None, list[tuple[float, float]]] = {}
    for space, start, until in spans:
        by_space.setdefault(space, []).append((start, end if until is None else until))
    result: dict[int | None, float] = {}
    for space, intervals in by_space.items():
        intervals.sort()
        longest = 0.0
        reach = float("-inf")  # the latest end among the connections authenticated earlier
        for start, until in intervals:
            # Of all earlier connections, the one ending last shares the most with this one.
            longest = max(longest, min(reach, until) - start)
            reach = max(reach, until)
        result[space] = longest
    return result


def connect_rate(records: Records, window: float = 1.0) -> float:
    """The most connection attempts (WebSocket handshakes) in any ``window`` seconds, per
    second: the count in the busiest half-open window ``[t, t + window)``, over ``window``.

    Args:
        records: :class:`ClientRecord`\\ s (their ``connected_at``) or the lines of a
            connection log (its ``open`` lines).
        window: the window's length in seconds.

    Raises:
        ValueError: ``window`` is not positive.
    """
    if not window > 0:
        raise ValueError("window must be positive")
    times = sorted(
        item.connected_at if isinstance(item, ClientRecord) else float(item["t"])
        for item in records
        if isinstance(item, ClientRecord) or item["event"] == "open"
    )
    most = 0
    first = 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most / window
