"""The ``images:DIR`` sink against the emulator's pictures and small aiohttp servers of its
own on loopback: every picture stored once with the served bytes, 404/410 recorded and not
retried, a 5xx retried, the token kept from foreign hosts, the size cap, a restart that
fetches nothing again, and a real bridge whose route stores only exact matches' faces."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neuroio.bridge import Bridge
from neuroio.bridge.config import FilterConfig, RouteConfig
from neuroio.exceptions import ConfigurationError, SinkError
from neuroio.sinks import SpooledEvent, from_uri
from neuroio.sinks.images import INDEX, ImagesSink
from neuroio.testing import Emulator

from ..bridge._common import TOKEN, bridge_options, free_port
from ..helpers import until

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # what a JPEG starts with, and some body


def spooled(entry: dict[str, Any], seq: int = 1) -> SpooledEvent:
    payload = json.dumps({"id": entry["id"], "data": entry}).encode()
    return SpooledEvent(seq=seq, id=entry["id"], payload=payload, received_at=time.time())


def index(directory: Path) -> list[dict[str, Any]]:
    text = (directory / INDEX).read_text()
    return [json.loads(line) for line in text.splitlines()]


class Host:
    """An image host on loopback: scripted answers per path, every request's headers kept."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/{name}", self._serve)
        self.answers: dict[str, list[Callable[[web.Request], web.StreamResponse]]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.url = ""
        self.release = asyncio.Event()
        """Set to let the answers of :func:`hang` end."""
        self._runner = web.AppRunner(self.app)

    def script(self, name: str, *answers: Callable[[web.Request], web.StreamResponse]) -> str:
        """Answer ``/name`` with ``answers`` in turn (the last one again and again)."""
        self.answers[name] = list(answers)
        return f"{self.url}/{name}"

    def hits(self, name: str) -> int:
        return sum(1 for path, _ in self.seen if path == f"/{name}")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        answers = self.answers.get(request.match_info["name"])
        if not answers:
            raise web.HTTPNotFound()
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is hang:
            await self.release.wait()
        response = answer(request)
        if isinstance(response, web.StreamResponse) and not isinstance(response, web.Response):
            await response.prepare(request)
            await response.write(JPEG * 4)  # chunked: no Content-Length to judge by
            await response.write_eof()
        return response

    async def __aenter__(self) -> Host:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self._runner.cleanup()


def jpeg(_: web.Request) -> web.StreamResponse:
    return web.Response(body=JPEG, content_type="image/jpeg")


def status(code: int) -> Callable[[web.Request], web.StreamResponse]:
    return lambda _: web.Response(status=code, text=f"status {code}")


def redirect(to: str) -> Callable[[web.Request], web.StreamResponse]:
    return lambda _: web.Response(status=302, headers={"Location": to})


def hang(_: web.Request) -> web.StreamResponse:
    """Answers once the host's ``release`` is set (a stalled image host)."""
    return web.Response(body=JPEG, content_type="image/jpeg")


def chunked(_: web.Request) -> web.StreamResponse:
    return web.StreamResponse(headers={"Content-Type": "image/jpeg"})


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with Host() as server:
        yield server


async def started(uri: str, **options: Any) -> ImagesSink:
    sink = from_uri(uri, **options)
    assert isinstance(sink, ImagesSink)
    await sink.start()
    return sink


async def test_every_picture_is_stored_once_with_the_bytes_served(tmp_path: Path) -> None:
    """Faces and full frames land in DIR/YYYY/MM/DD/{id}-face.png with the served bytes,
    private; a batch sent again fetches nothing; the index has one line per event."""
    async with Emulator() as emu, aiohttp.ClientSession() as http:
        entries = [await emu.emit(created=f"2024-05-0{1 + i % 2}T10:00:00Z") for i in range(6)]
        events = [spooled(e, i) for i, e in enumerate(entries, 1)]
        sink = await started(f"images:{tmp_path}/pics?fields=face_image,full_image")
        try:
            await sink.send(events)
            requests = len(emu.media_requests)
            await sink.send(events)  # as after a failure elsewhere: nothing fetched again
        finally:
            await sink.aclose()
        assert requests == len(emu.media_requests) == 12
        lines = index(tmp_path / "pics")
        assert [line["id"] for line in lines] == [e["id"] for e in entries]
        for entry, line in zip(entries, lines, strict=True):
            day = "2024/05/01" if entry["created"].endswith("01T10:00:00Z") else "2024/05/02"
            for field, kind in (("face_image", "face"), ("full_image", "full")):
                async with http.get(entry[field]) as answer:
                    served = await answer.read()
                outcome = line["fields"][field]
                assert outcome["status"] == "stored"
                assert outcome["path"] == f"{day}/{entry['id']}-{kind}.png"
                stored = (tmp_path / "pics" / outcome["path"]).read_bytes()
                assert stored == served
                assert outcome["sha256"] == hashlib.sha256(served).hexdigest()
                assert outcome["bytes"] == len(served)
        picture = tmp_path / "pics" / lines[0]["fields"]["face_image"]["path"]
        assert stat.S_IMODE(picture.stat().st_mode) == 0o600
        assert stat.S_IMODE(picture.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "pics").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "pics" / INDEX).stat().st_mode) == 0o600
        assert not list((tmp_path / "pics").rglob("*.tmp"))


