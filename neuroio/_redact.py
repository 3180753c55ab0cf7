"""Keeps API tokens out of log records, whoever logs them.

The AUTH frame carries the token, and WebSocket libraries may log frames at DEBUG. A filter on
the loggers that could see a frame replaces every registered token before any handler formats
the record. Tokens are registered by the objects that hold them, for as long as they live.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["REDACTED", "TokenRedactor", "redact"]

REDACTED = "***"
MIN_SECRET_LENGTH = 6

# Logger filters only apply to records created on that very logger, so each logger that could
# carry a frame or a URL is listed, not just the parents.
_GUARDED_LOGGERS = (
    "neuroio",
    "neuroio.listener",
    "neuroio.emulator",
    "neuroio.backfill",
    "neuroio.bridge",
    "neuroio.cli",
    "neuroio.sinks",
    "aiohttp",
    "aiohttp.client",
    "aiohttp.websocket",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.access",
    "asyncio",
)


class TokenRedactor(logging.Filter):
    """A logging filter that replaces registered secrets with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Start redacting ``secret`` (reference-counted).

        Strings shorter than :data:`MIN_SECRET_LENGTH` are not redacted: masking every
        occurrence of ``"x"`` would make logs unreadable, and such a string is no secret.
        """
        if len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._secrets[secret] = self._secrets.get(secret, 0) + 1

    def discard(self, secret: str) -> None:
        """Stop redacting ``secret`` once every holder released it."""
        with self._lock:
            count = self._secrets.get(secret, 0) - 1
            if count <= 0:
                self._secrets.pop(secret, None)
            else:
                self._secrets[secret] = count

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg = clean
            record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(secret in text for secret in self._secrets):
                record.exc_text = self.redact(text)
        return True


_redactor = TokenRedactor()
_installed = False


def guard(secret: str) -> None:
    """Register ``secret`` and make sure the guarded loggers filter it out."""
    global _installed
    if not _installed:
        for name in _GUARDED_LOGGERS:
            logging.getLogger(name).addFilter(_redactor)
        _installed = True
    _redactor.add(secret)


def release(secret: str) -> None:
    """Unregister a secret registered with :func:`guard`."""
    _redactor.discard(secret)


def redact(text: str) -> str:
    """``text`` with every currently guarded secret replaced by ``***``."""
    return _redactor.redact(text)
