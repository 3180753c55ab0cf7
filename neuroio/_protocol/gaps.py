"""The gap tracker: where each gap in the event stream begins and ends, without I/O.

The events socket never replays (``docs/protocol.md``): what is pushed while a client is away
can only be fetched from ``GET /v1/entries/``. :class:`GapTracker` holds everything that
decides *what* to recover, and nothing that does the fetching (that is
:mod:`neuroio._recovery`):

- the recent ids (:class:`RecentIds`), so an event seen live and recovered is delivered once;
- the **cursor**: the highest event id delivered that is trusted;
- the **floor**: the newest entry id the REST API reported when the connection was made. A
  gap that opens before any event was seen starts there, so where recovery starts never
  depends on this machine's clock or the server's;
- pending gaps (:class:`Gap`), each from a start id to the newest id known when it closed;
- the limits: at most ``max_events`` per gap (the newest), and ``max_age`` measured on the
  server's clock, against the ``created`` of the newest entry the REST API reported;
- **id sanity**: ids are trusted only within reason. An id more than ``max_id_jump`` past the
  highest trusted id (the cursor or the floor) does not move the cursor: the event is still
  delivered, and ``on_suspect`` is told once. A cursor restored from storage that is beyond
  the REST API's newest id by more than that bound is replaced by the floor.

Why ``max_id_jump`` defaults to 10**9: entry ids are shared by the whole platform, so between
two events of one space they grow by at most the platform's entry rate times the time between
them. 10**9 is 10,000 entries a second for more than a day; a corrupt or hostile id (2**62 is
4.6e18) is billions of times further. A genuine id beyond the bound only costs a larger
recovery (the cursor stays lower), never a loss; and the floor is refreshed from the REST API
at every connection, so the bound follows the platform.

``created`` is used only as a last resort: when the server ignores ``id_from``, recovery asks
by ``date_from`` from the cursor entry's own ``created`` (server clock against server clock)
minus ``created_margin``; when nothing at all is known (no event, no floor), from the loss time
on this machine's clock minus ``clock_margin``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .._times import parse_time

__all__ = [
    "DEFAULT_MAX_ID_JUMP",
    "Gap",
    "GapStart",
    "GapTracker",
    "Newest",
    "RecentIds",
    "entry_id",
    "parse_since",
]

DEFAULT_MAX_ID_JUMP = 10**9
"""How far past the highest trusted id an id may jump and still be trusted (see above)."""


class RecentIds:
    """The last ``maxlen`` event ids delivered, to drop an event seen twice.

    Live and backfilled events overlap by design (the REST list covers the whole gap and a bit
    more); the window only needs to span that overlap, so it is bounded.
    """

    __slots__ = ("maxlen", "_ids")

    def __init__(self, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._ids: OrderedDict[int, None] = OrderedDict()

    def add(self, event_id: int) -> bool:
        """Remember ``event_id``; ``False`` if it was already there (a duplicate)."""
        ids = self._ids
        if event_id in ids:
            return False
        ids[event_id] = None
        if len(ids) > self.maxlen:
            ids.popitem(last=False)
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class GapStart:
    """Where a gap begins: the last event seen before it, or a time when none was seen.

    Attributes:
        last_id: id of the last event delivered before the gap (entries after it are missing).
        last_created: ``created`` of that event, for servers that ignore ``id_from``.
        since_time: when no event was ever seen: recover entries created from this time on.
    """

    last_id: int | None = None
    last_created: datetime | None = None
    since_time: datetime | None = None


@dataclass(frozen=True)
class Newest:
    """The newest entry the REST API knows, read once per connection.

    Attributes:
        id: its id (``None``: the list is empty).
        created: its ``created``: the server's clock, the reference of ``max_age``.
        descending: the API lists newest first (``None``: not known, e.g. under two entries).
    """

    id: int | None
    created: datetime | None = None
    descending: bool | None = None


@dataclass(frozen=True)
class Gap:
    """One gap to recover: the entries after ``start`` up to ``until``.

    Attributes:
        start: the last entry known delivered before the gap (id, ``created``), or a time.
        until: the newest entry id the REST API knew when the gap closed; entries after it
            came on the new connection. ``None``: not known (recover to the end of the list).
        oldest: entries created before this (server clock) are skipped (``max_age``).
    """

    start: GapStart
    until: int | None = None
    oldest: datetime | None = None


def parse_since(value: int | str | datetime | None) -> GapStart | None:
    """Turn a ``since=`` option (an event id, an ISO-8601 time or a datetime) into a gap start.

    An id means "the last event already seen": recovery starts after it.

    Raises:
        ValueError: the value is neither an integer nor an ISO-8601 timestamp.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return GapStart(last_id=value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return GapStart(last_id=int(text))
    moment = parse_time(value)
    if moment is None:
        raise ValueError(f"since must be an event id or an ISO-8601 time, got {value!r}")
    return GapStart(since_time=moment)


def entry_id(entry: dict[str, Any]) -> int | None:
    """An entry's integer ``id``; ``None`` when it has none (booleans are not ids)."""
    value = entry.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class GapTracker:
    """What has been delivered and what must be recovered; pure state, no I/O.

    The listener calls :meth:`seen` for every live event (the hot path: one dict insert and
    one compare), :meth:`connected` once the REST API told it the newest entry, :meth:`lost`
    when a connection ends; the recovery component takes gaps with :meth:`next_gap` and
    passes each recovered entry through :meth:`accept`.

    Args:
        dedupe_window: recent ids remembered to drop duplicates.
        max_events: recover at most this many entries per gap (the newest); ``None``: all.
        max_age: skip recovered entries created this many seconds before the newest entry
            the REST API reported (the server's clock); ``None``: no limit.
        max_id_jump: an id further than this past the highest trusted id is not trusted.
        created_margin: seconds subtracted from the cursor entry's ``created`` when asking
            by ``date_from``, for entries whose ``created`` is not in id order.
        clock_margin: seconds subtracted from this machine's clock in the last resort
            (no event seen and no floor known).
        on_suspect: called once per untrusted id with the id and a reason, to log it.
    """

    __slots__ = (
        "recent",
        "max_events",
        "max_age",
        "max_id_jump",
        "created_margin",
        "clock_margin",
        "on_suspect",
        "cursor",
        "cursor_created",
        "floor",
        "floor_created",
        "newest",
        "suspects",
        "losses",
        "_limit",
        "_open",
        "_pending",
    )

    def __init__(
        self,
        *,
        dedupe_window: int = 100_000,
        max_events: int | None = 10_000,
        max_age: float | None = 24 * 3600.0,
        max_id_jump: int = DEFAULT_MAX_ID_JUMP,
        created_margin: float = 300.0,
        clock_margin: float = 3600.0,
        on_suspect: Callable[[int, str], None] | None = None,
    ) -> None:
        if max_events is not None and max_events < 1:
            raise ValueError("max_events must be >= 1 or None")
        if max_age is not None and not max_age > 0:
            raise ValueError("max_age must be positive or None")
        if max_id_jump < 1:
            raise ValueError("max_id_jump must be at least 1")
        self.recent = RecentIds(dedupe_window)
        self.max_events = max_events
        self.max_age = max_age
        self.max_id_jump = max_id_jump
        self.created_margin = created_margin
        self.clock_margin = clock_margin
        self.on_suspect = on_suspect
        self.cursor: int | None = None
        """The highest trusted id delivered."""
        self.cursor_created: str | None = None
        """That event's ``created`` text (parsed only when a gap needs it)."""
        self.floor: int | None = None
        """The newest id the REST API reported at the last connection."""
        self.floor_created: datetime | None = None
        self.newest: Newest | None = None
        """The last :class:`Newest` passed to :meth:`connected`."""
        self.suspects = 0
        """Ids seen that were not trusted."""
        self.losses = 0
        """Connections lost so far (calls of :meth:`lost`): a newest id asked for before the
        latest loss may predate entries missed since, so it must not close that gap."""
        # cursor + bound, or None while nothing is trusted: the hot path compares to it.
        self._limit: int | None = None
        self._open: GapStart | None = None
        self._pending: deque[Gap] = deque()

    def __repr__(self) -> str:
        return (
            f"<GapTracker cursor={self.cursor} floor={self.floor} "
            f"pending={len(self._pending) + (self._open is not None)}>"
        )

    # -- the live stream -----------------------------------------------------------------

    def seen(self, event_id: int, created: str | None = None) -> bool:
        """A live event: ``False`` if it was delivered already (drop it), else ``True``.

        A new id above the cursor moves it, unless it is beyond the sanity bound.
        """
        # RecentIds.add inlined: this runs for every live event.
        recent = self.recent
        ids = recent._ids
        if event_id in ids:
            return False
        ids[event_id] = None
        if len(ids) > recent.maxlen:
            ids.popitem(last=False)
        cursor = self.cursor
        if cursor is None or event_id > cursor:
            limit = self._limit
            if limit is None or event_id <= limit:
                self.cursor = event_id
                self.cursor_created = created
                if limit is not None:
                    self._limit = event_id + self.max_id_jump
            else:
                top = limit - self.max_id_jump
                self._suspect(event_id, f"more than {self.max_id_jump} past the trusted id {top}")
        return True

    def _suspect(self, event_id: int, reason: str) -> None:
        self.suspects += 1
        if self.on_suspect is not None:
            self.on_suspect(event_id, reason)

    def _trusted_top(self) -> int | None:
        values = [v for v in (self.cursor, self.floor) if v is not None]
        return max(values) if values else None

    def _relimit(self) -> None:
        top = self._trusted_top()
        self._limit = None if top is None else top + self.max_id_jump

    def plausible(self, event_id: int) -> bool:
        """Whether ``event_id`` is within the sanity bound of the highest trusted id (the
        cursor or the floor); ``True`` while nothing is known. For a caller choosing among
        stored ids (the bridge's spool) which to restore."""
        top = self._trusted_top()
        return top is None or event_id <= top + self.max_id_jump

    # -- connections -----------------------------------------------------------------------

    def restore(self, start: GapStart) -> None:
        """Before the first connection: recover from ``start`` on (``since=``, a spool's
        floor). An id is checked against the REST API's newest at :meth:`connected`."""
        self._open = start
        if start.last_id is not None and (self.cursor is None or start.last_id > self.cursor):
            self.cursor = start.last_id
            self.cursor_created = None

    def lost(self, *, now: float | None = None) -> None:
        """The connection ended: a gap opens after the last trusted event (or the floor).

        Args:
            now: this machine's clock (seconds since the epoch), used only when neither an
                event nor a floor is known; then the gap starts ``clock_margin`` before it.
        """
        self.losses += 1
        if self._open is not None:
            return  # the previous gap never closed: it already starts earlier
        self._open = self.resume_point(now=now)

    def resume_point(self, *, now: float | None = None) -> GapStart:
        """Where recovery would start if the connection were lost now: what to store durably
        (the bridge records it before its first commit)."""
        if self.cursor is not None:
            return GapStart(last_id=self.cursor, last_created=parse_time(self.cursor_created))
        if self.floor is not None:
            return GapStart(last_id=self.floor, last_created=self.floor_created)
        if now is None:
            moment = datetime.now(timezone.utc)
        else:
            moment = datetime.fromtimestamp(now, timezone.utc)
        return GapStart(since_time=moment - timedelta(seconds=self.clock_margin))

    def connected(self, newest: Newest | None) -> Gap | None:
        """A connection is live and the REST API said which entry is its newest (``None``:
        it could not be asked). Closes the open gap, if any, and returns it (also queued).

        A cursor beyond the REST API's newest id by more than ``max_id_jump`` cannot be
        true: it is replaced by the newest id (and reported).
        """
        if newest is not None:
            self.newest = newest
            if newest.id is not None:
                bad = self.cursor is not None and self.cursor > newest.id + self.max_id_jump
                if bad:
                    assert self.cursor is not None
                    self._suspect(self.cursor, f"beyond the REST API's newest id {newest.id}")
                    self.cursor = None
                    self.cursor_created = None
                    start = self._open
                    limit = newest.id + self.max_id_jump
                    if start is not None and start.last_id is not None and start.last_id > limit:
                        self._open = GapStart(last_id=newest.id, last_created=newest.created)
                self.floor = newest.id
                self.floor_created = newest.created
        self._relimit()
        start = self._open
        if start is None:
            return None
        self._open = None
        oldest = None
        if self.max_age is not None and newest is not None and newest.created is not None:
            oldest = newest.created - timedelta(seconds=self.max_age)
        gap = Gap(start, newest.id if newest is not None else None, oldest)
        self._pending.append(gap)
        return gap

    # -- recovery ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Closed gaps waiting for recovery."""
        return len(self._pending)

    @property
    def open_start(self) -> GapStart | None:
        """Where the gap still open (lost, not yet closed by :meth:`connected`) starts."""
        return self._open

    def pending_starts(self) -> list[GapStart]:
        """Where each closed gap waiting for recovery starts."""
        return [gap.start for gap in self._pending]

    def next_gap(self) -> Gap | None:
        """The oldest closed gap, removed from the queue; ``None`` when there is none."""
        return self._pending.popleft() if self._pending else None

    def drop_pending(self) -> None:
        """Forget every closed gap (recovery failed for good)."""
        self._pending.clear()

    def accept(self, entry: dict[str, Any], gap: Gap) -> bool:
        """A recovered entry: ``True`` to deliver it (new, young enough), else ``False``.

        Moves the cursor like :meth:`seen`; an entry from the REST API is not a pushed id,
        but the same bound applies (a corrupt entry must not poison the cursor either).
        """
        event_id = entry_id(entry)
        if event_id is None or event_id in self.recent:
            return False
        if gap.oldest is not None:
            created = parse_time(entry.get("created"))
            if created is not None and created < gap.oldest:
                return False
        created_text = entry.get("created")
        return self.seen(event_id, created_text if isinstance(created_text, str) else None)

    def date_from(self, start: GapStart) -> datetime | None:
        """The ``date_from`` to ask when the server ignores ``id_from`` (server clock), or
        ``None`` when nothing dates the start (then the whole list must be read)."""
        if start.since_time is not None:
            return start.since_time
        if start.last_created is None:
            return None
        return start.last_created - timedelta(seconds=self.created_margin)
