"""``file:PATH``: events appended as JSON lines, synced to disk once per batch.

Query options (after a ``?``, which therefore cannot be part of the path): ``fsync``
(``true``/``false``, default true) and ``name``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import write_all
from ..exceptions import ConfigurationError, SinkError
from ._uri import Bool, Text, parse_options
from .base import Sink, SpooledEvent

__all__ = ["FileSink"]

log = logging.getLogger("neuroio.sinks")

_FSYNC = Bool("fsync", True)
_NAME = Text("name", "")
_OPTIONS = (_FSYNC, _NAME)


class FileSink(Sink):
    """Appends each event as one line of JSON to a file, or to standard output for ``-``.

    Every batch is written with one ``write`` and synced with ``fsync`` before it counts as
    delivered. A line left incomplete by a crash mid-write is cut off when the sink starts
    again (its event was not confirmed, so it is written again whole).

    Args:
        path: the file, created if missing (with its directories); ``"-"`` for stdout.
        fsync: sync to disk after each batch (default). Without it a power loss can lose
            lines the sink reported delivered.
        name: the sink's name (default ``file:PATH``).
    """

    max_batch = 5000

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = True, name: str | None = None
    ) -> None:
        self.path = str(path)
        self.name = name or f"file:{self.path}"
        self.fsync = fsync
        self._fd: int | None = None

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> FileSink:
        """The sink ``file:PATH[?fsync=false&name=N]`` names (``file:///abs`` works too).

        ``options`` are constructor arguments; they take precedence over the URI's.

        Raises:
            ConfigurationError: no path, or an unknown option or a bad value in the query.
        """
        rest, _, query = uri[len("file:") :].partition("?")
        path = rest[2:] if rest.startswith("//") else rest  # file:///var/x is /var/x
        if not path:
            raise ConfigurationError(f"sink {uri!r}: expected file:PATH or file:-")
        parsed = parse_options(query, _OPTIONS, uri=uri, sink="file")
        chosen = {"fsync": parsed[_FSYNC], "name": parsed[_NAME] or None}
        return cls(path, **{**chosen, **options})

    async def start(self) -> None:
        """Open the file for appending (repairing a torn last line)."""
        if self.path == "-":
            self._fd = sys.stdout.fileno()
            return
        try:
            self._fd = await asyncio.to_thread(self._open)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open for appending: {exc}") from exc

    def _open(self) -> int:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._cut_torn_line(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _cut_torn_line(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # Search backwards for the last complete line.
        end = size
        block = 65536
        while end > 0:
            start = max(0, end - block)
            chunk = os.pread(fd, end - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        os.ftruncate(fd, keep)
        os.fsync(fd)
        log.warning(
            "%s: removed an incomplete last line (%d bytes) left by an interrupted write; "
            "its event is written again",
            self.name,
            size - keep,
        )

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Append the batch and sync it; :class:`SinkError` on any I/O error."""
        if self._fd is None:
            raise SinkError(f"{self.name}: not started")
        data = b"\n".join(e.payload for e in events) + b"\n"
        try:
            await asyncio.to_thread(self._write, self._fd, data)
        except OSError as exc:
            raise SinkError(f"{self.name}: write failed: {exc}") from exc

    def _write(self, fd: int, data: bytes) -> None:
        if self.path == "-":
            write_all(fd, data)
            return
        before = os.fstat(fd).st_size
        try:
            write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Never leave half a batch behind: the retry appends it whole.
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise

    async def aclose(self) -> None:
        """Close the file (standard output stays open)."""
        fd, self._fd = self._fd, None
        if fd is not None and self.path != "-":
            os.close(fd)
