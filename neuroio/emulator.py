"""The NeuroIO events emulator, as ``from neuroio.emulator import Emulator`` has always found it.

Everything here lives in :mod:`neuroio.testing`; this module re-exports it so existing test
suites keep working.
"""

from __future__ import annotations

from .testing import (
    BOGUS_ID,
    HOSTILE_KINDS,
    OMIT,
    REDACTED_AUTH,
    REST_ORDERS,
    REST_SHAPES,
    ClientRecord,
    Emulator,
    EntryFactory,
)

__all__ = [
    "BOGUS_ID",
    "HOSTILE_KINDS",
    "OMIT",
    "REDACTED_AUTH",
    "REST_ORDERS",
    "REST_SHAPES",
    "ClientRecord",
    "Emulator",
    "EntryFactory",
]