async def test_a_restart_fetches_nothing_again_unless_the_file_is_gone(tmp_path: Path) -> None:
    """A new sink on the same directory reads the index's last lines: redelivered events are
    skipped, except one whose picture was deleted, which is fetched and indexed again. A torn
    last index line is cut."""
    async with Emulator() as emu:
        entries = [await emu.emit() for _ in range(3)]
        events = [spooled(e, i) for i, e in enumerate(entries, 1)]
        first = await started(f"images:{tmp_path}")
        await first.send(events)
        await first.aclose()
        (tmp_path / index(tmp_path)[1]["fields"]["face_image"]["path"]).unlink()
        with open(tmp_path / INDEX, "ab") as torn:
            torn.write(b'{"id": 12')
        again = await started(f"images:{tmp_path}")
        try:
            await again.send(events)
        finally:
            await again.aclose()
        assert again.downloads == 1
        assert len(emu.media_requests) == 4
        assert [line["id"] for line in index(tmp_path)] == [e["id"] for e in entries] + [
            entries[1]["id"]
        ]
        assert (tmp_path / index(tmp_path)[-1]["fields"]["face_image"]["path"]).exists()


async def test_a_missing_picture_is_recorded_and_not_fetched_again(
    tmp_path: Path, host: Host
) -> None:
    """A 404 (an id the emulator never emitted), a 410 (an expired signed link) and a
    redirect out of HTTP are recorded as missing, the event counts as delivered, and sending
    it again asks nobody."""
    async with Emulator() as emu:
        gone = host.script("gone", status(410))
        ftp = host.script("ftp", redirect("ftp://127.0.0.1/face.jpg"))
        entries = [
            {"id": 7, "created": "2024-05-01T10:00:00Z", "face_image": emu.image_url(7)},
            {"id": 8, "created": "2024-05-01T10:00:00Z", "face_image": gone},
            {"id": 9, "created": "2024-05-01T10:00:00Z", "face_image": None},
            {"id": 10, "created": "2024-05-01T10:00:00Z", "face_image": ftp},
        ]
        sink = await started(f"images:{tmp_path}")
        try:
            await sink.send([spooled(e) for e in entries])
            await sink.send([spooled(e) for e in entries])
        finally:
            await sink.aclose()
        assert len(emu.media_requests) == 1
        assert host.hits("gone") == host.hits("ftp") == 1
    outcomes = [line["fields"]["face_image"] for line in index(tmp_path)]
    assert outcomes == [
        {"status": "missing", "http_status": 404},
        {"status": "missing", "http_status": 410},
        {"status": "no_url"},
        {"status": "missing", "reason": "bad redirect"},
    ]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [INDEX]


async def test_a_server_error_is_retried_and_stored_once(tmp_path: Path, host: Host) -> None:
    """A 500 fails the batch (SinkError, retried by the bridge); the picture fetched in the
    same batch is not fetched again by the retry, which stores the other one."""
    flaky = host.script("flaky", status(500), jpeg)
    fine = host.script("fine", jpeg)
    events = [
        spooled({"id": 1, "created": "2024-05-01T10:00:00Z", "face_image": fine}),
        spooled({"id": 2, "created": "2024-05-01T10:00:00Z", "face_image": flaky}),
    ]
    sink = await started(f"images:{tmp_path}")
    try:
        with pytest.raises(SinkError, match="1 of 2 pictures not stored.*HTTP 500"):
            await sink.send(events)
        assert [line["id"] for line in index(tmp_path)] == [1]
        await sink.send(events)
    finally:
        await sink.aclose()
    assert host.hits("fine") == 1 and host.hits("flaky") == 2
    lines = index(tmp_path)
    assert [line["id"] for line in lines] == [1, 2]
    for line in lines:
        outcome = line["fields"]["face_image"]
        assert outcome["path"] == f"2024/05/01/{line['id']}-face.jpg"
        assert (tmp_path / outcome["path"]).read_bytes() == JPEG


