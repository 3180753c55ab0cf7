"""Where the heartbeat policy used to live; it is now in :mod:`neuroio._protocol.heartbeat`.

Kept so that code importing ``neuroio.heartbeat`` still runs; import from the new home.
"""

from __future__ import annotations

from ._protocol.heartbeat import Heartbeat

__all__ = ["Heartbeat"]
