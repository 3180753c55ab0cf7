"""The gap tracker: what is recovered after a gap, decided without I/O and without a clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from neuroio._protocol.gaps import (
    DEFAULT_MAX_ID_JUMP,
    Gap,
    GapStart,
    GapTracker,
    Newest,
    RecentIds,
    parse_since,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def entry(event_id: int, created: datetime = T0) -> dict[str, object]:
    return {"id": event_id, "created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def test_recent_ids_drops_repeats_within_the_window() -> None:
    """An id seen within the window is a duplicate; the window forgets the oldest."""
    ids = RecentIds(3)
    assert [ids.add(i) for i in (1, 2, 1, 3, 4)] == [True, True, False, True, True]
    assert 1 not in ids and len(ids) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (41, GapStart(last_id=41)),
        (" 41 ", GapStart(last_id=41)),
        (
            "2024-05-01T10:00:00Z",
            GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ),
        ("2024-05-01T10:00:00", GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc))),
        (
            "2024-05-01T12:00:00+02:00",
            GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ),
        (
            datetime(2024, 5, 1, 10),
            GapStart(since_time=datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ),
    ],
)
def test_parse_since(value: object, expected: GapStart | None) -> None:
    """since= takes an event id or an ISO-8601 time (UTC when the zone is missing)."""
    assert parse_since(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["yesterday", "", True])
def test_parse_since_rejects_garbage(value: object) -> None:
    """Anything else is a clear ValueError naming the option."""
    with pytest.raises(ValueError, match="since"):
        parse_since(value)  # type: ignore[arg-type]


def test_seen_drops_duplicates_and_moves_the_cursor_up_only() -> None:
    """A repeated id is dropped; a lower id is delivered but leaves the cursor where it is."""
    tracker = GapTracker()
    tracker.connected(Newest(100))
    assert tracker.seen(101, "a") and tracker.seen(103, "c")
    assert not tracker.seen(101)
    assert tracker.seen(102, "b")
    assert (tracker.cursor, tracker.cursor_created) == (103, "c")


def test_a_bogus_id_is_delivered_reported_once_and_does_not_move_the_cursor() -> None:
    """After an id 2**62 on the socket, the next gap still starts after the last sane event."""
    reports: list[tuple[int, str]] = []
    tracker = GapTracker(on_suspect=lambda i, why: reports.append((i, why)))
    tracker.connected(Newest(1000, T0))
    assert tracker.seen(1001)
    assert tracker.seen(2**62), "a suspect event is still delivered"
    assert not tracker.seen(2**62)
    assert tracker.seen(1002)
    assert tracker.cursor == 1002
    assert [i for i, _ in reports] == [2**62] and tracker.suspects == 1
    tracker.lost()
    gap = tracker.connected(Newest(1302, T0))
    assert gap is not None and gap.start.last_id == 1002 and gap.until == 1302


def test_ids_within_the_bound_are_trusted_step_by_step() -> None:
    """The bound is relative to the highest trusted id, so a steady stream is never suspect."""
    tracker = GapTracker(max_id_jump=10)
    tracker.connected(Newest(0))
    for event_id in range(10, 200, 10):
        tracker.seen(event_id)
    assert tracker.cursor == 190 and tracker.suspects == 0
    tracker.seen(201)
    assert tracker.cursor == 190 and tracker.suspects == 1


def test_a_bogus_id_before_the_floor_is_known_is_caught_at_connection() -> None:
    """Events that arrive before the REST API answered are checked against its newest id."""
    reports: list[int] = []
    tracker = GapTracker(on_suspect=lambda i, why: reports.append(i))
    tracker.seen(2**62)
    assert tracker.connected(Newest(500, T0)) is None
    assert tracker.cursor is None and tracker.floor == 500 and reports == [2**62]
    tracker.lost()
    gap = tracker.connected(Newest(520, T0))
    assert gap is not None and gap.start.last_id == 500


def test_no_event_seen_the_gap_starts_at_the_floor_not_at_a_time() -> None:
    """A listener that saw nothing recovers from the newest id at connection time."""
    tracker = GapTracker()
    tracker.connected(Newest(700, T0))
    tracker.lost(now=0.0)  # a wildly wrong clock changes nothing
    gap = tracker.connected(Newest(720, T0 + timedelta(seconds=30)))
    assert gap == Gap(
        GapStart(last_id=700, last_created=T0), 720, T0 + timedelta(seconds=30) - timedelta(days=1)
    )


def test_only_when_nothing_is_known_the_clock_is_a_last_resort_with_a_margin() -> None:
    """No event and no floor: the gap starts clock_margin before the loss."""
    tracker = GapTracker(clock_margin=3600)
    tracker.lost(now=T0.timestamp())
    gap = tracker.connected(None)
    assert gap is not None
    assert gap.start == GapStart(since_time=T0 - timedelta(hours=1)) and gap.until is None


def test_losses_before_the_next_connection_make_one_gap_from_the_first() -> None:
    """Two losses without a live connection between them: one gap, from the earlier start."""
    tracker = GapTracker()
    tracker.connected(Newest(10))
    tracker.seen(11)
    tracker.lost()
    tracker.seen(12)  # a frame of a connection that died before it was confirmed live
    tracker.lost()
    gap = tracker.connected(Newest(30))
    assert gap is not None and gap.start.last_id == 11 and tracker.pending == 1


def test_gaps_queue_oldest_first() -> None:
    """Each connection closes its gap; recovery takes them in order."""
    tracker = GapTracker()
    tracker.connected(Newest(10))
    tracker.lost()
    tracker.connected(Newest(20))
    tracker.seen(25)
    tracker.lost()
    tracker.connected(Newest(30))
    first, second = tracker.next_gap(), tracker.next_gap()
    assert first is not None and second is not None and tracker.next_gap() is None
    assert (first.start.last_id, first.until) == (10, 20)
    assert (second.start.last_id, second.until) == (25, 30)


@pytest.mark.parametrize("cursor", [900, 1000 + DEFAULT_MAX_ID_JUMP])
def test_a_restored_cursor_within_reason_is_kept(cursor: int) -> None:
    """A spool's cursor at or a little past the REST API's newest id is where the gap starts."""
    tracker = GapTracker()
    tracker.restore(GapStart(last_id=cursor))
    gap = tracker.connected(Newest(1000))
    assert gap is not None and gap.start.last_id == cursor and tracker.suspects == 0


def test_a_restored_cursor_beyond_the_rest_api_is_replaced_by_the_floor() -> None:
    """A spool that kept 2**62 as its cursor recovers from the newest id, reported once."""
    reports: list[int] = []
    tracker = GapTracker(on_suspect=lambda i, why: reports.append(i))
    tracker.restore(GapStart(last_id=2**62))
    gap = tracker.connected(Newest(1000, T0))
    assert gap is not None and gap.start == GapStart(last_id=1000, last_created=T0)
    assert reports == [2**62] and tracker.cursor is None
    tracker.seen(1001)
    assert tracker.cursor == 1001


def test_max_age_is_measured_on_the_servers_clock() -> None:
    """A server whose clock is a day behind: its recent entries are young, whatever our clock."""
    behind = datetime.now(timezone.utc) - timedelta(days=1, minutes=10)
    tracker = GapTracker(max_age=3600)
    tracker.connected(Newest(10, behind))
    tracker.lost()
    gap = tracker.connected(Newest(20, behind))
    assert gap is not None
    assert tracker.accept(entry(11, behind - timedelta(minutes=59)), gap)
    assert not tracker.accept(entry(12, behind - timedelta(minutes=61)), gap)
    assert tracker.accept({"id": 13}, gap), "an entry without a time is kept, not lost"


def test_accept_drops_duplicates_and_entries_without_an_id() -> None:
    """Recovered entries seen live, or without an integer id, are not delivered."""
    tracker = GapTracker()
    tracker.connected(Newest(1))
    tracker.seen(5)
    gap = Gap(GapStart(last_id=1))
    assert not tracker.accept({"id": 5}, gap)
    assert not tracker.accept({"id": True}, gap)
    assert not tracker.accept({"created": "x"}, gap)
    assert tracker.accept({"id": 6, "created": "2026-01-01T00:00:00Z"}, gap)
    assert (tracker.cursor, tracker.cursor_created) == (6, "2026-01-01T00:00:00Z")


def test_date_from_is_the_start_entrys_time_minus_a_margin() -> None:
    """The date fallback compares the server's time with the server's time."""
    tracker = GapTracker(created_margin=300)
    assert tracker.date_from(GapStart(last_id=1, last_created=T0)) == T0 - timedelta(minutes=5)
    assert tracker.date_from(GapStart(since_time=T0)) == T0
    assert tracker.date_from(GapStart(last_id=1)) is None


def test_resume_point_is_what_the_bridge_stores() -> None:
    """Before any event the resume point is the floor; after one, the cursor and its time."""
    tracker = GapTracker()
    tracker.connected(Newest(40, T0))
    assert tracker.resume_point() == GapStart(last_id=40, last_created=T0)
    tracker.seen(41, "2026-01-05T12:00:01Z")
    assert tracker.resume_point() == GapStart(last_id=41, last_created=T0 + timedelta(seconds=1))


@pytest.mark.parametrize(
    "options",
    [{"max_events": 0}, {"max_age": 0}, {"max_id_jump": 0}, {"dedupe_window": 0}],
)
def test_options_out_of_range_are_refused(options: dict[str, int]) -> None:
    """A limit out of range is a ValueError at construction."""
    with pytest.raises(ValueError):
        GapTracker(**options)  # type: ignore[arg-type]


def test_plausible_ids_are_within_the_bound_of_the_floor() -> None:
    """A stored id can be checked before it is restored: beyond the bound it is not."""
    tracker = GapTracker(max_id_jump=100)
    assert tracker.plausible(2**62), "nothing known yet"
    tracker.connected(Newest(1000))
    assert tracker.plausible(1100) and not tracker.plausible(1101)
