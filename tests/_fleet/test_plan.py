"""The fleet's rules with no I/O: expiry by observation, targets, what a tick takes and gives up,
fencing deadlines. Times are plain numbers on the observer's clock."""

from __future__ import annotations

import pytest

from neuroio._fleet.plan import (
    LEASE,
    MARK,
    REJECTED,
    WORKER,
    Acquire,
    Observations,
    acquire_limit,
    affinity,
    decode_json,
    decode_mark,
    encode_json,
    fence_deadline,
    key,
    name_problem,
    parse_key,
    plan,
    target,
)

TTL = 10.0
STREAMS = [f"s{i}" for i in range(12)]


def lease(worker: str) -> bytes:
    return encode_json({"worker": worker, "at": 0, "n": 1})


def seen_workers(seen: Observations, *workers: str, now: float = 0.0) -> None:
    for revision, worker in enumerate(workers, start=1000):
        seen.saw(key(WORKER, worker), revision, b"{}", now)


# -- keys and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("lease.shop-1", (LEASE, "shop-1")),
        ("mark.a.b", (MARK, "a.b")),
        ("worker.host-12", (WORKER, "host-12")),
        ("rejected.x", (REJECTED, "x")),
        ("other.x", None),
        ("lease", None),
        ("lease.", None),
    ],
)
def test_parse_key(text: str, parsed: tuple[str, str] | None) -> None:
    """A key names its kind and its stream or worker; keys of others are not the fleet's."""
    assert parse_key(text) == parsed


@pytest.mark.parametrize("name", ["shop-1", "a.b", "A_9", "x"])
def test_names_that_fit_a_key(name: str) -> None:
    """Stream names and worker ids of [A-Za-z0-9_.-]+ with non-empty dot parts are keys."""
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", ".a", "a.", "a..b", "a b", "a*", "a>", "é"])
def test_names_that_do_not_fit_a_key(name: str) -> None:
    """A leading, trailing or doubled dot, or another character, cannot be in a subject."""
    assert name_problem(name) is not None


def test_values() -> None:
    """JSON values round-trip; a foreign value reads as nothing rather than failing."""
    assert decode_json(encode_json({"worker": "w1"})) == {"worker": "w1"}
    assert decode_json(b"not json") == {} == decode_json(b"[1]") == decode_json(None)
    assert decode_mark(b"1234") == 1234
    assert decode_mark(b"x") is None and decode_mark(None) is None and decode_mark(b"") is None


# -- expiry by observation -----------------------------------------------------------------


def test_a_key_expires_ttl_after_its_revision_was_first_seen() -> None:
    """Unchanged for ttl on the observer's clock: expired, whatever the writer's clock says."""
    seen = Observations(TTL)
    seen.saw("lease.a", 5, lease("w1"), now=100.0)
    assert not seen.expired("lease.a", 109.9)
    assert seen.expired("lease.a", 110.0)
    assert seen.free("lease.a", 110.0) and not seen.free("lease.a", 109.0)


def test_a_new_revision_restarts_the_clock() -> None:
    """A renewal (a new revision) is seen: the ttl counts from then."""
    seen = Observations(TTL)
    seen.saw("lease.a", 5, lease("w1"), now=100.0)
    assert seen.saw("lease.a", 6, lease("w1"), now=108.0)
    assert not seen.expired("lease.a", 115.0)
    assert seen.expired("lease.a", 118.0)


def test_the_same_revision_seen_again_keeps_its_first_time() -> None:
    """A watch started again after a reconnect delivers the same revision: still as old."""
    seen = Observations(TTL)
    seen.saw("lease.a", 5, lease("w1"), now=100.0)
    assert not seen.saw("lease.a", 5, lease("w1"), now=109.0)
    assert not seen.saw("lease.a", 4, lease("w0"), now=109.0)  # a late, older delivery
    assert seen.expired("lease.a", 110.0)


