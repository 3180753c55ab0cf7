"""Times as the platform writes them: one parser for every ``created`` and ``since``.

The platform writes ISO-8601 times, sometimes without a zone (``docs/protocol.md``); its times
are UTC, so a naive time is taken as UTC. Everything here returns aware ``datetime`` objects.
"""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec

__all__ = ["aware", "iso", "parse_time", "timestamp"]


def aware(moment: datetime) -> datetime:
    """``moment`` with its zone, UTC when it has none."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 string as an aware ``datetime``; ``None`` for anything else."""
    if isinstance(value, datetime):
        return aware(value)
    if not isinstance(value, str):
        return None
    try:
        return aware(msgspec.convert(value.strip(), datetime))
    except (msgspec.ValidationError, ValueError, OverflowError):
        return None


def timestamp(value: object) -> float | None:
    """Seconds since the epoch of an ISO-8601 string; ``None`` when it is not one."""
    moment = parse_time(value)
    if moment is None:
        return None
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def iso(moment: datetime) -> str:
    """``moment`` in the platform's form, ``2019-07-29T13:53:27.306000Z``."""
    return aware(moment).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
