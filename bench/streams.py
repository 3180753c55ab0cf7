"""Benchmark of one bridge process holding many streams (issue 15): memory, idle CPU, and
how it comes back after an outage of the platform without a reconnect storm.

Everything runs as real CLI processes: ``neuroio-events emulate --spaces N`` (each space its
own token, ``space-k-token``) with ``--connection-log``, and ``neuroio-events bridge --config
F`` with one ``[[stream]]`` per space (its token in a ``0600`` token file), ``[streams]
connect_rate = 20``, a ``file:`` sink and the metrics port on. The phases:

1. **start**: the emulator streams 1 event/s in each space; the bridge starts; the time until
   every stream is live (an authenticated connection of its space in the connection log).
2. **load** (``--load-seconds``, 20): CPU of the bridge and of the emulator (``/proc/<pid>/stat``)
   and the events the file sink wrote per second (should be N); the emulator keeping up is
   checked from its REST ``count`` of the first and the last space.
3. **restart**: the emulator is SIGKILLed, stays down ``--downtime`` s, and is started again
   on the same port with no events (rate 0) and a fresh connection log; the time from its
   start until every stream is live again (target <= 60 s).
4. **idle** (``--settle`` then ``--idle-seconds``, 20): CPU of the bridge with nothing to do
   but its PINGs (target < 5% of one core).

Then: the peak RSS of the bridge (``VmHWM``; target <= 400 MB) and the most connection
attempts in any 1 s window of either connection log (:func:`neuroio.testing.connect_rate`;
must be <= the limit, 20). The same run is made with 1 stream first, as a baseline, so the
figures read as ratios too (``--no-baseline`` skips it).

``--no-bridge`` checks the emulator's half alone: instead of the bridge, this process holds N
raw WebSocket clients (connecting at ``--connect-rate``, a PING every ``--ping-interval`` s), and
the emulator's CPU is what is measured (it must keep up on one core with 1000 spaces at
1 event/s).

Usage::

    .venv/bin/python bench/streams.py                    # 1,000 streams, about 4 minutes
    .venv/bin/python bench/streams.py --streams 50 --load-seconds 5 --idle-seconds 5
    .venv/bin/python bench/streams.py --no-bridge --connect-rate 200

Exit code 1 when a target is missed or a phase fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _harness import (
    ConnLog,
    EmulatorProc,
    Proc,
    bridge_config,
    cpu_seconds,
    free_port,
    metric_sum,
    say,
    scrape,
    vm_hwm_mb,
    wait_for,
    write_token_files,
)

from neuroio.testing import connect_rate

TARGET_RSS_MB = 400.0
TARGET_IDLE_CPU = 5.0  # % of one core
TARGET_RESTART_S = 60.0
CONNECT_LIMIT = 20.0


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def _rest_count(http: aiohttp.ClientSession, api_url: str, token: str) -> int:
    headers = {"Authorization": f"Token {token}"}
    async with http.get(f"{api_url}/v1/entries/?limit=1", headers=headers) as answer:
        count: int = (await answer.json())["count"]
        return count


class RawClients:
    """N WebSocket clients in this process, one per token, standing in for the bridge:
    AUTH, read, PING every ``ping_interval``, reconnect (after a pause) when dropped; their
    connection attempts share one limiter of ``rate`` a second."""

    def __init__(self, url: str, tokens: list[str], rate: float, ping_interval: float) -> None:
        self.url = url
        self.tokens = tokens
        self.rate = rate
        self.ping_interval = ping_interval
        self.events = 0
        self._next_slot = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No pool limit: each client holds its connection for good.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._tasks = [asyncio.create_task(self._run(t)) for t in self.tokens]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _slot(self) -> None:
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now) + 1 / self.rate
        await asyncio.sleep(self._next_slot - 1 / self.rate - now)

    async def _run(self, token: str) -> None:
        assert self._http is not None
        auth = json.dumps({"action": "AUTH", "data": {"token": token}})
        while True:
            await self._slot()
            try:
                async with self._http.ws_connect(self.url, autoping=False) as ws:
                    await ws.send_str(auth)
                    await self._read(ws)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.5)  # a fixed pause: the limiter spreads the retries

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        next_ping = time.monotonic() + self.ping_interval
        while True:
            try:
                msg = await ws.receive(timeout=max(next_ping - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                await ws.send_str('{"action":"PING"}')
                next_ping = time.monotonic() + self.ping_interval
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            if msg.data.startswith('{"id":'):
                self.events += 1


class Run:
    """One measured run with ``n`` streams; ``figures`` holds what it found."""

    def __init__(self, n: int, args: argparse.Namespace, tmp: Path) -> None:
        self.n = n
        self.args = args
        self.tmp = tmp
        self.port = free_port()
        self.figures: dict[str, Any] = {"streams": n}
        self.logs = [tmp / "conn-1.jsonl", tmp / "conn-2.jsonl"]
        self.events_file = tmp / "events.jsonl"
        self.subject: Proc | None = None  # the bridge, or None with --no-bridge
        self.clients: RawClients | None = None

    def _emulator(self, k: int, rate: float) -> EmulatorProc:
        return EmulatorProc(self.tmp, f"emulator-{k}", port=self.port, spaces=self.n, rate=rate,
                            log=self.logs[k - 1], extra=["--history-size", "1000"])  # fmt: skip

    async def _start_subject(self, emu: EmulatorProc) -> None:
        if self.args.no_bridge:
            self.clients = RawClients(emu.url, emu.tokens, self.args.connect_rate,
                                      self.args.ping_interval)  # fmt: skip
            await self.clients.start()
            return
        tokens = write_token_files(self.tmp / "tokens", emu.tokens)
        self.metrics_port = free_port()
        config = bridge_config(
            self.tmp / "bridge.toml",
            to=[f"file:{self.events_file}"],
            url=emu.url,
            api_url=emu.api_url,
            spool=self.tmp / "spool.db",
            metrics_port=self.metrics_port,
            token_files=tokens,
            connect_rate=self.args.connect_rate,
        )
        self.subject = Proc("bridge", ["bridge", "--config", str(config)],
                            self.tmp / "bridge.log", dict(os.environ))  # fmt: skip
        await self.subject.start()

    def _alive(self, emu: EmulatorProc) -> list[Proc]:
        return [emu] + ([self.subject] if self.subject is not None else [])

    def _measured_pid(self, emu: EmulatorProc) -> int:
        return emu.pid if self.subject is None else self.subject.pid

    async def _window(self, seconds: float, pids: dict[str, int]) -> dict[str, float]:
        """CPU % of one core of each process over ``seconds``."""
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(seconds)  # the measuring window itself
        wall = time.monotonic() - t0
        return {name: (cpu_seconds(pid) - before[name]) / wall * 100 for name, pid in pids.items()}

    async def run(self) -> dict[str, Any]:
        args, n, f = self.args, self.n, self.figures
        emu = self._emulator(1, 1.0)
        await emu.start()
        try:
            log = ConnLog(self.logs[0])
            t0 = time.monotonic()
            await self._start_subject(emu)
            alive = self._alive(emu)

            def all_live(log: ConnLog = log) -> bool:
                log.poll()
                return len(log.live_spaces()) == n

            await wait_for(all_live, 30 + 2 * n / args.connect_rate, f"{n} live streams", alive)
            f["start_live_s"] = time.monotonic() - t0
            async with aiohttp.ClientSession() as http:
                counts = [await _rest_count(http, emu.api_url, emu.tokens[i]) for i in (0, -1)]
                lines = _lines(self.events_file)
                got = self.clients.events if self.clients else 0
                pids = {"emulator": emu.pid}
                if self.subject is not None:
                    pids["bridge"] = self.subject.pid
                t1 = time.monotonic()
                cpu = await self._window(args.load_seconds, pids)
                wall = time.monotonic() - t1
                after = [await _rest_count(http, emu.api_url, emu.tokens[i]) for i in (0, -1)]
                lines = _lines(self.events_file) - lines
                got = (self.clients.events if self.clients else 0) - got
            f["load_cpu"] = cpu
            f["emitted_per_s"] = min(a - b for a, b in zip(after, counts, strict=True)) / wall * n
            f["delivered_per_s"] = (got if self.clients else lines) / wall
            for proc in alive:
                proc.check()

            # The platform goes away: every connection drops at once, nothing answers.
            await emu.stop(signal.SIGKILL)
            await asyncio.sleep(args.downtime)  # the outage itself
            emu = self._emulator(2, 0.0)
            await emu.start()
            t_up = time.monotonic()
            log2 = ConnLog(self.logs[1])

            def all_back(log: ConnLog = log2) -> bool:
                log.poll()
                return len(log.live_spaces()) == n

            alive = self._alive(emu)
            await wait_for(all_back, 60 + 2 * n / args.connect_rate, "every stream back", alive)
            f["restart_live_s"] = time.monotonic() - t_up
            await asyncio.sleep(args.settle)  # let the gap probes of the reconnections end
            pids = {"emulator": emu.pid}
            if self.subject is not None:
                pids["bridge"] = self.subject.pid
            f["idle_cpu"] = await self._window(args.idle_seconds, pids)
            for proc in alive:
                proc.check()
            f["peak_rss_mb"] = vm_hwm_mb(self._measured_pid(emu))
            if self.subject is not None:
                async with aiohttp.ClientSession() as http:
                    samples = await scrape(http, self.metrics_port)
                f["metrics_live"] = metric_sum(samples, "neuroio_connection_live")
            logs = [ConnLog(p).reread() for p in self.logs]
            f["connect_rate"] = max(connect_rate(lines_) for lines_ in logs)
            f["connections"] = [sum(1 for x in lines_ if x["event"] == "open") for lines_ in logs]
        finally:
            if self.clients is not None:
                await self.clients.stop()
            if self.subject is not None:
                f["bridge_exit"] = await self.subject.stop(signal.SIGTERM, 60)
            await emu.stop(signal.SIGTERM)
        return f


def _report(label: str, f: dict[str, Any], subject: str, limit: float) -> None:
    say(f"{label}: {f['streams']:,} stream(s)")
    say(f"  every stream live after start      {f['start_live_s']:6.1f} s")
    load = ", ".join(f"{k} {v:.1f}%" for k, v in f["load_cpu"].items())
    say(f"  under load (1 event/s each)        CPU {load}; emitted {f['emitted_per_s']:,.0f}/s, "
        f"delivered {f['delivered_per_s']:,.0f}/s")  # fmt: skip
    say(f"  every stream live after restart    {f['restart_live_s']:6.1f} s "
        f"(target <= {TARGET_RESTART_S:.0f} s)")  # fmt: skip
    idle = ", ".join(f"{k} {v:.1f}%" for k, v in f["idle_cpu"].items())
    say(f"  idle apart from PINGs              CPU {idle} (target {subject} < "
        f"{TARGET_IDLE_CPU:.0f}%)")  # fmt: skip
    say(f"  peak RSS of the {subject:<8}           {f['peak_rss_mb']:6.1f} MB (target <= "
        f"{TARGET_RSS_MB:.0f} MB)")  # fmt: skip
    say(
        f"  most connects in any 1 s           {f['connect_rate']:6.0f} (limit "
        f"{limit:g}; connections {f['connections'][0]:,} + {f['connections'][1]:,})"
    )
    if f.get("metrics_live") is not None:
        say(f"  /metrics neuroio_connection_live   {f['metrics_live']:6.0f}")


def _check(f: dict[str, Any], n: int, subject: str, limit: float) -> list[str]:
    missed = []
    if f["restart_live_s"] > TARGET_RESTART_S:
        missed.append(f"{n} streams live again after {f['restart_live_s']:.1f} s > 60 s")
    # With --no-bridge the limiter is this script's own: its rate is reported, not judged.
    if f["connect_rate"] > limit and subject == "bridge":
        missed.append(f"{f['connect_rate']:.0f} connects in 1 s > {limit:.0f}")
    if f["emitted_per_s"] < 0.95 * n:
        missed.append(f"the emulator fell behind: {f['emitted_per_s']:.0f}/s of {n}/s")
    if f["delivered_per_s"] < 0.9 * n:
        missed.append(f"delivered {f['delivered_per_s']:.0f}/s of {n}/s")
    if subject == "bridge":
        if f["peak_rss_mb"] > TARGET_RSS_MB:
            missed.append(f"bridge peak RSS {f['peak_rss_mb']:.0f} MB > {TARGET_RSS_MB:.0f}")
        if f["idle_cpu"]["bridge"] >= TARGET_IDLE_CPU:
            missed.append(f"bridge idle CPU {f['idle_cpu']['bridge']:.1f}% >= 5%")
        if f.get("bridge_exit") not in (0, None):
            missed.append(f"the bridge exited with {f['bridge_exit']} on SIGTERM")
    elif f["load_cpu"]["emulator"] >= 100:
        missed.append(f"the emulator needs {f['load_cpu']['emulator']:.0f}% of a core")
    return missed


async def main(args: argparse.Namespace) -> int:
    subject = "emulator" if args.no_bridge else "bridge"
    say(f"{args.streams:,} streams, one {subject} process (baseline: 1 stream); "
        f"connect_rate {args.connect_rate:g}/s")  # fmt: skip
    results: dict[str, Any] = {}
    missed: list[str] = []
    sizes = ([] if args.no_baseline else [1]) + [args.streams]
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="neuroio-bench-streams-") as tmp_dir:
            run = Run(n, args, Path(tmp_dir))
            try:
                f = await run.run()
            except RuntimeError as exc:
                missed.append(f"{n} streams: {exc}")
                say(f"{n} stream(s): FAILED: {exc}")
                continue
        _report("baseline" if n == 1 and len(sizes) > 1 else "run", f, subject, args.connect_rate)
        results[str(n)] = f
        missed += [f"{n} streams: {m}" for m in _check(f, n, subject, args.connect_rate)]
    one, many = results.get("1"), results.get(str(args.streams))
    if one and many and one is not many:
        say(f"ratios {args.streams:,} : 1 stream: peak RSS "
            f"{many['peak_rss_mb'] / one['peak_rss_mb']:.1f}x, idle CPU of the {subject} "
            f"{many['idle_cpu'][subject]:.1f}% vs {one['idle_cpu'][subject]:.1f}%")  # fmt: skip
    for m in missed:
        say(f"MISSED  {m}")
    if not missed:
        say("all targets met")
    say(json.dumps(results))
    return 1 if missed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams (spaces)")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after every stream is back before the idle window",
    )
    parser.add_argument(
        "--downtime", type=float, default=2.0, help="seconds the emulator stays down at the restart"
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=CONNECT_LIMIT,
        help="[streams] connect_rate (and the raw clients' rate)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=5.0,
        help="with --no-bridge: seconds between a raw client's PINGs",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the 1-stream run")
    parser.add_argument(
        "--no-bridge", action="store_true", help="raw clients in this process instead of the bridge"
    )
    return parser.parse_args(argv)  # fmt: skip


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
