"""``file:PATH``: events appended as JSON lines, synced to disk once per batch.

The path may be a template (:mod:`neuroio._routing.template`):
``file:/var/log/neuroio/{created:%Y-%m-%d}.jsonl`` writes each event to the file of its own
day, which makes a daily rotation; ``file:/var/log/neuroio/{source.id}.jsonl`` one file per
camera. A rendered value never holds ``/`` (it becomes ``_``) nor ``..``, so an event cannot
send its line outside the directories the template names; missing directories are created.
The sink keeps at most :data:`MAX_OPEN` files open and closes those not written for
:data:`IDLE_CLOSE` seconds. A path without placeholders is written without decoding events.

Query options (after a ``?``, which therefore cannot be part of the path): ``fsync``
(``true``/``false``, default true) and ``name``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import write_all
from .._routing.template import Template
from ..exceptions import ConfigurationError, SinkError
from ._render import Renderer
from ._uri import Bool, Text, parse_options
from .base import Sink, SpooledEvent

__all__ = ["IDLE_CLOSE", "MAX_OPEN", "FileSink", "clean_path_value"]

MAX_OPEN = 32
"""Files a templated sink keeps open at most (the least recently written is closed)."""
IDLE_CLOSE = 60.0
"""Seconds after which a templated sink closes a file it has not written (yesterday's)."""


def clean_path_value(value: str) -> str:
    """One rendered value as a safe part of a file name: no ``/`` (nor ``\\`` or NUL), no
    ``..``; each becomes ``_``."""
    for bad in ("/", "\\", "\0"):
        value = value.replace(bad, "_")
    while ".." in value:
        value = value.replace("..", "_")
    return value


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
        self.template = Template(self.path, what=f"sink {self.name}: path")
        """The path as a template (static when it has no placeholder)."""
        self._renderer = Renderer(self.template, clean_path_value)
        self._files: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._started = False
        # Held by the thread writing and by aclose(): a send abandoned by a forced stop
        # leaves its thread running, and its descriptors must not be closed under it.
        self._io = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> FileSink:
        """The sink ``file:PATH[?fsync=false&name=N]`` names (``file:///abs`` works too).

        ``options`` are constructor arguments; they take precedence over the URI's.

        Raises:
            ConfigurationError: no path, or an unknown option or a bad value in the query.
        """
        rest, _, query = uri[len("file:") :].partition("?")
        path = rest[2:] if rest.startswith("//") else rest  # file:///var/x is /var/x
        # A URI library may have percent-encoded a template's braces: they are the user's.
        path = path.replace("%7B", "{").replace("%7b", "{").replace("%7D", "}")
        path = path.replace("%7d", "}")
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
        if not self.template.is_static:
            # Files are opened as events name them; the directories that do not depend on
            # an event can be checked now.
            static_dir = Path(self.path.partition("{")[0]).parent
            try:
                await asyncio.to_thread(static_dir.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(f"{self.name}: cannot create {static_dir}: {exc}") from exc
            self._started = True
            return
        try:
            self._fd = await asyncio.to_thread(self._open, self.path)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open for appending: {exc}") from exc

    def _open(self, path: str) -> int:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._cut_torn_line(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _cut_torn_line(self, fd: int, path: str | None = None) -> None:
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
            "%s: removed an incomplete last line (%d bytes) of %s left by an interrupted "
            "write; its event is written again",
            self.name,
            size - keep,
            path or self.path,
        )

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Append the batch and sync it; :class:`SinkError` on any I/O error.

        With a templated path, each event goes to the file its fields name, in order within
        each file; a failure part-way leaves the files written before it complete, and the
        retry appends their events again (at least once).
        """
        if self._fd is None and not self._started:
            raise SinkError(f"{self.name}: not started")
        if self._fd is not None:
            data = b"\n".join(e.payload for e in events) + b"\n"
            try:
                await asyncio.to_thread(self._write_locked, self._fd, data)
            except OSError as exc:
                raise SinkError(f"{self.name}: write failed: {exc}") from exc
            return
        groups: dict[str, list[bytes]] = {}
        render = self._renderer.render
        for event in events:
            groups.setdefault(render(event.payload), []).append(event.payload)
        try:
            await asyncio.to_thread(self._write_groups, groups)
        except OSError as exc:
            raise SinkError(f"{self.name}: write failed: {exc}") from exc

    def _write_locked(self, fd: int, data: bytes) -> None:
        with self._io:
            self._write(fd, data)

    def _write_groups(self, groups: dict[str, list[bytes]]) -> None:
        with self._io:
            self._write_each(groups)

    def _write_each(self, groups: dict[str, list[bytes]]) -> None:
        now = time.monotonic()
        for path, payloads in groups.items():
            entry = self._files.pop(path, None)
            fd = entry[0] if entry is not None else self._open(path)
            self._files[path] = (fd, now)  # most recently written last
            self._write(fd, b"\n".join(payloads) + b"\n")
        self._close_idle(now)

    def _close_idle(self, now: float) -> None:
        while self._files:
            path, (fd, used) = next(iter(self._files.items()))
            if len(self._files) <= MAX_OPEN and now - used < IDLE_CLOSE:
                break
            del self._files[path]
            os.close(fd)

    @property
    def open_files(self) -> list[str]:
        """The paths a templated sink holds open, least recently written first."""
        return list(self._files)

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
        """Close the files (standard output stays open), once a write in flight ended."""
        self._started = False
        await asyncio.to_thread(self._close_all)

    def _close_all(self) -> None:
        with self._io:
            fd, self._fd = self._fd, None
            if fd is not None and self.path != "-":
                os.close(fd)
            files, self._files = self._files, OrderedDict()
            for fd, _ in files.values():
                os.close(fd)
