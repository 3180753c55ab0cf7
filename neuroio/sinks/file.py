"""``file:PATH``: events appended as JSON lines, synced to disk once per batch."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..exceptions import SinkError
from .base import Sink, SpooledEvent

__all__ = ["FileSink"]

log = logging.getLogger("neuroio.sinks")


class FileSink(Sink):
    """Appends each event as one line of JSON to a file, or to standard output for ``-``.

    Every batch is written with one ``write`` and synced with ``fsync`` before it counts as
    delivered. A line left incomplete by a crash mid-write is cut off when the sink starts
    again (its event was not confirmed, so it is written again whole).

    Args:
        path: the file, created if missing (with its directories); ``"-"`` for stdout.
        fsync: sync to disk after each batch (default). Without it a power loss can lose
            lines the sink reported delivered.
    """

    max_batch = 5000

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = str(path)
        self.name = f"file:{self.path}"
        self.fsync = fsync
        self._fd: int | None = None

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
            self._write_all(fd, data)
            return
        before = os.fstat(fd).st_size
        try:
            self._write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Never leave half a batch behind: the retry appends it whole.
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    async def aclose(self) -> None:
        """Close the file (standard output stays open)."""
        fd, self._fd = self._fd, None
        if fd is not None and self.path != "-":
            os.close(fd)
