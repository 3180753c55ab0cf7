"""The emulator's REST side: the history of emitted entries and ``GET /v1/entries/``.

:class:`History` keeps every emitted entry with its encoded event frame, so a REST item is
byte for byte the ``data`` of the event that was pushed. :class:`RestApi` answers
``GET /v1/entries/`` from it: the token check, the filters of ``docs/protocol.md``, limit and
offset, the order (newest first by default) and the answer's shape, plus the failures and the
request log tests steer and read.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import web

from .._times import timestamp
from ..exceptions import ConfigurationError
from ._frames import encoder

__all__ = [
    "REST_ORDERS",
    "REST_SHAPES",
    "History",
    "RestApi",
    "RestOrder",
    "RestSettings",
    "RestShape",
    "check_rest_options",
]

_DEFAULT_LIMIT = 20
_MAX_LIMIT = 1000

RestOrder = Literal["asc", "desc"]
RestShape = Literal["page", "list"]
REST_ORDERS: tuple[RestOrder, ...] = ("desc", "asc")
REST_SHAPES: tuple[RestShape, ...] = ("page", "list")


class Stored:
    """One emitted entry as kept for the REST API: its event frame and the filterable fields."""

    __slots__ = (
        "seq",
        "id",
        "ts",
        "result",
        "liveness",
        "mood",
        "sex",
        "age",
        "source_id",
        "space_id",
        "pid",
        "frame",
        "data_start",
    )

    def __init__(self, seq: int, entry: dict[str, Any], frame: bytes, data_start: int) -> None:
        self.seq = seq
        self.id: int = entry["id"]
        self.ts = timestamp(entry.get("created"))
        self.result = entry.get("result")
        self.liveness = entry.get("liveness")
        self.mood = entry.get("mood")
        self.sex = entry.get("sex")
        self.age = entry.get("age")
        self.source_id = _nested_id(entry.get("source"))
        self.space_id = _nested_id(entry.get("space"))
        # The media side draws the face of this person (not a filter of the REST API).
        self.pid = entry.get("pid")
        self.frame = frame
        self.data_start = data_start

    def data(self) -> memoryview:
        """The entry's JSON: the ``data`` part of the event frame, without a copy."""
        return memoryview(self.frame)[self.data_start : -1]


def _nested_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


def _stored_id(stored: Stored) -> int:
    return stored.id


class History:
    """The newest ``size`` emitted entries, in emission order.

    Each entry gets a sequence number (emission order, never reused) so that the WebSocket
    side can push what a token has not been sent yet.
    """

    def __init__(self, size: int) -> None:
        self._items: deque[Stored] = deque(maxlen=size)
        self._ids_sorted = True
        self.next_seq = 0
        """The sequence number the next entry gets."""

    def __len__(self) -> int:
        return len(self._items)

    def add(self, entry: dict[str, Any], frame: bytes, data_start: int) -> Stored:
        """Keep ``entry``, whose event frame is ``frame`` with its data from ``data_start``."""
        items = self._items
        if items and entry["id"] <= items[-1].id:
            self._ids_sorted = False
        stored = Stored(self.next_seq, entry, frame, data_start)
        self.next_seq += 1
        items.append(stored)
        return stored

    def frames_since(self, seq: int) -> Iterator[bytes]:
        """The event frames of the entries kept from sequence number ``seq`` on."""
        items = self._items
        if not items:
            return iter(())
        start = max(0, seq - items[0].seq)
        return (stored.frame for stored in itertools.islice(items, start, None))

    def find(self, entry_id: int) -> Stored | None:
        """The kept entry with this id (the first emitted, if several were), or ``None``."""
        items = self._items
        if self._ids_sorted:
            i = bisect.bisect_left(items, entry_id, key=_stored_id)
            return items[i] if i < len(items) and items[i].id == entry_id else None
        return next((s for s in items if s.id == entry_id), None)

    def candidates(self, id_from: int | None, *, descending: bool) -> tuple[Iterable[Stored], int]:
        """The entries with ``id >= id_from`` in id order, and how many there are."""
        items = self._items
        if self._ids_sorted:
            start = 0 if id_from is None else bisect.bisect_left(items, id_from, key=_stored_id)
            total = len(items) - start
            if descending:
                # Newest first: walk from the right end, which deque does cheaply.
                return itertools.islice(reversed(items), total), total
            return itertools.islice(items, start, None), total
        ordered = sorted(items, key=_stored_id, reverse=descending)
        if id_from is not None:
            ordered = [s for s in ordered if s.id >= id_from]
        return ordered, len(ordered)


