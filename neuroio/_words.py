"""Wording shared by messages: the one place that counts things in words."""

from __future__ import annotations

__all__ = ["connection_state", "plural"]


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless ``count`` is 1:
    ``plural(1, "event")`` is ``"1 event"``, ``plural(2, "event")`` ``"2 events"``.

    ``many``: the plural when it is not ``noun + "s"`` (``plural(2, "entry", "entries")``).
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {many if many is not None else noun + 's'}"


# What a listener state (:class:`neuroio.stats.State` value) means to someone reading a
# health report; the states not listed read as they are ("connecting", "live", ...).
_STATES = {
    "idle": "not started",
    "backoff": "reconnecting (backoff)",
}


def connection_state(state: str) -> str:
    """A listener state in words: ``connection_state("backoff")`` is
    ``"reconnecting (backoff)"``, for ``connection is ...`` problems."""
    return _STATES.get(state, state)
