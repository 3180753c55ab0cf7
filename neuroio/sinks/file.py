"""``file:PATH``: events appended as JSON lines, synced to disk once per batch.

Files are private: a file the sink creates gets mode ``0600`` (``?mode=0640`` lets a group
read it), a directory it creates ``0700`` (``0750`` when the mode gives the group a bit),
whatever the umask; an existing file whose mode gives more than that loses the extra bits,
with a warning. Events describe people.

The path may be a template (:mod:`neuroio._routing.template`):
``file:/var/log/neuroio/{created:%Y-%m-%d}.jsonl`` writes each event to the file of its own
day, which makes a daily rotation; ``file:/var/log/neuroio/{source.id}.jsonl`` one file per
camera. A rendered value never holds ``/`` (it becomes ``_``) nor ``..``, so an event cannot
send its line outside the directories the template names; missing directories are created.
The sink keeps at most :data:`MAX_OPEN` files open and closes those not written for
:data:`IDLE_CLOSE` seconds. A path without placeholders is written without decoding events.

Rotation: :meth:`FileSink.reopen` (the bridge calls it on SIGHUP) closes the files and opens
them again at their paths, for logrotate. ``?rotate=daily`` (the first batch written after
local midnight starts a new file) or ``?rotate=100MiB`` (a batch that would take the file past
the size starts a new file) rotates a fixed path by itself, as logrotate numbers files:
``events.jsonl`` becomes ``events.jsonl.1``, ``.1`` becomes ``.2``..., and ``?keep=N``
(default :data:`DEFAULT_KEEP`) old files are kept, older ones deleted. A batch is never split
between two files. A templated path cannot rotate: its template names the files (a date in it
is a rotation).

Query options (after a ``?``, which therefore cannot be part of the path): ``fsync``
(``true``/``false``, default true), ``mode``, ``rotate``, ``keep`` and ``name``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import errno
import logging
import os
import re
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    append_whole,
    make_private,
    make_private_dirs,
    open_private,
    sync_directory,
    write_all,
)
from .._routing.template import Template
from ..exceptions import ConfigurationError, SinkError
from ._render import Renderer
from ._uri import Bool, Int, Option, Text, parse_options, redact_uri
from .base import ConsumerGoneError, Sink, SpooledEvent

__all__ = [
    "DEFAULT_KEEP",
    "IDLE_CLOSE",
    "MAX_OPEN",
    "FileSink",
    "Rotation",
    "check_mode",
    "clean_path_value",
    "parse_rotation",
]

MAX_OPEN = 32
"""Files a templated sink keeps open at most (the least recently written is closed)."""
IDLE_CLOSE = 60.0
"""Seconds after which a templated sink closes a file it has not written (yesterday's)."""
DEFAULT_KEEP = 7
"""Old files a rotating sink keeps (``events.jsonl.1`` to ``events.jsonl.7``)."""


def clean_path_value(value: str) -> str:
    """One rendered value as a safe part of a file name: no ``/`` (nor ``\\`` or NUL), no
    ``..``; each becomes ``_``."""
    for bad in ("/", "\\", "\0"):
        value = value.replace(bad, "_")
    while ".." in value:
        value = value.replace("..", "_")
    return value


def check_mode(mode: int) -> str | None:
    """What is wrong with ``mode`` as the mode of the sink's files (``None``: nothing).

    The owner must read and write (the sink reads the last line back to repair it); nobody
    may execute; others get nothing: the lines describe people, and a group is the way to
    give a reader access (``0640``).
    """
    if not 0 <= mode <= 0o777:
        return "be an octal mode from 0600 to 0660"
    if mode & 0o600 != 0o600:
        return "let the owner read and write (0600, 0640, 0660)"
    if mode & 0o111:
        return "have no execute bit (0600, 0640, 0660)"
    if mode & 0o007:
        return "give others nothing: the events describe people; use a group (0640)"
    return None


_SIZE = re.compile(r"\s*([0-9]+)\s*([a-z]*)\s*", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_SIZE_UNITS |= {"k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
_NUMBERED = re.compile(r"[0-9]+", re.ASCII)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """When a file sink starts a new file by itself.

    Attributes:
        daily: at the first batch written after local midnight.
        max_bytes: when a batch would take the file past this size.
    """

    daily: bool = False
    max_bytes: int | None = None

    def __str__(self) -> str:
        return "daily" if self.daily else f"{self.max_bytes} bytes"


def parse_rotation(value: str | int) -> Rotation:
    """``"daily"``, or a size: bytes (``1048576``) or with a unit (``100MiB``, ``10KiB``,
    ``1GiB``; ``MB``, ``GB`` are powers of 1000).

    Raises:
        ValueError: anything else; the message completes "rotate must ...".
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        text = str(value).strip()
        if text.lower() == "daily":
            return Rotation(daily=True)
        match = _SIZE.fullmatch(text)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ValueError("be daily or a size (e.g. 104857600, 100MiB, 512KiB, 1GiB)")
        size = int(match.group(1)) * unit
    if size <= 0:
        raise ValueError("be daily or a size of at least 1 byte")
    return Rotation(max_bytes=size)


class _Mode(Option[int]):
    """An octal file mode (``0640``, ``640``, ``0o640``) that :func:`check_mode` accepts."""

    def convert(self, raw: str) -> int:
        """The mode ``raw`` spells in octal."""
        text = raw.strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ValueError("be an octal mode such as 0600 or 0640")
        mode = int(text, 8)
        problem = check_mode(mode)
        if problem is not None:
            raise ValueError(problem)
        return mode


class _Rotate(Option["Rotation | None"]):  # noqa: UP037 - evaluated at run time
    """``daily`` or a size, see :func:`parse_rotation`."""

    def convert(self, raw: str) -> Rotation | None:
        """The rotation ``raw`` names."""
        return parse_rotation(raw)


log = logging.getLogger("neuroio.sinks")

_FSYNC = Bool("fsync", True)
_NAME = Text("name", "")
_MODE = _Mode("mode", PRIVATE_FILE_MODE)
_ROTATE = _Rotate("rotate", None)
_KEEP = Int("keep", DEFAULT_KEEP, minimum=1)
_OPTIONS = (_FSYNC, _NAME, _MODE, _ROTATE, _KEEP)


class FileSink(Sink):
    """Appends each event as one line of JSON to a file, or to standard output for ``-``.

    Every batch is written with one ``write`` and synced with ``fsync`` before it counts as
    delivered. A line left incomplete by a crash mid-write is cut off when the sink starts
    again (its event was not confirmed, so it is written again whole). A closed standard
    output (the reader of ``file:-`` exited) raises :class:`~neuroio.sinks.base.ConsumerGoneError`.

    Args:
        path: the file, created if missing (with its directories); ``"-"`` for stdout.
        fsync: sync to disk after each batch (default). Without it a power loss can lose
            lines the sink reported delivered.
        name: the sink's name (default ``file:PATH``).
        mode: the mode of the files it creates (default ``0600``; see :func:`check_mode`).
        rotate: ``"daily"``, a size (``"100MiB"``, or bytes), or a :class:`Rotation`; ``None``
            (default): only :meth:`reopen` starts a new file.
        keep: old files kept by ``rotate`` (at least 1).
        clock: the time (``time.time()``) that decides a daily rotation.

    Raises:
        ConfigurationError: a bad template, mode, rotation or keep, or a rotation of a
            templated path.
    """

    max_batch = 5000

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        name: str | None = None,
        mode: int = PRIVATE_FILE_MODE,
        rotate: str | int | Rotation | None = None,
        keep: int = DEFAULT_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.name = name or f"file:{self.path}"
        self.fsync = fsync
        self.template = Template(self.path, what=f"sink {self.name}: path")
        """The path as a template (static when it has no placeholder)."""
        problem = check_mode(mode)
        if problem is not None:
            raise ConfigurationError(f"sink {self.name}: mode must {problem}, got {mode:#o}")
        self.mode = mode
        # A group reader of the files must be able to reach them through the directories.
        self._dir_mode = PRIVATE_DIR_MODE | (0o050 if mode & 0o070 else 0)
        try:
            rotation = rotate if not isinstance(rotate, (str, int)) else parse_rotation(rotate)
        except ValueError as exc:
            raise ConfigurationError(f"sink {self.name}: rotate must {exc}") from None
        if rotation is not None and (self.path == "-" or not self.template.is_static):
            raise ConfigurationError(
                f"sink {self.name}: rotate needs a fixed file path: standard output cannot "
                "rotate, and a path with {placeholders} names its files itself (a date in "
                "it, e.g. {created:%Y-%m-%d}, is a daily rotation)"
            )
        if keep < 1:
            raise ConfigurationError(f"sink {self.name}: keep must be >= 1, got {keep}")
        self.rotation: Rotation | None = rotation
        """When the sink starts a new file by itself (``None``: only on :meth:`reopen`)."""
        self.keep = keep
        self._clock = clock
        self._fd: int | None = None
        self._day: datetime.date | None = None  # local day the current file was started
        self._renderer = Renderer(self.template, clean_path_value)
        self._files: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._started = False
        # Held by the thread writing and by reopen() and aclose(): a send abandoned by a
        # forced stop leaves its thread running, and its descriptors must not be closed or
        # swapped under it.
        self._io = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> FileSink:
        """The sink ``file:PATH[?fsync=false&mode=0640&rotate=daily&keep=7&name=N]`` names
        (``file:///abs`` works too).

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
        if _KEEP.name in parsed.given and parsed[_ROTATE] is None:
            raise ConfigurationError(
                f"sink {redact_uri(uri)}: keep needs rotate (daily or a size); with "
                "logrotate, its own rotate setting keeps the old files"
            )
        chosen: dict[str, Any] = {
            "fsync": parsed[_FSYNC],
            "name": parsed[_NAME] or None,
            "mode": parsed[_MODE],
            "rotate": parsed[_ROTATE],
            "keep": parsed[_KEEP],
        }
        return cls(path, **{**chosen, **options})

    # -- opening ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file for appending (repairing a torn last line)."""
        if self.path == "-":
            self._started = True
            return
        if not self.template.is_static:
            # Files are opened as events name them; the directories that do not depend on
            # an event can be checked now.
            static_dir = Path(self.path.partition("{")[0]).parent
            try:
                await asyncio.to_thread(make_private_dirs, static_dir, self._dir_mode)
            except OSError as exc:
                raise SinkError(f"{self.name}: cannot create {static_dir}: {exc}") from exc
            self._started = True
            return
        try:
            await asyncio.to_thread(self._open_fixed)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open for appending: {exc}") from exc
        self._started = True

    def _open_fixed(self) -> int:
        """Open the fixed path as the current file (call it holding ``_io``, or before any
        send)."""
        fd = self._open(self.path)
        self._fd = fd
        if self.rotation is not None and self.rotation.daily:
            st = os.fstat(fd)
            # A file written yesterday (the bridge restarted after midnight) is yesterday's.
            started = st.st_mtime if st.st_size else self._clock()
            self._day = self._local_day(started)
        return fd

    def _open(self, path: str) -> int:
        directory = os.path.dirname(path)
        if directory:
            make_private_dirs(directory, self._dir_mode)
        created = self.fsync and not os.path.lexists(path)
        fd = open_private(path, os.O_RDWR | os.O_APPEND, mode=self.mode)
        try:
            if created:
                sync_directory(directory)  # the new name survives a power loss too
            self._restrict(fd, path)
            self._cut_torn_line(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _restrict(self, fd: int, path: str) -> None:
        """Take from an existing file the permissions beyond :attr:`mode` (a file of an older
        release, or created by logrotate's ``create``)."""
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return  # /dev/null, a named pipe: not ours to change
        try:
            former = make_private(path, self.mode)
        except OSError as exc:
            log.warning(
                "%s: cannot restrict the mode of %s (%s); other users may read the events",
                self.name,
                path,
                exc.strerror or exc,
            )
            return
        if former is not None:
            log.warning(
                "%s: %s could be read by others (mode %03o); restricted to mode %03o",
                self.name,
                path,
                former,
                former & self.mode,
            )

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

    # -- sending ---------------------------------------------------------------------------

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Append the batch and sync it; :class:`SinkError` on any I/O error.

        With a templated path, each event goes to the file its fields name, in order within
        each file; a failure part-way leaves the files written before it complete, and the
        retry appends their events again (at least once).

        Raises:
            ConsumerGoneError: ``file:-`` and standard output was closed by its reader.
            SinkError: the write or the sync failed (nothing of the batch is left in the
                file it failed on), or the sink is not started.
        """
        if not self._started:
            raise SinkError(f"{self.name}: not started")
        if self.path == "-":
            data = b"\n".join(e.payload for e in events) + b"\n"
            try:
                await asyncio.to_thread(self._write_stdout, data)
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise ConsumerGoneError(
                        f"{self.name}: standard output was closed by its reader"
                    ) from None
                raise SinkError(f"{self.name}: write failed: {exc}") from exc
            return
        if self.template.is_static:
            data = b"\n".join(e.payload for e in events) + b"\n"
            try:
                await asyncio.to_thread(self._write_fixed, data)
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

    def _write_stdout(self, data: bytes) -> None:
        with self._io:
            write_all(sys.stdout.fileno(), data)

    def _write_fixed(self, data: bytes) -> None:
        # The descriptor is read under the lock: reopen() may have replaced it since the
        # send was scheduled.
        with self._io:
            fd = self._fd if self._fd is not None else self._open_fixed()
            if self.rotation is not None and self._rotation_due(fd, len(data)):
                fd = self._rotate(fd)
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
        append_whole(fd, data, fsync=self.fsync)

    # -- rotation --------------------------------------------------------------------------

    def _local_day(self, timestamp: float) -> datetime.date:
        return datetime.datetime.fromtimestamp(timestamp).date()

    def _rotation_due(self, fd: int, incoming: int) -> bool:
        """Whether ``incoming`` bytes must start a new file (an empty file never rotates)."""
        assert self.rotation is not None
        size = os.fstat(fd).st_size
        if self.rotation.daily:
            today = self._local_day(self._clock())
            if size == 0:
                self._day = today
                return False
            return self._day != today
        assert self.rotation.max_bytes is not None
        return size > 0 and size + incoming > self.rotation.max_bytes

    def _rotate(self, fd: int) -> int:
        """Rename the current file to ``PATH.1`` (shifting the older ones, deleting those
        beyond :attr:`keep`) and open a new one; call it holding ``_io``."""
        self._fd = None  # on a failure part-way, the next send opens PATH again
        os.close(fd)
        shift_numbered(self.path, self.keep)
        fd = self._open_fixed()
        if self.fsync:
            sync_directory(os.path.dirname(self.path))  # the renames are durable too
        log.info("%s: rotated (%s); the previous file is %s.1", self.name, self.rotation, self.path)
        return fd

    async def reopen(self) -> None:
        """Close the files and open them again at their paths (after logrotate renamed
        them), once a write in progress ended: its lines complete in the renamed file, the
        next batch goes to the new one.

        Raises:
            SinkError: the path cannot be opened now; the next send tries again.
        """
        if self.path == "-" or not self._started:
            return
        try:
            await asyncio.to_thread(self._reopen)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot reopen: {exc}") from exc
        log.info("%s: reopened", self.name)

    def _reopen(self) -> None:
        with self._io:
            self._close_files()
            if self.template.is_static and self._started:
                self._open_fixed()  # templated files are opened by the next write to each

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the files (standard output stays open), once a write in flight ended."""
        self._started = False
        await asyncio.to_thread(self._close_all)

    def _close_all(self) -> None:
        with self._io:
            self._close_files()

    def _close_files(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        files, self._files = self._files, OrderedDict()
        for fd, _ in files.values():
            os.close(fd)


def shift_numbered(path: str, keep: int) -> None:
    """Rotate ``path`` as logrotate numbers files: ``PATH.N`` becomes ``PATH.N+1`` (from the
    oldest), ``PATH`` becomes ``PATH.1``; files numbered ``keep`` or more are deleted first,
    so at most ``keep`` old files remain.

    Raises:
        OSError: a rename or a deletion failed (what was done stays done: no file is lost).
    """
    directory, base = os.path.split(path)
    numbers = []
    for name in os.listdir(directory or "."):
        suffix = name[len(base) + 1 :]
        if name.startswith(base + ".") and _NUMBERED.fullmatch(suffix):
            numbers.append(int(suffix))
    for number in sorted(numbers, reverse=True):
        old = f"{path}.{number}"
        if number >= keep:
            os.unlink(old)
        else:
            os.rename(old, f"{path}.{number + 1}")
    os.rename(path, f"{path}.1")
