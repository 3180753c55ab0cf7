"""A route's rules over a batch: the filter first, then the cooldown, by event time."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroio._routing.rules import Judges, RouteRules
from neuroio.bridge.config import CooldownConfig, FilterConfig, RouteConfig
from neuroio.sinks import SpooledEvent


def spooled(seq: int, at: float, **data: object) -> SpooledEvent:
    payload = json.dumps({"id": seq, "data": data}).encode()
    return SpooledEvent(seq=seq, id=seq, payload=payload, received_at=at)


def test_a_route_without_filter_or_cooldown_has_no_rules() -> None:
    assert RouteRules.from_config(RouteConfig(name="all", to="memory:")) is None


def test_filter_then_cooldown_counts_each_apart() -> None:
    route = RouteConfig(
        name="doors",
        to="memory:",
        filter=FilterConfig(result=("exact",)),
        cooldown=CooldownConfig(key=("pid",), seconds=10),
    )
    rules = RouteRules.from_config(route)
    assert rules is not None
    batch = [
        spooled(1, 0.0, result="exact", pid="a"),
        spooled(2, 1.0, result="junk", pid="a"),
        spooled(3, 2.0, result="exact", pid="a"),  # within a's window
        spooled(4, 3.0, result="exact", pid="b"),
        spooled(5, 10.0, result="exact", pid="a"),  # a's window is over
    ]
    verdicts = [rules.judge(msgspec.json.decode(e.payload)) for e in batch]
    assert verdicts[:3] == [("a",), False, ("a",)]
    taken, filtered, suppressed = rules.select(batch, verdicts)
    assert [e.seq for e in taken] == [1, 4, 5]
    assert (filtered, suppressed) == (1, 1)
    # An event the filter refused never opened a window: c's filtered event does not count.
    again = [spooled(6, 11.0, result="junk", pid="c"), spooled(7, 12.0, result="exact", pid="c")]
    verdicts = [rules.judge(msgspec.json.decode(e.payload)) for e in again]
    taken, filtered, suppressed = rules.select(again, verdicts)
    assert [e.seq for e in taken] == [7] and (filtered, suppressed) == (1, 0)


sources = st.sampled_from([{"id": 1}, {"id": 2}, {"id": "2"}, {"id": True}, "cam", None, {}])
events = st.fixed_dictionaries(
    {"id": st.integers(1, 9)},
    optional={
        "data": st.fixed_dictionaries(
            {},
            optional={"source": sources, "result": st.sampled_from(["exact", "junk"])},
        )
        | st.just("not an object"),
    },
)
rules_ = st.tuples(
    st.none() | st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2, unique=True),
    st.booleans(),
    st.booleans(),
).map(
    lambda spec: RouteRules.from_config(
        RouteConfig(
            name="r",
            to="memory:",
            filter=FilterConfig(
                source_id=None if spec[0] is None else tuple(spec[0]),
                result=("exact",) if spec[1] else None,
            ),
            cooldown=CooldownConfig(key=("pid",), seconds=1) if spec[2] else None,
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(routes=st.lists(rules_, min_size=1, max_size=5), event=events)
def test_judges_skipping_other_cameras_answer_as_every_route_would(
    routes: list[RouteRules | None], event: dict[str, Any]
) -> None:
    """Skipping the routes of other cameras changes no verdict: each is what the route's own
    judge answers, whatever the event's source looks like."""
    present = [r for r in routes if r is not None]
    assert Judges(present)(event) == tuple(r.judge(event) for r in present)
