"""Sink URIs: the one parser of every sink's URI and query options, and their redaction.

A sink declares its options once, as typed :class:`Option` objects, and calls
:func:`parse_url` (hierarchical URIs: ``redis://``, ``nats://``, ``http(s)://``) and
:func:`parse_options` (the query of any URI). Every mistake is a
:class:`~neuroio.exceptions.ConfigurationError` of one line that shows the URI with its
secrets masked (:func:`redact_uri`) and says what is wrong:

* an option no sink of that kind knows: the option, the sink and the known options;
* an option given twice;
* a value of the wrong type or out of range: the option, what it must be, the value given;
* a scheme the sink does not handle, a missing host, a port out of range.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast
from urllib.parse import unquote_plus

from yarl import URL

from ..exceptions import ConfigurationError

__all__ = [
    "Bool",
    "Choice",
    "Duration",
    "Float",
    "Int",
    "Option",
    "Options",
    "Text",
    "is_secret_option",
    "parse_options",
    "parse_url",
    "redact_uri",
]

T = TypeVar("T")

# Query parameters whose values are credentials in common URLs (webhook tokens, passwords).
_SECRET_PARAM = re.compile(r"token|secret|key|pass|sig|auth|credential", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<head>^[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SHOWN = 60  # characters of a bad value quoted in an error


class _BadValue(ValueError):
    """A value an option cannot take; the message completes "<option> must ..."."""


# Options whose names look like credentials but whose values are not (shown in errors).
_NOT_SECRET = frozenset({"routing_key"})


def is_secret_option(name: str) -> bool:
    """Whether the query option ``name`` holds a credential (its value is always masked)."""
    return name not in _NOT_SECRET and _SECRET_PARAM.search(name) is not None


@dataclasses.dataclass(frozen=True)
class Option(Generic[T]):
    """One query option of a sink: its name, its default, and how its text becomes a value.

    Subclasses implement :meth:`convert`; it raises ``ValueError`` with a message that
    completes the phrase "*name* must ...".
    """

    name: str
    default: T

    def convert(self, raw: str) -> T:
        """The value of ``raw`` (the decoded query value)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Int(Option[int]):
    """A whole number of at least ``minimum``."""

    minimum: int = 0

    def convert(self, raw: str) -> int:
        """The integer ``raw`` spells."""
        try:
            number = int(raw.strip())
        except ValueError:
            raise _BadValue("be an integer") from None
        if number < self.minimum:
            raise _BadValue(f"be >= {self.minimum}")
        return number


@dataclasses.dataclass(frozen=True)
class Float(Option[float]):
    """A finite number greater than 0."""

    def convert(self, raw: str) -> float:
        """The number ``raw`` spells."""
        try:
            number = float(raw)
        except ValueError:
            raise _BadValue("be a number") from None
        if not (number > 0 and math.isfinite(number)):
            raise _BadValue("be > 0")
        return number


