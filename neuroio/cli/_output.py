"""What ``listen`` and ``demo`` write: JSON lines, pretty lines, recordings, the status line,
the summary at exit.

All writes go through one :class:`OutputWorker` thread. A reader that stops reading (a paused
terminal, a slow pipe) then blocks that thread only: the event loop keeps answering the
server, and the listener's bounded queue pushes back on the socket instead of the PING
timer declaring the connection dead. Writes use ``os.write`` on file descriptors, so a write
stuck at exit holds no Python-level lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeGuard

import msgspec
from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.text import Text

from .. import _redact
from .._io import open_private, write_all
from .._protocol.frames import Kind
from .._times import parse_time
from .._words import plural
from ..stats import ListenerStats, State

__all__ = [
    "RESULT_CODES",
    "RESULT_LEGEND",
    "FrameFormatter",
    "OutputWorker",
    "StatusLine",
    "connections_lost",
    "decode_frame",
    "encode_compact",
    "failed_attempts",
    "format_rtt",
    "open_append",
    "render",
    "run_status",
    "summary_line",
]

# Numbers are decoded as Decimal and written back as numbers, so every value the server sent
# is written exactly as it was (87.30 stays 87.30, 1e400 does not become null or an error).
_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder(decimal_format="number")

_CLEAR = b"\r\x1b[K"


def decode_frame(frame: str | bytes) -> Any:
    """The JSON value of a frame, numbers kept exact. Raises ``msgspec.DecodeError``."""
    return _decoder.decode(frame)


def encode_compact(value: Any) -> bytes:
    """``value`` as one line of compact JSON, with its ``\\n``."""
    return _encoder.encode(value) + b"\n"


def open_append(path: str | os.PathLike[str]) -> int:
    """Open ``path`` for appending (created with mode 0600 whatever the umask: events
    describe people)."""
    return open_private(path, os.O_WRONLY | os.O_APPEND)


class _Stop:
    pass


_STOP = _Stop()
# Consecutive lines for one descriptor are joined into writes of up to this many bytes.
_MAX_JOINED = 256 * 1024


class _Write:
    __slots__ = ("fd", "data", "future", "loop", "report")

    def __init__(
        self,
        fd: int,
        data: bytes,
        future: asyncio.Future[None] | None,
        loop: asyncio.AbstractEventLoop | None,
        report: bool,
    ) -> None:
        self.fd = fd
        self.data = data
        self.future = future
        self.loop = loop
        self.report = report


class OutputWorker:
    """One thread that performs every write of the command, in submission order.

    :meth:`submit` queues a line and returns at once; :meth:`room` makes the caller wait
    while more than ``max_pending`` bytes are queued, so a reader that stopped reading slows
    the producer down instead of growing memory. A failed write is reported once through
    ``on_error`` (in the event loop); later writes to that descriptor are dropped.

    Args:
        status_fd: the descriptor the status line is drawn on (stderr), or ``None`` for no
            status line. It must be a terminal.
        shared_tty_fds: other descriptors on the same terminal (stdout when it is one): the
            status line is wiped before writing to them and redrawn after.
        max_pending: bytes queued beyond which :meth:`room` waits.
        on_error: called with the descriptor and the error of the first failed write to it.
    """

    def __init__(
        self,
        *,
        status_fd: int | None = None,
        shared_tty_fds: tuple[int, ...] = (),
        max_pending: int = 1 << 20,
        on_error: Callable[[int, OSError], None] | None = None,
    ) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._status_fd = status_fd
        self._tty_fds = frozenset(shared_tty_fds) | (
            frozenset() if status_fd is None else frozenset({status_fd})
        )
        self._status = b""
        self._drawn = False
        self._max_pending = max_pending
        self._on_error = on_error
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._pending = 0  # bytes submitted and not yet written; guarded by _lock
        self._waiting = False  # room() waits for the thread's signal; guarded by _lock
        self._room: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="neuroio-output", daemon=True)
        self._finished: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the thread; call from the event loop."""
        self._loop = asyncio.get_running_loop()
        self._finished = self._loop.create_future()
        self._room = asyncio.Event()
        self._thread.start()

    def submit(self, fd: int, data: bytes) -> None:
        """Queue ``data`` for ``fd``; a failure is reported through ``on_error``."""
        with self._lock:
            self._pending += len(data)
        self._queue.put(_Write(fd, data, None, None, True))

    async def room(self) -> None:
        """Wait until at most ``max_pending`` bytes are queued."""
        room = self._room
        assert room is not None, "start() first"
        while True:
            with self._lock:
                if self._pending <= self._max_pending:
                    return
                self._waiting = True
            # The thread's wake-up runs in this loop, so it cannot come before this clear.
            room.clear()
            await room.wait()

    async def write(self, fd: int, data: bytes) -> None:
        """Write ``data`` to ``fd`` and wait until it is written.

        Raises:
            OSError: the write failed (``BrokenPipeError`` when the reader went away).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._pending += len(data)
        self._queue.put(_Write(fd, data, future, loop, False))
        await future

    def write_nowait(self, fd: int, data: bytes) -> None:
        """Queue ``data`` for ``fd``, ignoring errors (used for logs: nowhere to report)."""
        with self._lock:
            self._pending += len(data)
        self._queue.put(_Write(fd, data, None, None, False))

    def set_status(self, text: str) -> None:
        """Replace the status line (already rendered, one line, ANSI codes allowed)."""
        if self._status_fd is not None:
            self._queue.put(text.encode("utf-8", "replace"))

    async def aclose(self, timeout: float = 2.0) -> bool:
        """Finish the queued writes, wipe the status line, stop the thread.

        Returns ``False`` if the writes did not finish within ``timeout`` seconds (a reader
        that stopped reading); the thread is then left behind, it does not delay the exit.
        """
        if self._finished is None:
            return True
        self._queue.put(_STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._finished), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while self._run_batch():
                pass
            self._wipe()
        finally:
            loop = self._loop
            finished = self._finished
            if loop is not None and finished is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_settle, finished, None)

    def _run_batch(self) -> bool:
        """Handle what is queued (waiting for one item); ``False`` once stopped."""
        batch = [self._queue.get()]
        with contextlib.suppress(queue.Empty):
            while len(batch) < 4096:
                batch.append(self._queue.get_nowait())
        i = 0
        while i < len(batch):
            item = batch[i]
            if item is _STOP:
                return False
            if isinstance(item, bytes):
                self._status = item
                i += 1
                continue
            # Join the lines that follow for the same descriptor into one system call.
            group = [item]
            size = len(item.data)
            i += 1
            while i < len(batch) and size < _MAX_JOINED:
                nxt = batch[i]
                if not isinstance(nxt, _Write) or nxt.fd != item.fd or nxt.future is not None:
                    break
                if item.future is not None:
                    break
                group.append(nxt)
                size += len(nxt.data)
                i += 1
            self._write_group(group, size)
        if self._queue.empty():
            self._draw()
        return True

    def _write_group(self, group: list[_Write], size: int) -> None:
        first = group[0]
        fd = first.fd
        error: OSError | None = None
        if fd not in self._failed:
            data = first.data if len(group) == 1 else b"".join(w.data for w in group)
            try:
                if self._drawn and fd in self._tty_fds:
                    self._wipe()
                write_all(fd, data)
            except OSError as exc:
                error = exc
        with self._lock:
            self._pending -= size
            wake = self._waiting and self._pending <= self._max_pending // 4
            if wake:
                self._waiting = False
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            if wake:
                loop.call_soon_threadsafe(self._wake)
            if first.future is not None and first.loop is not None:
                first.loop.call_soon_threadsafe(_settle, first.future, error)
            if error is not None and any(w.report for w in group) and fd not in self._failed:
                self._failed.add(fd)
                if self._on_error is not None:
                    loop.call_soon_threadsafe(self._on_error, fd, error)

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    def _draw(self) -> None:
        fd = self._status_fd
        if fd is None or not self._status:
            return
        try:
            write_all(fd, b"\r" + self._status + b"\x1b[K")
            self._drawn = True
        except OSError:
            self._status_fd = None

    def _wipe(self) -> None:
        fd = self._status_fd
        if fd is None or not self._drawn:
            return
        self._drawn = False
        try:
            write_all(fd, _CLEAR)
        except OSError:
            self._status_fd = None


def _settle(future: asyncio.Future[None], error: OSError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


# ---------------------------------------------------------------------- pretty format

RESULT_CODES = {
    "exact": "a known person, recognised with confidence 79.3 or more",
    "ha": "a known person, a high-accuracy match: confidence 75.5 to 79.3",
    "junk": "a weak match to a known person (68.84 to 75.5): unsure",
    "new": "nobody known matched: a new person (a new pid) was created",
    "reinit": "a known person, matched as exact, whose stored face was renewed",
    "nm": "not matched: a face too poor to compare (no person)",
    "det": "detected only: a face found but not recognised (no person)",
}
"""What each value of an entry's ``result`` means (``docs/protocol.md``, ``docs/cli.md``)."""

