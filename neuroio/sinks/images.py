"""``images:DIR``: the face (and optionally the full) picture of every event, downloaded to a
directory, with an index of what was stored.

Each event's ``face_image`` URL is fetched and written to
``DIR/YYYY/MM/DD/{id}-face.EXT`` (the date of the entry's ``created``, as the platform wrote
it; ``unknown/unknown/unknown`` without one), ``full_image`` to ``{id}-full.EXT``. ``EXT``
follows the picture's content type (``jpg`` for ``image/jpeg``, ``png``, ``webp``, ``gif``;
the URL's own suffix for any other ``image/*``), so a file always opens as what it is.
Every file is written to a temporary name, synced and renamed (a reader never sees half a
picture), mode ``0600`` in directories ``0700``: faces are personal data.

``DIR/index.jsonl`` gets one line per event once each of its fields has an outcome::

    {"id": 17, "created": "2024-05-01T10:00:00Z", "fields": {"face_image": {"status":
     "stored", "path": "2024/05/01/17-face.png", "bytes": 5120, "sha256": "9f2c..."}}}

A field's ``status`` is ``stored``; ``missing`` (the host answered 404, or 403/410 as an
expired signed link does, or another 4xx; ``http_status`` says which); ``too_large`` (larger
than ``max_bytes``: not stored); ``not_image`` (the answer was not a picture); or ``no_url``
(the event has no link). None of these is retried: the event counts as delivered. A 5xx,
408, 429, a timeout or a connection error fails the batch (:class:`SinkError`), and the
bridge sends it again after a backoff; pictures already stored by the failed attempt, or
recorded in the index by an earlier run (the last lines are read at start), are not
downloaded again as long as their file is there with its recorded size. The index is synced
once per batch, after the pictures it lists.

The API token is never sent to an image host, unless ``auth=platform`` and the picture is
on the API's own origin (scheme, host and port of the bridge's ``api_url``); redirects are
followed by the sink itself (at most 5), so the token is not carried to another host either.
In a :class:`~neuroio.bridge.Bridge` the sink is given the API URL and the token through
:meth:`ImagesSink.use_platform`; used alone, pass ``api_url=`` and ``token=``.

Query options: ``fields`` (``face_image``, ``full_image`` or both, comma-separated; default
``face_image``), ``max_bytes`` (default 5 MiB), ``timeout`` (seconds per picture, default
30), ``concurrency`` (pictures fetched at once, default 4), ``auth`` (``none`` or
``platform``), ``fsync`` (default true) and ``name``.

File writes and the index run in a worker thread: syncing a picture takes milliseconds,
which would stall the event loop (the listener's pings) if done on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from .._io import (
    PRIVATE_FILE_MODE,
    append_whole,
    make_private_dirs,
    open_private,
    sync_directory,
    write_all,
)
from .._routing.template import Template
from ..exceptions import ConfigurationError, SinkError
from ._uri import Bool, Choice, Duration, Int, Text, parse_options, redact_uri
from .base import Sink, SpooledEvent
from .file import clean_path_value

__all__ = ["FIELDS", "INDEX", "ImagesSink"]

log = logging.getLogger("neuroio.sinks")

FIELDS = {"face_image": "face", "full_image": "full"}
"""The entry fields the sink can download, and the suffix of their file names."""
INDEX = "index.jsonl"
"""The index's file name in the sink's directory."""

_RETRY_STATUS = frozenset({408, 425, 429})
_MAX_REDIRECTS = 5
_CHUNK = 65536
_TAIL = 1 << 20  # bytes of the index read at start: more than a few batches' lines
_RECENT = 4096  # events whose outcome is remembered, to skip them when sent again
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/bmp": ".bmp",
}
_KNOWN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".avif", ".bmp"})
_DAY = Template("{created:%Y}/{created:%m}/{created:%d}", what="images: day")

TokenGetter = Callable[[], Awaitable[str]]
"""An async callable giving the current API token."""


def _check_fields(raw: str) -> str | None:
    names = [n.strip() for n in raw.split(",")]
    if not names or any(n not in FIELDS for n in names) or len(set(names)) != len(names):
        return "be face_image, full_image or both (comma-separated, each once)"
    return None


_FIELDS = Text("fields", "face_image", check=_check_fields)
_MAX_BYTES = Int("max_bytes", 5 * 1024 * 1024, minimum=1)
_TIMEOUT = Duration("timeout", 30.0)
_CONCURRENCY = Int("concurrency", 4, minimum=1)
_AUTH = Choice("auth", "none", choices=("none", "platform"))
_FSYNC = Bool("fsync", True)
_NAME = Text("name", "")
_OPTIONS = (_FIELDS, _MAX_BYTES, _TIMEOUT, _CONCURRENCY, _AUTH, _FSYNC, _NAME)


class _Entry(msgspec.Struct):
    created: Any = None
    face_image: Any = None
    full_image: Any = None


class _Event(msgspec.Struct):
    data: _Entry = msgspec.field(default_factory=_Entry)


_decoder = msgspec.json.Decoder(_Event)
_encoder = msgspec.json.Encoder()
_index_decoder = msgspec.json.Decoder()


class _Retry(Exception):
    """A picture that could not be fetched now (5xx, timeout, connection): retry the batch."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Picture:
    """A fetched picture, or the outcome that stands for it."""

    record: dict[str, Any]
    body: bytes | None = None


