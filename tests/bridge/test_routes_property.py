"""Property: random events through random routes of a real bridge, against the emulator.

Every route's ``memory:`` sink holds exactly the events its filter takes and its cooldown lets
through, in spool order. The expectation is computed by a plain model written here from the
documented semantics (``docs/routing.md``), never by the bridge's own filter code; the
cooldown is judged by each event's ``received_at``, read from a route that takes everything.
"""

from __future__ import annotations

import asyncio
import fnmatch
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroio.bridge import Bridge
from neuroio.bridge.config import CooldownConfig, FilterConfig, RouteConfig
from neuroio.sinks import MemorySink, SpooledEvent
from neuroio.testing import Emulator

from ._common import TOKEN

RESULTS = ["new", "reinit", "exact", "ha", "junk", "nm", "det"]
MOODS = ["neutral", "anger", "happiness", "surprise", "nm"]
LIVENESS = ["passed", "failed", "undetermined"]
SOURCES = [{"id": 1, "name": "Main entrance"}, {"id": 2, "name": "Back door"},
           {"id": 3, "name": "Gate 1"}]  # fmt: skip
PIDS = ["p1", "p2", "p3"]

# JMESPath expressions with the same rule written in Python (null fails a comparison).
WHERE: dict[str, Callable[[dict[str, Any]], bool]] = {
    "data.confidence > `80`": lambda d: _num(d.get("confidence")) and d["confidence"] > 80,
    "data.source.id == `2`": lambda d: isinstance(d.get("source"), dict) and d["source"]["id"] == 2,
    "contains(['exact', 'ha'], data.result)": lambda d: d.get("result") in ("exact", "ha"),
}

entries = st.fixed_dictionaries(
    {"result": st.sampled_from(RESULTS)},
    optional={
        "confidence": st.sampled_from([0, 50.5, 79.3, 80, 86.78, 100]),
        "age": st.integers(0, 90),
        "sex": st.sampled_from([0, 1]),
        "mood": st.sampled_from(MOODS),
        "liveness": st.sampled_from(LIVENESS),
        "pid": st.sampled_from([*PIDS, None, ""]),
        "source": st.sampled_from(SOURCES),
        "space": st.sampled_from([{"id": 17}, {"id": 18}]),
    },
)


def _few(values: list[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True).map(tuple)


filters = st.fixed_dictionaries(
    {},
    optional={
        "result": _few(RESULTS),
        "mood": _few(MOODS),
        "liveness": _few(LIVENESS),
        "confidence_min": st.sampled_from([50, 79.3, 80]),
        "confidence_max": st.sampled_from([80, 90, 100]),
        "age_min": st.sampled_from([0, 18, 30]),
        "age_max": st.sampled_from([30, 60, 90]),
        "sex": st.sampled_from([0, 1]),
        "source_id": _few([1, 2, 3]),
        "source_name": _few(["Main*", "*door", "Gate ?", "[BG]*"]),
        "space_id": _few([17, 18]),
        "pid": _few(PIDS),
        "known": st.booleans(),
        "backfilled": st.booleans(),
        "where": st.sampled_from(sorted(WHERE)),
    },
).map(lambda keys: msgspec.convert(keys, FilterConfig))

cooldowns = st.builds(
    CooldownConfig,
    key=st.sampled_from([("pid",), ("source.id",), ("pid", "source.id")]),
    seconds=st.sampled_from([0.001, 0.004, 0.015, 60.0]),
)

routes = st.lists(
    st.tuples(st.none() | filters, st.none() | cooldowns), min_size=1, max_size=3
).map(
    lambda rules: [
        RouteConfig(name=f"route{i}", to="memory:", filter=f, cooldown=c)
        for i, (f, c) in enumerate(rules)
    ]
)


# -- the model ------------------------------------------------------------------------------


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def model_takes(f: FilterConfig, event: dict[str, Any]) -> bool:
    d = event["data"]
    source = d.get("source") or {}
    confidence = d.get("confidence") if _num(d.get("confidence")) else None
    checks = [
        f.result is None or d.get("result") in f.result,
        f.mood is None or d.get("mood") in f.mood,
        f.liveness is None or d.get("liveness") in f.liveness,
        f.confidence_min is None or (confidence is not None and confidence >= f.confidence_min),
        f.confidence_max is None or (confidence is not None and confidence <= f.confidence_max),
        f.age_min is None or (_num(d.get("age")) and d["age"] >= f.age_min),
        f.age_max is None or (_num(d.get("age")) and d["age"] <= f.age_max),
        f.sex is None or ("sex" in d and d["sex"] == f.sex),
        f.source_id is None or source.get("id") in f.source_id,
        f.source_name is None
        or any(fnmatch.fnmatchcase(source.get("name", "\0"), p) for p in f.source_name),
        f.space_id is None or (d.get("space") or {}).get("id") in f.space_id,
        f.pid is None or d.get("pid") in f.pid,
        f.known is None or bool(d.get("pid")) == f.known,
        f.backfilled is None or bool(event.get("backfilled")) == f.backfilled,
        f.where is None or WHERE[f.where](d),
    ]  # fmt: skip
    return all(checks)


def model_key(event: dict[str, Any], paths: tuple[str, ...]) -> tuple[str, ...]:
    key = []
    for path in paths:
        value: Any = event["data"]
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        key.append("unknown" if value in (None, "") else str(value))
    return tuple(key)


def expected(route: RouteConfig, everything: list[SpooledEvent]) -> list[int]:
    last: dict[tuple[str, ...], float] = {}
    out = []
    for spooled in everything:
        event = msgspec.json.decode(spooled.payload)
        if route.filter is not None and not model_takes(route.filter, event):
            continue
        if route.cooldown is not None:
            key = model_key(event, route.cooldown.key)
            if key in last and spooled.received_at - last[key] < route.cooldown.seconds:
                continue
            last[key] = spooled.received_at
        out.append(spooled.id)
    return out


# -- the property ---------------------------------------------------------------------------


async def scenario(
    configs: list[RouteConfig], batch: list[tuple[bool, dict[str, Any]]], tmp: Path
) -> None:
    everything = MemorySink("everything")
    async with Emulator(tokens=[TOKEN]) as emulator:
        bridge = Bridge(
            TOKEN,
            [everything],
            routes=configs,
            url=emulator.url,
            spool=tmp / "spool.db",
            backfill=False,
            ping_interval=5.0,
        )
        async with bridge:
            await emulator.wait_for_clients(1)
            # A pause (until what was sent arrived) before some events spreads their
            # received_at over a few milliseconds, so short cooldown windows open and close.
            for sent, (pause, entry) in enumerate(batch):
                if pause:
                    await everything.wait_for(sent)
                await emulator.emit(dict(entry))
            await everything.wait_for(len(batch))
            assert bridge.pipeline is not None
            await bridge.pipeline.wait_delivered(timeout=5)
            sinks = {s.name: s for s in bridge.sinks}
            for route in configs:
                sink = sinks[route.name]
                assert isinstance(sink, MemorySink)
                want = expected(route, everything.events)
                assert sink.ids == want, (route, sink.ids, want)
                status = bridge.pipeline.status[route.name]
                assert status.delivered == len(want)
                assert status.filtered + status.suppressed + len(want) == len(batch)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(configs=routes, batch=st.lists(st.tuples(st.booleans(), entries), min_size=1, max_size=40))
def test_every_route_holds_exactly_what_its_rules_let_through(
    configs: list[RouteConfig], batch: list[tuple[bool, dict[str, Any]]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="neuroio-routes-") as tmp:
        asyncio.run(asyncio.wait_for(scenario(configs, batch, Path(tmp)), 20))