@dataclass(frozen=True)
class _Filters:
    """The REST filters besides ids; ``None`` is "any"."""

    date_from: float | None
    date_to: float | None
    result: frozenset[str] | None
    liveness: frozenset[str] | None
    mood: frozenset[str] | None
    sex: frozenset[int] | None
    age_from: int | None
    age_to: int | None
    sources: frozenset[int] | None
    spaces: frozenset[int] | None

    def active(self) -> bool:
        return any(getattr(self, f) is not None for f in self.__dataclass_fields__)

    def match(self, s: Stored) -> bool:
        return (
            _in_range(s.ts, self.date_from, self.date_to)
            and _member(s.result, self.result)
            and _member(s.liveness, self.liveness)
            and _member(s.mood, self.mood)
            and _member(s.sex, self.sex)
            and _in_range(_int_or_none(s.age), self.age_from, self.age_to)
            and _member(s.source_id, self.sources)
            and _member(s.space_id, self.spaces)
        )


def _member(value: Any, allowed: frozenset[Any] | None) -> bool:
    return allowed is None or value in allowed


def _in_range(value: float | None, low: float | None, high: float | None) -> bool:
    """Inclusive; a missing value matches only when there is no bound."""
    if low is None and high is None:
        return True
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _BadQuery(Exception):
    pass


@dataclass(frozen=True)
class _Query:
    limit: int
    offset: int
    id_from: int | None
    filters: _Filters


def _parse_query(query: Any, *, ignore_id_from: bool) -> _Query:
    limit = _int_param(query, "limit")
    if limit is None or limit <= 0:
        limit = _DEFAULT_LIMIT
    id_from: int | None = None
    if not ignore_id_from:
        for name in ("id_from", "entry_id_from"):
            value = _int_param(query, name)
            if value is not None:
                id_from = value if id_from is None else max(id_from, value)
    filters = _Filters(
        date_from=_date_param(query, "date_from"),
        date_to=_date_param(query, "date_to"),
        result=_list_param(query, "result"),
        liveness=_list_param(query, "liveness"),
        mood=_list_param(query, "mood"),
        sex=_int_list_param(query, "sex"),
        age_from=_int_param(query, "age_from"),
        age_to=_int_param(query, "age_to"),
        sources=_int_list_param(query, "sources_ids"),
        spaces=_int_list_param(query, "spaces_ids"),
    )
    return _Query(
        limit=min(limit, _MAX_LIMIT),
        offset=max(_int_param(query, "offset") or 0, 0),
        id_from=id_from,
        filters=filters,
    )


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _BadQuery(f"{name}: enter a whole number") from None


def _list_param(query: Any, name: str) -> frozenset[str] | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _int_list_param(query: Any, name: str) -> frozenset[int] | None:
    values = _list_param(query, name)
    if values is None:
        return None
    try:
        return frozenset(int(v) for v in values)
    except ValueError:
        raise _BadQuery(f"{name}: enter a comma-separated list of whole numbers") from None