class ImagesSink(Sink):
    """Downloads the pictures of each event into ``directory``; see the module documentation.

    Args:
        directory: where pictures and ``index.jsonl`` go (created ``0700`` if missing).
        fields: the entry fields to download (``face_image``, ``full_image``).
        max_bytes: the largest picture stored; a larger one is recorded as ``too_large``.
        timeout: seconds a picture may take to arrive.
        concurrency: pictures fetched at once.
        auth: ``"platform"`` sends the API token to pictures on the API's own origin.
        api_url: the REST API (the bridge gives it through :meth:`use_platform`).
        token: the API token, or an async callable giving it (likewise).
        fsync: sync each picture and the index (default). Without it a power loss can leave
            the index listing pictures that were not written.
        name: the sink's name (default ``images:DIR``).

    Raises:
        ConfigurationError: an option out of range.
    """

    max_batch = 100  # a batch is fetched before it counts: keep retries and stops short

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fields: Sequence[str] = ("face_image",),
        max_bytes: int = 5 * 1024 * 1024,
        timeout: float = 30.0,
        concurrency: int = 4,
        auth: str = "none",
        api_url: str | None = None,
        token: str | TokenGetter | None = None,
        fsync: bool = True,
        name: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.name = name or f"images:{self.directory}"
        fields = tuple(fields)
        if not fields or any(f not in FIELDS for f in fields) or len(set(fields)) != len(fields):
            raise ConfigurationError(
                f"sink {self.name}: fields must be face_image, full_image or both, got {fields!r}"
            )
        for option, value in (("max_bytes", max_bytes), ("concurrency", concurrency)):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"sink {self.name}: {option} must be >= 1, got {value!r}")
        if not timeout > 0:
            raise ConfigurationError(f"sink {self.name}: timeout must be > 0, got {timeout!r}")
        if auth not in ("none", "platform"):
            raise ConfigurationError(
                f"sink {self.name}: auth must be one of none, platform, got {auth!r}"
            )
        self.fields = fields
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.concurrency = concurrency
        self.auth = auth
        self.fsync = fsync
        self._api_origin: URL | None = None
        self._token: TokenGetter | None = None
        if api_url is not None or token is not None:
            self.use_platform(api_url, token)
        self._session: aiohttp.ClientSession | None = None
        self._index_fd: int | None = None
        # Held by the thread appending to the index and by aclose(): a send abandoned by a
        # forced stop leaves its thread running, and the index must not be closed under it.
        self._io = threading.Lock()
        # (event id, field) -> outcome of pictures fetched by a batch not yet indexed.
        self._pending: dict[tuple[int, str], dict[str, Any]] = {}
        # Event id -> its index record, for the last events indexed (skipped when sent again).
        self._recent: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self.downloads = 0
        """Pictures fetched (whatever their outcome); for tests and curious users."""

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> ImagesSink:
        """The sink ``images:DIR[?fields=...&max_bytes=N&...]`` names.

        ``options`` are constructor arguments; they take precedence over the URI's.

        Raises:
            ConfigurationError: no directory, or an unknown option or a bad value.
        """
        rest, _, query = uri[len("images:") :].partition("?")
        directory = rest[2:] if rest.startswith("//") else rest  # images:///var/x is /var/x
        if not directory:
            raise ConfigurationError(f"sink {redact_uri(uri)}: expected images:DIR")
        parsed = parse_options(query, _OPTIONS, uri=uri, sink="images")
        chosen: dict[str, Any] = {
            "fields": tuple(f.strip() for f in parsed[_FIELDS].split(",")),
            "max_bytes": parsed[_MAX_BYTES],
            "timeout": parsed[_TIMEOUT],
            "concurrency": parsed[_CONCURRENCY],
            "auth": parsed[_AUTH],
            "fsync": parsed[_FSYNC],
            "name": parsed[_NAME] or None,
        }
        return cls(directory, **{**chosen, **options})

    def use_platform(self, api_url: str | None, token: str | TokenGetter | None) -> None:
        """Give the sink the REST API's URL and the token (the bridge calls this before
        :meth:`start`). Only used with ``auth=platform``, for pictures on that origin."""
        if api_url is not None:
            try:
                self._api_origin = URL(api_url).origin()
            except ValueError as exc:
                raise ConfigurationError(f"sink {self.name}: api_url is invalid: {exc}") from None
        if isinstance(token, str):
            fixed = token

            async def get() -> str:
                return fixed

            self._token = get
        elif token is not None:
            self._token = token

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the directory, open the index (repairing a torn last line) and read its
        last lines.

        Raises:
            ConfigurationError: ``auth=platform`` without an API URL and a token.
            SinkError: the directory or the index cannot be created or opened.
        """
        if self.auth == "platform" and (self._api_origin is None or self._token is None):
            raise ConfigurationError(
                f"sink {self.name}: auth=platform needs the API URL and token "
                "(given by the bridge, or api_url= and token=)"
            )
        try:
            self._index_fd = await asyncio.to_thread(self._open_index)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open {self.directory / INDEX}: {exc}") from exc
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # Never a cookie from one image host to another.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _open_index(self) -> int:
        make_private_dirs(self.directory)
        fd = open_private(self.directory / INDEX, os.O_RDWR | os.O_APPEND)
        try:
            tail = self._read_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        for line in tail:
            try:
                record = _index_decoder.decode(line)
            except msgspec.DecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), int):
                self._remember(record)
        return fd

    def _read_tail(self, fd: int) -> list[bytes]:
        size = os.fstat(fd).st_size
        if size == 0:
            return []
        start = max(0, size - _TAIL)
        chunk = os.pread(fd, size - start, start)
        if not chunk.endswith(b"\n"):
            # A line torn by a crash mid-write: cut it (its event was not confirmed).
            keep = chunk.rfind(b"\n") + 1
            os.ftruncate(fd, start + keep)
            log.warning("%s: removed an incomplete last line of %s", self.name, INDEX)
            chunk = chunk[:keep]
        lines = chunk.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first may be the end of a line
        return [line for line in lines if line]

    async def aclose(self) -> None:
        """Close the HTTP session and the index."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await asyncio.to_thread(self._close_index)

    def _close_index(self) -> None:
        with self._io:
            fd, self._index_fd = self._index_fd, None
            if fd is not None:
                os.close(fd)

    # -- delivery --------------------------------------------------------------------------

    async def send(self, events: Sequence[SpooledEvent]) -> None:
        """Fetch and store the pictures of ``events``, then append and sync their index lines.

        Raises:
            SinkError: a picture could not be fetched now (the others are kept) or a file
                could not be written.
        """
        session = self._session
        if session is None or self._index_fd is None:
            raise SinkError(f"{self.name}: not started")
        batch, todo = self._plan(events)
        try:
            await asyncio.to_thread(self._drop_stale, list(batch))
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot check stored pictures: {exc}") from exc
        todo = [t for t in todo if t[0].id not in self._recent]
        limit = asyncio.Semaphore(self.concurrency)
        results = await asyncio.gather(
            *(self._fetch_one(session, limit, *item) for item in todo), return_exceptions=True
        )
        # Index what is complete even when some pictures failed: the retry skips it.
        await self._index(batch)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, (_Retry, OSError)):
                raise failure
        if failures:
            retry_after = max((getattr(f, "retry_after", None) or 0.0) for f in failures)
            raise SinkError(
                f"{self.name}: {len(failures)} of {len(todo)} pictures not stored, "
                f"retrying: {failures[0]}",
                retry_after=retry_after or None,
            )

    def _plan(
        self, events: Sequence[SpooledEvent]
    ) -> tuple[dict[int, Any], list[tuple[SpooledEvent, str, Any, str]]]:
        """Each event's ``created`` by id, and the pictures to fetch (event, field, url, day)."""
        batch: dict[int, Any] = {}
        todo: list[tuple[SpooledEvent, str, Any, str]] = []
        for event in events:
            if event.id in batch:
                continue  # the same event twice: fetched once
            try:
                entry = _decoder.decode(event.payload).data
            except (msgspec.DecodeError, msgspec.ValidationError):
                entry = _Entry()
            day = _DAY.render({"data": {"created": entry.created}}, clean_path_value)
            batch[event.id] = entry.created
            for field in self.fields:
                if (event.id, field) not in self._pending:
                    todo.append((event, field, getattr(entry, field), day))
        return batch, todo

    async def _index(self, batch: dict[int, Any]) -> None:
        """Append and sync the index lines of the events of ``batch`` whose every field has
        an outcome (and that are not indexed already)."""
        records: list[dict[str, Any]] = []
        directories: set[str] = set()
        for event_id, created in batch.items():
            if event_id in self._recent:
                continue
            outcomes = {f: self._pending.get((event_id, f)) for f in self.fields}
            if any(o is None for o in outcomes.values()):
                continue  # a field failed: indexed once the retry fetched it
            records.append({"id": event_id, "created": created, "fields": outcomes})
            directories.update(
                o["path"].rpartition("/")[0]
                for o in outcomes.values()
                if o is not None and o["status"] == "stored"
            )
        if not records:
            return
        data = b"".join(_encoder.encode(r) + b"\n" for r in records)
        try:
            await asyncio.to_thread(self._append_index, data, directories)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot write {INDEX}: {exc}") from exc
        for record in records:
            for field in self.fields:
                self._pending.pop((record["id"], field), None)
            self._remember(record)

    def _remember(self, record: dict[str, Any]) -> None:
        recent = self._recent
        recent.pop(record["id"], None)
        recent[record["id"]] = record
        while len(recent) > _RECENT:
            recent.popitem(last=False)

    def _drop_stale(self, ids: list[int]) -> None:
        """Forget the indexed events of ``ids`` whose stored files are gone or changed
        size, so they are fetched (and indexed) again."""
        for event_id in ids:
            record = self._recent.get(event_id)
            if record is None:
                continue
            fields = record.get("fields")
            if not isinstance(fields, dict) or any(f not in fields for f in self.fields):
                del self._recent[event_id]
                continue
            for field in self.fields:
                outcome = fields[field]
                if not isinstance(outcome, dict) or outcome.get("status") != "stored":
                    continue
                try:
                    size = (self.directory / str(outcome.get("path"))).stat().st_size
                except FileNotFoundError:
                    size = -1
                if size != outcome.get("bytes"):
                    del self._recent[event_id]
                    break

    async def _fetch_one(
        self,
        session: aiohttp.ClientSession,
        limit: asyncio.Semaphore,
        event: SpooledEvent,
        field: str,
        url: Any,
        day: str,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            self._pending[(event.id, field)] = {"status": "no_url"}
            return
        async with limit:
            picture = await self._download(session, url)
        self.downloads += 1
        record = picture.record
        if picture.body is not None:
            relative = f"{day}/{event.id}-{FIELDS[field]}{record.pop('ext')}"
            await asyncio.to_thread(self._store, relative, picture.body)
            record = {"status": "stored", "path": relative, **record}
        self._pending[(event.id, field)] = record

    async def _download(self, session: aiohttp.ClientSession, url: str) -> _Picture:
        try:
            target = URL(url)
        except ValueError:
            return _Picture({"status": "no_url"})
        for _ in range(_MAX_REDIRECTS + 1):
            headers = await self._headers(target)
            try:
                async with session.get(target, headers=headers, allow_redirects=False) as answer:
                    status = answer.status
                    if status in (301, 302, 303, 307, 308) and "Location" in answer.headers:
                        try:
                            target = target.join(URL(answer.headers["Location"]))
                        except ValueError:
                            target = URL("invalid:")
                        if target.scheme not in ("http", "https"):
                            return _Picture({"status": "missing", "reason": "bad redirect"})
                        continue
                    if status == 200:
                        return await self._read(answer, target)
                    if status >= 500 or status in _RETRY_STATUS:
                        raise _Retry(f"HTTP {status} from {target.host}", _retry_after(answer))
                    if status == 401 and headers:
                        raise _Retry(f"HTTP 401 from {target.host} with the API token")
                    # 404, or 403/410 from an expired signed link: it will not come back.
                    return _Picture({"status": "missing", "http_status": status})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                what = type(exc).__name__
                raise _Retry(f"{what} fetching from {target.host}") from None
        return _Picture({"status": "missing", "reason": "too many redirects"})

    async def _headers(self, target: URL) -> dict[str, str]:
        if self.auth != "platform" or self._token is None or target.origin() != self._api_origin:
            return {}
        try:
            token = await self._token()
        except Exception as exc:  # the provider's own failure; never its token
            raise _Retry(f"no API token: {type(exc).__name__}") from None
        return {"Authorization": f"Token {token}"}

    async def _read(self, answer: aiohttp.ClientResponse, target: URL) -> _Picture:
        kind = answer.content_type.lower()
        if not (kind.startswith("image/") or kind == "application/octet-stream"):
            return _Picture({"status": "not_image", "content_type": kind[:100]})
        declared = answer.content_length
        if declared is not None and declared > self.max_bytes:
            return _Picture({"status": "too_large", "bytes": declared, "max_bytes": self.max_bytes})
        body = bytearray()
        async for chunk in answer.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                return _Picture({"status": "too_large", "max_bytes": self.max_bytes})
        data = bytes(body)
        return _Picture(
            {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "ext": _extension(kind, target),
            },
            data,
        )

    def _store(self, relative: str, data: bytes) -> None:
        path = self.directory / relative
        make_private_dirs(path.parent)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        fd = open_private(temporary, os.O_WRONLY | os.O_TRUNC, mode=PRIVATE_FILE_MODE)
        try:
            write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        os.close(fd)
        os.replace(temporary, path)

    def _append_index(self, data: bytes, directories: set[str]) -> None:
        with self._io:
            fd = self._index_fd
            if fd is None:
                raise OSError("the sink is closed")
            self._append(fd, data, directories)

    def _append(self, fd: int, data: bytes, directories: set[str]) -> None:
        if self.fsync:
            # The renames of this batch's pictures are durable before the index lists them.
            for directory in directories:
                sync_directory(self.directory / directory)
        append_whole(fd, data, fsync=self.fsync)  # never half a batch: a retry appends it whole


def _extension(content_type: str, target: URL) -> str:
    known = _EXTENSIONS.get(content_type)
    if known is not None:
        return known
    suffix = Path(target.path).suffix.lower()
    if suffix in _KNOWN_SUFFIXES:
        return ".jpg" if suffix == ".jpeg" else suffix
    return ".img"


def _retry_after(answer: aiohttp.ClientResponse) -> float | None:
    value = answer.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), 300.0)
