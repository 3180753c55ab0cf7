"""A route's rules: its filter, then its cooldown, applied to a batch of spooled events.

:class:`RouteRules` is what the bridge puts in front of a route's sink
(:class:`~neuroio.bridge.delivery.SinkWorker` calls :meth:`RouteRules.select` once per batch
it reads, before any send, so a retried send never runs the cooldown again). A route without
a filter and without a cooldown has no rules at all: its events are never decoded.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .cooldown import Cooldown
from .filters import Predicate, compile_filter

if TYPE_CHECKING:
    from ..bridge.config import RouteConfig
    from ..sinks.base import SpooledEvent

__all__ = ["RouteRules", "Selection"]


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
    """

    __slots__ = ("admit", "cooldown")

    def __init__(self, admit: Predicate | None, cooldown: Cooldown | None) -> None:
        if admit is None and cooldown is None:
            raise ValueError("a route's rules need a filter or a cooldown")
        self.admit = admit
        self.cooldown = cooldown

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
        return cls(admit, cooldown)

    def select(
        self, events: Sequence[SpooledEvent], values: Sequence[Mapping[str, Any]]
    ) -> Selection:
        """The events of a batch the route takes; ``values`` are the same events decoded.

        The cooldown is judged by each event's ``received_at`` (see
        :mod:`~neuroio._routing.cooldown`) and is moved by this call: call it once per batch.
        """
        admit, cooldown = self.admit, self.cooldown
        taken: list[SpooledEvent] = []
        filtered = suppressed = 0
        for event, value in zip(events, values, strict=True):
            if admit is not None and not admit(value):
                filtered += 1
            elif cooldown is not None and not cooldown.admit(value, event.received_at):
                suppressed += 1
            else:
                taken.append(event)
        return Selection(taken, filtered, suppressed)
