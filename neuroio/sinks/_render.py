"""Rendering a sink's templated destination from a spooled event's JSON, decoding only the
fields the template uses.

An event is about a kilobyte of JSON (image URLs, geometry), and a destination template uses
one or two of its fields. Decoding the whole document into Python objects for each event costs
most of a templated sink's time; decoding into a ``TypedDict`` that declares only the fields
the template names lets msgspec skip the rest while it parses. An event whose fields do not
have the expected shape (``source`` that is not an object) is decoded whole instead, so the
result is always the template's own rendering of the event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import msgspec

from .._routing.template import EVENT_KEYS, Template

__all__ = ["Renderer"]

_whole = msgspec.json.Decoder()
# Called as a function to build types at run time, which type checkers cannot follow.
_typed_dict: Any = TypedDict


def _shape(paths: list[tuple[str, ...]], name: str) -> Any:
    """A ``TypedDict`` (all keys optional) holding just ``paths``; ``Any`` where a path ends."""
    fields: dict[str, Any] = {}
    heads: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        heads.setdefault(path[0], []).append(path[1:])
    for head, rests in heads.items():
        if any(not rest for rest in rests):
            fields[head] = Any  # the value itself is used: keep it whole
        else:
            fields[head] = _shape(rests, f"{name}_{head}")
    return _typed_dict(name, fields, total=False)


class Renderer:
    """Renders ``template`` from an event's JSON bytes.

    Args:
        template: the destination template (placeholders over the entry, ``data``).
        clean: the sink's cleaning of each rendered value.
    """

    __slots__ = ("_clean", "_decoder", "template")

    def __init__(self, template: Template, clean: Callable[[str], str]) -> None:
        self.template = template
        self._clean = clean
        paths = [tuple(field.split(".")) for field in template.fields]
        data = _shape(paths, "_Data") if paths else dict[str, Any]
        fields: dict[str, Any] = {"data": data}
        fields.update((path[0], Any) for path in paths if len(path) == 1 and path[0] in EVENT_KEYS)
        event = _typed_dict("_Event", fields, total=False)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(event)

    def render(self, payload: bytes) -> str:
        """The destination of the event whose JSON is ``payload`` (never raises: an event
        that is not JSON renders every placeholder as ``unknown``)."""
        try:
            event = self._decoder.decode(payload)
        except msgspec.ValidationError:
            try:
                event = _whole.decode(payload)  # a field of another shape: render it whole
            except msgspec.DecodeError:
                event = {}
        except msgspec.DecodeError:
            event = {}
        if not isinstance(event, dict):
            event = {}
        return self.template.render(event, self._clean)