async def test_a_closed_port_is_a_retry(tmp_path: Path) -> None:
    """A connection refused is a SinkError (retried), with no index line."""
    url = f"http://127.0.0.1:{free_port()}/face.jpg"
    sink = await started(f"images:{tmp_path}?timeout=2")
    try:
        with pytest.raises(SinkError, match="ClientConnectorError"):
            await sink.send([spooled({"id": 1, "face_image": url})])
    finally:
        await sink.aclose()
    assert (tmp_path / INDEX).read_bytes() == b""


async def test_a_stalled_host_times_out_and_is_a_retry(tmp_path: Path, host: Host) -> None:
    """?timeout= bounds each picture; a stall is a SinkError and the retry fetches it."""
    stalled = host.script("stalled", hang)
    sink = await started(f"images:{tmp_path}?timeout=200ms")
    try:
        with pytest.raises(SinkError, match="TimeoutError"):
            await sink.send([spooled({"id": 1, "face_image": stalled})])
        assert (tmp_path / INDEX).read_bytes() == b""
        host.release.set()
        await sink.send([spooled({"id": 1, "face_image": stalled})])
    finally:
        await sink.aclose()
    assert host.hits("stalled") == 2
    assert index(tmp_path)[0]["fields"]["face_image"]["status"] == "stored"


async def test_the_token_goes_only_to_the_api_host(tmp_path: Path, host: Host) -> None:
    """With auth=platform the token goes to pictures on the API's origin and nowhere else,
    not even through a redirect; without it, to nobody."""
    async with Host() as foreign:
        foreign.script("face", jpeg)
        own = host.script("face", jpeg)
        bounced = host.script("bounce", redirect(f"{foreign.url}/face"))
        elsewhere = f"{foreign.url}/face"
        entries = [
            {"id": 1, "face_image": own},
            {"id": 2, "face_image": elsewhere},
            {"id": 3, "face_image": bounced},
        ]
        with_auth = await started(
            f"images:{tmp_path}/a?auth=platform", api_url=host.url + "/api", token="s3cret"
        )
        without = await started(f"images:{tmp_path}/b", api_url=host.url, token="s3cret")
        try:
            await with_auth.send([spooled(e) for e in entries])
            await without.send([spooled(e) for e in entries])
        finally:
            await with_auth.aclose()
            await without.aclose()
        sent = [(path, headers.get("Authorization")) for path, headers in host.seen]
        assert sent == [
            ("/face", "Token s3cret"),
            ("/bounce", "Token s3cret"),
            ("/face", None),
            ("/bounce", None),
        ]
        assert [h.get("Authorization") for _, h in foreign.seen] == [None] * 4
    assert [line["fields"]["face_image"]["status"] for line in index(tmp_path / "a")] == [
        "stored"
    ] * 3


async def test_a_provided_token_is_asked_per_picture(tmp_path: Path, host: Host) -> None:
    """The bridge's way: an async token getter, asked for each picture on the API host."""
    url = host.script("face", jpeg)
    asked: list[int] = []

    async def token() -> str:
        asked.append(1)
        return "rotated"

    sink = ImagesSink(tmp_path, auth="platform")
    sink.use_platform(host.url, token)
    await sink.start()
    try:
        await sink.send([spooled({"id": i, "face_image": url}) for i in range(3)])
    finally:
        await sink.aclose()
    assert len(asked) == 3
    assert {h["Authorization"] for _, h in host.seen} == {"Token rotated"}


async def test_a_picture_over_max_bytes_is_recorded_not_stored(tmp_path: Path, host: Host) -> None:
    """Judged by Content-Length, and while reading when there is none (chunked)."""
    declared = host.script("declared", jpeg)
    streamed = host.script("streamed", chunked)
    small = host.script("small", lambda _: web.Response(body=b"GIF89a", content_type="image/gif"))
    page = host.script("page", lambda _: web.Response(text="<html>", content_type="text/html"))
    sink = await started(f"images:{tmp_path}?max_bytes=1000")
    try:
        await sink.send(
            [
                spooled({"id": 1, "face_image": declared}),
                spooled({"id": 2, "face_image": streamed}),
                spooled({"id": 3, "face_image": small}),
                spooled({"id": 4, "face_image": page}),
            ]
        )
    finally:
        await sink.aclose()
    outcomes = [line["fields"]["face_image"] for line in index(tmp_path)]
    assert outcomes[0] == {"status": "too_large", "bytes": len(JPEG), "max_bytes": 1000}
    assert outcomes[1] == {"status": "too_large", "max_bytes": 1000}
    assert outcomes[2]["status"] == "stored" and outcomes[2]["path"].endswith("3-face.gif")
    assert outcomes[3] == {"status": "not_image", "content_type": "text/html"}
    stored = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert stored == ["3-face.gif", INDEX]


