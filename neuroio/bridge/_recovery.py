"""The bridge's gap recovery: the entries the socket did not push, fetched from the REST API.

The socket never replays (``docs/protocol.md``), so after each (re)connection the bridge asks
``GET /v1/entries/`` for what it missed and spools it like a pushed event. Where recovery must
start is stored in the spool (:data:`RECOVER_AFTER`) before any later frame is handled, so a
bridge that dies during a recovery starts the next one from the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp

from .._config import ConnectionOptions, RecoveryOptions
from ..backfill import EntriesClient, GapStart, parse_since
from ..backoff import Backoff
from ..exceptions import BackfillError
from ..protocol import DEFAULT_API_URL
from ..spool import Spool
from .pipeline import Pipeline, valid_id

__all__ = ["RECOVER_AFTER", "GapRecovery"]

log = logging.getLogger("neuroio.bridge")

# Spool state key: where gap recovery must start if the bridge stops before it finished.
RECOVER_AFTER = "recover_after"


class GapRecovery:
    """Queues the gap each connection leaves and recovers it into the pipeline.

    Args:
        token: the API token for the REST API.
        recovery: the recovery options (``since``, ``backfill``, limits, ``api_url``).
        connection: for the backoff of REST requests.
        pipeline, spool: where recovered entries go, and where the floor is kept.
        api_url: the listener's REST API when ``recovery.api_url`` is unset.
        closed: whether the bridge is closed (recovery then stops).
        last_frame_at: when the last frame was handled (``time.time()``), for a gap before
            any event was seen.
    """

    def __init__(
        self,
        token: str,
        recovery: RecoveryOptions,
        connection: ConnectionOptions,
        *,
        pipeline: Pipeline,
        spool: Spool,
        api_url: Callable[[], str | None],
        closed: Callable[[], bool],
        last_frame_at: Callable[[], float],
    ) -> None:
        self._token = token
        self._options = recovery
        self._connection = connection
        self._pipeline = pipeline
        self._spool = spool
        self._api_url = api_url
        self._closed = closed
        self._last_frame_at = last_frame_at
        self._connected_before = False
        self._gaps: list[GapStart] = []
        self._task: asyncio.Task[None] | None = None
        self._floor_kept = False
        self._floor_lock = asyncio.Lock()
        self.recovered = 0
        """Entries recovered from the REST API and handed to the spool."""
        self.backfill_error: BackfillError | None = None
        """The last gap recovery the API refused (it is retried at the next start)."""

    async def on_connected(self) -> None:
        """Queue the gap this (re)connection leaves, and make sure recovery runs."""
        first = not self._connected_before
        self._connected_before = True
        gap = await self._first_gap() if first else self._reconnect_gap()
        if gap is None:
            return
        async with self._floor_lock:
            if not self._floor_kept:
                # Stored before any later frame is handled: if the bridge dies before the gap
                # is spooled, the next start recovers from here, not from a later live event.
                await self._pipeline.run_spool(self._spool.set_state, RECOVER_AFTER, _gap_text(gap))
                self._floor_kept = True
            self._gaps.append(gap)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._recover(), name="neuroio-bridge-recovery")

    async def _first_gap(self) -> GapStart | None:
        options = self._options
        if options.since is not None:
            return parse_since(options.since)
        if not options.backfill:
            return None
        spool = self._spool
        floor = await self._pipeline.run_spool(spool.get_state, RECOVER_AFTER)
        last = spool.last_event_id
        if floor is not None:
            gap = parse_since(floor)
            if gap and gap.last_id is not None and last is not None:
                gap = GapStart(last_id=min(gap.last_id, last))
            return gap
        if last is not None:
            return GapStart(last_id=last)
        return None

    def _reconnect_gap(self) -> GapStart | None:
        if not self._options.backfill:
            return None
        # Every frame of the lost connection was handled before this AUTH answer.
        newest = self._pipeline.newest_id
        if newest is None:
            newest = self._spool.last_event_id
        if newest is not None:
            return GapStart(last_id=newest)
        return GapStart(since_time=datetime.fromtimestamp(self._last_frame_at(), timezone.utc))

    async def _recover(self) -> None:
        spool, pipeline, options = self._spool, self._pipeline, self._options
        api_url = options.api_url or self._api_url() or DEFAULT_API_URL
        async with aiohttp.ClientSession() as session:
            client = EntriesClient(
                session,
                api_url,
                self._token,
                backoff=Backoff(
                    self._connection.reconnect_delay, self._connection.max_reconnect_delay
                ),
                closing=self._closed,
            )
            while True:
                while self._gaps:
                    gap = self._gaps[0]
                    try:
                        entries = await client.missed(gap)
                    except BackfillError as exc:
                        self.backfill_error = exc
                        log.error("gap recovery failed (retried at the next start): %s", exc)
                        self._gaps.clear()
                        return
                    if self._closed():
                        return
                    entries = _limit(entries, options.backfill_max_events, options.backfill_max_age)
                    for entry in entries:
                        event_id = entry.get("id")
                        if not valid_id(event_id):
                            log.warning("gap recovery skipped an entry without a usable id")
                            continue
                        await pipeline.put_event({"id": event_id, "data": entry})
                    self._gaps.pop(0)
                    self.recovered += len(entries)
                    if entries:
                        log.info("recovered %d missed entries from the REST API", len(entries))
                await pipeline.flush()
                async with self._floor_lock:
                    if self._gaps:
                        continue  # a reconnect during the flush
                    if self._closed() or self.backfill_error is not None:
                        return  # the stored start stays for the next run
                    await pipeline.run_spool(spool.set_state, RECOVER_AFTER, None)
                    self._floor_kept = False
                    return

    async def aclose(self) -> None:
        """Cancel a recovery in progress (its stored start stays for the next run)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _gap_text(gap: GapStart) -> str:
    if gap.last_id is not None:
        return str(gap.last_id)
    assert gap.since_time is not None
    return gap.since_time.isoformat()


def _limit(
    entries: list[dict[str, Any]], max_events: int | None, max_age: float | None
) -> list[dict[str, Any]]:
    """Apply ``backfill_max_age`` and ``backfill_max_events`` (entries sorted by id)."""
    if max_age is not None:
        oldest = datetime.fromtimestamp(time.time() - max_age, timezone.utc)
        kept = []
        for entry in entries:
            created = entry.get("created")
            try:
                moment = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
            except ValueError:
                kept.append(entry)  # no usable time: keep rather than lose
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            if moment >= oldest:
                kept.append(entry)
        if len(kept) < len(entries):
            log.warning(
                "gap recovery skipped %d entries older than %.0f s (backfill_max_age)",
                len(entries) - len(kept),
                max_age,
            )
        entries = kept
    if max_events is not None and len(entries) > max_events:
        log.warning(
            "gap recovery skipped the %d oldest of %d missed entries (backfill_max_events)",
            len(entries) - max_events,
            len(entries),
        )
        entries = entries[len(entries) - max_events :]
    return entries
