"""Which stream a log line is about, in a bridge with many.

A thousand streams share the same listener, recovery and bridge code, and the same events
URL: "no connection to wss://..." must say which stream it is. Rather than thread a name
through every call, each stream's tasks run with :data:`current` set (asyncio tasks copy the
context they are created in, so the connection's reader, keepalive and recovery tasks
inherit it), and a filter on the loggers those tasks use prefixes the message with
``stream <name>:`` and sets ``record.stream`` (the JSON log format's ``stream`` key).
"""

from __future__ import annotations

import contextvars
import logging

__all__ = ["current", "install"]

current: contextvars.ContextVar[str | None] = contextvars.ContextVar("neuroio_stream", default=None)
"""The name of the stream the running task serves (``None``: not a stream's task)."""

# The loggers a stream's tasks write to; a logger's filters see every record it creates.
_LOGGERS = ("neuroio.listener", "neuroio.recovery", "neuroio.bridge", "neuroio.token")


class _StreamPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        name = current.get()
        if name is not None and not hasattr(record, "stream"):
            record.stream = name
            record.msg = f"stream {name}: {record.msg}"
        return True


_FILTER = _StreamPrefix()


def install() -> None:
    """Prefix the log lines of streams' tasks from now on (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
