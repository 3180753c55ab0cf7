"""Waiting between attempts: the one retry loop of the package.

Every component that retries (gap recovery's REST requests, sink delivery, start-up probes)
uses :class:`Retrying` for the wait, so the policy (backoff with jitter, a server's
``Retry-After`` taking precedence, an early end when the owner closes) is written once::

    retry = Retrying(Backoff(0.5, 30.0), closing=closing_event)
    while True:
        try:
            return await attempt()
        except TransientError as exc:
            if not await retry.wait(exc.retry_after, reason=str(exc)):
                return None  # closing
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._protocol.backoff import Backoff

__all__ = ["Retrying"]


class Retrying:
    """The waits between failed attempts of one operation.

    Args:
        backoff: the delays; :meth:`reset` restarts it after a success.
        closing: an :class:`asyncio.Event` (a wait ends as soon as it is set) or a callable
            polled before and after each wait; ``None`` waits out every delay.
        logger: where :meth:`wait` logs a retry (WARNING) when given a ``reason``.
        what: names the operation in that line, e.g. ``"entries API request"``.
    """

    __slots__ = ("backoff", "attempts", "_closing", "_logger", "_what")

    def __init__(
        self,
        backoff: Backoff,
        *,
        closing: asyncio.Event | Callable[[], bool] | None = None,
        logger: logging.Logger | None = None,
        what: str = "request",
    ) -> None:
        self.backoff = backoff
        self.attempts = 0
        """Failed attempts since the last :meth:`reset`."""
        self._closing = closing
        self._logger = logger
        self._what = what

    def closing(self) -> bool:
        """Whether the owner is closing (no more attempts should be made)."""
        closing = self._closing
        if closing is None:
            return False
        if isinstance(closing, asyncio.Event):
            return closing.is_set()
        return closing()

    def reset(self) -> None:
        """The operation passed: the next failure waits the shortest delay again."""
        self.attempts = 0
        self.backoff.reset()

    async def wait(self, retry_after: float | None = None, *, reason: str | None = None) -> bool:
        """Wait before the next attempt; ``False`` if the owner is closing (do not retry).

        Args:
            retry_after: a delay the other side asked for; it replaces the backoff's.
            reason: why the attempt failed, logged with the delay.
        """
        if self.closing():
            return False
        self.attempts += 1
        delay = self.backoff.next_delay() if retry_after is None else max(0.0, retry_after)
        if reason is not None and self._logger is not None:
            self._logger.warning("%s failed (%s); retrying in %.2fs", self._what, reason, delay)
        closing = self._closing
        if isinstance(closing, asyncio.Event):
            try:
                await asyncio.wait_for(closing.wait(), delay)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(delay)
        return not self.closing()