@dataclasses.dataclass(frozen=True)
class Duration(Option[float]):
    """Seconds: a number, or a number with a unit (``500ms``, ``10s``, ``5m``, ``2h``, ``1d``).

    The value is in seconds and greater than 0 (at least ``minimum``); ``whole`` requires a
    whole number of seconds (an expiry given to Redis, a window given to JetStream).
    """

    minimum: float = 0.0
    whole: bool = False

    def convert(self, raw: str) -> float:
        """The seconds ``raw`` spells."""
        match = _DURATION.fullmatch(raw)
        if match is None:
            raise _BadValue("be a duration in seconds (e.g. 30, 1.5, 500ms, 5m, 1h, 1d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if not (seconds > 0 and math.isfinite(seconds)) or seconds < self.minimum:
            least = f">= {self.minimum:g}" if self.minimum > 0 else "> 0"
            raise _BadValue(f"be {least} seconds")
        if self.whole and seconds != int(seconds):
            raise _BadValue("be a whole number of seconds")
        return seconds


@dataclasses.dataclass(frozen=True)
class Bool(Option[bool]):
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""

    def convert(self, raw: str) -> bool:
        """The truth ``raw`` spells."""
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _BadValue("be true or false")


@dataclasses.dataclass(frozen=True)
class Choice(Option[str]):
    """One of ``choices`` (compared without case)."""

    choices: tuple[str, ...] = ()

    def convert(self, raw: str) -> str:
        """The choice ``raw`` names, spelled as declared."""
        for choice in self.choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise _BadValue(f"be one of {', '.join(self.choices)}")


@dataclasses.dataclass(frozen=True)
class Text(Option[str]):
    """Any text; ``check`` returns what is wrong with a value (``None``: nothing)."""

    check: Callable[[str], str | None] | None = None

    def convert(self, raw: str) -> str:
        """``raw``, once ``check`` accepted it."""
        if self.check is not None:
            problem = self.check(raw)
            if problem is not None:
                raise _BadValue(problem)
        return raw


class Options:
    """The options of one sink URI: each declared option's value, given or default."""

    def __init__(
        self, values: dict[str, Any], given: frozenset[str], rest: Sequence[tuple[str, str]]
    ) -> None:
        self._values = values
        self.given = given
        """Names of the options the URI gave."""
        self.rest = tuple(rest)
        """Query pairs that are not options, in order (only with ``keep_unknown``)."""

    def __getitem__(self, option: Option[T]) -> T:
        return cast(T, self._values[option.name])

    def chosen(self, options: Iterable[Option[Any]]) -> dict[str, Any]:
        """The values of those of ``options`` the URI gave, by name."""
        return {o.name: self._values[o.name] for o in options if o.name in self.given}

    def __repr__(self) -> str:
        shown = {k: "***" if is_secret_option(k) else v for k, v in self._values.items()}
        return f"<Options {shown}>"


def parse_options(
    query: str,
    options: Collection[Option[Any]],
    *,
    uri: str,
    sink: str,
    keep_unknown: bool = False,
) -> Options:
    """Convert the query string of ``uri`` into the values of the sink's ``options``.

    Args:
        query: the raw (still percent-encoded) query string, without the ``?``.
        options: every option the sink knows.
        uri: the whole URI, shown (redacted) in errors.
        sink: the sink's kind for errors, e.g. ``"Redis"``.
        keep_unknown: keep pairs that are not options in :attr:`Options.rest` (a webhook's
            own query) instead of refusing them.

    Raises:
        ConfigurationError: an unknown option (without ``keep_unknown``), an option given
            twice, or a value its option cannot take.
    """
    known = {o.name: o for o in options}
    values: dict[str, Any] = {o.name: o.default for o in options}
    given: set[str] = set()
    rest: list[tuple[str, str]] = []
    pairs = URL.build(query_string=query, encoded=True).query.items() if query else ()
    for key, raw in pairs:
        option = known.get(key)
        if option is None:
            if keep_unknown:
                rest.append((key, raw))
                continue
            names = ", ".join(sorted(known)) or "none"
            raise _error(uri, f"unknown option {key!r} for the {sink} sink; known options: {names}")
        if key in given:
            raise _error(uri, f"option {key!r} is given twice")
        try:
            values[key] = option.convert(raw)
        except ValueError as exc:
            raise _error(uri, f"{key} must {exc}, got {_quote(key, raw)}") from None
        given.add(key)
    return Options(values, frozenset(given), rest)


def parse_url(uri: str, *, schemes: Collection[str], expected: str) -> URL:
    """``uri`` parsed, with one of ``schemes`` and a host.

    Args:
        uri: a hierarchical URI (``scheme://[userinfo@]host[:port]/...``).
        schemes: the schemes the sink handles, lower case.
        expected: the form to show when the URI does not fit, e.g. ``"redis://host:port/db"``.

    Raises:
        ConfigurationError: the URI cannot be parsed, its port is out of range, its scheme is
            not one of ``schemes``, or it names no host.
    """
    try:
        url = URL(uri)
        url.explicit_port  # noqa: B018 - validates the port
    except (ValueError, TypeError) as exc:
        raise _error(uri, f"invalid URL: {exc}") from None
    if url.scheme not in schemes or not url.host:
        raise _error(uri, f"expected {expected}")
    return url


def redact_uri(uri: str) -> str:
    """``uri`` with its secrets replaced by ``***``.

    Masked: the password (``user:***@``), a user name standing alone (``***@``, which in
    ``nats://TOKEN@host`` or ``https://TOKEN@host`` is a token), and the value of every query
    option whose name looks like a credential (``token``, ``secret``, ``key``, ``password``,
    ``sig``, ``auth``...). Everything else is kept as written.
    """
    head, sep, fragment = uri.partition("#")
    base, qmark, query = head.partition("?")
    match = _USERINFO.match(base)
    if match is not None:
        user, colon, _ = match.group("userinfo").partition(":")
        masked = f"{user}:***" if colon else "***"
        base = match.group("head") + masked + "@" + base[match.end() :]
    if query:
        query = "&".join(_redact_pair(pair) for pair in query.split("&"))
    return base + qmark + query + sep + fragment


def _redact_pair(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    return f"{key}{eq}***" if eq and is_secret_option(unquote_plus(key)) else pair


def _quote(option: str, raw: str) -> str:
    if is_secret_option(option):
        return "'***'"
    shown = raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "..."
    return repr(shown)


def _error(uri: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"sink {redact_uri(uri)}: {problem}")
