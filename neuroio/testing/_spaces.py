"""The spaces of an emulator serving several (``Emulator(spaces=N)``).

Each :class:`Space` is one platform space with its own token, entry generator, id range,
REST history and WebSocket audience: an event emitted in a space is pushed only to the
connections authenticated with that space's token, and ``GET /v1/entries/`` with that token
lists only that space's entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ._entries import EntryFactory
from ._rest import History, RestApi, RestSettings

__all__ = ["SPACE_ID_STRIDE", "Space", "space_token"]

SPACE_ID_STRIDE = 10**9
"""Space ``k`` (1-based) generates the ids ``k * SPACE_ID_STRIDE + 1`` on."""


def space_token(k: int) -> str:
    """The token of space ``k`` (1-based): ``space-<k>-token``."""
    return f"space-{k}-token"


class Space:
    """One space of a multi-space emulator; get it with :meth:`Emulator.space`.

    Attributes:
        number: 1 for the first space, then 2, 3, ...
        id: the ``space.id`` of its entries (its number).
        name: the ``space.name`` of its entries (``"Space <number>"``).
        factory: its entry generator, whose ids start at ``number * SPACE_ID_STRIDE + 1``.
        history: the entries emitted in it, as its REST API serves them.
        emitted: how many events were emitted in it.
    """

    def __init__(
        self,
        number: int,
        token: str,
        *,
        seed: int | None,
        clock_offset: float,
        history_size: int,
        token_ok: Callable[[Any], bool],
        notify: Callable[[], None],
        settings: RestSettings,
        emit: Callable[[Space, dict[str, Any] | None, dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.number = number
        self._token = token
        self.id = number
        self.name = f"Space {number}"
        # A seed per space keeps spaces apart yet the whole run reproducible.
        self.factory = EntryFactory(
            None if seed is None else seed * 1000 + number,
            start_id=number * SPACE_ID_STRIDE + 1,
            clock_offset=clock_offset,
        )
        self.history = History(history_size)
        self.rest = RestApi(
            self.history,
            token_ok=lambda t: t == self._token and token_ok(t),
            notify=notify,
            settings=settings,
        )
        self.emitted = 0
        self._emit = emit

    @property
    def token(self) -> str:
        """The token of this space (hidden from ``repr``)."""
        return self._token

    @property
    def rest_requests(self) -> list[dict[str, str]]:
        """The query parameters of each ``GET /v1/entries/`` made with this space's token."""
        return self.rest.requests

    def __repr__(self) -> str:
        return f"<Space {self.number} id={self.id} emitted={self.emitted}>"

    async def emit(self, entry: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """Emit one event in this space, as :meth:`Emulator.emit` does for one space: pushed
        to the connections authenticated with its token and kept in its history."""
        return self._emit(self, entry, overrides)

    async def burst(self, n: int) -> list[dict[str, Any]]:
        """Emit ``n`` generated events in this space back to back; returns them."""
        out: list[dict[str, Any]] = []
        for i in range(n):
            out.append(self._emit(self, None, {}))
            if i % 1000 == 999:
                await asyncio.sleep(0)
        return out
