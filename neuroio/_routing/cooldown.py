"""Cooldowns: at most one event per key per window through a route.

A :class:`Cooldown` is fed each event the route's filter took, with the event's time, and
answers whether it goes out. Decisions, made here once:

* **The key** is the tuple of the values of the ``key`` paths in the entry, rendered as
  templates render them (:mod:`neuroio._routing.template`): a missing, ``null``, empty or
  non-scalar value is ``unknown``, so every event without a person id shares one key.
* **Time is the event's**: the bridge passes the time the event was received
  (``SpooledEvent.received_at``, stored in the spool), not the time the route reads it. A
  backlog delivered after a sink outage or a restart is judged by when its events happened,
  so a burst of one person an hour ago still yields one notification, not one per replayed
  event, and a route that lags does not suppress what it would have sent on time.
* **The window** runs from the last event let through: one passes when ``seconds`` have gone
  by since the previous one of its key. Only events the route's filter took count, and an
  event let through counts even if its sink then refuses it for good (a dead letter): the
  decision is taken once, before the send, and a retry does not take it again. A clock
  stepped back (``received_at`` is wall time) is read as elapsed time of its absolute value,
  so a step back never silences a key for longer than two windows.
* **Memory is bounded**: a key whose window is over is forgotten (the table holds only keys
  seen within the last ``seconds``), and at most ``max_keys`` (100 000) keys are kept: beyond
  that the key let through longest ago is forgotten first, so its next event may go out
  early. That takes more than 100 000 distinct keys within one window.
* **In memory only**: after a restart the table is empty, so the first event of each key
  goes out, even if one went out just before the restart (one extra notification per key
  at most; the events the route had not acknowledged are judged again too).

Pure: no I/O, no asyncio; the time is given.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
from .template import Template

__all__ = ["MAX_KEYS", "Cooldown"]

MAX_KEYS = 100_000
"""Keys a cooldown keeps at most (about 200 bytes each: some 20 MB at the cap)."""


class Cooldown:
    """At most one event per key per ``seconds``.

    Args:
        key: field paths of the entry (``["pid", "source.id"]``).
        seconds: the window (positive, finite).
        max_keys: keys kept at most (the oldest is forgotten first).
        what: how errors name it, e.g. ``"route doors: cooldown"``.

    Raises:
        ConfigurationError: an empty key, a path that is not a field path, or a window that
            is not a positive number.
    """

    __slots__ = ("_fields", "_last", "max_keys", "seconds")

    def __init__(
        self,
        key: Sequence[str],
        seconds: float,
        *,
        max_keys: int = MAX_KEYS,
        what: str = "cooldown",
    ) -> None:
        if isinstance(key, str) or not isinstance(key, Sequence) or not key:
            raise ConfigurationError(f"{what}.key: must be a non-empty list of field paths")
        fields: list[Template] = []
        for path in key:
            if not isinstance(path, str) or not path.strip() or "{" in path or "}" in path:
                raise ConfigurationError(
                    f"{what}.key: {path!r} is not a field path (like source.id)"
                )
            fields.append(Template("{" + path.strip() + "}", what=f"{what}.key"))
        if seconds.__class__ not in (int, float) or not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError(f"{what}.seconds: must be a positive number, got {seconds!r}")
        if max_keys < 1:
            raise ConfigurationError(f"{what}: max_keys must be at least 1")
        self._fields = tuple(fields)
        self.seconds = float(seconds)
        self.max_keys = max_keys
        self._last: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def __len__(self) -> int:
        """Keys currently remembered."""
        return len(self._last)

    def key_of(self, event: Mapping[str, Any]) -> tuple[str, ...]:
        """The key of a decoded event (``{"id": ..., "data": {<entry>}}``)."""
        return tuple(field.render(event) for field in self._fields)

    def admit(self, event: Mapping[str, Any], at: float) -> bool:
        """Whether ``event``, which happened at ``at`` (seconds), goes out; if so its key's
        window starts again at ``at``."""
        return self.admit_key(self.key_of(event), at)

    def admit_key(self, key: tuple[str, ...], at: float) -> bool:
        """:meth:`admit` for a key already computed."""
        last = self._last
        seconds = self.seconds
        previous = last.get(key)
        if previous is not None and abs(at - previous) < seconds:
            return False
        last[key] = at
        last.move_to_end(key)
        # Forget the keys whose window is over (the oldest come first), then cap the table.
        horizon = at - seconds
        while last:
            oldest_key, oldest_at = next(iter(last.items()))
            if oldest_at > horizon or oldest_key == key:
                break
            del last[oldest_key]
        while len(last) > self.max_keys:
            last.popitem(last=False)
        return True
