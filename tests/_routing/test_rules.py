"""A route's rules over a batch: the filter first, then the cooldown, by event time."""

from __future__ import annotations

import json

import msgspec

from neuroio._routing.rules import RouteRules
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
