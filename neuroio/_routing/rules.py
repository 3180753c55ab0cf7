"""A route's rules: its filter, then its cooldown, applied to a batch of spooled events.

:class:`RouteRules` is what the bridge puts in front of a route's sink, in two steps:

* :meth:`RouteRules.judge`: the pure part, the same whenever it is asked: whether the filter
  takes a decoded event and, if the route has a cooldown, the event's key (a
  :data:`Verdict`). The bridge judges each event once for every route
  (:meth:`neuroio.bridge.Pipeline.judged`), so ten routes cost one decode per event;
* :meth:`RouteRules.select`: the stateful part, the cooldown moved in spool order; the
  route's worker calls it once per batch it reads, before any send, so a retried send never
  runs the cooldown again.

A route without a filter and without a cooldown has no rules at all: its events are never
decoded.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .cooldown import Cooldown
from .filters import Predicate, compile_filter

if TYPE_CHECKING:
    from ..bridge.config import RouteConfig
    from ..sinks.base import SpooledEvent

__all__ = ["Judges", "RouteRules", "Selection", "Verdict"]

Verdict = tuple[str, ...] | bool
"""What a route's filter says of one event: ``False`` (not taken), ``True`` (taken; the
route has no cooldown) or the event's cooldown key (taken if the cooldown lets it through)."""


class Selection(NamedTuple):
    """What a route takes from one batch.

    Attributes:
        events: the events to send, in spool order.
        filtered: events the filter did not take.
        suppressed: events the filter took and the cooldown held back.
    """

    events: list[SpooledEvent]
    filtered: int
    suppressed: int


class RouteRules:
    """A route's filter and cooldown (either may be ``None``, not both).

    Args:
        admit: the compiled filter (:func:`~neuroio._routing.filters.compile_filter`).
        cooldown: the route's cooldown.
        sources: the filter's ``source_id`` list, if it has one: :class:`Judges` then skips
            the route at once for an event of another camera (the filter would refuse it).
    """

    __slots__ = ("admit", "cooldown", "judge", "sources")

    def __init__(
        self,
        admit: Predicate | None,
        cooldown: Cooldown | None,
        sources: frozenset[int] | None = None,
    ) -> None:
        if admit is None and cooldown is None:
            raise ValueError("a route's rules need a filter or a cooldown")
        if sources is not None and admit is None:
            raise ValueError("sources narrow a filter: a route without one takes every camera")
        self.admit = admit
        self.cooldown = cooldown
        self.sources = sources
        self.judge: Callable[[Mapping[str, Any]], Verdict]
        """The :data:`Verdict` of one decoded event (pure: ask it any time, any number)."""
        # Built once as the shortest call: it runs for every event and every route.
        if cooldown is None:
            assert admit is not None
            self.judge = admit
        elif admit is None:
            self.judge = cooldown.key_of
        else:
            key_of = cooldown.key_of
            self.judge = lambda value: admit(value) and key_of(value)

    @classmethod
    def from_config(cls, route: RouteConfig) -> RouteRules | None:
        """The rules of ``route``, validated; ``None`` when it takes every event.

        Raises:
            ConfigurationError: a filter or cooldown value is invalid (named
                ``route <name>: filter.<key>`` or ``route <name>: cooldown.<key>``).
            MissingExtraError: ``filter.where`` needs the ``routing`` extra.
        """
        admit = None if route.filter is None else compile_filter(route.filter, route=route.name)
        cooldown = None
        if route.cooldown is not None:
            cooldown = Cooldown(
                route.cooldown.key, route.cooldown.seconds, what=f"route {route.name}: cooldown"
            )
        if admit is None and cooldown is None:
            return None
        sources = None
        if route.filter is not None and route.filter.source_id is not None:
            sources = frozenset(route.filter.source_id)  # validated by compile_filter
        return cls(admit, cooldown, sources)

    def select(self, events: Sequence[SpooledEvent], verdicts: Sequence[Verdict]) -> Selection:
        """The events of a batch the route takes, given their :meth:`judge` verdicts.

        The cooldown is judged by each event's ``received_at`` (see
        :mod:`~neuroio._routing.cooldown`) and is moved by this call: call it once per batch.
        """
        cooldown = self.cooldown
        if cooldown is None:  # verdicts are True or False: the common case, kept short
            taken = [event for event, verdict in zip(events, verdicts, strict=True) if verdict]
            return Selection(taken, len(events) - len(taken), 0)
        taken = []
        filtered = suppressed = 0
        for event, verdict in zip(events, verdicts, strict=True):
            if verdict is False:
                filtered += 1
            elif verdict is True:
                taken.append(event)
            elif cooldown.admit_key(verdict, event.received_at):
                taken.append(event)
            else:
                suppressed += 1
        return Selection(taken, filtered, suppressed)


class Judges:
    """Judges one decoded event for several routes at once: a tuple of their verdicts.

    Routes are often one camera's each (``filter.source_id``): the event's camera is read
    once, and a route of other cameras is not asked at all (its verdict is ``False``, as its
    filter would answer), so ten per-camera routes cost about two filter calls per event.
    """

    __slots__ = ("_by_source", "_count", "_judges", "_others")

    def __init__(self, rules: Sequence[RouteRules]) -> None:
        self._count = len(rules)
        self._judges = [r.judge for r in rules]
        self._others = tuple((i, r.judge) for i, r in enumerate(rules) if r.sources is None)
        by_source: dict[int, list[tuple[int, Callable[[Mapping[str, Any]], Verdict]]]] = {}
        for i, r in enumerate(rules):
            for source in r.sources or ():
                by_source.setdefault(source, []).append((i, r.judge))
        self._by_source = {k: tuple(v) for k, v in by_source.items()}

    def __len__(self) -> int:
        return self._count

    def __call__(self, value: Mapping[str, Any]) -> tuple[Verdict, ...]:
        """The verdicts of ``value`` for every route, in the order the routes were given."""
        if not self._by_source:
            return tuple([judge(value) for judge in self._judges])
        verdicts: list[Verdict] = [False] * self._count
        for i, judge in self._others:
            verdicts[i] = judge(value)
        # The same test as the filter's: an object source with an integer id.
        data = value.get("data")
        source = data.get("source") if data.__class__ is dict else None
        if source.__class__ is dict:
            source_id = source.get("id")
            if source_id.__class__ is int:
                for i, judge in self._by_source.get(source_id, ()):
                    verdicts[i] = judge(value)
        return tuple(verdicts)
