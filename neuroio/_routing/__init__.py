"""Routing: which events a route takes and where each one goes, decided without I/O.

* :mod:`~neuroio._routing.template`: ``{field}`` placeholders in a destination.

The bridge applies these per route (``docs/routing.md``); they import no asyncio and are
tested without sockets.
"""
