"""The fleet's rules with no I/O: leases expired by observation, targets, what to take or give up.

A fleet is several bridge processes (*workers*) sharing one list of streams through one
JetStream key-value bucket. This module decides; :mod:`neuroio.bridge._fleet` watches the
bucket, writes it and drives the bridge. Every time here is a ``now`` given by the caller, on
the caller's own monotonic clock; no two workers' clocks are ever compared.

Keys of the bucket (stream names and worker ids are ``[A-Za-z0-9_.-]+``, without an empty
dot-separated part, so that every key is a valid subject):

``lease.<stream>``
    ``{"worker": id, "at": wall time, "n": serial}``: held by that worker. Written only with a
    revision check (``update(key, value, last=revision)``), so exactly one of several writers
    that saw the same revision wins.
``mark.<stream>``
    The stream's watermark (decimal id): every event with an id up to it has been delivered
    to every route. Written by the stream's holder when it grows, at most once a second, and
    once more when it gives the stream up. The bucket has no TTL: marks outlive leases.
``worker.<id>``
    ``{"at": wall time, "n": serial}``: the worker is alive; renewed like a lease.
``rejected.<stream>``
    ``{"worker": id, "reason": text}`` while the platform refuses the stream's token on its
    holder; every worker reports it on ``/healthz``.

**Expiry by observation.** Every worker watches the whole bucket and remembers, for each key,
the revision it last saw and when (its own clock) it first saw that revision. A lease or worker
key whose revision has not changed for ``ttl`` seconds is expired (:meth:`Observations.expired`).
Nobody's wall clock is trusted, only the rate of each worker's own clock.

**Renewal and fencing.** A holder renews each lease every ``ttl / 3`` with a revision-checked
update; a refused update means another worker took it: the stream is stopped at once. A holder
whose last successful renewal request was *sent* ``ttl - margin`` seconds ago stops the stream
(:func:`fence_deadline`), whether or not it can reach NATS. A taker writes only after seeing the
lease's last revision unchanged for ``ttl`` of its own clock, and it saw that revision after
the holder sent it. So the holder has stopped at least ``margin`` seconds before any taker
starts, provided its ``stop_stream`` returns within ``margin`` and the clocks' rates differ by
less than ``margin / ttl`` (``margin`` defaults to ``ttl / 5``: 20%).

**Bounds** (``ttl`` 10 s by default, ``tick`` = min(1 s, ttl / 5)):

* Takeover after a SIGKILL: the others see the lease expire ``ttl`` after they saw its last
  renewal, which came before the kill, and take it at their next tick: at most
  ``ttl + tick`` after the kill, plus the watch's delivery latency, one more tick for each
  further :func:`acquire_limit` streams a taker needs, and the stream's connect time (at least
  ``ttl - ttl / 3``, as renewals are ``ttl / 3`` apart). A worker renews its worker key
  before its leases, so the others count it gone no later than its leases expire.
* Overlap (two workers both connected for one stream): 0, as long as ``stop_stream`` returns
  within ``margin`` and the clock-rate drift stays below ``margin / ttl``; a stalled event
  loop (longer than ``margin``) on the holder is the one way past it.
* A network partition: the cut-off worker stops all its streams ``ttl - margin`` after its last
  successful renewal, before any other worker can take them (``ttl`` after seeing it); the
  others take them ``ttl`` to ``ttl + tick`` after that renewal. It takes streams again only
  through the bucket, once it reaches NATS again.
* A worker that leaves cleanly (SIGTERM) deletes its leases: the others take them at once.

**Balancing.** The live workers (worker keys not expired, and always oneself), sorted by id;
with ``N`` streams and ``m`` workers the worker of rank ``r`` targets
``N // m + (1 if r < N % m else 0)`` streams (:func:`target`). Above target it gives up the
streams it likes least; below it, it takes free or expired streams it likes most, at most
:func:`acquire_limit` per tick. "Likes" is a rendezvous hash of (stream, worker)
(:func:`affinity`): different workers prefer different streams, so they seldom race for one
key, and a stream tends to return to the same worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

__all__ = [
    "LEASE",
    "MARK",
    "REJECTED",
    "WORKER",
    "Acquire",
    "Observations",
    "Plan",
    "Seen",
    "acquire_limit",
    "affinity",
    "decode_json",
    "decode_mark",
    "encode_json",
    "fence_deadline",
    "key",
    "name_problem",
    "parse_key",
    "plan",
    "target",
]

LEASE = "lease"
MARK = "mark"
WORKER = "worker"
REJECTED = "rejected"
_KINDS = frozenset({LEASE, MARK, WORKER, REJECTED})
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def name_problem(name: str) -> str | None:
    """What keeps ``name`` (a stream name or worker id) from being part of a key, or ``None``.

    It must be ``[A-Za-z0-9_.-]+`` without a leading, trailing or doubled dot (a key is a NATS
    subject, whose dot-separated parts cannot be empty).
    """
    if _NAME.fullmatch(name):
        return None
    return f"{name!r} is not [A-Za-z0-9_.-]+ without a leading, trailing or doubled dot"


def key(kind: str, name: str) -> str:
    """The key of ``kind`` (:data:`LEASE`, :data:`MARK`, :data:`WORKER`, :data:`REJECTED`)
    for the stream or worker ``name``."""
    return f"{kind}.{name}"


def parse_key(text: str) -> tuple[str, str] | None:
    """``(kind, name)`` of a bucket key, ``None`` for a key the fleet does not write."""
    kind, dot, name = text.partition(".")
    if not dot or kind not in _KINDS or not name:
        return None
    return kind, name


def encode_json(value: Mapping[str, object]) -> bytes:
    """A value of a lease, worker or rejected key."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode_json(raw: bytes | None) -> dict[str, object]:
    """A JSON object value; ``{}`` for anything else (a foreign or damaged value)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def decode_mark(raw: bytes | None) -> int | None:
    """The event id of a ``mark.<stream>`` value, ``None`` when absent or not an integer."""
    if not raw:
        return None
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Seen:
    """The last revision of one key a worker saw.

    Attributes:
        revision: the key's revision (its message's sequence in the bucket's stream).
        since: when (the observer's clock) this revision was first seen.
        value: its value; ``None`` when the revision deleted the key.
    """

    revision: int
    since: float
    value: bytes | None

    @property
    def deleted(self) -> bool:
        """Whether the key is deleted (a free lease, a departed worker)."""
        return self.value is None


class Observations:
    """What one worker has seen of the bucket, each key with since when it has not changed.

    Args:
        ttl: seconds a lease or worker key may stay unchanged before it is expired.
    """

    def __init__(self, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be > 0")
        self.ttl = ttl
        self._seen: dict[str, Seen] = {}

    def saw(self, key: str, revision: int, value: bytes | None, now: float) -> bool:
        """Record a revision of ``key`` (``value`` ``None`` for a deletion) seen at ``now``.

        The same revision seen again (a watch started anew) keeps its first time, so a watch
        restarted after a reconnect does not make an old lease look fresh. An older revision
        than the one known (a late, reordered delivery) is ignored.

        Returns:
            whether it is a revision not seen before.
        """
        known = self._seen.get(key)
        if known is not None and revision <= known.revision:
            return False
        self._seen[key] = Seen(revision, now, value)
        return True

    def get(self, key: str) -> Seen | None:
        """The last revision of ``key`` seen, ``None`` when never seen."""
        return self._seen.get(key)

    def expired(self, key: str, now: float) -> bool:
        """Whether ``key`` exists and its revision has not changed for ``ttl`` seconds."""
        seen = self._seen.get(key)
        return seen is not None and not seen.deleted and now - seen.since >= self.ttl

    def free(self, key: str, now: float) -> bool:
        """Whether ``key`` can be taken now: never written, deleted, or expired."""
        seen = self._seen.get(key)
        return seen is None or seen.deleted or now - seen.since >= self.ttl

    def last_revision(self, key: str) -> int:
        """The revision a revision-checked write of ``key`` must name (0: never seen)."""
        seen = self._seen.get(key)
        return 0 if seen is None else seen.revision

    def names(self, kind: str) -> list[str]:
        """The names of every key of ``kind`` seen and not deleted, sorted."""
        found = []
        for text, seen in self._seen.items():
            parsed = parse_key(text)
            if parsed is not None and parsed[0] == kind and not seen.deleted:
                found.append(parsed[1])
        return sorted(found)

    def live_workers(self, me: str, now: float) -> list[str]:
        """Worker ids whose keys are not expired, with ``me`` always among them, sorted."""
        live = {w for w in self.names(WORKER) if not self.expired(key(WORKER, w), now)}
        live.add(me)
        return sorted(live)

    def holder(self, stream: str, now: float) -> str | None:
        """The worker named by the stream's lease while the lease is in force, else ``None``."""
        lease = key(LEASE, stream)
        if self.free(lease, now):
            return None
        seen = self._seen[lease]
        worker = decode_json(seen.value).get("worker")
        return worker if isinstance(worker, str) else "?"


def target(worker: str, live: Sequence[str], streams: int) -> int:
    """How many of ``streams`` streams ``worker`` should hold among the ``live`` workers.

    Workers are ranked by id; the first ``streams % len(live)`` take one more than the
    others, so the targets add up to ``streams`` and differ by at most one.
    """
    ranked = sorted(set(live) | {worker})
    count = len(ranked)
    rank = ranked.index(worker)
    return streams // count + (1 if rank < streams % count else 0)


def affinity(stream: str, worker: str) -> int:
    """How much ``worker`` prefers ``stream``: a rendezvous hash, the same on every worker."""
    digest = hashlib.blake2b(f"{stream}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def acquire_limit(target: int) -> int:
    """Streams one worker tries to take per tick: a quarter of its target, at least 4.

    Small enough that workers starting together share the free streams instead of the first
    one taking them all, large enough that a takeover of many streams needs few ticks.
    """
    return max(4, math.ceil(target / 4))


def fence_deadline(sent: float, ttl: float, margin: float) -> float:
    """When a holder must have stopped a stream whose last successful renewal was sent at
    ``sent`` (its own clock): ``margin`` seconds before any observer can see it expired."""
    return sent + ttl - margin


@dataclasses.dataclass(frozen=True)
class Acquire:
    """Take ``stream`` with a revision-checked write naming ``last`` (0: the key is new)."""

    stream: str
    last: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """One tick's decision.

    Attributes:
        target: how many streams this worker should hold.
        live: the live workers, sorted.
        release: held streams to give up (least preferred first).
        acquire: streams to take (most preferred first).
    """

    target: int
    live: tuple[str, ...]
    release: tuple[str, ...] = ()
    acquire: tuple[Acquire, ...] = ()


def plan(
    me: str,
    streams: Sequence[str],
    held: Collection[str],
    seen: Observations,
    now: float,
    *,
    busy: Iterable[str] = (),
) -> Plan:
    """What worker ``me`` should do now to reach its share of ``streams``.

    Args:
        me: this worker's id.
        streams: every configured stream (the same list on every worker).
        held: the streams ``me`` holds (including ones it is still starting).
        seen: what it has seen of the bucket.
        now: its clock, as in ``seen``.
        busy: streams with an operation under way (a release): neither taken nor given up.
    """
    live = seen.live_workers(me, now)
    goal = target(me, live, len(streams))
    busy_set = set(busy)
    mine = [s for s in streams if s in held and s not in busy_set]
    count = len([s for s in streams if s in held])
    if count > goal:
        # Give up the streams this worker likes least: they are the ones another worker likes
        # more, so assignments stay put across ticks.
        ordered = sorted(mine, key=lambda s: affinity(s, me))
        return Plan(goal, tuple(live), release=tuple(ordered[: count - goal]))
    if count < goal:
        candidates = [
            s
            for s in streams
            if s not in held and s not in busy_set and seen.free(key(LEASE, s), now)
        ]
        candidates.sort(key=lambda s: affinity(s, me), reverse=True)
        chosen = candidates[: min(goal - count, acquire_limit(goal))]
        return Plan(
            goal,
            tuple(live),
            acquire=tuple(Acquire(s, seen.last_revision(key(LEASE, s))) for s in chosen),
        )
    return Plan(goal, tuple(live))
