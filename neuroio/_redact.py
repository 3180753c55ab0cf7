"""Keeps API tokens out of log records, whoever logs them.

The AUTH frame carries the token, and WebSocket libraries may log frames at DEBUG. The log-record
factory replaces every registered token in each record of a ``neuroio.*``, ``aiohttp.*`` or
``asyncio`` logger as it is created, before any filter or handler sees it, so a module added
later cannot forget to guard its logger. Tokens are registered by the objects that hold them, for
as long as they live; :func:`secrets` lets other writers (recordings) clean what they write.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["REDACTED", "TokenRedactor", "guard", "redact", "release", "secrets"]

REDACTED = "***"
MIN_SECRET_LENGTH = 6

# Logger filters only apply to records created on that very logger, and a module added later
# could forget to install one; so the redactor sits in the log-record factory and cleans every
# record whose logger name falls under one of these prefixes, whatever module created it.
_GUARDED_PREFIXES = ("neuroio", "aiohttp", "asyncio")


def _guarded(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _GUARDED_PREFIXES)


class TokenRedactor(logging.Filter):
    """A logging filter that replaces registered secrets with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        # Read without the lock by every log call and redact(), from any thread: an immutable
        # tuple swapped whole, never a dict iterated while another thread changes it.
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Start redacting ``secret`` (reference-counted).

        Strings shorter than :data:`MIN_SECRET_LENGTH` are not redacted: masking every
        occurrence of ``"x"`` would make logs unreadable, and such a string is no secret.
        """
        if len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._counts[secret] = self._counts.get(secret, 0) + 1
            self._secrets = tuple(self._counts)

    def discard(self, secret: str) -> None:
        """Stop redacting ``secret`` once every holder released it."""
        with self._lock:
            count = self._counts.get(secret, 0) - 1
            if count <= 0:
                self._counts.pop(secret, None)
            else:
                self._counts[secret] = count
            self._secrets = tuple(self._counts)

    @property
    def active(self) -> bool:
        """Whether any secret is registered (the common case of no secret costs one test)."""
        return bool(self._secrets)

    def secrets(self) -> tuple[str, ...]:
        """Every registered secret (for cleaning text that is not a log record)."""
        return self._secrets

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


def _install() -> None:
    """Chain the redactor into the log-record factory (once per process)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _redactor.active and _guarded(record.name):
            _redactor.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def guard(secret: str) -> None:
    """Register ``secret``: from now on no record of a guarded logger carries it."""
    _install()
    _redactor.add(secret)


def release(secret: str) -> None:
    """Unregister a secret registered with :func:`guard`."""
    _redactor.discard(secret)


def secrets() -> tuple[str, ...]:
    """Every secret currently guarded (longest first is not promised)."""
    return _redactor.secrets()


def redact(text: str) -> str:
    """``text`` with every currently guarded secret replaced by ``***``."""
    return _redactor.redact(text)
