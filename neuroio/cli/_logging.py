"""Log setup for the CLI: text or JSON lines on stderr, never the API token.

Every line passes through :func:`neuroio._redact.redact` just before it is written, on top
of the filters the library puts on its own loggers, so a token registered with
:func:`neuroio._redact.guard` cannot reach stderr whatever logger carried it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import msgspec

from .. import _redact
from .._io import write_all

__all__ = ["LOG_FORMATS", "configure", "set_sink", "verbosity_levels"]

LOG_FORMATS = ("text", "json")

_encoder = msgspec.json.Encoder()
_sink: Callable[[bytes], None] | None = None


def verbosity_levels(verbosity: int) -> tuple[int, int]:
    """``(neuroio level, everything else level)`` for ``-v`` count minus ``-q`` count.

    0 (the default): the package's INFO (connections, reconnects) and other libraries'
    warnings; 1: the package's DEBUG; 2 and more: DEBUG everywhere (aiohttp included);
    -1: warnings only; -2 and less: errors only.
    """
    if verbosity <= -2:
        return logging.ERROR, logging.ERROR
    if verbosity == -1:
        return logging.WARNING, logging.WARNING
    if verbosity == 0:
        return logging.INFO, logging.WARNING
    if verbosity == 1:
        return logging.DEBUG, logging.WARNING
    return logging.DEBUG, logging.DEBUG


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        local = time.localtime(record.created)
        return time.strftime("%Y-%m-%d %H:%M:%S", local) + f".{int(record.msecs):03d}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, str] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        stream = getattr(record, "stream", None)
        if stream is not None:  # set by neuroio._streamlog for a stream's lines
            line["stream"] = stream
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return _encoder.encode(line).decode()


class _Handler(logging.Handler):
    """Writes each record as one line to stderr, or through the output worker when set."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _redact.redact(self.format(record))
        except Exception:
            self.handleError(record)
            return
        data = (text + "\n").encode("utf-8", "backslashreplace")
        sink = _sink
        try:
            if sink is not None:
                sink(data)
            else:
                write_all(sys.stderr.fileno(), data)
        except OSError:
            pass  # stderr is gone; nowhere left to report it


_handler: _Handler | None = None


def configure(verbosity: int = 0, log_format: str = "text") -> None:
    """Send log records to stderr at the levels ``verbosity`` selects, as text or JSON.

    Idempotent: a second call replaces the first one's settings.
    """
    global _handler
    package_level, other_level = verbosity_levels(verbosity)
    root = logging.getLogger()
    if _handler is None:
        _handler = _Handler()
        root.addHandler(_handler)
    _handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root.setLevel(other_level)
    logging.getLogger("neuroio").setLevel(package_level)


def set_sink(sink: Callable[[bytes], None] | None) -> None:
    """Route log lines through ``sink`` (e.g. so they do not break a status line); ``None``
    writes them straight to stderr again."""
    global _sink
    _sink = sink
