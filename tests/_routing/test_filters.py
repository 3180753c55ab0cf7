"""Route filters: each key of the vocabulary, the JMESPath escape hatch, validation."""

from __future__ import annotations

from typing import Any

import pytest

from neuroio._routing.filters import RESULTS, compile_filter
from neuroio.bridge.config import FilterConfig
from neuroio.exceptions import ConfigurationError


def event(backfilled: bool = False, **data: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"id": 1, "data": {"id": 1, **data}}
    if backfilled:
        value["backfilled"] = True
    return value


def takes(config: FilterConfig, value: dict[str, Any]) -> bool:
    return compile_filter(config, route="r")(value)


@pytest.mark.parametrize(
    ("config", "passing", "failing"),
    [
        (FilterConfig(result=("exact", "ha")), {"result": "ha"}, {"result": "junk"}),
        (FilterConfig(mood=("happiness",)), {"mood": "happiness"}, {"mood": "anger"}),
        (FilterConfig(liveness=("passed",)), {"liveness": "passed"}, {"liveness": "failed"}),
        (FilterConfig(confidence_min=80), {"confidence": 80}, {"confidence": 79.99}),
        (FilterConfig(confidence_max=80.5), {"confidence": 80.5}, {"confidence": 80.51}),
        (FilterConfig(age_min=18, age_max=30), {"age": 30}, {"age": 31}),
        (FilterConfig(age_min=18, age_max=30), {"age": 18}, {"age": 17}),
        (FilterConfig(sex=1), {"sex": 1}, {"sex": 0}),
        (FilterConfig(sex=1), {"sex": 1}, {"sex": True}),
        (FilterConfig(source_id=(1, 3)), {"source": {"id": 3}}, {"source": {"id": 2}}),
        (FilterConfig(space_id=(17,)), {"space": {"id": 17}}, {"space": {"id": "17"}}),
        (FilterConfig(source_name=("Main*",)), {"source": {"name": "Main door"}},
         {"source": {"name": "main door"}}),
        (FilterConfig(source_name=("Gate ?", "[AB]*")), {"source": {"name": "Back"}},
         {"source": {"name": "Gate 10"}}),
        (FilterConfig(pid=("p1",)), {"pid": "p1"}, {"pid": "p2"}),
        (FilterConfig(known=True), {"pid": "p1"}, {"pid": ""}),
        (FilterConfig(known=True), {"pid": "p1"}, {"pid": None}),
        (FilterConfig(known=False), {}, {"pid": "p1"}),
        (FilterConfig(confidence_min=1), {"confidence": 2}, {"confidence": True}),
        (FilterConfig(confidence_min=1), {"confidence": 2}, {"confidence": float("nan")}),
        (FilterConfig(result=("exact",)), {"result": "exact"}, {"result": ["exact"]}),
    ],
)  # fmt: skip
def test_each_key_takes_its_values_and_rejects_others(
    config: FilterConfig, passing: dict[str, Any], failing: dict[str, Any]
) -> None:
    assert takes(config, event(**passing))
    assert not takes(config, event(**failing))


@pytest.mark.parametrize(
    "config",
    [
        FilterConfig(result=("exact",)),
        FilterConfig(confidence_min=0),
        FilterConfig(age_max=200),
        FilterConfig(sex=0),
        FilterConfig(source_id=(1,)),
        FilterConfig(source_name=("*",)),
        FilterConfig(space_id=(1,)),
        FilterConfig(pid=("x",)),
        FilterConfig(known=True),
        FilterConfig(mood=("neutral",)),
        FilterConfig(liveness=("passed",)),
    ],
)
def test_an_entry_lacking_the_field_fails_the_check(config: FilterConfig) -> None:
    assert not takes(config, event())
    assert not takes(config, {"id": 1})  # no data at all


def test_every_given_key_must_hold() -> None:
    config = FilterConfig(result=("exact",), confidence_min=80, liveness=("passed",))
    assert takes(config, event(result="exact", confidence=90, liveness="passed"))
    assert not takes(config, event(result="exact", confidence=90, liveness="failed"))
    assert not takes(config, event(result="ha", confidence=90, liveness="passed"))
    assert takes(FilterConfig(), event())  # no key: every event


def test_backfilled_is_the_events_mark() -> None:
    assert takes(FilterConfig(backfilled=True), event(backfilled=True))
    assert not takes(FilterConfig(backfilled=True), event())
    assert takes(FilterConfig(backfilled=False), event())
    assert not takes(FilterConfig(backfilled=False), event(backfilled=True))


def test_where_is_jmespath_over_the_whole_event_with_its_truth() -> None:
    where = FilterConfig(where="data.confidence > `80` && id == `1`")
    assert takes(where, event(confidence=81))
    assert not takes(where, event(confidence=80))
    assert not takes(where, event())  # null > 80 is null: false
    # JMESPath's truth: 0 is true, an empty list is false.
    assert takes(FilterConfig(where="data.n"), event(n=0))
    assert not takes(FilterConfig(where="data.n"), event(n=[]))
    assert takes(FilterConfig(where="backfilled"), event(backfilled=True))


def test_where_failing_on_an_event_does_not_take_it(caplog: pytest.LogCaptureFixture) -> None:
    admit = compile_filter(FilterConfig(where="length(data.n) > `1`"), route="r")
    assert not admit(event(n=5))  # length() of a number: an evaluation error
    assert not admit(event(n=6))
    assert admit(event(n="abc"))
    assert len([r for r in caplog.records if "filter.where failed" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (FilterConfig(result=("exact", "no")), "route doors: filter.result: unknown value 'no'"),
        (FilterConfig(mood=("glad",)), "route doors: filter.mood: unknown value 'glad'"),
        (FilterConfig(liveness=("yes",)), "route doors: filter.liveness: unknown value 'yes'"),
        (FilterConfig(result=()), "route doors: filter.result: must not be empty"),
        (FilterConfig(result="exact"), "route doors: filter.result: must be a list"),  # type: ignore[arg-type]
        (FilterConfig(sex=2), "route doors: filter.sex: must be 0 (male) or 1 (female), got 2"),
        (FilterConfig(sex=True), "route doors: filter.sex"),
        (FilterConfig(confidence_min=90, confidence_max=80),
         "route doors: filter.confidence_min: 90 is greater than confidence_max 80"),
        (FilterConfig(age_min=40, age_max=30), "route doors: filter.age_min: 40 is greater"),
        (FilterConfig(age_min=1.5), "route doors: filter.age_min: must be an integer"),  # type: ignore[arg-type]
        (FilterConfig(confidence_max=float("inf")), "filter.confidence_max: must be a finite"),
        (FilterConfig(source_id=("1",)), "route doors: filter.source_id: '1' is not an integer"),  # type: ignore[arg-type]
        (FilterConfig(known=1), "route doors: filter.known: must be true or false"),  # type: ignore[arg-type]
        (FilterConfig(where="data.[["), "route doors: filter.where: invalid JMESPath expression"),
        (FilterConfig(where=" "), "route doors: filter.where: must be a non-empty"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_naming_the_route_and_key(
    config: FilterConfig, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        compile_filter(config, route="doors")
    text = str(caught.value)
    assert text.startswith(message) or message in text, text
    assert "\n" not in text


def test_the_result_error_lists_the_documented_codes() -> None:
    with pytest.raises(ConfigurationError, match=", ".join(RESULTS)):
        compile_filter(FilterConfig(result=("bogus",)), route="r")
