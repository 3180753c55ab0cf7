"""Testing against a real server: the NeuroIO events emulator and realistic entries.

:class:`Emulator` is a local NeuroIO events service (the WebSocket events, the REST
entries list and the entries' pictures on one port) for test suites, demos and benchmarks;
:class:`EntryFactory` makes the entries it pushes; :class:`ThreadedEmulator` runs one in a
background thread for synchronous code. The pytest fixtures ``neuroio_emulator`` and
``neuroio_listener`` come with the package (``_pytest_plugin``). See ``docs/emulator.md``::

    from neuroio.testing import Emulator

    async with Emulator(tokens={"secret"}) as emu:
        ...  # connect a client to emu.url with the token
        await emu.wait_for_clients(1)
        await emu.emit(result="exact")
"""

from __future__ import annotations

from ._connlog import connect_rate, overlaps, read_connection_log
from ._emulator import BOGUS_ID, MAX_SPACES, Emulator
from ._entries import OMIT, EntryFactory
from ._frames import REDACTED_AUTH
from ._hostile import HOSTILE_KINDS
from ._listeners import ListenerFactory
from ._rest import REST_ORDERS, REST_SHAPES, RestOrder, RestShape
from ._server import ClientRecord
from ._spaces import SPACE_ID_STRIDE, Space
from ._threaded import ThreadedEmulator

__all__ = [
    "BOGUS_ID",
    "HOSTILE_KINDS",
    "MAX_SPACES",
    "OMIT",
    "REDACTED_AUTH",
    "REST_ORDERS",
    "REST_SHAPES",
    "SPACE_ID_STRIDE",
    "ClientRecord",
    "RestOrder",
    "RestShape",
    "Emulator",
    "EntryFactory",
    "ListenerFactory",
    "Space",
    "ThreadedEmulator",
    "connect_rate",
    "overlaps",
    "read_connection_log",
]
