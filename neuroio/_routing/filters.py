"""Route filters: a :class:`~neuroio.bridge.config.FilterConfig` compiled into a predicate.

The predicate takes the decoded event (``{"id": ..., "data": {<entry>}}``, plus
``"backfilled": true`` on events the bridge recovered from the REST API) and answers whether
the route takes it. Every key given must hold; a key left ``None`` is not checked.

Semantics, decided once here (``docs/routing.md`` gives the user's view):

* ``result``, ``mood``, ``liveness``, ``pid``: the entry's value is a string among those given.
* ``source_id``, ``space_id``: ``source.id`` / ``space.id`` is an integer among those given.
* ``source_name``: ``source.name`` matches one of the glob patterns (``fnmatch.fnmatchcase``:
  ``*``, ``?``, ``[seq]``, case-sensitive).
* ``confidence_min``/``_max``, ``age_min``/``_max``: inclusive bounds on a number.
* ``sex``: the entry's ``sex`` is that integer (0 male, 1 female).
* ``known``: ``true`` passes an entry with a non-empty ``pid``; ``false`` one with none
  (missing, ``null`` or empty).
* ``stream``: the event's ``stream`` (the ``[[stream]]`` it came from, a top-level key of
  the events of a bridge with several) matches one of the glob patterns, as ``source_name``;
  an event of a bridge without streams has none and fails.
* ``backfilled``: ``true`` passes only events recovered from the REST API; ``false`` only
  those pushed on the socket (which carry no ``backfilled`` key).
* ``where``: a JMESPath expression over the whole event; it passes when the result is true
  by JMESPath's own rule (anything but ``null``, ``false``, ``""``, ``[]`` and ``{}``; so
  ``0`` passes). An expression that fails on an event (a function given the wrong type)
  does not pass it; the first such failure of a route is logged.

An entry that lacks the field a key checks, or holds a value of another type (a number where
a string is expected, ``true`` where a number is), fails that check: ``known = false`` is the
one key that a missing field satisfies. Values are validated when the filter is compiled:
a result, mood or liveness outside the platform's documented values, a ``sex`` other than 0
or 1, an empty list, a minimum above its maximum or a JMESPath syntax error is a
:class:`~neuroio.exceptions.ConfigurationError` naming the route and the key.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError, MissingExtraError
from ..messages import Liveness, Mood, Result

if TYPE_CHECKING:
    from ..bridge.config import FilterConfig

__all__ = ["LIVENESS", "MOODS", "RESULTS", "Predicate", "compile_filter"]

log = logging.getLogger("neuroio.bridge")

RESULTS = tuple(m.value for m in Result)
"""The entry results the platform documents (``docs/protocol.md``)."""
MOODS = tuple(m.value for m in Mood)
"""The entry moods the platform documents."""
LIVENESS = tuple(m.value for m in Liveness)
"""The liveness verdicts the platform documents."""

Predicate = Callable[[Mapping[str, Any]], bool]
"""Whether a route takes a decoded event."""


def compile_filter(config: FilterConfig, *, route: str) -> Predicate:
    """The predicate of ``config``, validated (errors name ``route <route>: filter.<key>``).

    Raises:
        ConfigurationError: a value out of the documented vocabulary or range, an empty list,
            a minimum above its maximum, or a JMESPath syntax error.
        MissingExtraError: ``where`` is given and ``jmespath`` is not installed.
    """
    what = f"route {route}: filter"
    results = _choices(config.result, f"{what}.result", RESULTS)
    moods = _choices(config.mood, f"{what}.mood", MOODS)
    liveness = _choices(config.liveness, f"{what}.liveness", LIVENESS)
    pids = _choices(config.pid, f"{what}.pid", None)
    confidence = _bounds(config.confidence_min, config.confidence_max, "confidence", what, float)
    age = _bounds(config.age_min, config.age_max, "age", what, int)
    sex = config.sex
    if sex is not None and (_number(sex) is None or sex not in (0, 1)):
        raise ConfigurationError(f"{what}.sex: must be 0 (male) or 1 (female), got {sex!r}")
    sources = _ints(config.source_id, f"{what}.source_id")
    spaces = _ints(config.space_id, f"{what}.space_id")
    names = _globs(config.source_name, f"{what}.source_name")
    streams = _globs(config.stream, f"{what}.stream")
    known = _flag(config.known, f"{what}.known")
    backfilled = _flag(config.backfilled, f"{what}.backfilled")
    where = None if config.where is None else _where(config.where, f"{what}.where", route)
    return _predicate(
        results, moods, liveness, pids, confidence, age, sex, sources, spaces, names, streams,
        known, backfilled, where,
    )  # fmt: skip


def _globs(patterns: Sequence[str] | None, what: str) -> Callable[[str], object] | None:
    """One regular expression matching any of the glob ``patterns`` (``None``: not given)."""
    if patterns is None:
        return None
    chosen = sorted(_choices(patterns, what, None) or ())
    # fnmatch.translate anchors each pattern.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in chosen)).match


def _predicate(  # noqa: C901 - see admit
    results: frozenset[str] | None,
    moods: frozenset[str] | None,
    liveness: frozenset[str] | None,
    pids: frozenset[str] | None,
    confidence: tuple[float, float] | None,
    age: tuple[float, float] | None,
    sex: int | None,
    sources: frozenset[int] | None,
    spaces: frozenset[int] | None,
    names: Callable[[str], object] | None,
    streams: Callable[[str], object] | None,
    known: bool | None,
    backfilled: bool | None,
    where: Predicate | None,
) -> Predicate:
    # One function testing each given key in turn (a key not given costs one comparison),
    # calling nothing it can avoid.
    def admit(event: Mapping[str, Any]) -> bool:  # noqa: C901 - flat on purpose: hot
        if streams is not None:
            stream = event.get("stream")
            if stream.__class__ is not str or streams(stream) is None:
                return False
        data = event.get("data")
        if data.__class__ is not dict:
            return False
        get = data.get
        # Cameras and spaces first: a route is most often one camera's, and most events
        # then fail at the first test.
        if sources is not None or names is not None:
            source = get("source")
            if source.__class__ is not dict:
                return False
            if sources is not None:
                value = source.get("id")
                if value.__class__ is not int or value not in sources:
                    return False
            if names is not None:
                value = source.get("name")
                if value.__class__ is not str or names(value) is None:
                    return False
        if spaces is not None:
            space = get("space")
            if space.__class__ is not dict:
                return False
            value = space.get("id")
            if value.__class__ is not int or value not in spaces:
                return False
        if results is not None:
            value = get("result")
            if value.__class__ is not str or value not in results:
                return False
        if moods is not None:
            value = get("mood")
            if value.__class__ is not str or value not in moods:
                return False
        if liveness is not None:
            value = get("liveness")
            if value.__class__ is not str or value not in liveness:
                return False
        if pids is not None:
            value = get("pid")
            if value.__class__ is not str or value not in pids:
                return False
        if confidence is not None:
            value = get("confidence")
            # bool is not a number here; NaN fails both comparisons.
            if value.__class__ not in _NUMBERS or not confidence[0] <= value <= confidence[1]:
                return False
        if age is not None:
            value = get("age")
            if value.__class__ not in _NUMBERS or not age[0] <= value <= age[1]:
                return False
        if sex is not None:
            value = get("sex")
            if value.__class__ not in _NUMBERS or value != sex:
                return False
        if known is not None:
            value = get("pid")
            if (value.__class__ is str and value != "") is not known:
                return False
        if backfilled is not None and (event.get("backfilled") is True) is not backfilled:
            return False
        return where is None or where(event)

    return admit


_NUMBERS = (int, float)


def _where(expression: str, what: str, route: str) -> Callable[[Mapping[str, Any]], bool]:
    try:
        import jmespath
        from jmespath.exceptions import JMESPathError
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("routing", what) from exc
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"{what}: must be a non-empty JMESPath expression")
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigurationError(
            f"{what}: invalid JMESPath expression {expression!r}: {reason}"
        ) from None
    search = compiled.search
    warned = False

    def check(event: Mapping[str, Any]) -> bool:
        nonlocal warned
        try:
            value = search(event)
        except Exception as exc:  # JMESPathError, or RecursionError on absurd nesting
            # A filter never raises: the event is not taken, and the route goes on.
            if not warned:
                warned = True
                log.warning("route %s: filter.where failed on event %s (not taken): %s",
                            route, event.get("id"), exc)  # fmt: skip
            return False
        # JMESPath's truth: 0 is true, empty strings, lists and objects are false.
        return not (value is None or value is False or value == "" or value == [] or value == {})

    return check


# -- validation ----------------------------------------------------------------------------


def _sequence(values: Any, what: str) -> Sequence[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigurationError(f"{what}: must be a list, got {values!r}")
    if not values:
        raise ConfigurationError(f"{what}: must not be empty (it would take no event)")
    return values


def _choices(values: Any, what: str, vocabulary: Sequence[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    for value in _sequence(values, what):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{what}: {value!r} is not a non-empty string")
        if vocabulary is not None and value not in vocabulary:
            close = difflib.get_close_matches(value, vocabulary, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"{what}: unknown value {value!r}{hint}; expected one of {', '.join(vocabulary)}"
            )
    return frozenset(values)


def _ints(values: Any, what: str) -> frozenset[int] | None:
    if values is None:
        return None
    for value in _sequence(values, what):
        if value.__class__ is not int:
            raise ConfigurationError(f"{what}: {value!r} is not an integer id")
    return frozenset(values)


def _flag(value: Any, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{what}: must be true or false, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    if value.__class__ not in _NUMBERS or not math.isfinite(value):
        return None
    return float(value)


def _bounds(low: Any, high: Any, key: str, what: str, kind: type) -> tuple[float, float] | None:
    if low is None and high is None:
        return None
    bounds: list[float] = []
    for name, value, default in ((f"{key}_min", low, -math.inf), (f"{key}_max", high, math.inf)):
        if value is None:
            bounds.append(default)
            continue
        number = _number(value)
        if number is None or (kind is int and not number.is_integer()):
            noun = "an integer" if kind is int else "a finite number"
            raise ConfigurationError(f"{what}.{name}: must be {noun}, got {value!r}")
        bounds.append(number)
    if bounds[0] > bounds[1]:
        raise ConfigurationError(f"{what}.{key}_min: {low} is greater than {key}_max {high}")
    return bounds[0], bounds[1]
