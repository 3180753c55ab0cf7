"""Templated destinations: parsing errors, rendering, cleaning, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from neuroio._routing.template import MISSING, Template
from neuroio.exceptions import ConfigurationError

EVENT: dict[str, Any] = {
    "id": 7,
    "data": {
        "id": 7,
        "created": "2026-03-04T23:30:00+03:00",
        "result": "exact",
        "confidence": 80.0,
        "pid": "p-1",
        "source": {"id": 5, "name": "Front door"},
        "space": {"id": 2},
        "tags": ["a"],
        "flag": True,
    },
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("neuroio/doors/{source.id}", "neuroio/doors/5"),
        ("{result}.{space.id}.{pid}", "exact.2.p-1"),
        ("events-{created:%Y-%m-%d}.jsonl", "events-2026-03-04.jsonl"),
        ("{id}", "7"),
        ("{confidence}", "80"),
        ("{flag}", "true"),
        ("{source.name}", "Front door"),
        ("plain", "plain"),
        ("{{literal}} {id}", "{literal} 7"),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert Template(text).render(EVENT) == expected


@pytest.mark.parametrize(
    "text",
    [
        "{missing}",
        "{source.missing}",
        "{space.name}",
        "{tags}",
        "{source}",
        "{pid.x}",
        "{result:%Y}",
    ],  # fmt: skip
)
def test_what_has_no_usable_value_is_unknown(text: str) -> None:
    assert Template(text).render(EVENT) == MISSING


def test_clean_applies_to_values_only() -> None:
    template = Template("cams/{source.name}/x")
    assert template.render(EVENT, clean=lambda v: v.replace(" ", "_")) == "cams/Front_door/x"


def test_context_comes_before_entry_fields() -> None:
    assert Template("{stream}/{id}").render(EVENT, context={"stream": "shop-1"}) == "shop-1/7"


def test_static_and_fields() -> None:
    assert Template("a/b").is_static
    template = Template("{source.id}/{created:%H}")
    assert not template.is_static
    assert template.fields == ("source.id", "created")
    assert template == Template("{source.id}/{created:%H}")
    assert "source.id" in repr(template)


def test_an_event_without_data_renders_unknown() -> None:
    assert Template("t/{source.id}").render({"id": 1}) == "t/unknown"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a/{source.id", "not closed"),
        ("a/}", "closes no placeholder"),
        ("{}", "empty placeholder"),
        ("{ }", "empty placeholder"),
        ("{a b}", "not a field name"),
        ("{a..b}", "not a field name"),
        ("{created:}", "empty date format"),
    ],
)
def test_syntax_errors_are_one_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Template(text, what="route doors: to")
    message = str(info.value)
    assert problem in message
    assert message.startswith("route doors: to ")
    assert "\n" not in message
