"""Realistic NeuroIO entries for the emulator, the demo and tests.

:class:`EntryFactory` produces the entries of one space as the platform would push them
(``docs/protocol.md``): every documented field, ids that increase, ``created`` in
ISO-8601 UTC with milliseconds and ``Z``, people who come back (``exact``/``ha`` results reuse
a ``pid`` seen before, ``new`` starts one), confidences on the right side of the platform's
default thresholds, and a few cameras with uneven traffic. Seeded, it is reproducible.
"""

from __future__ import annotations

import bisect
import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from ..exceptions import ConfigurationError

__all__ = ["OMIT", "EntryFactory", "entry_image_url", "person_image_url"]

# Default recognition thresholds (docs/protocol.md): a confidence at or above
# EXACT is an exact match, at or above HA a high-accuracy one, at or above JUNK junk.
_EXACT = 79.3
_HA = 75.5
_JUNK = 68.84

# The confidence range of each result (``nm``/``det``: 0).
_CONFIDENCE_RANGES = {
    "exact": (_EXACT, 99.6),
    "reinit": (_EXACT, 99.6),
    "ha": (_HA, _EXACT - 0.01),
    "junk": (_JUNK, _HA - 0.01),
    "new": (12.0, _JUNK - 0.01),
}

_RESULTS = ("exact", "new", "ha", "junk", "reinit", "nm", "det")
_RESULT_WEIGHTS = (52, 14, 11, 8, 3, 6, 6)
_MOODS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "contempt",
    "disgust",
    "fear",
    "nm",
)
_MOOD_WEIGHTS = (52, 18, 6, 6, 4, 3, 2, 2, 7)
_LIVENESS = ("passed", "undetermined", "failed")
_LIVENESS_WEIGHTS = (84, 11, 5)
_SOURCES = (
    (1, "Main entrance"),
    (2, "Lobby"),
    (3, "Checkout 1"),
    (4, "Checkout 2"),
    (5, "Staff door"),
)
_SOURCE_WEIGHTS = (40, 25, 14, 14, 7)
_SPACE = (17, "Demo store")
_MEDIA = "https://media.neuroio.com/v1/spaces"
# Mean seconds between two entries when ``created`` is simulated (``start_time`` given).
_MEAN_GAP = 2.0
# Known people kept for ``exact``/``ha``/``junk``/``reinit`` results to refer back to.
_POOL_SIZE = 400
_POOL_PRESEED = 60


