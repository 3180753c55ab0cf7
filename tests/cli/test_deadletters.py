"""``neuroio-events deadletters`` as a real subprocess: list, show, JSON lines, purge with
--yes, the mistakes; and retry beside a running bridge, re-delivering dead-lettered events to
a fixed webhook receiver exactly once each, with ``/healthz`` 503 while the sink refuses."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from neuroio.bridge.spool import DeadLetterStore, Spool, SpooledEvent
from tests.independent_server import IndependentServer

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env


async def deadletters(cli: StartCli, *args: str) -> tuple[int, str, str]:
    """Run ``deadletters *args``; its exit code, stdout and stderr."""
    proc = await cli("deadletters", *args)
    code = await proc.finish(timeout=15)
    return code, proc.out, proc.err


async def check_bridge(cli: StartCli, *args: str) -> tuple[int, str, str]:
    """Run ``bridge --check --to memory: *args``; its exit code, stdout and stderr."""
    env = clean_env(NEUROIO_API_TOKEN=TOKEN)
    proc = await cli("bridge", "--check", "--to", "memory:", *args, env=env)
    code = await proc.finish(timeout=15)
    return code, proc.out, proc.err


def refused_spool(path: Path) -> None:
    """Sink hooks refused events 101 and 102, sink mqtt event 201 (no bridge runs)."""
    with Spool(path) as spool:
        spool.register(["hooks", "mqtt"])
        for seq, sink, event_id in ((1, "hooks", 101), (2, "hooks", 102), (3, "mqtt", 201)):
            payload = json.dumps({"id": event_id, "data": {"id": event_id, "result": "exact"}})
            event = SpooledEvent(seq, event_id, payload.encode(), 1_700_000_000.0 + seq)
            spool.dead_letter(sink, event, f"sink {sink}: HTTP 422 'bad {event_id}'")


async def test_list_show_json_purge_and_mistakes(cli: StartCli, tmp_path: Path) -> None:
    """list and show (text, JSON lines with the event), a sink's selection; purge needs
    --yes; an unknown sink is exit 2, a missing spool exit 1; each mistake one line; an
    empty list is exit 0, its line on stderr."""
    path = tmp_path / "spool.db"
    refused_spool(path)
    spool = str(path)
    listed, as_json, shown, unknown, no_yes, missing, checked = await asyncio.gather(
        deadletters(cli, "list", "--spool", spool),
        deadletters(cli, "list", "--spool", spool, "--json"),
        deadletters(cli, "show", "--spool", spool, "--sink", "hooks", "--id", "102", "--json"),
        deadletters(cli, "list", "--spool", spool, "--sink", "nope"),
        deadletters(cli, "purge", "--spool", spool, "--sink", "hooks"),
        deadletters(cli, "show", "--spool", str(tmp_path / "none.db"), "--id", "1"),
        check_bridge(cli, "--health-max-refused", "3"),
    )
    code, out, _ = listed
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  hooks  id=101  seq=1  sink hooks: HTTP 422", lines[0]
    )
    assert "mqtt  id=201  seq=3" in lines[2]

    code, out, _ = as_json
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["sink"], r["id"], r["seq"]) for r in records] == [
        ("hooks", 101, 1),
        ("hooks", 102, 2),
        ("mqtt", 201, 3),
    ]
    assert records[0]["reason"] == "sink hooks: HTTP 422 'bad 101'"
    assert records[0]["received_at"] == "2023-11-14T22:13:21Z"
    assert records[0]["retry_pending"] is False and "event" not in records[0]

    code, out, _ = shown
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and record["event"] == {"id": 102, "data": {"id": 102, "result": "exact"}}

    for (code, out, err), expected, words in (
        (unknown, 2, "no sink named 'nope' in spool"),
        (no_yes, 2, "add --yes"),
        (missing, 1, "does not exist"),
    ):
        assert code == expected, err
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and words in err, err
        assert "Traceback" not in err
    assert "(sinks: hooks, mqtt)" in unknown[2]
    assert checked[0] == 0, checked[2]
    assert re.search(r"^  health_max_refused +3  \(command line\)$", checked[1], re.M)
    assert not (tmp_path / "none.db").exists()

    code, out, _ = await deadletters(cli, "purge", "--spool", spool, "--sink", "hooks", "--yes")
    assert code == 0 and out == "2 dead letters of sink 'hooks' deleted\n"
    empty, purged = await asyncio.gather(
        deadletters(cli, "list", "--spool", spool, "--sink", "hooks"),
        deadletters(cli, "purge", "--spool", spool, "--sink", "mqtt", "--yes", "--json"),
    )
    code, out, err = empty
    assert code == 0 and out == "" and "no dead letters of sink 'hooks' in spool" in err
    code, out, _ = purged
    assert code == 0 and json.loads(out) == {"action": "purge", "removed": 1}
    with Spool(path) as spool_again:
        assert spool_again.dead_letters() == []


class Receiver:
    """A webhook receiver on loopback that answers ``status`` and counts each event id."""

    def __init__(self) -> None:
        self.status = 422
        self.attempts: Counter[int] = Counter()
        self.accepted: Counter[int] = Counter()
        self.port = 0
        self.hang = False
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        event_id = int((await request.json())["id"])
        self.attempts[event_id] += 1
        if self.hang:  # takes the request and never answers it (until released: a 503)
            await self.released.wait()
            return web.Response(status=503)
        if self.status == 200:
            self.accepted[event_id] += 1
        return web.Response(status=self.status, text="checked")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield found
    found.released.set()
    await runner.cleanup()


def bridge_args(spool: Path, server: IndependentServer, receiver: Receiver) -> list[str]:
    return [
        "bridge", "--url", server.url, "--api-url", server.api_url, "--spool", str(spool),
        "--to", f"http://127.0.0.1:{receiver.port}/hook?name=hooks",
        "--ping-interval", "0.2", "--reconnect-delay", "0.01",
        "--sink-retry-delay", "0.01", "--sink-max-retry-delay", "0.1", "--no-uvloop",
    ]  # fmt: skip


async def test_a_bridge_killed_during_a_retry_delivers_it_after_the_restart(
    cli: StartCli, receiver: Receiver, tmp_path: Path
) -> None:
    """SIGKILL while the retried event is at the receiver, unanswered: its dead letter and
    request stay, and the next bridge delivers every retried event once (none lost)."""
    spool = tmp_path / "spool.db"
    env = clean_env(NEUROIO_API_TOKEN=TOKEN)

    def held() -> list[int]:
        with DeadLetterStore(spool) as store:
            return [d.event.id for d in store.select(payloads=False)]

    async with IndependentServer(TOKEN) as server:
        proc = await cli(*bridge_args(spool, server, receiver), env=env)
        await server.wait_live(1, timeout=10)
        sent = await server.emit(3)
        await eventually(lambda: held() == sent, "3 dead letters", 10)
        receiver.hang = True
        with DeadLetterStore(spool) as store:
            assert store.retry() == (3, 3)
        await eventually(lambda: receiver.attempts[sent[0]] == 2, "the retry in flight", 10)
        proc.proc.send_signal(signal.SIGKILL)
        await proc.kill()
        assert held() == sent
        receiver.hang = False
        receiver.released.set()
        receiver.status = 200
        proc = await cli(*bridge_args(spool, server, receiver), env=env)
        await eventually(lambda: set(receiver.accepted) == set(sent), "3 delivered", 10)
        await eventually(lambda: held() == [], "the dead letters removed", 10)
        proc.send(signal.SIGTERM)
        assert await proc.finish(timeout=15) == 0
    assert receiver.accepted == Counter({i: 1 for i in sent})
    assert receiver.attempts == Counter({sent[0]: 3, sent[1]: 2, sent[2]: 2})


async def test_retry_redelivers_to_the_fixed_receiver_exactly_once(
    cli: StartCli, receiver: Receiver, tmp_path: Path
) -> None:
    """A receiver answering 422: each event dead-lettered once, /healthz 200 after 9
    refusals, 503 naming the sink after 10 and more, the gauge counts them. Fixed to answer
    200, `deadletters retry` from another process while the bridge runs: each arrives
    exactly once, the dead letters are gone, /healthz 200 again; a second retry finds
    nothing (exit 1)."""
    spool = tmp_path / "spool.db"
    async with IndependentServer(TOKEN) as server:
        args = [*bridge_args(spool, server, receiver), "--metrics-port", "0"]
        proc = await cli(*args, env=clean_env(NEUROIO_API_TOKEN=TOKEN))
        await proc.wait_stderr("metrics on http://", timeout=10)
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proc.err)
        assert found, proc.err
        base = f"http://127.0.0.1:{found.group(1)}"
        await server.wait_live(1, timeout=10)
        async with aiohttp.ClientSession() as session:

            async def health() -> tuple[int, dict[str, object]]:
                async with session.get(f"{base}/healthz") as answer:
                    return answer.status, json.loads(await answer.text())

            async def metric() -> str:
                async with session.get(f"{base}/metrics") as answer:
                    return await answer.text()

            async def healthy(expected: int) -> bool:
                return (await health())[0] == expected

            async def refused(count: int) -> bool:
                status, report = await health()
                sinks = report["sinks"]
                assert isinstance(sinks, dict)
                return status == (503 if count >= 10 else 200) and (
                    sinks["hooks"]["refused_in_row"] == count
                )

            sent = await server.emit(9)
            await eventually(lambda: refused(9), "9 refused, /healthz 200", 10)
            sent += await server.emit(3)
            await eventually(lambda: refused(12), "12 refused, /healthz 503", 10)
            assert set(receiver.attempts) == set(sent)
            status, report = await health()
            problems = report["problems"]
            assert isinstance(problems, list)
            assert any(
                p.startswith("sink hooks refused the last 12 events (dead letters): ")
                and "HTTP 422" in p
                for p in problems
            ), problems
            gauge = r'^neuroio_sink_dead_letters\{sink="hooks"\} 12\.0$'
            await eventually(lambda: _matches(metric(), gauge), "the dead-letter gauge at 12", 10)

            code, out, _ = await deadletters(cli, "list", "--spool", str(spool), "--json")
            assert code == 0
            assert sorted(json.loads(line)["id"] for line in out.splitlines()) == sent

            receiver.status = 200
            code, out, err = await deadletters(cli, "retry", "--spool", str(spool))
            assert code == 0, err
            assert out.startswith("12 dead letters to retry (0 already waiting)")
            await eventually(lambda: set(receiver.accepted) == set(sent), "12 delivered", 10)
            await eventually(lambda: healthy(200), "/healthz 200", 10)
            gone = r'^neuroio_sink_dead_letters\{sink="hooks"\} 0\.0$'
            await eventually(lambda: _matches(metric(), gone), "the gauge at 0", 10)

        code, out, err = await deadletters(cli, "retry", "--spool", str(spool))
        assert code == 1 and out == "" and err.startswith("Error: no dead letters in spool")
        more = await server.emit(1)
        await eventually(lambda: receiver.accepted[more[0]] == 1, "one more delivered", 10)
        proc.send(signal.SIGTERM)
        assert await proc.finish(timeout=15) == 0
    assert receiver.accepted == Counter({i: 1 for i in [*sent, *more]})
    assert all(receiver.attempts[i] == 2 for i in sent)  # refused once, delivered once


async def _matches(text: object, pattern: str) -> bool:
    assert asyncio.iscoroutine(text)
    return re.search(pattern, await text, re.M) is not None
