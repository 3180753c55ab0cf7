"""Routing: which events a route takes and where each one goes, decided without I/O.

* :mod:`~neuroio._routing.template`: ``{field}`` placeholders in a destination.
* :mod:`~neuroio._routing.filters`: a route's filter compiled into a predicate over the event.
* :mod:`~neuroio._routing.cooldown`: at most one event per key per window.
* :mod:`~neuroio._routing.rules`: a route's filter then cooldown, applied to a batch.

The bridge applies these per route (``docs/routing.md``; ``docs/architecture.md`` says where
each routing decision is made); they import no asyncio and are tested without sockets.
"""