def _cumulative(weights: tuple[int, ...]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for w in weights:
        total += w
        out.append(total)
    return out


_RESULT_CUM = _cumulative(_RESULT_WEIGHTS)
_MOOD_CUM = _cumulative(_MOOD_WEIGHTS)
_LIVENESS_CUM = _cumulative(_LIVENESS_WEIGHTS)
_SOURCE_CUM = _cumulative(_SOURCE_WEIGHTS)


def _pick(values: tuple[Any, ...], cum: list[float], r: float) -> Any:
    """The value whose cumulative weight bracket holds ``r`` in ``[0, 1)``."""
    return values[bisect.bisect_right(cum, r * cum[-1])]


class _Omit:
    """The type of :data:`OMIT`."""

    _instance: _Omit | None = None

    def __new__(cls) -> _Omit:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()
"""Pass as an override to leave a field out: ``factory.make(face_image=OMIT)``."""


class _Person:
    __slots__ = ("pid", "created", "sex", "age", "face_image", "full_image")

    def __init__(
        self, pid: str, created: str, sex: int, age: int, face_image: str, full_image: str
    ) -> None:
        self.pid = pid
        self.created = created
        self.sex = sex
        self.age = age
        self.face_image = face_image
        self.full_image = full_image


def entry_image_url(
    base: str, entry_id: int, kind: str, *, day: str = "2019/07/29", salt: int = 0
) -> str:
    """The URL of an entry's ``kind`` (``"face"`` or ``"full"``) picture under ``base``.

    Laid out as the platform's links, ``<base>/v1/spaces/<space>/entries/<day>/<key>/``,
    and as long: the 32 hex digits of the key are the id (16) then ``salt`` (16), so the
    emulator finds the entry from the link. ``day`` is ``YYYY/MM/DD``.
    """
    return f"{base}/v1/spaces/{_SPACE[0]}/entries/{day}/{entry_id:016x}{salt:016x}/{kind}.png"


def person_image_url(base: str, pid: str, kind: str) -> str:
    """The URL of a person's ``kind`` picture under ``base``."""
    return f"{base}/v1/spaces/{_SPACE[0]}/persons/{pid}/{kind}.png"


def _iso(dt: datetime) -> str:
    """``2019-07-29T13:53:27.306Z`` from an aware UTC datetime."""
    return dt.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class EntryFactory:
    """Seedable generator of realistic entries of one space.

    Args:
        seed: seed of the generator; the same seed gives the same entries (pass
            ``start_time`` too, or ``created`` follows the wall clock).
        start_id: the id of the first entry.
        start_time: simulate ``created``: the first entry is at this time and the next ones
            follow at random gaps (about two seconds). ``None``: ``created`` is the current
            time, never going backwards.
        clock_offset: seconds added to the wall clock for ``created`` (a server whose clock
            is off); ignored with ``start_time``. Also the :attr:`clock_offset` attribute.
        media_url: where the image URLs point: ``None`` (default), the platform's storage
            (``https://media.neuroio.com/...jpg``); else a base such as
            ``http://127.0.0.1:8080/media`` serving the pictures as :func:`entry_image_url`
            and :func:`person_image_url` lay them out (the emulator sets it to itself,
            ``.png``, same layout and length as the platform's). Also the
            :attr:`media_url` attribute.

    Each :meth:`make` returns a new ``dict`` holding every field of ``protocol.md``; its JSON
    is about 800 bytes.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        start_id: int = 1,
        start_time: datetime | None = None,
        clock_offset: float = 0.0,
        media_url: str | None = None,
    ) -> None:
        if not math.isfinite(clock_offset):
            raise ConfigurationError("clock_offset must be a finite number of seconds")
        self._rng = random.Random(seed)
        self._offset = float(clock_offset)
        self.media_url = media_url
        """Base of the image URLs; ``None``: the platform's storage."""
        self.next_id = start_id
        """The id the next generated entry gets (never lower than an id already seen)."""
        if start_time is not None and start_time.tzinfo is None:
            start_time = start_time.replace(tzinfo=timezone.utc)
        self._simulated = start_time is not None
        self._clock = start_time or self._wall_clock()
        self._first = True
        self._pool: list[_Person] = []
        for _ in range(_POOL_PRESEED):
            # People seen on earlier days, so the first entries can already be matches.
            past = self._clock - timedelta(seconds=self._rng.uniform(3600, 60 * 86400))
            self._pool.append(self._new_person(past, _iso(past)))

    def __repr__(self) -> str:
        return f"EntryFactory(next_id={self.next_id})"

    @property
    def clock_offset(self) -> float:
        """Seconds added to the wall clock for ``created``.

        Changing it steps the clock at once, backwards too, as a server whose clock is
        corrected does; ``created`` then follows the new clock, never going backwards again.
        """
        return self._offset

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            raise ConfigurationError("clock_offset must be a finite number of seconds")
        self._offset = float(seconds)
        if not self._simulated:
            self._clock = self._wall_clock()

    def now(self) -> datetime:
        """The wall clock plus :attr:`clock_offset` (``created`` follows it without
        ``start_time``)."""
        return self._wall_clock()

    def _wall_clock(self) -> datetime:
        now = datetime.now(timezone.utc)
        return now + timedelta(seconds=self._offset) if self._offset else now

    def observe(self, entry_id: int) -> None:
        """Note an id used elsewhere, so generated ids stay above it."""
        if entry_id >= self.next_id:
            self.next_id = entry_id + 1

    def make(self, **overrides: Any) -> dict[str, Any]:
        """The next entry.

        Args:
            overrides: fields to set instead of generated values (:data:`OMIT` removes a
                field). A ``result`` override is applied first, so the generated
                ``confidence``, ``pid`` and ``mood`` agree with it; an ``id`` override moves
                the following ids past it.

        Returns:
            The entry as a JSON-ready ``dict``.
        """
        rng = self._rng
        result = overrides.get("result")
        if not isinstance(result, str):
            result = _pick(_RESULTS, _RESULT_CUM, rng.random())
        entry_id = overrides.get("id")
        if isinstance(entry_id, int) and not isinstance(entry_id, bool):
            self.observe(entry_id)
        else:
            entry_id = self.next_id
            self.next_id += 1
        now = self._tick()
        created = _iso(now)
        entry_key = f"{rng.getrandbits(128):032x}"
        day = created[:10].replace("-", "/")

        person: _Person | None
        if result == "new":
            person = self._new_person(now, created)
            self._remember(person)
        elif result in ("exact", "ha", "junk", "reinit"):
            person = self._pool[int(rng.random() * len(self._pool))]
        else:
            person = None

        confidence = self._confidence(result)
        mood = result if result in ("det", "nm") else _pick(_MOODS, _MOOD_CUM, rng.random())
        liveness = (
            "undetermined" if result == "det" else _pick(_LIVENESS, _LIVENESS_CUM, rng.random())
        )
        source_id, source_name = _pick(_SOURCES, _SOURCE_CUM, rng.random())
        media = self.media_url
        if media is None:
            base = f"{_MEDIA}/{_SPACE[0]}/entries/{day}/{entry_key}"
            face_image = f"{base}/face.jpg"
            full_image = f"{base}/full.jpg"
        else:
            # The entry key's low bits keep the links as long as the platform's.
            salt = int(entry_key[16:], 16)
            face_image = entry_image_url(media, entry_id, "face", day=day, salt=salt)
            full_image = entry_image_url(media, entry_id, "full", day=day, salt=salt)
        if person is not None:
            sex = person.sex
            age = max(1, person.age + int(rng.random() * 5) - 2)
            pid: str | None = person.pid
            pid_created: str | None = person.created
            if media is None:
                initial_face, initial_full = person.face_image, person.full_image
            else:
                initial_face = person_image_url(media, person.pid, "face")
                initial_full = person_image_url(media, person.pid, "full")
        else:
            sex = int(rng.random() * 2)
            age = 16 + int(rng.random() * 60)
            pid = pid_created = None
            initial_face, initial_full = face_image, full_image

        entry: dict[str, Any] = {
            "id": entry_id,
            "created": created,
            "pid": pid,
            "pid_created": pid_created,
            "result": result,
            "confidence": round(confidence, 2),
            "age": age,
            "sex": sex,
            "mood": mood,
            "liveness": liveness,
            "source": {"id": source_id, "name": source_name},
            "space": {"id": _SPACE[0], "name": _SPACE[1]},
            "face_image": face_image,
            "full_image": full_image,
            "initial_face_image": initial_face,
            "initial_full_image": initial_full,
            "facesize": 24 + int(rng.random() * 37)
            if result == "det"
            else 64 + int(rng.random() * 357),
            "exposure": round(rng.uniform(0.15, 0.95), 3),
            "pan": round(rng.uniform(-40.0, 40.0), 1),
            "tilt": round(rng.uniform(-25.0, 25.0), 1),
        }
        for key, value in overrides.items():
            if value is OMIT:
                entry.pop(key, None)
            else:
                entry[key] = value
        return entry

    def _confidence(self, result: str) -> float:
        """A confidence on the right side of the default thresholds for ``result``."""
        low, high = _CONFIDENCE_RANGES.get(result, (0.0, 0.0))
        return self._rng.uniform(low, high) if high else 0.0

    def _tick(self) -> datetime:
        if self._simulated:
            if self._first:
                self._first = False
            else:
                self._clock += timedelta(seconds=self._rng.expovariate(1.0 / _MEAN_GAP))
            return self._clock
        now = self._wall_clock()
        # The wall clock may step back (NTP); ``created`` must not, ids and times go together.
        if now > self._clock:
            self._clock = now
        return self._clock

    def _new_person(self, when: datetime, created: str) -> _Person:
        rng = self._rng
        n = rng.getrandbits(128)
        # Shape the random bits as a version-4 UUID.
        n = (n & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
        h = f"{n:032x}"
        pid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        day = created[:10].replace("-", "/")
        base = f"{_MEDIA}/{_SPACE[0]}/entries/{day}/{rng.getrandbits(128):032x}"
        return _Person(
            pid=pid,
            created=created,
            sex=rng.randint(0, 1),
            age=rng.randint(16, 75),
            face_image=f"{base}/face.jpg",
            full_image=f"{base}/full.jpg",
        )

    def _remember(self, person: _Person) -> None:
        if len(self._pool) < _POOL_SIZE:
            self._pool.append(person)
        else:
            self._pool[int(self._rng.random() * _POOL_SIZE)] = person