RESULT_LEGEND = (
    "Result codes (the result column of --format pretty; default thresholds):\n"
    + "\n".join(f"  {code:<7} {meaning}" for code, meaning in RESULT_CODES.items())
)
"""The result codes as plain text, one per line, none longer than 76 characters and no blank
line, so that click shows it as it is under ``--help`` after a ``\\b`` line."""

_RESULT_STYLES = {
    "exact": "bold green",
    "ha": "green",
    "new": "bold cyan",
    "reinit": "cyan",
    "junk": "yellow",
    "nm": "dim",
    "det": "dim",
}
_LIVENESS_STYLES = {"passed": "green", "failed": "bold red", "undetermined": "yellow"}
_SEX = {0: "M", 1: "F"}
_STATE_STYLES = {
    State.LIVE: "bold green",
    State.CONNECTING: "yellow",
    State.AUTHENTICATING: "yellow",
    State.BACKOFF: "bold red",
    State.CLOSED: "dim",
    State.IDLE: "dim",
}

# The pretty line's columns: title, width in terminal cells, right-aligned. Every value is
# cut to its width (with "…"), so an unexpected value never shifts the columns after it;
# only an id longer than its column is shown whole, since a cut id would name another event.
_COLUMNS = (
    ("time", 8, False),
    ("id", 10, False),
    ("result", 6, False),
    ("person", 8, False),
    ("age", 3, True),
    ("sex", 3, False),
    ("mood", 9, False),
    ("liveness", 12, False),
    ("camera", 16, False),
    ("conf", 5, True),
)
_GAP = "  "
# Loss reasons of attempts that never became a connection (``ListenerStats.reconnects``
# counts them with the losses of real connections).
_FAILED_ATTEMPTS = frozenset({"connect_failed", "auth_timeout", "closed_before_auth"})


