"""The status page over plain HTTP (what a browser without JavaScript gets), its live stream,
and the guards of its one state-changing request."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from neuroio._status import CSRF_HEADER, PUSH_INTERVAL, EventRing, is_loopback
from neuroio._status._render import card, page, summarize

from ..helpers import until
from ._common import TOKEN, live, page_url, status_bridge


def _secret(html: str) -> str:
    found = re.search(r'<meta name="neuroio-csrf" content="([^"]+)">', html)
    assert found is not None
    return found.group(1)


async def test_server_rendered_page_shows_the_state_without_javascript(tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (emulator, _, bridge), aiohttp.ClientSession() as http:
        await live(bridge)
        entry = await emulator.emit()
        assert bridge.pipeline is not None
        pipeline = bridge.pipeline
        await until(lambda: pipeline.status["hook"].delivered >= 1)
        async with http.get(page_url(bridge)) as answer:
            assert answer.status == 200
            assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
            html = await answer.text()
    assert '<span id="connection" class="conn conn-live">live</span>' in html
    assert re.search(r'<tr class="sink ok" data-sink="hook">.*?<td class="num">1</td>', html)
    assert '<tr class="sink ok" data-sink="refuser">' in html
    face = re.search(rf'data-id="{entry["id"]}"><img class="face" src="([^"]+)"', html)
    assert face is not None and face.group(1) == entry["face_image"]
    assert TOKEN not in html


async def test_token_is_never_shown_even_when_an_event_carries_it(tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (emulator, _, bridge), aiohttp.ClientSession() as http:
        await live(bridge)
        await emulator.emit(source={"id": 9, "name": f"camera {TOKEN}"})
        await until(lambda: bridge.metrics is not None and bridge.metrics.status is not None
                     and bridge.metrics.status.ring.count == 1)  # fmt: skip
        texts = []
        for path in ("/", "/api/status"):
            async with http.get(page_url(bridge, path)) as answer:
                texts.append(await answer.text())
        async with http.get(page_url(bridge, "/api/events")) as answer:
            texts.append((await answer.content.readuntil(b"\n\n")).decode())
    for text in texts:
        assert TOKEN not in text
        assert "camera ***" in text


async def test_live_stream_batches_pushes_and_keeps_fifty_events(tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (emulator, _, bridge), aiohttp.ClientSession() as http:
        await live(bridge)
        async with http.get(page_url(bridge, "/api/events")) as answer:
            assert answer.headers["Content-Type"] == "text/event-stream"
            first = json.loads((await answer.content.readuntil(b"\n\n"))[6:])
            assert first["reset"] is True and first["state"]["connection"] == "live"
            start = time.monotonic()
            await emulator.burst(400)
            pushes, seen = 0, list[dict[str, Any]]()
            while not seen or seen[-1]["id"] < 400:
                update = json.loads((await answer.content.readuntil(b"\n\n"))[6:])
                pushes += 1
                seen += update.get("events", [])
                assert len(update.get("events", [])) <= 50
            elapsed = time.monotonic() - start
    # At most one push per interval, however many events arrived meanwhile.
    assert pushes <= elapsed / PUSH_INTERVAL + 2
    assert seen[-1]["id"] == 400 and len(seen) < 400


async def test_redrive_needs_same_origin_and_the_page_secret(tmp_path: Path) -> None:
    async with status_bridge(tmp_path, redrive=True) as (_, _, bridge):
        async with aiohttp.ClientSession() as http:
            async with http.get(page_url(bridge)) as answer:
                secret = _secret(await answer.text())
            url = page_url(bridge, "/api/deadletters/retry?sink=refuser")
            origin = page_url(bridge)[:-1]
            cases = [
                ({}, 403),  # neither origin nor secret
                ({"Origin": origin}, 403),  # no secret
                ({"Origin": origin, CSRF_HEADER: "wrong"}, 403),
                ({CSRF_HEADER: secret}, 403),  # no origin: not a page's request
                ({"Origin": "http://evil.example", CSRF_HEADER: secret}, 403),
                ({"Sec-Fetch-Site": "cross-site", CSRF_HEADER: secret}, 403),
                ({"Origin": origin, "Sec-Fetch-Site": "same-site", CSRF_HEADER: secret}, 403),
                ({"Origin": origin, CSRF_HEADER: secret}, 200),
                ({"Sec-Fetch-Site": "same-origin", CSRF_HEADER: secret}, 200),
            ]
            for headers, status in cases:
                async with http.post(url, headers=headers) as answer:
                    assert answer.status == status, headers
            async with http.get(page_url(bridge), headers={"Host": "evil.example"}) as answer:
                assert answer.status == 403  # DNS rebinding: the secret is not given out
    assert bridge.retried == ["refuser", "refuser"]  # type: ignore[attr-defined]


async def test_redrive_answers_501_when_the_bridge_cannot(tmp_path: Path) -> None:
    async with status_bridge(tmp_path) as (_, _, bridge), aiohttp.ClientSession() as http:
        async with http.get(page_url(bridge)) as answer:
            secret = _secret(await answer.text())
        headers = {"Origin": page_url(bridge)[:-1], CSRF_HEADER: secret}
        url = page_url(bridge, "/api/deadletters/retry?sink=refuser")
        async with http.post(url, headers=headers) as answer:
            assert answer.status == 501


def test_ring_keeps_the_last_fifty_and_summarizes_lazily() -> None:
    ring = EventRing()
    for i in range(1, 121):
        ring.add({"id": i, "data": {"result": "exact", "confidence": 80.5, "source": {"id": 3}}})
    assert ring.count == 120
    assert [e["id"] for e in ring.since(115)] == [116, 117, 118, 119, 120]
    assert [e["id"] for e in ring.since(0)] == list(range(71, 121))
    assert ring.since(120) == []
    assert ring.since(0)[0]["camera"] == "source 3"


def test_cards_escape_what_the_server_sent() -> None:
    hostile = summarize(
        {
            "id": 5,
            "data": {
                "result": "<b>x</b>",
                "confidence": "high",
                "source": {"name": '"><script>alert(1)</script>'},
                "face_image": "javascript:alert(1)",
                "pid": True,
            },
        }
    )
    assert hostile["confidence"] is None and hostile["face"] is None and hostile["pid"] is None
    html = card(hostile)
    assert "<script>" not in html and "<b>" not in html and "javascript:" not in html
    assert "r-other" in html and "no image" in html
    whole = page({"connection": "<i>", "sinks": [{"name": "<u>"}]}, [hostile], csrf="s")
    assert "<i>" not in whole and "<u>" not in whole


def test_only_loopback_addresses_count_as_private() -> None:
    """The server warns for any bind address but these (and checks Host against them)."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.7", "example.org", ""))
