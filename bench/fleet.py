"""Benchmark of a fleet of bridges sharing streams through NATS JetStream KV (issue 15):
the takeover after a SIGKILL, and nothing lost or doubled in PostgreSQL.

Real CLI processes: ``neuroio-events emulate --spaces 60 --rate 2 --count C
--no-push-while-disconnected --connection-log F`` (so what a dead worker missed can only come
back through the REST API, from the watermark), and three ``neuroio-events bridge --config F
--fleet nats://127.0.0.1:4222?bucket=<unique>&ttl=10&worker=w<i>`` with the same 60
``[[stream]]``\\ s, each its own spool and metrics port, all into one PostgreSQL table
(``postgresql://postgres@127.0.0.1:5432/test?table=<unique>``).

How each figure is found:

* **live / held by whom**: the emulator's connection log says which connections of which
  space are open and authenticated, with each connection's client address; the local ports
  of each worker's sockets (``/proc/<pid>/fd`` and ``/proc/<pid>/net/tcp``) say whose it is.
* **spread**: the streams each live worker holds that way (within one of even is the target).
* **takeover**: a worker holding streams is SIGKILLed; from the kill until each stream it held
  has a new authenticated connection (its first ``auth`` line after the kill); the largest
  (target <= TTL + 5 s).
* **lost / duplicates**: once the emulator's stream has ended (``--count``) and every live
  worker's delivery is idle (``neuroio_spool_events`` 0 and the table no longer growing),
  every id the emulator emitted (its REST API, per space token, every page) is looked up in
  the table: ids missing (lost), rows beyond one per id (duplicates), ids never emitted.
* **overlap**: :func:`neuroio.testing.overlaps` over the connection log: per space, the longest
  time two authenticated connections were open at once (target <= ``--max-overlap``).

Usage::

    .venv/bin/python bench/fleet.py                  # about 1.5 minutes
    .venv/bin/python bench/fleet.py --seconds 40 --kill-after 10

NATS JetStream on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432 (database ``test``) must be
running; the run's KV bucket and table are deleted afterwards. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from _harness import (
    ConnLog,
    EmulatorProc,
    Proc,
    bridge_config,
    free_port,
    metric_sum,
    rest_ids,
    say,
    scrape,
    socket_ports,
    wait_for,
    write_token_files,
)

from neuroio.testing import overlaps

NATS = "nats://127.0.0.1:4222"
REJECTED = "rejected-1"  # the name of the stream whose token the emulator refuses
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TAKEOVER_SLACK = 5.0  # the target is the lease TTL plus this


class Worker(Proc):
    """One bridge of the fleet: its own config (spool, metrics port), the shared streams."""

    def __init__(self, fleet: Fleet, number: int) -> None:
        self.number = number
        self.metrics_port = free_port()
        directory = fleet.tmp / f"w{number}"
        directory.mkdir()
        config = bridge_config(
            directory / "bridge.toml",
            to=[f"{POSTGRES}?table={fleet.table}"],
            url=fleet.emulator.url,
            api_url=fleet.emulator.api_url,
            spool=directory / "spool.db",
            metrics_port=self.metrics_port,
            token_files=fleet.token_files,
            # The emulator streams from its start, before the streams are first live (and
            # pushes nothing missed): the first connection of each recovers from then on.
            extra={"backfill": {"since": fleet.since}},
            extra_streams=fleet.extra_streams,
        )
        query = f"bucket={fleet.bucket}&ttl={fleet.args.ttl:g}&worker=w{number}"
        argv = ["bridge", "--config", str(config), "--fleet", f"{NATS}?{query}"]
        super().__init__(f"worker w{number}", argv, directory / "bridge.log", dict(os.environ))


class Fleet:
    """The emulator, the workers, and what is read from them."""

    def __init__(self, args: argparse.Namespace, tmp: Path, count: int) -> None:
        self.args = args
        self.tmp = tmp
        tag = uuid.uuid4().hex[:10]
        self.bucket = f"bench-fleet-{tag}"
        self.table = f"bench_fleet_{tag}"
        self.streams: int = args.streams
        self.count = count
        self.log = ConnLog(tmp / "connections.jsonl")
        self.emulator = EmulatorProc(
            tmp, "emulator", port=free_port(), spaces=args.streams, rate=args.rate,
            log=self.log.path,
            extra=["--count", str(count), "--no-push-while-disconnected"],
        )  # fmt: skip
        self.token_files: list[Path] = []
        self.extra_streams: list[tuple[str, Path]] = []
        self.since = ""
        self.actions = 0  # workers killed or added after the start
        self.workers: list[Worker] = []  # the live ones
        self.dead: list[Worker] = []
        self.http = aiohttp.ClientSession()
        self.takeovers: list[float] = []
        # Who holds the refused stream, as the workers' /healthz say, sampled once a second:
        # how often it moved between workers, and for how long it was watched.
        self.rejected_holders: list[str] = []
        self.rejected_moves = 0
        self.started_at = time.monotonic()
        self._sampler: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ processes

    async def start(self) -> None:
        started = datetime.now(timezone.utc) - timedelta(seconds=60)
        self.since = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.emulator.start()
        self.token_files = write_token_files(self.tmp / "tokens", self.emulator.tokens)
        if self.args.rejected:
            (path,) = write_token_files(self.tmp / "refused", [f"refused-{uuid.uuid4().hex}"])
            self.extra_streams = [(REJECTED, path)]
        for _ in range(self.args.workers):
            await self.add_worker()
        self.started_at = time.monotonic()
        if self.args.rejected:
            self._sampler = asyncio.create_task(self._sample_rejected())

    async def _sample_rejected(self) -> None:
        while True:
            holder = None
            for worker in list(self.workers):
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    url = f"http://127.0.0.1:{worker.metrics_port}/healthz"
                    async with self.http.get(url) as answer:
                        report = await answer.json(content_type=None)
                    holder = (report.get("fleet") or {}).get("streams", {}).get(REJECTED)
                    if holder:
                        break
            if holder and (not self.rejected_holders or self.rejected_holders[-1] != holder):
                if self.rejected_holders:
                    self.rejected_moves += 1
                self.rejected_holders.append(holder)
            await asyncio.sleep(1.0)  # a sampling period, not a synchronisation

    async def add_worker(self) -> Worker:
        worker = Worker(self, len(self.workers) + len(self.dead) + 1)
        await worker.start()
        self.workers.append(worker)
        return worker

    def procs(self) -> list[Proc]:
        return [self.emulator, *self.workers]

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        for worker in self.workers:
            code = await worker.stop(signal.SIGTERM, 30)
            if code != 0:
                say(f"  {worker.name} exited with {code} on SIGTERM: {worker.last_error()}")
        await self.emulator.stop(signal.SIGTERM)
        await self.http.close()
        await _drop(self.table, self.bucket)

    # ------------------------------------------------------------------ observing

    def holders(self) -> dict[str, set[int]]:
        """The spaces each live worker holds a live connection of, now."""
        self.log.poll()
        return self.log.holders({w.name: socket_ports(w.pid) for w in self.workers})

    def spread(self) -> list[int]:
        return sorted(len(spaces) for spaces in self.holders().values())

    def balanced(self) -> bool:
        counts = self.spread()
        return len(self.log.live_spaces()) == self.streams and _even(
            counts, self.streams, self.args.rejected
        )

    async def wait_all_live(self, timeout: float) -> float:
        def live() -> bool:
            self.log.poll()
            return len(self.log.live_spaces()) == self.streams

        return await wait_for(live, timeout, f"all {self.streams} streams live", self.procs())

    async def wait_balanced(self, timeout: float) -> float | None:
        """Seconds until the streams are spread within one of even; ``None``: not in time."""
        try:
            return await wait_for(self.balanced, timeout, "an even spread", self.procs())
        except RuntimeError as exc:
            if "in vain" not in str(exc):
                raise
            return None

    async def kill(self, worker: Worker) -> float:
        """SIGKILL ``worker``; the takeover time: until every stream it held has a new
        authenticated connection (from the connection log's wall-clock times)."""
        held = self.holders()[worker.name]
        self.actions += 1
        killed_at = time.time()
        await worker.stop(signal.SIGKILL)
        self.workers.remove(worker)
        self.dead.append(worker)
        if not held:
            return 0.0

        def taken_over() -> bool:
            self.log.poll()
            return all(self.log.last_auth.get(s, 0.0) > killed_at for s in held)

        await wait_for(taken_over, self.args.ttl + 60, f"the takeover of {len(held)} streams",
                       self.procs())  # fmt: skip
        firsts: dict[int, float] = {}
        for item in self.log.lines:
            if item["event"] == "auth" and item["t"] > killed_at and item["space"] in held:
                firsts.setdefault(item["space"], item["t"])
        seconds = max(firsts.values()) - killed_at
        self.takeovers.append(seconds)
        return seconds

    async def idle(self, timeout: float) -> float:
        """Wait until every live worker's spool is empty and the table stops growing."""
        last = -1
        steady = 0

        async def quiet() -> bool:
            nonlocal last, steady
            spooled = 0.0
            for worker in self.workers:
                value = metric_sum(await scrape(self.http, worker.metrics_port),
                                   "neuroio_spool_events")  # fmt: skip
                spooled += value or 0.0
            rows = await _count(self.table)
            steady = steady + 1 if rows == last and spooled == 0 else 0
            last = rows
            return steady >= 3  # three polls in a row, a second apart

        t0 = time.monotonic()
        while not await quiet():
            for proc in self.procs():
                proc.check()
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"delivery not idle within {timeout:.0f} s")
            await asyncio.sleep(1.0)  # polling the workers' metrics
        return time.monotonic() - t0

    async def stream_ended(self, timeout: float) -> None:
        """Wait until the emulator emitted its ``count`` in every space."""
        token = self.emulator.tokens[-1]  # the last space's turn comes last
        headers = {"Authorization": f"Token {token}"}
        t0 = time.monotonic()
        while True:
            url = f"{self.emulator.api_url}/v1/entries/?limit=1"
            async with self.http.get(url, headers=headers) as answer:
                if (await answer.json())["count"] >= self.count:
                    return
            self.emulator.check()
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("the emulator's stream did not end in time")
            await asyncio.sleep(0.5)  # polling the REST API

    # ------------------------------------------------------------------ the verdict

    async def verdict(self) -> dict[str, Any]:
        """Every emitted id against the table; overlap from the connection log."""
        emitted: set[int] = set()
        for token in self.emulator.tokens:
            emitted.update(await rest_ids(self.http, self.emulator.api_url, token))
        import asyncpg

        conn = await asyncpg.connect(POSTGRES)
        try:
            rows = [r["id"] for r in await conn.fetch(f"SELECT id FROM {self.table}")]
        finally:
            await conn.close()
        stored = set(rows)
        lines = self.log.reread()
        per_space = overlaps(lines)
        authenticated = {x["conn"] for x in lines if x["event"] == "auth"}
        refused = {x["conn"] for x in lines if x["event"] == "open"} - authenticated
        reported = []
        for worker in self.workers:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                url = f"http://127.0.0.1:{worker.metrics_port}/healthz"
                async with self.http.get(url) as answer:
                    reported.append(REJECTED in await answer.text())
        worst = max(per_space.items(), key=lambda kv: kv[1], default=(None, 0.0))
        return {
            "emitted": len(emitted),
            "rows": len(rows),
            "lost": len(emitted - stored),
            "duplicates": len(rows) - len(stored),
            "unexpected": len(stored - emitted),
            "max_overlap_s": worst[1],
            "max_overlap_space": worst[0],
            "spread": self.spread(),
            "takeover_s": self.takeovers,
            "connections": sum(1 for x in self.log.lines if x["event"] == "open"),
            "refused_attempts": len(refused),
            "rejected_on_healthz": reported,
            "actions": self.actions,
            "workers": len(self.workers),
            "rejected_moves": self.rejected_moves,
            "rejected_holders": self.rejected_holders,
            "minutes": (time.monotonic() - self.started_at) / 60,
        }