def test_deleted_and_unknown_keys_are_free_not_expired() -> None:
    """A released lease (a delete) is free at once; one never written is free, revision 0."""
    seen = Observations(TTL)
    seen.saw("lease.a", 5, lease("w1"), now=0.0)
    seen.saw("lease.a", 7, None, now=1.0)
    assert seen.free("lease.a", 1.0) and not seen.expired("lease.a", 100.0)
    assert seen.last_revision("lease.a") == 7
    assert seen.free("lease.b", 0.0) and seen.last_revision("lease.b") == 0


def test_live_workers_and_holders() -> None:
    """Worker keys not expired are live, oneself always; a lease in force names its holder."""
    seen = Observations(TTL)
    seen.saw(key(WORKER, "w2"), 1, b"{}", now=0.0)
    seen.saw(key(WORKER, "w3"), 2, b"{}", now=5.0)
    seen.saw(key(WORKER, "w4"), 3, None, now=5.0)
    assert seen.live_workers("w1", 6.0) == ["w1", "w2", "w3"]
    assert seen.live_workers("w1", 10.0) == ["w1", "w3"]
    seen.saw(key(LEASE, "a"), 4, lease("w3"), now=5.0)
    assert seen.holder("a", 6.0) == "w3"
    assert seen.holder("a", 15.0) is None
    assert seen.holder("b", 6.0) is None


def test_ttl_must_be_positive() -> None:
    """A ttl of 0 would expire every lease at once."""
    with pytest.raises(ValueError):
        Observations(0)


# -- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("streams", "workers", "expected"),
    [
        (12, 3, [4, 4, 4]),
        (12, 4, [3, 3, 3, 3]),
        (10, 3, [4, 3, 3]),
        (11, 3, [4, 4, 3]),
        (2, 3, [1, 1, 0]),
        (0, 2, [0, 0]),
        (60, 1, [60]),
    ],
)
def test_targets_add_up_and_differ_by_at_most_one(
    streams: int, workers: int, expected: list[int]
) -> None:
    """Rank r of m takes N // m, plus one for the first N % m ranks."""
    ids = [f"w{i}" for i in range(workers)]
    got = [target(w, ids, streams) for w in ids]
    assert got == expected and sum(got) == streams


def test_rank_is_by_id_whatever_the_order_given() -> None:
    """Every worker ranks the same way: by id, the list's order and duplicates do not matter."""
    assert target("b", ["c", "a", "b", "a"], 10) == 3
    assert target("a", ["c", "b"], 10) == 4  # oneself counts even when not (yet) listed


def test_affinity_is_deterministic_and_differs_between_workers() -> None:
    """The same on every worker; two workers prefer different streams."""
    assert affinity("s1", "w1") == affinity("s1", "w1")
    first = sorted(STREAMS, key=lambda s: affinity(s, "w1"))
    second = sorted(STREAMS, key=lambda s: affinity(s, "w2"))
    assert first != second


def test_acquire_limit() -> None:
    """A quarter of the target per tick, at least 4."""
    assert [acquire_limit(t) for t in (0, 4, 16, 17, 400)] == [4, 4, 4, 5, 100]


# -- plans -----------------------------------------------------------------------------------


def test_alone_it_takes_a_few_free_streams_per_tick() -> None:
    """One worker, 12 free streams: it wants them all, 4 per tick, revision 0 (never written)."""
    seen = Observations(TTL)
    decision = plan("w1", STREAMS, set(), seen, 0.0)
    assert decision.target == 12 and decision.live == ("w1",)
    assert len(decision.acquire) == 4
    assert all(a.last == 0 for a in decision.acquire)
    assert not decision.release


