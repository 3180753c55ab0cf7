"""Testing against a real server: the NeuroIO events emulator and realistic entries.

:class:`Emulator` is a local NeuroIO events service (the WebSocket events and the REST
entries list on one port) for test suites, demos and benchmarks; :class:`EntryFactory` makes
the entries it pushes. See ``docs/emulator.md``::

    from neuroio.testing import Emulator

    async with Emulator(tokens={"secret"}) as emu:
        ...  # connect a client to emu.url with the token
        await emu.wait_for_clients(1)
        await emu.emit(result="exact")
"""

from __future__ import annotations

from ._emulator import BOGUS_ID, Emulator
from ._entries import OMIT, EntryFactory
from ._frames import REDACTED_AUTH
from ._hostile import HOSTILE_KINDS
from ._rest import REST_ORDERS, REST_SHAPES, RestOrder, RestShape
from ._server import ClientRecord

__all__ = [
    "BOGUS_ID",
    "HOSTILE_KINDS",
    "OMIT",
    "REDACTED_AUTH",
    "REST_ORDERS",
    "REST_SHAPES",
    "ClientRecord",
    "RestOrder",
    "RestShape",
    "Emulator",
    "EntryFactory",
]