async def _count(table: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def _drop(table: str, bucket: str) -> None:
    import asyncpg
    import nats

    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(POSTGRES)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    with contextlib.suppress(Exception):
        nc = await nats.connect(NATS)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_key_value(bucket)
        await nc.close()


def report(v: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Print the verdict; the checks it fails."""
    say(f"  emitted {v['emitted']:,} events; table rows {v['rows']:,}: lost {v['lost']}, "
        f"duplicates {v['duplicates']}, never emitted {v['unexpected']}")  # fmt: skip
    takeovers = ", ".join(f"{t:.1f}" for t in v["takeover_s"]) or "none"
    say(f"  takeover after SIGKILL: {takeovers} s (target <= TTL {args.ttl:g} + "
        f"{TAKEOVER_SLACK:g} s)")  # fmt: skip
    say(
        f"  longest overlap: {v['max_overlap_s']:.3f} s (space {v['max_overlap_space']}; "
        f"bound {args.max_overlap:g} s); {v['connections']:,} connections in all"
    )
    say(f"  spread (streams per live worker): {v['spread']}")
    missed = []
    if v["lost"] or v["duplicates"] or v["unexpected"] or v["emitted"] == 0:
        missed.append(f"lost {v['lost']}, duplicates {v['duplicates']}, "
                      f"never emitted {v['unexpected']} of {v['emitted']}")  # fmt: skip
    if any(t > args.ttl + TAKEOVER_SLACK for t in v["takeover_s"]):
        missed.append(f"takeover {max(v['takeover_s']):.1f} s > {args.ttl + TAKEOVER_SLACK:g} s")
    if v["max_overlap_s"] > args.max_overlap:
        missed.append(f"overlap {v['max_overlap_s']:.2f} s > {args.max_overlap:g} s")
    if not _even(v["spread"], args.streams, args.rejected):
        missed.append(f"spread {v['spread']} is not within one of even")
    if args.rejected:
        # Each kill or join may move the refused stream once; a loop moves it more. Its holder
        # tries it again once a minute (two refused attempts: the token is asked for again
        # once), and once more at each move.
        moves_bound = v["actions"] + 1
        tries_bound = 2 * (math.ceil(v["minutes"]) + 1) + 2 * (v["rejected_moves"] + 1)
        say(f"  stream {REJECTED} (token refused): moved {v['rejected_moves']} times between "
            f"workers (bound {moves_bound}), {v['refused_attempts']} refused attempts "
            f"(bound {tries_bound}: once a minute and at each move); named on /healthz of "
            f"{sum(v['rejected_on_healthz'])} of {v['workers']} workers")  # fmt: skip
        if v["rejected_moves"] > moves_bound:
            missed.append(f"{REJECTED} moved {v['rejected_moves']} times > {moves_bound}")
        if v["refused_attempts"] > tries_bound:
            missed.append(f"{REJECTED} tried {v['refused_attempts']} times > {tries_bound}")
        if v["refused_attempts"] == 0:
            missed.append(f"{REJECTED} was never tried")
        if not all(v["rejected_on_healthz"]) or len(v["rejected_on_healthz"]) != v["workers"]:
            missed.append(f"{REJECTED} is not reported on every worker's /healthz")
    return missed


def _even(spread: list[int], streams: int, rejected: bool) -> bool:
    """Live streams per worker within one of even; with a refused stream (held by one
    worker, with no connection) one more on some worker may make it so."""
    if not spread or sum(spread) != streams:
        return False
    if max(spread) - min(spread) <= 1:
        return True
    return rejected and any(
        max(c) - min(c) <= 1
        for i in range(len(spread))
        for c in [[n + (j == i) for j, n in enumerate(spread)]]
    )


async def finish(fleet: Fleet, args: argparse.Namespace, missed: list[str]) -> int:
    """End the stream, wait for the workers to be idle, balance, and judge."""
    await fleet.stream_ended(args.seconds + 120)
    say(f"  stream ended ({fleet.count} events in each space); waiting for delivery to settle")
    await fleet.wait_all_live(args.ttl + 60)
    await fleet.idle(120)
    seconds = await fleet.wait_balanced(60)
    if seconds is None:
        say("  the spread did not become even within 60 s")
    verdict = await fleet.verdict()
    missed += report(verdict, args)
    for m in missed:
        say(f"MISSED  {m}")
    if not missed:
        say("all checks passed")
    say(json.dumps(verdict))
    return 1 if missed else 0


async def main(args: argparse.Namespace) -> int:
    count = int(args.rate * args.seconds)
    say(f"fleet of {args.workers} workers, {args.streams} streams at {args.rate:g} events/s "
        f"each for {args.seconds:g} s ({count} per stream), lease TTL {args.ttl:g} s")  # fmt: skip
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="neuroio-bench-fleet-") as tmp_dir:
        fleet = Fleet(args, Path(tmp_dir), count)
        t0 = time.monotonic()
        try:
            await fleet.start()
            live = await fleet.wait_all_live(60)
            say(f"  all {args.streams} streams live {live:.1f} s after the start")
            balance = await fleet.wait_balanced(max(args.kill_after - (time.monotonic() - t0), 5))
            say(f"  spread {fleet.spread()}" + (f" ({balance:.1f} s to even)" if balance else ""))
            await asyncio.sleep(max(args.kill_after - (time.monotonic() - t0), 0))  # the schedule
            victim = max(fleet.workers, key=lambda w: len(fleet.holders()[w.name]))
            held = len(fleet.holders()[victim.name])
            seconds = await fleet.kill(victim)
            say(f"  SIGKILL {victim.name} (held {held} streams): taken over in {seconds:.1f} s")
            return await finish(fleet, args, missed)
        except RuntimeError as exc:
            say(f"FAILED  {exc}")
            return 1
        finally:
            await fleet.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return arguments(__doc__).parse_args(argv)


def arguments(doc: str | None, *, soak: bool = False) -> argparse.ArgumentParser:
    """The options, shared with ``fleet_soak.py`` (which has its own schedule)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="events/s in each stream")
    if not soak:
        parser.add_argument("--seconds", type=float, default=60.0, help="how long events flow")
        parser.add_argument(
            "--kill-after", type=float, default=20.0, help="seconds from the start to the SIGKILL"
        )
    parser.add_argument("--ttl", type=float, default=10.0, help="the lease TTL, s")
    parser.add_argument(
        "--max-overlap",
        type=float,
        default=1.0,
        help="the overlap bound, s (two connections of a stream at once)",
    )
    parser.add_argument(
        "--rejected",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=f"add a stream {REJECTED} whose token the emulator refuses: it "
        "must be named on every worker's /healthz and not move in a loop",
    )
    return parser


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
