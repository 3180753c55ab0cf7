"""Gap recovery: fetch from the REST API the entries pushed while the socket was down.

The events socket never replays (``docs/protocol.md``), but ``GET /v1/entries/`` still lists
every entry. What to recover is decided by :class:`~neuroio._protocol.gaps.GapTracker` (recent
ids, the cursor, the floor, pending gaps, the limits, id sanity) and the entries are fetched,
streamed, by :class:`~neuroio._recovery.Recovery`; both are re-exported here.
:class:`EntriesClient` is the earlier client, which holds a whole gap in memory; it stays
until its callers use :class:`Recovery`.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import msgspec

from . import _redact
from ._http import parse_retry_after
from ._protocol.gaps import GapStart, GapTracker, Newest, RecentIds, entry_id, parse_since
from ._recovery import Recovery
from ._retry import Retrying
from ._times import iso, parse_time
from .backoff import Backoff
from .exceptions import BackfillError

__all__ = [
    "EntriesClient",
    "GapStart",
    "GapTracker",
    "Newest",
    "RecentIds",
    "Recovery",
    "parse_since",
]

logger = logging.getLogger("neuroio.backfill")

_page_decoder = msgspec.json.Decoder(dict[str, Any])


class EntriesClient:
    """Reads ``GET /v1/entries/`` page by page, retrying what can be retried.

    Args:
        session: the aiohttp session the listener already uses (one network stack).
        api_url: base URL, e.g. ``https://api.neuroio.com``.
        token: the API token, sent as ``Authorization: Token <token>``; never logged.
        page_size: ``limit`` of each request.
        overlap: seconds subtracted from ``created`` when falling back to ``date_from``, for
            clock skew between the entry's time and the server's filter.
        backoff: delays between retries of a failed request.
        request_timeout: seconds allowed for one request.
        closing: returns ``True`` when the listener is closing, to stop retrying.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: str,
        *,
        page_size: int = 100,
        overlap: float = 60.0,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        parts = urllib.parse.urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        self._session = session
        self._base = api_url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc)
        self._headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        self.page_size = page_size
        self.overlap = overlap
        self._retry = Retrying(
            backoff or Backoff(0.5, 30.0),
            closing=closing,
            logger=logger,
            what="entries API request",
        )
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._closing = closing
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"<EntriesClient {self._base}>"

    async def missed(self, gap: GapStart) -> list[dict[str, Any]]:
        """Every entry after ``gap``, sorted by id, each once.

        Holds the whole gap in memory; :meth:`pages` streams it instead.

        Raises:
            BackfillError: see :meth:`pages`.
        """
        unique: dict[int, dict[str, Any]] = {}
        async for page in self.pages(gap):
            for entry in page:
                event_id = entry_id(entry)
                if event_id is not None:
                    unique[event_id] = entry
        return [unique[i] for i in sorted(unique)]

    async def pages(self, gap: GapStart) -> AsyncIterator[list[dict[str, Any]]]:
        """The entries after ``gap``, one page at a time as fetched, so memory does not grow
        with the length of an outage. Entries are in the server's order (undocumented) and
        may repeat across pages; :meth:`missed` sorts and de-duplicates.

        Raises:
            BackfillError: the API refused the token (401/403) or answered something that is
                not an entries list. Other failures are retried until they pass or the
                listener closes (then the pages fetched so far are all there is).
        """
        if gap.last_id is not None:
            last = gap.last_id
            async for page in self._pages({"id_from": str(last + 1)}):
                stray = any((i := entry_id(e)) is not None and i <= last for e in page)
                if stray and gap.last_created is not None:
                    # The server ignored id_from: ask by time instead, and filter by id here.
                    logger.info("the entries API ignores id_from; recovering by date_from instead")
                    since = gap.last_created - timedelta(seconds=self.overlap)
                    async for by_time in self._pages({"date_from": iso(since)}):
                        yield [e for e in by_time if (entry_id(e) or 0) > last]
                    return
                yield [e for e in page if (entry_id(e) or 0) > last]
        elif gap.since_time is not None:
            since_time = gap.since_time
            async for page in self._pages({"date_from": iso(since_time)}):
                yield [
                    e
                    for e in page
                    if (c := parse_time(e.get("created"))) is None or c >= since_time
                ]

    async def _pages(self, params: dict[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
        query = dict(params, limit=str(self.page_size), offset="0")
        url: str | None = f"{self._base}/v1/entries/?{urllib.parse.urlencode(query)}"
        offset = 0
        while url is not None and not self._closing():
            page = await self._get(url)
            results = page.get("results")
            if not isinstance(results, list):
                raise BackfillError("the entries API answered without a 'results' list")
            yield [r for r in results if isinstance(r, dict)]
            offset += len(results)
            nxt = page.get("next")
            if not results or not nxt:
                url = None
            elif isinstance(nxt, str) and self._same_origin(nxt):
                url = nxt
            else:
                # Never send the token to another host than the one configured.
                query["offset"] = str(offset)
                url = f"{self._base}/v1/entries/?{urllib.parse.urlencode(query)}"

    def _same_origin(self, url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        return (parts.scheme, parts.netloc) == self._origin

    async def _get(self, url: str) -> dict[str, Any]:
        retry = self._retry
        while True:
            self.requests += 1
            delay: float | None = None
            try:
                async with self._session.get(
                    url, headers=self._headers, timeout=self._timeout
                ) as response:
                    if response.status == 200:
                        body = await response.read()
                        try:
                            page = _page_decoder.decode(body)
                        except msgspec.DecodeError as exc:
                            raise BackfillError(
                                f"the entries API answered with invalid JSON: {exc}"
                            ) from None
                        retry.reset()
                        return page
                    if response.status in (401, 403):
                        raise BackfillError(
                            f"the entries API refused the token (HTTP {response.status}); "
                            "missed entries cannot be recovered, live events continue"
                        )
                    if response.status == 429 or response.status >= 500 or response.status == 408:
                        delay = parse_retry_after(response.headers.get("Retry-After"))
                        problem = f"HTTP {response.status}"
                    else:
                        raise BackfillError(
                            f"the entries API answered HTTP {response.status} to a recovery request"
                        )
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                problem = _redact.redact(str(exc) or type(exc).__name__)
            self.retries += 1
            if not await retry.wait(delay, reason=problem):
                return {"results": []}