def test_workers_choose_different_streams() -> None:
    """Three workers at once each begin with the streams they like most: not all the same."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2", "w3")
    picks = [
        {a.stream for a in plan(w, STREAMS, set(), seen, 0.0).acquire} for w in ("w1", "w2", "w3")
    ]
    assert all(len(p) == 4 for p in picks)
    assert len(picks[0] | picks[1] | picks[2]) > 4


def test_held_leases_are_not_taken_until_expired() -> None:
    """Leases of a live worker are left alone; once unchanged for ttl they are taken, with the
    revision last seen (so a renewal in between makes the take fail)."""
    seen = Observations(TTL)
    seen_workers(seen, "w1")
    for revision, s in enumerate(STREAMS, start=1):
        seen.saw(key(LEASE, s), revision, lease("w2"), now=0.0)
    assert plan("w1", STREAMS, set(), seen, 9.0).acquire == ()
    later = plan("w1", STREAMS, set(), seen, 10.0)
    assert len(later.acquire) == 4
    for want in later.acquire:
        assert want.last == seen.last_revision(key(LEASE, want.stream))


def test_at_target_it_does_nothing() -> None:
    """Stable: holding its share, a worker neither takes nor gives up."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2", "w3")
    held = set(STREAMS[:4])
    decision = plan("w1", STREAMS, held, seen, 1.0)
    assert decision.target == 4 and decision.acquire == () and decision.release == ()


def test_a_joining_worker_makes_the_others_release() -> None:
    """A fourth worker appears: a worker holding 4 of 12 gives up one, the one it likes least."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2", "w3", "w4")
    held = set(STREAMS[:4])
    decision = plan("w1", STREAMS, held, seen, 1.0)
    assert decision.target == 3
    assert decision.release == (min(held, key=lambda s: affinity(s, "w1")),)
    assert decision.acquire == ()


def test_streams_being_released_are_neither_taken_nor_released_again() -> None:
    """A release under way counts as held but is not chosen again."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2", "w3", "w4")
    held = set(STREAMS[:5])
    first = plan("w1", STREAMS, held, seen, 1.0)
    assert len(first.release) == 2
    again = plan("w1", STREAMS, held, seen, 1.0, busy=first.release[:1])
    assert first.release[0] not in again.release and len(again.release) == 2


def test_a_departed_worker_raises_the_targets() -> None:
    """A worker key unchanged for ttl drops out: the survivors' targets grow, and its expired
    leases become theirs to take."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2", "w3", now=0.0)
    for revision, s in enumerate(STREAMS[8:], start=1):
        seen.saw(key(LEASE, s), revision, lease("w3"), now=0.0)
    for revision, w in enumerate(("w1", "w2"), start=2000):
        seen.saw(key(WORKER, w), revision, b"{}", now=9.0)
    held = set(STREAMS[:4])
    assert plan("w1", STREAMS, held, seen, 9.5).acquire == ()
    decision = plan("w1", STREAMS, held, seen, 10.0)
    assert decision.live == ("w1", "w2") and decision.target == 6
    assert {a.stream for a in decision.acquire} <= set(STREAMS[8:])
    assert len(decision.acquire) == 2


def test_a_released_lease_is_taken_over_its_tombstone() -> None:
    """A deleted lease is taken at once, naming the deletion's revision."""
    seen = Observations(TTL)
    seen_workers(seen, "w1", "w2")
    for revision, s in enumerate(STREAMS, start=1):
        seen.saw(key(LEASE, s), revision, lease("w2"), now=0.0)
    seen.saw(key(LEASE, "s3"), 50, None, now=1.0)
    decision = plan("w1", STREAMS, set(), seen, 1.0)
    assert decision.acquire == (Acquire("s3", 50),)


# -- fencing ---------------------------------------------------------------------------------


def test_fencing_comes_margin_before_anyone_can_take_over() -> None:
    """Renewal sent at t: the holder stops at t + ttl - margin; an observer that saw the
    renewal (necessarily after t) may take it no earlier than t + ttl."""
    sent = 50.0
    assert fence_deadline(sent, TTL, 2.0) == 58.0
    seen = Observations(TTL)
    seen.saw(key(LEASE, "a"), 9, lease("w1"), now=sent + 0.001)
    assert not seen.free(key(LEASE, "a"), fence_deadline(sent, TTL, 2.0) + 1.999)