async def test_a_bridge_route_stores_only_exact_matches_faces(tmp_path: Path) -> None:
    """A real bridge, a route filtered on result=exact to images: with auth=platform (the
    bridge gives the sink the API URL and token): only exact matches' faces are stored."""
    async with Emulator(tokens=[TOKEN]) as emu:
        route = RouteConfig(
            name="faces",
            to=f"images:{tmp_path}/faces?auth=platform&concurrency=2",
            filter=FilterConfig(result=("exact",)),
        )
        options: dict[str, Any] = {**bridge_options(emu, tmp_path), "backfill": False}
        bridge = Bridge(TOKEN, [], routes=[route], **options)
        async with bridge:
            await emu.wait_for_clients(1)
            results = ["exact", "junk", "exact", "nm", "exact", "det"]
            entries = [await emu.emit(result=r) for r in results]
            exact = [e["id"] for e in entries if e["result"] == "exact"]
            faces = tmp_path / "faces"
            await until(
                lambda: (faces / INDEX).exists() and len(index(faces)) == len(exact),
                timeout=10,
            )
        lines = index(faces)
        assert [line["id"] for line in lines] == exact
        stored = sorted(p.name for p in faces.rglob("*.png"))
        assert stored == sorted(f"{i}-face.png" for i in exact)
        assert all(p.startswith("/media/") and "/face.png" in p for p in emu.media_requests)
        assert len(emu.media_requests) == len(exact)


async def test_a_bridge_gives_the_sink_its_api_url_and_token(tmp_path: Path, host: Host) -> None:
    """Through a real bridge with auth=platform: pictures on the bridge's api_url get its
    token, a foreign host's do not."""
    async with Host() as foreign, Emulator(tokens=[TOKEN]) as emu:
        own, elsewhere = host.script("face", jpeg), foreign.script("face", jpeg)
        options: dict[str, Any] = {
            **bridge_options(emu, tmp_path),
            "api_url": host.url,
            "backfill": False,
        }
        async with Bridge(TOKEN, [f"images:{tmp_path}/faces?auth=platform"], **options):
            await emu.wait_for_clients(1)
            await emu.emit(face_image=own)
            await emu.emit(face_image=elsewhere)
            faces = tmp_path / "faces"
            await until(lambda: (faces / INDEX).exists() and len(index(faces)) == 2, timeout=10)
        assert [h.get("Authorization") for _, h in host.seen] == [f"Token {TOKEN}"]
        assert [h.get("Authorization") for _, h in foreign.seen] == [None]


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("images:", "expected images:DIR"),
        ("images:/x?fields=face", "fields must be face_image, full_image or both"),
        ("images:/x?fields=face_image,face_image", "each once"),
        ("images:/x?max_bytes=0", "max_bytes must be >= 1, got '0'"),
        ("images:/x?max_bytes=lots", "max_bytes must be an integer"),
        ("images:/x?timeout=soon", "timeout must be a duration"),
        ("images:/x?concurrency=0", "concurrency must be >= 1"),
        ("images:/x?auth=basic", "auth must be one of none, platform"),
        ("images:/x?fsync=maybe", "fsync must be true or false"),
        ("images:/x?colour=red", "unknown option 'colour' for the images sink"),
        ("images:/x?timeout=1&timeout=2", "option 'timeout' is given twice"),
    ],
)
def test_bad_options_are_one_line(uri: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_uri(uri)
    message = str(caught.value)
    assert problem in message and "\n" not in message


async def test_auth_platform_without_the_api_is_refused_at_start(tmp_path: Path) -> None:
    sink = from_uri(f"images:{tmp_path}?auth=platform")
    with pytest.raises(ConfigurationError, match="auth=platform needs the API URL and token"):
        await sink.start()
    await sink.aclose()
    assert not os.path.exists(tmp_path / INDEX)
