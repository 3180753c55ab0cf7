"""EntryFactory: realistic, reproducible entries."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import msgspec

from neuroio.messages import Entry
from neuroio.testing import OMIT, EntryFactory

# ---------------------------------------------------------------- entries


def test_factory_is_reproducible_with_seed_and_start_time() -> None:
    """The same seed and start_time give the same entries."""
    start = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    a = [EntryFactory(3, start_time=start).make() for _ in range(1)]
    b = [EntryFactory(3, start_time=start).make() for _ in range(1)]
    assert a == b
    fa, fb = EntryFactory(3, start_time=start), EntryFactory(3, start_time=start)
    assert [fa.make() for _ in range(50)] == [fb.make() for _ in range(50)]
    assert EntryFactory(4, start_time=start).make() != EntryFactory(3, start_time=start).make()


def test_factory_entries_are_realistic() -> None:
    """Every documented field, consistent results and confidences, increasing ids and
    times, returning people, a handful of cameras, about 800 bytes of JSON each."""
    factory = EntryFactory(11, start_id=1000)
    entries = [factory.make() for _ in range(3000)]
    fields = {
        "id", "created", "pid", "pid_created", "result", "confidence", "age", "sex",
        "mood", "liveness", "source", "space", "face_image", "full_image",
        "initial_face_image", "initial_full_image", "facesize", "exposure", "pan", "tilt",
    }  # fmt: skip
    assert all(set(e) == fields for e in entries)
    assert [e["id"] for e in entries] == list(range(1000, 4000))
    created = [e["created"] for e in entries]
    assert created == sorted(created)
    assert all(c.endswith("Z") and len(c) == 24 for c in created)
    for e in entries:
        parsed = Entry.from_dict(e)
        assert not parsed.extra, e  # every value fits the typed entry
        c = e["confidence"]
        r = e["result"]
        if r in ("exact", "reinit"):
            assert c >= 79.3
        elif r == "ha":
            assert 75.5 <= c < 79.3
        elif r == "junk":
            assert 68.84 <= c < 75.5
        elif r == "new":
            assert c < 68.84 and e["pid_created"] == e["created"]
        if r in ("nm", "det"):
            assert e["pid"] is None
        else:
            assert e["pid"] is not None and e["pid_created"] <= e["created"]
    results = Counter(e["result"] for e in entries)
    assert set(results) == {"new", "reinit", "exact", "ha", "junk", "nm", "det"}
    assert results.most_common(1)[0][0] == "exact"
    assert len({e["source"]["id"] for e in entries}) <= 6
    pids = Counter(e["pid"] for e in entries if e["pid"])
    assert pids.most_common(1)[0][1] > 1  # people come back
    sizes = [len(msgspec.json.encode(e)) for e in entries]
    assert 700 <= sum(sizes) / len(sizes) <= 900


def test_factory_overrides() -> None:
    """Overrides replace fields; a result override keeps the confidence consistent; an id
    override moves later ids past it; OMIT removes a field."""
    factory = EntryFactory(1)
    junk = factory.make(result="junk")
    assert 68.84 <= junk["confidence"] < 75.5
    assert factory.make(id=100)["id"] == 100
    assert factory.make()["id"] == 101
    assert "tilt" not in factory.make(tilt=OMIT)
    assert factory.make(age=None)["age"] is None
