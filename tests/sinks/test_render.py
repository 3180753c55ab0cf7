"""Renderer: decoding only a template's fields renders exactly what the whole event would."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroio._routing.template import Template
from neuroio.sinks._render import Renderer
from neuroio.sinks.file import clean_path_value

TEMPLATES = [
    Template("{source.id}/{created:%Y-%m-%d}.jsonl"),
    Template("{source}.{source.name}-{pid}"),
    Template("{a.b.c}.{a.b}.{result}"),
]

RENDERERS = [(t, Renderer(t, clean_path_value)) for t in TEMPLATES]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    st.sampled_from(["2026-12-01T10:00:00Z", "2026-12-01 10:00:00", "not a date"]),
)
keys = st.sampled_from(["id", "name", "b", "c", "x"])
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(keys, scalars, max_size=3),
    st.dictionaries(keys, st.dictionaries(keys, scalars, max_size=2), max_size=2),
)
entries = st.dictionaries(
    st.sampled_from(["source", "created", "pid", "result", "a", "face_image"]), values, max_size=6
)


# No deadline, no speed check: under a loaded machine both measure the load, not the code.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=entries, data_is_entry=st.booleans())
def test_the_renderer_agrees_with_the_whole_event(
    entry: dict[str, Any], data_is_entry: bool
) -> None:
    """For any entry shape (objects where scalars are expected, nulls, lists, missing keys), and
    even a data that is not an object, the partial decode renders as the whole decode."""
    event: dict[str, Any] = {"id": 1, "data": entry if data_is_entry else [entry]}
    payload = json.dumps(event).encode()
    for template, renderer in RENDERERS:
        expected = template.render(json.loads(payload), clean_path_value)
        assert renderer.render(payload) == expected


def test_a_payload_that_is_not_json_renders_unknown() -> None:
    renderer = Renderer(Template("x/{source.id}"), clean_path_value)
    assert renderer.render(b"{not json") == "x/unknown"
    assert renderer.render(b"[1, 2]") == "x/unknown"
