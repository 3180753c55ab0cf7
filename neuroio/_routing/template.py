"""Templated destinations: ``{field}`` placeholders rendered from each event.

A template is text with placeholders over the event's entry (its ``data``)::

    neuroio/doors/{source.id}          {source.id}: the camera's id
    events-{created:%Y-%m-%d}.jsonl    {created:FORMAT}: a date field through strftime
    {result}.{space.id}                any field, or a dotted path into nested objects
    {stream}                           the event's stream (a bridge's [[stream]] name): a
                                       key of the event beside data, not of the entry

``{{`` and ``}}`` are literal braces. A value that is missing, ``null``, empty, or not a scalar
(an object, a list) renders as ``unknown``, so a destination is always a usable name. Each sink
passes its own ``clean`` function, which turns one value into what its destination accepts
(an MQTT topic level holds no ``/``, ``+`` or ``#``; a file name no ``/``); the literal text
around the placeholders is the user's and is never cleaned.

Templates are parsed once, when the sink is built: a syntax error is a
:class:`~neuroio.exceptions.ConfigurationError` of one line naming the template and the
problem. Rendering never raises.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import ConfigurationError

__all__ = ["EVENT_KEYS", "MISSING", "Template"]

MISSING = "unknown"
"""What a placeholder renders to when the event has no usable value for it."""
EVENT_KEYS = frozenset({"stream"})
"""Placeholders naming a key of the event itself rather than of its entry."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_Clean = Callable[[str], str]


def _identity(value: str) -> str:
    return value


class Template:
    """A parsed template; :meth:`render` fills it from one event.

    Args:
        text: the template.
        what: how errors name it, e.g. ``"topic"`` or ``"route doors: to"``.

    Raises:
        ConfigurationError: an unclosed or empty placeholder, a stray ``}``, or a name that is
            not a field path (letters, digits, ``_``, joined by ``.``).
    """

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str, *, what: str = "template") -> None:
        self.text = text
        self._parts: list[str | tuple[tuple[str, ...], str | None]] = _parse(text, what)
        self.fields: tuple[str, ...] = tuple(
            ".".join(p[0]) for p in self._parts if isinstance(p, tuple)
        )
        """The dotted field paths the template uses, in order."""

    @property
    def is_static(self) -> bool:
        """Whether the template has no placeholder (it renders the same for every event)."""
        return not self.fields

    def render(
        self,
        event: Mapping[str, Any],
        clean: _Clean = _identity,
        context: Mapping[str, str] | None = None,
    ) -> str:
        """The template filled from ``event`` (``{"id": ..., "data": {<entry>}}``).

        Args:
            event: the decoded event; paths are looked up in its ``data``.
            clean: turns each rendered value into what the destination accepts.
            context: values that are not entry fields, by name (looked up first).
        """
        data = event.get("data")
        entry: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            path, fmt = part
            if context is not None and len(path) == 1 and path[0] in context:
                value: Any = context[path[0]]
            elif len(path) == 1 and path[0] in EVENT_KEYS:
                value = event.get(path[0])
            else:
                value = _lookup(entry, path)
            out.append(clean(_text(value, fmt)))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _parse(text: str, what: str) -> list[str | tuple[tuple[str, ...], str | None]]:
    parts: list[str | tuple[tuple[str, ...], str | None]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif char == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif char == "}":
            raise _error(what, text, f"a '}}' at position {i} closes no placeholder (write '}}}}')")
        elif char == "{":
            end = text.find("}", i)
            if end < 0:
                raise _error(what, text, f"the placeholder at position {i} is not closed")
            name, colon, fmt = text[i + 1 : end].partition(":")
            name = name.strip()
            if not name:
                raise _error(what, text, f"empty placeholder at position {i}")
            if _NAME.match(name) is None:
                raise _error(what, text, f"{{{name}}} is not a field name (like source.id)")
            if colon and not fmt:
                raise _error(what, text, f"{{{name}:}} has an empty date format")
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append((tuple(name.split(".")), fmt if colon else None))
            i = end + 1
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _lookup(entry: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = entry
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(value: Any, fmt: str | None) -> str:
    if value is None or isinstance(value, (dict, list)):
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if not text:
        return MISSING
    if fmt is not None:
        when = _datetime(value)
        if when is None:
            return MISSING
        return when.strftime(fmt) or MISSING
    return text


def _datetime(value: Any) -> _dt.datetime | None:
    if isinstance(value, _dt.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        # The platform writes ISO 8601 with an offset; "Z" is accepted on Python 3.10 too.
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _error(what: str, text: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{what} {text!r}: {problem}")