def _date_param(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    moment = timestamp(value)
    if moment is None:
        raise _BadQuery(f"{name}: enter an ISO-8601 date and time")
    return moment


def _unauthorized(detail: str) -> web.Response:
    return web.json_response(
        {"detail": detail}, status=401, headers={"WWW-Authenticate": 'Token realm="api"'}
    )


def _page_url(request: web.Request, limit: int, offset: int) -> str:
    params = {k: v for k, v in request.query.items()}
    params["limit"] = str(limit)
    if offset:
        params["offset"] = str(offset)
    else:
        params.pop("offset", None)
    return str(request.url.with_query(params))


def check_rest_options(order: str, shape: str) -> None:
    """Raise :class:`ConfigurationError` unless ``order`` and ``shape`` are known."""
    if order not in REST_ORDERS:
        raise ConfigurationError(f"rest_order must be one of {', '.join(REST_ORDERS)}")
    if shape not in REST_SHAPES:
        raise ConfigurationError(f"rest_shape must be one of {', '.join(REST_SHAPES)}")


class RestSettings(Protocol):
    """The options :class:`RestApi` reads on every request (the emulator's attributes)."""

    ignore_id_from: bool
    rest_order: RestOrder
    rest_shape: RestShape


class RestApi:
    """``GET /v1/entries/`` over a :class:`History`.

    Args:
        history: the entries served.
        token_ok: whether a token is accepted (read on every request, so tokens can change).
        notify: called after every request is logged (it wakes the emulator's waiters).
        settings: the owner holding ``ignore_id_from``, ``rest_order`` and ``rest_shape``,
            read on every request so tests can change them at any time.
    """

    def __init__(
        self,
        history: History,
        *,
        token_ok: Callable[[Any], bool],
        notify: Callable[[], None],
        settings: RestSettings,
    ) -> None:
        self._history = history
        self._token_ok = token_ok
        self._notify = notify
        self._settings = settings
        self.requests: list[dict[str, str]] = []
        """The query parameters of each request, in order."""
        # (path, query) of every request since the start, for count(); kept apart from
        # ``requests`` so that a test clearing that list does not skew the counts.
        self._log: list[tuple[str, dict[str, str]]] = []
        self._fail: tuple[int, float | None] | None = None
        self._fail_left: int | None = None
        # The gate of hold()/release(): requests answered before it closes, and the event
        # a held request waits on (None: no gate).
        self._pass_left = 0
        self._gate: asyncio.Event | None = None
        self.held = 0
        """Requests waiting at the gate now."""

    def hold(self, after: int) -> None:
        """Answer the next ``after`` requests, then hold every later one until
        :meth:`release`."""
        if after < 0:
            raise ConfigurationError("after must be at least 0")
        if self._gate is None or self._gate.is_set():
            self._gate = asyncio.Event()
        self._pass_left = after

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def _wait_at_gate(self) -> None:
        gate = self._gate
        if gate is None:
            return
        if self._pass_left > 0:
            self._pass_left -= 1
            return
        self.held += 1
        self._notify()
        try:
            await gate.wait()
        finally:
            self.held -= 1

    def fail(self, status: int, count: int | None, retry_after: float | None) -> None:
        """Fail the next ``count`` requests (``None``: all until :meth:`heal`)."""
        if not 400 <= status <= 599:
            raise ConfigurationError(f"a failure status is 400..599, got {status}")
        if count is not None and count < 1:
            raise ConfigurationError("count must be at least 1 or None")
        self._fail = (status, retry_after)
        self._fail_left = count

    def heal(self) -> None:
        """Serve requests normally again."""
        self._fail = None
        self._fail_left = None

    def count(self, path: str | None, has: Iterable[str], params: dict[str, str]) -> int:
        """How many requests had ``path`` (``None``: any), every name of ``has`` in their
        query, and each of ``params`` with that value."""
        names = tuple(has)
        n = 0
        for where, query in self._log:
            if path is not None and where != path:
                continue
            if all(name in query for name in names) and all(
                query.get(k) == v for k, v in params.items()
            ):
                n += 1
        return n

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one ``GET /v1/entries/``."""
        query = {k: v for k, v in request.query.items()}
        self.requests.append(query)
        self._log.append((request.path, query))
        self._notify()
        await self._wait_at_gate()
        failure = self._failure()
        if failure is not None:
            return failure
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            return _unauthorized("Authentication credentials were not provided.")
        if scheme != "Token" or not self._token_ok(token.strip()):
            return _unauthorized("Invalid token.")
        settings = self._settings
        try:
            parsed = _parse_query(request.query, ignore_id_from=settings.ignore_id_from)
        except _BadQuery as exc:
            return web.json_response({"detail": str(exc)}, status=400)
        selected, count = self._select(parsed, descending=settings.rest_order == "desc")
        results = b",".join(s.data() for s in selected)
        if settings.rest_shape == "list":
            body = b"[%s]" % results
        else:
            body = self._page(request, parsed, count, results)
        return web.Response(body=body, content_type="application/json")

    def _failure(self) -> web.Response | None:
        if self._fail is None:
            return None
        status, retry_after = self._fail
        if self._fail_left is not None:
            self._fail_left -= 1
            if self._fail_left <= 0:
                self.heal()
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = format(retry_after, "g")
        detail = "Request was throttled." if status == 429 else "Simulated failure."
        return web.json_response({"detail": detail}, status=status, headers=headers)

    @staticmethod
    def _page(request: web.Request, query: _Query, count: int, results: bytes) -> bytes:
        limit, offset = query.limit, query.offset
        next_url = None
        if offset + limit < count:
            next_url = _page_url(request, limit, offset + limit)
        previous_url = None
        if offset > 0:
            previous_url = _page_url(request, limit, max(0, offset - limit))
        return b'{"count":%d,"next":%s,"previous":%s,"results":[%s]}' % (
            count,
            encoder.encode(next_url),
            encoder.encode(previous_url),
            results,
        )

    def _select(self, query: _Query, *, descending: bool) -> tuple[list[Stored], int]:
        candidates, total = self._history.candidates(query.id_from, descending=descending)
        offset, end = query.offset, query.offset + query.limit
        wanted = query.filters
        if not wanted.active():
            return list(itertools.islice(candidates, offset, end)), total
        count = 0
        selected = []
        for stored in candidates:
            if wanted.match(stored):
                if offset <= count < end:
                    selected.append(stored)
                count += 1
        return selected, count