def _printable(value: str) -> str:
    """``value`` with control and format characters (escape sequences, newlines, bidi
    overrides a server could send in a camera name) replaced by ``?``."""
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def _cell(value: str, width: int, right: bool = False) -> str:
    """``value`` in exactly ``width`` terminal cells: cut with ``…``, or padded."""
    value = _printable(value)
    size = cell_len(value)
    if size > width:
        return set_cell_size(value, width - 1) + "…"
    padding = " " * (width - size)
    return padding + value if right else value + padding


def _text(value: Any, missing: str = "?") -> str:
    return value if isinstance(value, str) and value else missing


def _clock(created: Any) -> str:
    """``HH:MM:SS`` of ``created`` in local time (UTC if it has no zone), else of now."""
    parsed = parse_time(created)
    moment = parsed.astimezone() if parsed is not None else datetime.now()
    return moment.strftime("%H:%M:%S")


def _camera(source: Any) -> str:
    if isinstance(source, dict):
        name = source.get("name")
        if isinstance(name, str) and name:
            return name
        if source.get("id") is not None:
            return f"source {_shown(source['id'])}"
    return "?"


def _number(value: Any) -> TypeGuard[int | float | Decimal]:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _console(color: bool) -> Console:
    # Rendered into a string, then written by the worker: rich never touches the real stdout.
    return Console(
        file=io.StringIO(),
        force_terminal=color,
        no_color=not color or None,
        width=100_000,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
    )


