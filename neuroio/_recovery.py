"""Gap recovery from ``GET /v1/entries/``, streamed: the one recovery loop of the package.

:class:`Recovery` fetches the entries of the gaps a :class:`~neuroio._protocol.gaps.GapTracker`
holds and hands them to a ``deliver`` coroutine, a page at a time, in ascending id order. It
never holds more than one page (``page_size`` plus a slack that grows only with the entries
created while it pages) however long the gap.

The list's order is not documented (``docs/protocol.md``), so it is learnt, not assumed:
:meth:`Recovery.newest` reads the first and the last entry of the list (two requests of one
entry each; a third, the first again, when they look oldest first and the list may have
grown by as many entries as it held between the two, which makes a newest-first list look
so) and keeps the larger id as the newest
and their order as the list's order. Within a page the order may be anything: every page is
sorted by id here. How a gap is walked:

- **ascending, ``id_from`` honoured** (keyset): ask ``id_from=cursor+1``; the page holds the
  oldest entries of the gap; the cursor moves to its largest id. Entries created meanwhile go
  to the end and shift nothing.
- **descending** (offset from the end): the oldest entries are at the end of the list, so
  each request asks ``offset = unhandled - page_size`` with ``limit = page_size + slack``.
  The answer is used only if it reaches the entries already handled (an id at or below the
  cursor, a short page, or ``offset + len(results) >= count - handled``): entries created
  meanwhile are at the front and move the end, which the check catches; the request is then
  repeated with the new ``count`` (or, for a bare list, a doubling guess) and a page longer by
  twice what moved, so a steady inflow is caught up. Whatever the page holds past the
  boundary was handled already and is dropped by id.
- **the server ignores ``id_from``** (an answer holds an id at or below ``id_from - 1``): the
  gap is walked by ``date_from`` = the cursor entry's ``created`` minus a margin (both on the
  server's clock), the same two ways (ascending: offsets from the start, which entries created
  meanwhile do not shift); ids at or below the gap's start are dropped here. The requests of
  a gap are then bounded by the gap plus the margin, not by the whole history.
- **a bare JSON list** instead of ``{"count", "next", "previous", "results"}``: there is no
  ``count``, so what is needed of it is counted by paging with ``limit``/``offset`` to the
  first short page (nothing kept), and the end of the list is recognised by a short page.

How an owner uses it (the listener; the bridge the same way, with its spool's floor)::

    tracker = GapTracker(max_events=..., max_age=..., on_suspect=log_once)
    tracker.restore(parse_since(since))                # optional, before the first connection
    recovery = Recovery(session, api_url, token, tracker, deliver, closing=closing)
    task = asyncio.create_task(recovery.serve(on_error=remember))
    # per live event (the hot path):   if not tracker.seen(event_id, created): drop it
    # per authenticated connection:    recovery.notify_connected()
    # per lost connection:             tracker.lost()

``next`` links are never followed: every URL is built from ``api_url``, so the token goes to
no other host. Failures: connection errors, timeouts, 408, 429 and 5xx are retried through
:class:`~neuroio._retry.Retrying` (``Retry-After`` honoured); 401/403 and answers that are not
an entries list raise :class:`~neuroio.exceptions.BackfillError` at once. Every failure
names what came: the status, the media type and the start of the body (printable, bounded,
the token replaced), e.g. ``the entries API answered HTTP 200 text/html, not JSON:
'<html><body>Bad gateway...'``; the error carries them as ``status``, ``content_type`` and
``body_start``.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from . import _redact
from ._http import BODY_START_CHARS, body_start, content_type, parse_retry_after
from ._protocol.backoff import Backoff
from ._protocol.gaps import Gap, GapTracker, Newest, entry_id
from ._retry import Retrying
from ._times import iso, parse_time
from ._token import TokenError, Tokens, TokenSource
from ._words import plural
from .exceptions import BackfillError

__all__ = ["Deliver", "EntriesAnswer", "Recovery"]

logger = logging.getLogger("neuroio.recovery")

Deliver = Callable[[list[dict[str, Any]]], Awaitable[None]]
"""Called with each page of recovered entries, ascending by id, each entry once."""

_decoder = msgspec.json.Decoder()
_RETRY_STATUSES = frozenset({408, 429})
# Of an error answer's body, only what a message shows is read (UTF-8: up to 4 bytes a
# character, and room for a token to be found whole and replaced).
_ERROR_BODY_BYTES = 4 * BODY_START_CHARS + 1024
_CONSEQUENCE = "missed entries cannot be recovered, live events continue"
# A page holds at most this many entries more than page_size, absorbing entries created
# between two requests of a descending walk without a repeated request.
_SLACK_DIVISOR = 4
# A descending walk lengthens its pages up to this many extra entries to catch up with
# entries created while it pages, and gives up after this many pages in a row that missed.
_MAX_SLACK = 1000
_MAX_MISSES = 50


@dataclass
class _Page:
    results: list[dict[str, Any]]
    count: int | None  # None: the answer was a bare list


class Recovery:
    """Recovers the gaps of ``tracker`` from the REST API, streaming.

    Args:
        session: the aiohttp session of the owner (one network stack).
        api_url: base URL, e.g. ``https://api.neuroio.com``.
        token: the API token, a (sync or async) provider of it, or the owner's
            :class:`~neuroio._token.Tokens`; a refused token is asked for again once.
            Never logged.
        tracker: the gaps, the cursor and the limits.
        deliver: called with each page of recovered entries (ascending ids).
        page_size: ``limit`` of each request.
        backoff: delays between retries of a failed request.
        closing: an :class:`asyncio.Event` or a callable; set/true stops retrying and walking.
        request_timeout: seconds allowed for one request.

    Attributes:
        requests: REST requests made; retries: of those, repeated after a failure.
        held_high_water: the most entries held at once (one page).
        recovered: entries delivered; skipped: entries left out by the limits.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: TokenSource | Tokens,
        tracker: GapTracker,
        deliver: Deliver,
        *,
        page_size: int = 100,
        backoff: Backoff | None = None,
        closing: asyncio.Event | Callable[[], bool] | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        parts = urllib.parse.urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._session = session
        self._url = api_url.rstrip("/") + "/v1/entries/"
        # A fixed token is the owner's to redact; a provider's are redacted as they come.
        self._tokens = token if isinstance(token, Tokens) else Tokens(token, guard=False)
        self.tracker = tracker
        self._deliver = deliver
        self.page_size = page_size
        self._slack = max(1, page_size // _SLACK_DIVISOR)
        self._retry = Retrying(
            backoff or Backoff(0.5, 30.0),
            closing=closing,
            logger=logger,
            what="entries API request",
        )
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.descending: bool | None = None
        """The list's order as last learnt (``None``: not known yet)."""
        self.ignores_id_from = False
        """The server was seen ignoring ``id_from``."""
        self._scan_logged = False
        self._wake: asyncio.Event | None = None
        self.requests = 0
        self.retries = 0
        self.held_high_water = 0
        self.recovered = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"<Recovery {self._url}>"

    def _closing(self) -> bool:
        return self._retry.closing()

    # -- the newest entry ------------------------------------------------------------------

    async def newest(self) -> Newest | None:
        """The newest entry the REST API knows, and the list's order; ``None`` if the owner
        closed first.

        Two requests of one entry each: the first and the last of the list (a bare list:
        the first and the one a page further, then, if it is ascending, ``id_from`` probes
        doubling their step); when the list looks oldest first and may have grown by as
        many entries as it held between the two (a bare list: always), the first entry once
        more, which tells an oldest-first list from a newest-first one that grew so.
        Failures are retried (see the module docstring).

        Raises:
            BackfillError: the token was refused or the answer is not an entries list.
        """
        try:
            return await self._newest()
        except _Closing:
            return None

    async def _newest(self) -> Newest:
        first = await self._get({"limit": "1"})
        if not first.results:
            return Newest(None)
        head = first.results[0]
        if first.count is not None:
            if first.count <= 1:
                return _newest(head, None)
            tail_answer = await self._get({"limit": "1", "offset": str(first.count - 1)})
            tail = tail_answer.results[0] if tail_answer.results else head
        else:
            # No count: compare with the entry a page further, so that entries created
            # between the two requests (up to a page of them) cannot reverse the verdict.
            tail_answer = second = await self._get({"limit": "1", "offset": str(self.page_size)})
            if not second.results:
                # At most a page: any gap is one page, its order does not matter.
                whole = await self._get({"limit": str(self.page_size)})
                self._ids(whole)
                if not whole.results:
                    return Newest(None)
                return _newest(max(whole.results, key=_sort_key), None)
            tail = second.results[0]
        head_id, tail_id = _id_of(head), _id_of(tail)
        descending = head_id > tail_id
        if tail_id > head_id and _may_have_moved(first, tail_answer):
            # The two answers are not one snapshot. Oldest first, the tail cannot be older
            # than the head; but newest first, more entries created between the requests
            # than the list held push new ones to where the tail was asked, and the list
            # looks oldest first. The first entry again tells them apart: newest first, it
            # is at least the tail (which already existed); oldest first, it is older.
            again = await self._get({"limit": "1"})
            if again.results and _id_of(again.results[0]) >= tail_id:
                descending = True
                head, head_id = again.results[0], _id_of(again.results[0])
        self.descending = descending
        if descending or first.count is not None:
            return _newest(head if descending else tail, descending)
        return _newest(await self._gallop(tail), descending)

    async def _gallop(self, known: dict[str, Any]) -> dict[str, Any]:
        # An ascending bare list: id_from=x answers the smallest id >= x; double the step
        # until nothing is past it, then halve back. O(log(newest - known)) requests.
        if self.ignores_id_from:
            return await self._scan_last()
        lo, low_entry = entry_id(known) or 0, known
        step, hi = 1, None
        while hi is None or hi - lo > 1:
            probe = lo + step if hi is None else (lo + hi) // 2
            page = await self._get({"limit": "1", "id_from": str(probe)})
            found = entry_id(page.results[0]) if page.results else None
            if found is not None and found < probe:
                self.ignores_id_from = True
                return await self._scan_last()
            if found is None:
                hi = probe
            else:
                lo, low_entry = found, page.results[0]
                step *= 2
        return low_entry

    async def _scan_last(self) -> dict[str, Any]:
        # An ascending bare list that ignores id_from: the newest is at the end, which only
        # reading the list to it finds (a page at a time, keeping one entry).
        if not self._scan_logged:
            self._scan_logged = True
            logger.warning(
                "the entries API answers a bare list, oldest first, and ignores id_from: "
                "each connection reads the whole list to find its newest entry"
            )
        offset, size, last = 0, self.page_size, None
        while True:
            page = await self._get({"limit": str(size), "offset": str(offset)})
            self._ids(page)
            if page.results:
                last = max(page.results, key=_sort_key)
            offset += len(page.results)
            if len(page.results) < size:
                break
        if last is None:
            raise BackfillError("the entries list emptied while it was read")
        return last

    async def connected(self) -> Gap | None:
        """At each (re)connection: learn the newest entry (the floor and the server's clock)
        and close the tracker's open gap; the gap to recover, if any, is returned (and
        queued in the tracker for :meth:`run`).

        Raises:
            BackfillError: see :meth:`newest`.
        """
        losses = self.tracker.losses
        newest = await self.newest()
        if newest is None or self._closing():
            return None
        if self.tracker.losses != losses:
            # The connection was lost while the newest entry was being asked for: that answer
            # may predate entries missed since, and closing the new gap there would leave them
            # out. The gap stays open; the next connection asks again.
            return None
        return self.tracker.connected(newest)

    def notify_connected(self) -> None:
        """A connection was just authenticated: :meth:`serve` learns the newest entry and
        recovers what is pending. Cheap and synchronous, for the owner's connection loop."""
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()

    async def serve(self, on_error: Callable[[BackfillError], None] | None = None) -> None:
        """Run until cancelled (or closing): after each :meth:`notify_connected`, call
        :meth:`connected` and :meth:`run`. Connections notified while a gap is being
        recovered are served when it is done (their gaps queue in the tracker).

        Args:
            on_error: given a :class:`~neuroio.exceptions.BackfillError` (a refused token, an
                answer that is not an entries list); the queued gaps are dropped and the next
                connection is served. Without it, the error is raised.
        """
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        while not self._closing():
            await wake.wait()
            wake.clear()
            try:
                await self.connected()
                await self.run()
            except BackfillError as exc:
                self.tracker.drop_pending()
                if on_error is None:
                    raise
                on_error(exc)

    # -- walking gaps ----------------------------------------------------------------------

    async def run(self) -> int:
        """Recover every gap queued in the tracker, oldest first; the entries delivered.

        Raises:
            BackfillError: see :meth:`newest`; the queued gaps are dropped.
        """
        total = 0
        try:
            while not self._closing():
                gap = self.tracker.next_gap()
                if gap is None:
                    break
                total += await self.recover(gap)
        except BackfillError:
            self.tracker.drop_pending()
            raise
        return total

    async def recover(self, gap: Gap) -> int:
        """Deliver the entries of one gap in ascending order; how many were delivered (the
        owner closing ends it early).

        Raises:
            BackfillError: see :meth:`newest`.
        """
        before, skipped = self.recovered, self.skipped
        try:
            await self._walk(gap)
        except _Closing:
            pass
        count = self.recovered - before
        if self.skipped > skipped:
            logger.warning(
                "gap recovery skipped %s beyond its limits (backfill_max_events=%s, "
                "backfill_max_age=%s s, measured from the newest entry's time)",
                plural(self.skipped - skipped, "entry", "entries"),
                self.tracker.max_events,
                self.tracker.max_age,
            )
        if count:
            logger.info("recovered %d missed entries from the REST API", count)
        return count

    async def _walk(self, gap: Gap) -> None:
        start = gap.start
        if start.last_id is None and start.since_time is None:
            return
        if self.descending is None:
            await self._newest()
        if start.last_id is not None and not self.ignores_id_from:
            by_id = {"id_from": str(start.last_id + 1)}
            try:
                if self.descending is False:
                    await self._ascending_keyset(gap, by_id)
                else:
                    await self._descending(gap, by_id, check_ids=True)
            except _IgnoresIdFrom:
                self.ignores_id_from = True
                logger.info("the entries API ignores id_from; recovering by date_from instead")
        if start.last_id is None or self.ignores_id_from:
            params: dict[str, str] = {}
            since = self.tracker.date_from(start)
            if since is not None:
                params["date_from"] = iso(since)
            elif start.last_id is not None:
                logger.warning(
                    "the entries API ignores id_from and the time of event %d is not known: "
                    "reading the whole entries list to recover the gap",
                    start.last_id,
                )
            if self.descending is False:
                await self._ascending_offsets(gap, params)
            else:
                await self._descending(gap, params, check_ids=False)

    async def _ascending_keyset(self, gap: Gap, params: dict[str, str]) -> None:
        cursor = gap.start.last_id
        assert cursor is not None
        size = self.page_size
        offset = await self._cap_offset_ascending(gap, params, cursor)
        while not self._closing():
            page = await self._get(dict(params, limit=str(size), offset=str(offset)))
            offset = 0
            ids = self._ids(page)
            if ids and min(ids) <= cursor:
                raise _IgnoresIdFrom
            if ids:
                cursor = max(ids)
                await self._hand(page.results, gap, None)
            if len(page.results) < size or _past(cursor, gap):
                return
            params = {"id_from": str(cursor + 1)}

    async def _ascending_offsets(self, gap: Gap, params: dict[str, str]) -> None:
        size = self.page_size
        offset = await self._cap_offset_ascending(gap, params)
        after = gap.start.last_id
        top = after
        while not self._closing():
            page = await self._get(dict(params, limit=str(size), offset=str(offset)))
            ids = self._ids(page)
            offset += len(page.results)
            await self._hand(page.results, gap, after)
            if ids:
                top = max(ids) if top is None else max(top, *ids)
            if len(page.results) < size or (top is not None and _past(top, gap)):
                return

    async def _cap_offset_ascending(
        self, gap: Gap, params: dict[str, str], after: int | None = None
    ) -> int:
        """The offset that skips the oldest entries beyond ``max_events``."""
        limit = self.tracker.max_events
        if limit is None:
            return 0
        total = await self._count(params, after)
        if total <= limit:
            return 0
        self._skip(total - limit)
        return total - limit

    async def _descending(self, gap: Gap, params: dict[str, str], *, check_ids: bool) -> None:
        # Walks from the end of the list (the oldest) towards its front. ``unhandled``: the
        # entries of the list in front of those handled; ``handled``: those at its end.
        size, slack = self.page_size, self._slack
        after = gap.start.last_id
        cursor = after  # the largest id handled in this gap
        handled = 0
        unhandled = await self._count(params, after if check_ids else None)
        limit_edge = await self._beyond_limit(params, unhandled, after if check_ids else None)
        if limit_edge is not None:
            cursor = limit_edge if cursor is None else max(cursor, limit_edge)
            keep = unhandled if self.tracker.max_events is None else self.tracker.max_events
            handled, unhandled = unhandled - keep, keep
        misses = 0
        while unhandled > 0 and not self._closing():
            offset = max(0, unhandled - size)
            limit = size + slack
            page = await self._get(dict(params, limit=str(limit), offset=str(offset)))
            ids = self._ids(page)
            if check_ids and after is not None and ids and min(ids) <= after:
                raise _IgnoresIdFrom
            if offset > 0 and ids and cursor is not None and max(ids) <= cursor:
                # Overshot (a guess too large): the boundary is in front of this page.
                unhandled = offset
                continue
            reached = len(page.results) < limit or (
                cursor is not None and bool(ids) and min(ids) <= cursor
            )
            if page.count is not None and offset + len(page.results) >= page.count - handled:
                reached = True
            if not reached:
                # Entries created meanwhile moved the end past this page: look further, with
                # a page longer by twice what moved, so that a steady inflow is caught up.
                misses += 1
                if misses > _MAX_MISSES:
                    raise BackfillError(
                        "entries are created faster than the entries API can be paged; "
                        "the gap was not recovered"
                    )
                if page.count is not None:
                    moved = page.count - handled - unhandled
                    unhandled = page.count - handled
                else:
                    moved = slack
                    unhandled = offset + len(page.results) + slack
                slack = min(max(slack, 2 * moved), _MAX_SLACK)
                continue
            misses = 0
            if page.count is not None:
                handled = page.count - offset
            # Past the boundary the page holds entries handled already: dropped by id.
            await self._hand(page.results, gap, cursor)
            fresh = [i for i in ids if cursor is None or i > cursor]
            if fresh:
                cursor = max(fresh)
            unhandled = offset
            if cursor is not None and _past(cursor, gap):
                return

    async def _beyond_limit(
        self, params: dict[str, str], unhandled: int, after: int | None
    ) -> int | None:
        """With more than ``max_events`` unhandled, count the oldest beyond the limit as
        skipped and return the newest of them (the walk's boundary); ``None`` otherwise."""
        keep = self.tracker.max_events
        if keep is None or unhandled <= keep:
            return None
        edge = await self._get(dict(params, limit="1", offset=str(keep)))
        edge_ids = self._ids(edge)
        if after is not None and edge_ids and edge_ids[0] <= after:
            raise _IgnoresIdFrom
        if not edge_ids:
            return None
        self._skip(unhandled - keep)
        return edge_ids[0]

    async def _count(self, params: dict[str, str], after: int | None = None) -> int:
        """How many entries match ``params``: the answer's ``count``, or for a bare list the
        entries counted page by page (none kept). ``after``: ``params`` ask ``id_from`` and
        an id at or below it means the server ignores it."""
        page = await self._get(dict(params, limit="1"))
        ids = self._ids(page)
        if after is not None and ids and min(ids) <= after:
            raise _IgnoresIdFrom
        if page.count is not None:
            return page.count
        total, size = 0, self.page_size
        while not self._closing():
            chunk = await self._get(dict(params, limit=str(size), offset=str(total)))
            total += len(chunk.results)
            if len(chunk.results) < size:
                break
        return total

    async def _hand(self, entries: list[dict[str, Any]], gap: Gap, after: int | None) -> None:
        batch = []
        tracker = self.tracker
        for entry in sorted(entries, key=_sort_key):
            event_id = entry_id(entry)
            if event_id is None or (after is not None and event_id <= after):
                continue
            if not tracker.accept(entry, gap):
                if event_id not in tracker.recent:
                    self._skip(1)
                continue
            batch.append(entry)
        if batch:
            self.recovered += len(batch)
            await self._deliver(batch)

    def _skip(self, n: int) -> None:
        self.skipped += n

    def _ids(self, page: _Page) -> list[int]:
        if len(page.results) > self.held_high_water:
            self.held_high_water = len(page.results)
        return [i for e in page.results if (i := entry_id(e)) is not None]

    # -- one request -----------------------------------------------------------------------

    async def _get(self, params: dict[str, str]) -> _Page:
        url = f"{self._url}?{urllib.parse.urlencode(params)}"
        retry = self._retry
        refused: str | None = None  # the token refused by this request's last attempt
        while True:
            self.requests += 1
            retry_after: float | None = None
            try:
                token = await self._tokens.get()
                headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
                async with self._session.get(
                    url, headers=headers, timeout=self._timeout, allow_redirects=False
                ) as response:
                    status = response.status
                    if status == 200:
                        answer = EntriesAnswer(status, response.headers, await response.read())
                        page = answer.page(token)
                        retry.reset()
                        return page
                    # Of an error answer only its start is shown: no need to read it all.
                    answer = EntriesAnswer(status, response.headers, await _start_of(response))
                    if status in (401, 403):
                        if self._ask_again(token, refused):
                            refused = token
                            continue
                        raise answer.error(
                            f"the entries API refused the token (HTTP {status}); {_CONSEQUENCE}",
                            token,
                        )
                    if status not in _RETRY_STATUSES and status < 500:
                        raise answer.error(
                            f"the entries API answered {answer.describe(token)} "
                            "to a recovery request",
                            token,
                        )
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    problem = answer.describe(token)
            except TokenError as exc:
                problem = str(exc)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                problem = _redact.redact(str(exc) or type(exc).__name__)
            self.retries += 1
            if not await retry.wait(retry_after, reason=problem):
                raise _Closing

    def _ask_again(self, token: str, refused: str | None) -> bool:
        """A refused token: ``True`` to repeat the request with the provider's next answer.

        Once per request: a second refusal is final (whichever token), so a provider handing
        out bad tokens never makes a tight loop of requests.
        """
        if not self._tokens.dynamic or refused is not None:
            return False
        self._tokens.rejected(token)
        return True


class _IgnoresIdFrom(Exception):
    """An answer to ``id_from`` held an older id (internal)."""


class _Closing(Exception):
    """The owner is closing: the walk stops where it is (internal)."""


async def _start_of(response: aiohttp.ClientResponse) -> bytes:
    """The first bytes of an error answer's body (what an error message shows of it)."""
    start = bytearray()
    try:
        while len(start) < _ERROR_BODY_BYTES:
            chunk = await response.content.read(_ERROR_BODY_BYTES - len(start))
            if not chunk:
                break
            start += chunk
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        pass  # what came is shown; the status says enough
    return bytes(start)


class EntriesAnswer:
    """One answer of the entries API: its page, or an error naming what came."""

    __slots__ = ("status", "content_type", "body")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.content_type = content_type(headers)
        self.body = body

    def describe(self, token: str, what: str = "") -> str:
        """``HTTP 502 text/html: '<html>...'``: status, media type, ``what`` is wrong with
        it (``, not JSON``), the body's start."""
        start = body_start(self.body, secrets=(token,))
        shown = f"'{start}'" if start else "an empty body"
        return f"HTTP {self.status} {self.content_type}{what}: {shown}"

    def error(self, message: str, token: str) -> BackfillError:
        """A :class:`BackfillError` saying ``message``, carrying what came as attributes."""
        return BackfillError(
            message,
            status=self.status,
            content_type=self.content_type,
            body_start=body_start(self.body, secrets=(token,)),
        )

    def page(self, token: str, consequence: str = _CONSEQUENCE) -> _Page:
        """The entries of a DRF page (``results``, ``count``) or of a bare list.

        Args:
            token: the token the request carried (never shown).
            consequence: what an error message says follows from a bad answer.

        Raises:
            BackfillError: invalid JSON, or JSON of another shape; the message names the
                status, the content type and the start of the body.
        """
        try:
            value = _decoder.decode(self.body)
        except msgspec.DecodeError:
            raise self._unexpected(", not JSON", token, consequence) from None
        if isinstance(value, list):
            return _Page([e for e in value if isinstance(e, dict)], None)
        if isinstance(value, dict):
            results = value.get("results")
            count = value.get("count")
            if isinstance(results, list):
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    count = None
                return _Page([e for e in results if isinstance(e, dict)], count)
        raise self._unexpected(", JSON neither a page of 'results' nor a list", token, consequence)

    def _unexpected(self, what: str, token: str, consequence: str) -> BackfillError:
        return self.error(
            f"the entries API answered {self.describe(token, what)}; {consequence}", token
        )


def _newest(entry: dict[str, Any], descending: bool | None) -> Newest:
    return Newest(entry_id(entry), parse_time(entry.get("created")), descending)


def _past(cursor: int, gap: Gap) -> bool:
    return gap.until is not None and cursor >= gap.until


def _may_have_moved(first: _Page, tail: _Page) -> bool:
    """Whether entries created between the two answers of the newest probe may have reached
    where the tail was asked (at ``first.count - 1``: as many new entries as the list held
    before); without counts (a bare list), it cannot be ruled out."""
    if first.count is None or tail.count is None:
        return True
    grown = tail.count - first.count
    return not 0 <= grown < first.count - 1


def _id_of(entry: dict[str, Any]) -> int:
    event_id = entry_id(entry)
    if event_id is None:
        raise BackfillError("the entries API listed an entry without an integer id")
    return event_id


def _sort_key(entry: dict[str, Any]) -> int:
    return entry_id(entry) or 0
