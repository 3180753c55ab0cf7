"""Where the backoff policy used to live; it is now in :mod:`neuroio._protocol.backoff`.

Kept so that code importing ``neuroio.backoff`` still runs; import from the new home.
"""

from __future__ import annotations

from ._protocol.backoff import Backoff

__all__ = ["Backoff"]