def render(console: Console, text: Text) -> str:
    """``text`` as a string with ANSI styles if ``console`` has colour, else plain."""
    with console.capture() as capture:
        console.print(text, end="")
    return capture.get()


class FrameFormatter:
    """Turns frames into output lines (``bytes`` with ``\\n``) in one of the formats.

    Args:
        fmt: ``"jsonl"`` or ``"pretty"``.
        color: colour the pretty lines (ANSI).
        include_control: also format AUTH answers, PONGs, errors and unknown messages.
        header: put a line of column titles before the first pretty event line; ``None``
            (the default) does so when ``color`` is on, i.e. for a person at a terminal,
            and not for a program reading a pipe.
    """

    def __init__(
        self,
        fmt: str,
        *,
        color: bool = False,
        include_control: bool = False,
        header: bool | None = None,
    ) -> None:
        if fmt not in ("jsonl", "pretty"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.include_control = include_control
        self._console = _console(color)
        self._header_due = fmt == "pretty" and (color if header is None else header)

    def header(self) -> bytes:
        """The line of column titles of the pretty format."""
        titles = _GAP.join(_cell(title, width, right) for title, width, right in _COLUMNS)
        return (render(self._console, Text(titles.rstrip(), style="bold")) + "\n").encode()

    def event(self, value: dict[str, Any], backfilled: bool = False) -> bytes:
        """The line for an event whose decoded JSON is ``value`` (after the header line,
        for the first one, when there is a header)."""
        if self.fmt == "jsonl":
            return encode_compact(value)
        line = (render(self._console, self._pretty_event(value, backfilled)) + "\n").encode()
        if self._header_due:
            self._header_due = False
            return self.header() + line
        return line

    def control(self, value: Any, kind: Kind) -> bytes | None:
        """The line for a control message, or ``None`` when they are not shown."""
        if not self.include_control:
            return None
        if self.fmt == "jsonl":
            line = encode_compact(value).decode()
        else:
            line = render(self._console, self._pretty_control(value, kind)) + "\n"
        # An error message may quote what the client sent; the token never goes out.
        return _redact.redact(line).encode()

    def _pretty_event(self, value: dict[str, Any], backfilled: bool) -> Text:
        # Read from the decoded JSON, not a typed Entry: a field of an unexpected type or
        # a number out of float range must not cost the line.
        data: dict[str, Any] = value["data"]
        result = _text(data.get("result"))
        age = data.get("age")
        sex = data.get("sex")
        liveness = _text(data.get("liveness"))
        confidence = data.get("confidence")
        cells = (
            (_clock(data.get("created")), "dim"),
            (f"#{value['id']}", "dim"),
            (result, _RESULT_STYLES.get(result, "")),
            (_text(data.get("pid"), "-")[:8], "magenta"),
            (str(age) if _number(age) else "?", ""),
            (_SEX.get(sex, "?") if isinstance(sex, int) and not isinstance(sex, bool) else "?", ""),
            (_text(data.get("mood")), ""),
            (liveness, _LIVENESS_STYLES.get(liveness, "dim")),
            (_camera(data.get("source")), "blue"),
            (f"{float(confidence):.1f}" if _number(confidence) else "?", ""),
        )
        line = Text()
        for i, ((text, style), (_, width, right)) in enumerate(zip(cells, _COLUMNS, strict=True)):
            if i:
                line.append(_GAP)
            if i == 1 and len(text) > width:
                line.append(_printable(text), style=style)  # an id is never cut
            else:
                line.append(_cell(text, width, right), style=style or None)
        if backfilled:
            line.append("  (recovered)", style="dim italic")
        return line

    def _pretty_control(self, value: Any, kind: Kind) -> Text:
        line = Text()
        line.append(datetime.now().strftime("%H:%M:%S"), style="dim")
        line.append("  ")
        if kind is Kind.AUTH_OK:
            line.append("auth ok", style="green")
        elif kind is Kind.PONG and isinstance(value, dict):
            line.append(f"PING {_printable(_shown(value.get('PING')))}", style="dim")
        elif kind in (Kind.ERROR, Kind.AUTH_REJECTED) and isinstance(value, dict):
            detail = value.get("error", value.get("auth"))
            line.append(f"error: {_printable(_shown(detail))}", style="bold red")
        else:
            line.append(f"message {_encoder.encode(value).decode()}", style="dim")
        return line


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else _encoder.encode(value).decode()


def connections_lost(stats: ListenerStats) -> int:
    """Authenticated connections that were lost (each followed by a reconnect)."""
    return sum(n for reason, n in stats.reconnects.items() if reason not in _FAILED_ATTEMPTS)


def failed_attempts(stats: ListenerStats) -> int:
    """Connection attempts that failed before the server accepted the token (refused,
    unreachable, no AUTH answer, closed before it)."""
    return sum(stats.reconnects[reason] for reason in _FAILED_ATTEMPTS)


def format_rtt(seconds: float) -> str:
    """A round trip for people: ``<1 ms`` below a millisecond, else to 0.1 ms."""
    milliseconds = seconds * 1000
    return "<1 ms" if milliseconds < 1 else f"{milliseconds:.1f} ms"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def summary_line(stats: ListenerStats, elapsed: float) -> str:
    """One line on what a listener did, for the end of a command:
    ``73 events in 14 s, 0 reconnects`` (recovered events and failed attempts when any)."""
    parts = [plural(stats.events, "event")]
    if stats.backfilled_events:
        parts.append(f"and {stats.backfilled_events} recovered")
    lost = plural(connections_lost(stats), "reconnect")
    line = f"{' '.join(parts)} in {_duration(elapsed)}, {lost}"
    failed = failed_attempts(stats)
    if failed:
        line += f", {plural(failed, 'failed connection attempt')}"
    return line


class StatusLine:
    """The one-line summary of a listener for a terminal: state, events, rate, reconnects
    (connections lost), failed attempts (when any), PONG round trip.

    Args:
        stats: the listener's counters.
        window: seconds over which the event rate is measured.
    """

    def __init__(self, stats: ListenerStats, *, window: float = 5.0) -> None:
        self.stats = stats
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._console = _console(True)

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last ``window`` seconds (sampled at each render)."""
        now = time.monotonic() if now is None else now
        samples = self._samples
        samples.append((now, self.stats.events))
        while len(samples) > 1 and now - samples[0][0] > self.window:
            samples.popleft()
        first_t, first_n = samples[0]
        span = now - first_t
        return (self.stats.events - first_n) / span if span > 0 else 0.0

    def text(self, now: float | None = None) -> Text:
        """The status as rich text."""
        stats = self.stats
        state = stats.state
        line = Text()
        line.append("● ", style=_STATE_STYLES.get(state, ""))
        line.append(f"{state.value:<14}", style=_STATE_STYLES.get(state, ""))
        line.append(f"events {stats.events}", style="bold")
        line.append(f"  {self.rate(now):.1f}/s")
        line.append(f"  reconnects {connections_lost(stats)}")
        failed = failed_attempts(stats)
        if failed:
            line.append(f"  failed attempts {failed}", style="yellow")
        if stats.last_rtt is not None:
            line.append(f"  rtt {format_rtt(stats.last_rtt)}")
        else:
            line.append("  rtt -", style="dim")
        return line

    def render(self, width: int | None = None) -> str:
        """The status, cut to ``width`` columns (the terminal's by default), with ANSI styles."""
        if width is None:
            width = _status_columns()
        line = self.text()
        line.truncate(max(width - 1, 10))
        return render(self._console, line)


def _status_columns() -> int:
    """Width of the terminal the status is drawn on (stderr); ``COLUMNS`` wins, as usual."""
    with contextlib.suppress(ValueError):
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    try:
        columns = os.get_terminal_size(2).columns
    except OSError:
        columns = 0
    return columns if columns > 0 else 80


async def run_status(worker: OutputWorker, status: StatusLine, *, interval: float = 0.25) -> None:
    """Redraw the status line every ``interval`` seconds until cancelled."""
    while True:
        worker.set_status(status.render())
        await asyncio.sleep(interval)
