"""One bridge, several streams: a token each, one spool, the routes shared.

Against the emulator serving several spaces (``Emulator(spaces=N)``), each stream with its own
token file, the real listener and the real spool.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from neuroio.bridge import Bridge, FilterConfig, RouteConfig, StreamConfig
from neuroio.bridge.spool import Spool
from neuroio.exceptions import ConfigurationError
from neuroio.testing import Emulator

from ..helpers import until
from ._common import bridge_options

pytestmark = pytest.mark.asyncio


def streams(tmp_path: Path, count: int, **extra: Any) -> list[StreamConfig]:
    """``count`` streams ``s1``... whose token files hold the emulator's space tokens."""
    out = []
    for k in range(1, count + 1):
        path = tmp_path / f"s{k}.token"
        path.write_text(f"space-{k}-token\n")
        path.chmod(0o600)
        out.append(StreamConfig(name=f"s{k}", token_file=str(path), **extra))
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def options(emu: Emulator, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    opts = bridge_options(emu, tmp_path)
    opts.update(connect_rate=200.0, **extra)
    return opts


async def test_every_event_of_every_stream_arrives_once_marked_with_its_stream(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    async with Emulator(spaces=3, seed=1, push_while_disconnected=False) as emu:
        opts = options(emu, tmp_path, streams=streams(tmp_path, 3))
        async with Bridge(None, [f"file:{out}"], **opts) as bridge:
            await until(lambda: bridge.health()[1]["connection"] == "live")
            emitted: dict[str, list[int]] = {}
            for k in (1, 2, 3, 1, 2, 3):
                entries = await emu.space(f"space-{k}-token").burst(5)
                emitted.setdefault(f"s{k}", []).extend(e["id"] for e in entries)
            total = sum(len(ids) for ids in emitted.values())
            await until(lambda: len(lines(out)) >= total, timeout=10)
            ok, report = bridge.health()
            assert ok, report["problems"]
            assert set(report["streams"]) == {"s1", "s2", "s3"}
            await until(lambda: all(bridge.watermark(f"s{k}") is not None for k in (1, 2, 3)))
            for name, ids in emitted.items():
                assert bridge.watermark(name) == max(ids)
    got = lines(out)
    assert len(got) == total
    for name, ids in emitted.items():
        assert [e["id"] for e in got if e["stream"] == name] == ids


async def test_a_rejected_token_stops_its_stream_only(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    async with Emulator(spaces=2, seed=2, push_while_disconnected=False) as emu:
        configured = streams(tmp_path, 2)
        (tmp_path / "s2.token").write_text("not-a-token\n")
        opts = options(emu, tmp_path, streams=configured)
        async with Bridge(None, [f"file:{out}"], **opts) as bridge:
            await until(lambda: bridge.streams["s2"].state == "rejected", timeout=10)
            ok, report = bridge.health()
            assert not ok
            assert any(p.startswith("stream s2: token rejected") for p in report["problems"])
            assert "not-a-token" not in json.dumps(report)
            assert report["streams"]["s1"]["state"] == "live"
            assert report["connection"] == bridge.snapshot().state == "backoff"
            entry = await emu.space("space-1-token").emit()
            await until(lambda: [e["id"] for e in lines(out)] == [entry["id"]])
            assert bridge.rejected("s2") is not None and bridge.rejected("s1") is None
            # Stopped while it waits to try again: at once (a fleet's fencing margin is 2 s),
            # not after the wait or the listener's close timeout.
            await asyncio.wait_for(bridge.stop_stream("s2"), 1.0)
            assert bridge.streams["s2"].state == "stopped"


async def test_each_stream_recovers_its_own_gap_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    async with Emulator(spaces=2, seed=3, push_while_disconnected=False) as emu:
        configured = streams(tmp_path, 2)
        opts = options(emu, tmp_path, streams=configured)
        async with Bridge(None, [f"file:{out}"], **opts) as bridge:
            await until(lambda: bridge.health()[1]["connection"] == "live")
            first = [e["id"] for e in await emu.space("space-1-token").burst(3)]
            first += [e["id"] for e in await emu.space("space-2-token").burst(3)]
            await until(lambda: len(lines(out)) == 6)
        # While the bridge is down: only the REST API has these.
        missed = [e["id"] for e in await emu.space("space-2-token").burst(4)]
        missed += [e["id"] for e in await emu.space("space-1-token").burst(2)]
        async with Bridge(None, [f"file:{out}"], **opts) as bridge:
            await until(lambda: len(lines(out)) == 12, timeout=10)
            assert bridge.recovered == 6
    got = lines(out)
    assert sorted(e["id"] for e in got) == sorted(first + missed)
    assert all(e.get("backfilled") for e in got if e["id"] in missed)
    with Spool(tmp_path / "spool.db", streams=True) as spool:
        assert set(spool.stream_numbers()) == {"s1", "s2"}


async def test_routes_filter_and_template_by_stream(tmp_path: Path) -> None:
    only = tmp_path / "only-s2.jsonl"
    opts_routes = (
        RouteConfig(name="s2-only", to=f"file:{only}", filter=FilterConfig(stream=("s2",))),
        RouteConfig(name="per-stream", to=f"file:{tmp_path}/by/{{stream}}.jsonl"),
    )
    async with Emulator(spaces=2, seed=4, push_while_disconnected=False) as emu:
        opts = options(emu, tmp_path, streams=streams(tmp_path, 2), routes=opts_routes)
        async with Bridge(None, **opts) as bridge:
            await until(lambda: bridge.health()[1]["connection"] == "live")
            one = [e["id"] for e in await emu.space("space-1-token").burst(2)]
            two = [e["id"] for e in await emu.space("space-2-token").burst(3)]
            await until(lambda: len(lines(tmp_path / "by" / "s2.jsonl")) == 3)
            await until(lambda: len(lines(tmp_path / "by" / "s1.jsonl")) == 2)
            await until(lambda: len(lines(only)) == 3)
    assert [e["id"] for e in lines(only)] == two
    assert [e["id"] for e in lines(tmp_path / "by" / "s1.jsonl")] == one


async def test_connection_attempts_keep_to_the_shared_rate(tmp_path: Path) -> None:
    rate = 10.0
    async with Emulator(spaces=6, seed=5) as emu:
        opts = options(emu, tmp_path, streams=streams(tmp_path, 6))
        opts["connect_rate"] = rate
        async with Bridge(None, ["memory:"], **opts) as bridge:
            await until(lambda: bridge.health()[1]["connection"] == "live", timeout=10)
            starts = sorted(c.connected_at for c in emu.clients)
    assert len(starts) == 6
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Spaced by the limit (1 / rate), less a little for when each handshake completed.
    assert min(gaps) >= 0.8 / rate, gaps


async def test_a_stream_stopped_and_started_again_recovers_from_the_given_id(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    async with Emulator(spaces=1, seed=6, push_while_disconnected=False) as emu:
        space = emu.space("space-1-token")
        opts = options(emu, tmp_path, streams=streams(tmp_path, 1))
        async with Bridge(None, [f"file:{out}"], **opts) as bridge:
            await until(lambda: bridge.health()[1]["connection"] == "live")
            before = [e["id"] for e in await space.burst(3)]
            await until(lambda: len(lines(out)) == 3)
            await bridge.stop_stream("s1")
            assert bridge.streams["s1"].state == "stopped"
            await space.burst(2)  # missed by this bridge...
            # ...and recovered from after the first event on: the spool holds the others once.
            await bridge.start_stream("s1", after=before[0])
            await until(lambda: len(lines(out)) == 5, timeout=10)
            assert bridge.health()[0]


async def test_stream_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="stream name"):
        StreamConfig(name="bad name", token_file="x").validate()
    with pytest.raises(ConfigurationError, match="exactly one"):
        StreamConfig(name="ok").validate()
    twice = [StreamConfig(name="a", token_file="x"), StreamConfig(name="a", token_file="y")]
    with pytest.raises(ConfigurationError, match="two streams"):
        Bridge(None, ["memory:"], streams=twice)
    with pytest.raises(ConfigurationError, match="needs a token"):
        Bridge(None, ["memory:"])


async def test_a_rejected_stream_comes_back_once_its_token_file_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuroio.bridge._streams import Stream

    monkeypatch.setattr(Stream, "retry_rejected_after", 0.2)
    out = tmp_path / "out.jsonl"
    async with Emulator(spaces=1, seed=8, push_while_disconnected=False) as emu:
        configured = streams(tmp_path, 1)
        (tmp_path / "s1.token").write_text("wrong-token\n")
        async with Bridge(None, [f"file:{out}"], **options(emu, tmp_path, streams=configured)) as b:
            await until(lambda: b.streams["s1"].state == "rejected", timeout=10)
            refused = len([c for c in emu.clients if c.authenticated is False])
            (tmp_path / "s1.token").write_text("space-1-token\n")
            await until(lambda: b.streams["s1"].state == "live", timeout=10)
            assert b.rejected("s1") is None and b.health()[0]
            entry = await emu.space("space-1-token").emit()
            await until(lambda: [e["id"] for e in lines(out)] == [entry["id"]])
    # Tried again after the pause, not in a loop: a refused attempt or two before the fix.
    assert 1 <= refused <= 3
