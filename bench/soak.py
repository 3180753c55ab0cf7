"""Soak: the bridge under a steady stream and a random fault every few seconds.

The bridge runs as a child process (``neuroio-events bridge``) with a file, a Redis and a NATS
sink, a spool and gap recovery, against the emulator in this process at a steady rate. TCP
proxies sit between the bridge and the emulator's WebSocket, Redis and NATS, so faults are
injected without touching the shared services:

=================  ========================================================================
fault              what is done, and when it counts as recovered
=================  ========================================================================
proxy_cut          every WebSocket connection is reset (RST); recovered at the bridge's
                   next authenticated connection
half_open          the WebSocket path drops every byte both ways, with no RST and no FIN;
                   recovered at the next authenticated connection (heartbeat detection)
emulator_restart   the emulator closes every client and refuses connections for a while
rest_500           the REST API answers 500 for a few seconds while the WebSocket is cut,
                   so the gap must wait; recovered at the first REST request after it heals
redis_outage       the path to Redis drops everything for a few seconds (new connections
                   too), then its connections are reset, as when a lost path comes back;
                   recovered when the sink's lag is back to within 50 ms of the stream
nats_outage        the same for NATS
sigkill            ``kill -9`` of the bridge, restarted at once on the same spool;
                   recovered at the new process's authenticated connection
redis_wrong_type   the Redis stream's key holds a string for a few seconds: one script run
                   renames the stream to ``<stream>:aside`` and sets the key, another deletes
                   the string and renames the stream back (each step atomic, so no entry is
                   lost and no ``XADD`` lands in between); recovered when the Redis sink's
                   lag is back to within 50 ms of the stream
bogus_id           the emulator pushes on the socket one event whose id the REST API never
                   lists (``2**62`` plus the number of earlier ones), waits until every sink
                   holds it, then cuts the WebSocket: the events emitted until the bridge is
                   back are a gap only the REST API has; recovered when every sink holds
                   every id of that gap. The bogus events are expected in the sinks, each
                   exactly once in Redis and NATS
disk_full          the spool lives on a tmpfs the soak mounts (root only; without it the kind
                   is skipped, with the reason printed); the path to Redis goes away (so the
                   spool must grow to hold the backlog) and a ballast file fills the tmpfs,
                   for 2-4 s and until the bridge is hit (its commits stop for 1 s or
                   ``/healthz`` answers 503; 10 s at most: a spool may find room in pages it
                   already has); then Redis comes back and the ballast goes: all of it, or
                   (every other time) all but what leaves 1 MiB free, the rest only after the
                   bridge has recovered in that little room or failed to within 20 s.
                   ``/healthz`` must answer 503 in each fault that stopped commits; recovered
                   when the bridge commits again (``neuroio_events_received_total`` grows)
                   and every sink's lag is back to within 50 ms of the stream
clock_skew         the emulator's clock steps by ten minutes, in the cycle of offsets
                   -600, 0, +600, 0 s (left in place: every later fault runs under it), then
                   the WebSocket is cut; recovered when every sink holds every id emitted
                   until the bridge was back (the gap)
=================  ========================================================================

Faults come one at a time, in shuffled rounds of every kind (``--seed``), every
``--fault-every`` seconds; a short run goes on until each kind has come once. At the end the
stream stops, every sink is read back (the file's lines, ``XRANGE`` of the Redis stream, a
pull consumer on the JetStream stream) and compared with the ids the emulator emitted (its
REST history) and the bogus ids it pushed. The bridge's RSS and open descriptors are sampled
every second, per process (a SIGKILL starts a new one).

Usage::

    .venv/bin/python bench/soak.py                  # 10 minutes
    .venv/bin/python bench/soak.py --duration 60    # the CI's version
    .venv/bin/python bench/soak.py --duration 600 --json soak.json --keep

Exits 0 when every check passes, 1 when one fails, 2 when Redis or NATS is unreachable.
Redis (127.0.0.1:6379) and NATS with JetStream (127.0.0.1:4222) must be running; each run uses
its own Redis stream (database 13) and JetStream stream and deletes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import _soak_sinks as sinks  # noqa: E402
import aiohttp  # noqa: E402

from neuroio.emulator import Emulator  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

__all__ = ["KINDS", "Soak", "main"]

TOKEN = "soak-" + uuid.uuid4().hex
KINDS = (
    "proxy_cut",
    "half_open",
    "emulator_restart",
    "rest_500",
    "redis_outage",
    "nats_outage",
    "sigkill",
    "redis_wrong_type",
    "bogus_id",
    "disk_full",
    "clock_skew",
)
# The bridge's heartbeat: a dead path is detected within PING_INTERVAL + PING_TIMEOUT.
PING_INTERVAL = 0.5
PING_TIMEOUT = 1.0
RECONNECT_DELAY = 0.2
# Resource bounds of one bridge process: its end against its start.
RSS_BOUND_MB = 20.0
FD_BOUND = 10
# A process's "start" sample is taken once it has been live this long: imports, opening the
# spool and sinks, the first gap recovery and the first batches have allocated what they keep.
WARMUP_S = 10.0
# A process living this long after warm-up must also be flat after it: its end against its
# RSS this long after it went live (the spool's in-memory tail, SQLite's page cache and the
# allocator's arenas fill during the first minute).
SETTLED_S = 60.0
SETTLED_RSS_BOUND_MB = 10.0
# Longest wait for any single recovery before it counts as failed.
RECOVERY_TIMEOUT_S = 60.0
SAMPLE_EVERY_S = 1.0
# Longest wait for a gap's events (bogus_id, clock_skew) to reach every sink.
GAP_TIMEOUT_S = 30.0
# The first bogus id; each bogus_id fault pushes the next one, so each is a distinct event.
BOGUS_BASE = 2**62
# The server clock's offsets, in turn, one step of ten minutes per clock_skew fault.
CLOCK_OFFSETS = (-600.0, 0.0, 600.0, 0.0)
# The spool's tmpfs (disk_full): room for the database and its WAL under a steady stream.
SPOOL_FS_MB = 128
# Room left when only part of the ballast goes, and how long the bridge has to recover in it.
PARTIAL_ROOM = 1 << 20
PARTIAL_TIMEOUT_S = 20.0
# The disk stays full until the bridge stops committing for this long (or answers 503), at
# most MAX_FULL_S.
STALL_S = 1.0
MAX_FULL_S = 10.0


# ---------------------------------------------------------------------------- the bridge


@dataclasses.dataclass
class Generation:
    """One bridge process: from its start to its death (SIGKILL) or the end of the soak."""

    number: int
    pid: int
    started: float
    live: float | None = None
    ended: float | None = None
    how_ended: str | None = None
    samples: list[tuple[float, int, int]] = dataclasses.field(default_factory=list)
    """(seconds since the soak's start, RSS kB, open descriptors)."""


class BridgeProcess:
    """Starts the bridge child, restarts it after a SIGKILL, and notices unexpected exits."""

    def __init__(
        self, tmp: Path, spool: Path, url: str, api_url: str, to: list[str], t0: float
    ) -> None:
        self.tmp = tmp
        self.url = url
        self.api_url = api_url
        self.to = to
        self.t0 = t0
        self.spool = spool
        self.generations: list[Generation] = []
        self.unexpected_exits: list[str] = []
        self.metrics_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._expected_exit = False

    @property
    def current(self) -> Generation:
        return self.generations[-1]

    def command(self) -> list[str]:
        """The ``neuroio-events bridge`` command line (the token goes in the environment)."""
        cmd = [sys.executable, "-m", "neuroio", "bridge"]
        for uri in self.to:
            cmd += ["--to", uri]
        cmd += [
            "--spool",
            str(self.spool),
            "--url",
            self.url,
            "--api-url",
            self.api_url,
            "--ping-interval",
            str(PING_INTERVAL),
            "--ping-timeout",
            str(PING_TIMEOUT),
            "--reconnect-delay",
            str(RECONNECT_DELAY),
            "--metrics-port",
            str(self.metrics_port),
            "--log-format",
            "json",
        ]  # fmt: skip  (option and value side by side)
        return cmd

    def start(self) -> Generation:
        """Start a new process (generation) on the same spool."""
        self.metrics_port = _free_port()
        number = len(self.generations) + 1
        self._log = (self.tmp / f"bridge-{number}.log").open("ab")
        # Only the soak's settings: a NEUROIO_* variable of the caller would change the run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROIO_")}
        env.update(NEUROIO_API_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
        self._proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._expected_exit = False
        gen = Generation(number, self._proc.pid, time.monotonic() - self.t0)
        self.generations.append(gen)
        return gen

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_exit(self) -> None:
        """Record and restart a process that ended without being told to."""
        proc = self._proc
        if proc is None or proc.poll() is None or self._expected_exit:
            return
        gen = self.current
        gen.ended = time.monotonic() - self.t0
        gen.how_ended = f"exited unexpectedly with code {proc.returncode}"
        self.unexpected_exits.append(f"generation {gen.number}: {gen.how_ended}")
        self._close_log()
        self.start()

    async def sigkill(self) -> None:
        """``kill -9`` the process and start the next one at once."""
        proc = self._proc
        assert proc is not None
        self._expected_exit = True
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        self.current.ended = time.monotonic() - self.t0
        self.current.how_ended = "SIGKILL"
        self._close_log()
        self.start()

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not end within 15 s; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        self._expected_exit = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self.current.ended is None:
            self.current.ended = time.monotonic() - self.t0
            self.current.how_ended = f"stopped (exit code {proc.returncode})"
        self._close_log()
        return proc.returncode

    def kill_now(self) -> None:
        """Last resort on an interrupted soak."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def sample(self) -> None:
        """Record RSS and descriptors of the current process."""
        if not self.alive():
            return
        gen = self.current
        rss = _rss_kb(gen.pid)
        fds = _fd_count(gen.pid)
        if rss is not None and fds is not None:
            gen.samples.append((time.monotonic() - self.t0, rss, fds))

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_kb(pid: int | str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _fd_count(pid: int | str) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# ---------------------------------------------------------------------------- the soak


@dataclasses.dataclass
class Fault:
    """One injected fault and what it took to get over it."""

    kind: str
    at: float
    duration: float = 0.0
    detected: float | None = None
    """Seconds from injection to the bridge's next authenticated connection."""
    recovered: float | None = None
    """Seconds from injection to recovery (see the module docstring)."""
    caught_up_after_restore: float | None = None
    gap: int | None = None
    """Events emitted while the bridge was away (bogus_id, clock_skew)."""
    health: dict[str, int] | None = None
    """``/healthz`` answers while the disk was full (disk_full): status (or "none") -> count."""
    note: str | None = None
    error: str | None = None


class Soak:
    """The whole run: emulator, proxies, the bridge child, faults, checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.kinds: tuple[str, ...] = args.kinds
        self.tag = uuid.uuid4().hex[:10]
        self.redis_stream = f"soak:{self.tag}"
        self.nats_subject = f"soak.{self.tag}"
        self.nats_stream = f"SOAK_{self.tag.upper()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="neuroio-soak-"))
        self.events_file = self.tmp / "events.jsonl"
        self.t0 = time.monotonic()
        self.faults: list[Fault] = []
        self.bridge: BridgeProcess | None = None
        self.emu: Emulator | None = None
        self.ws_proxy: FaultProxy | None = None
        self.redis_proxy: FaultProxy | None = None
        self.nats_proxy: FaultProxy | None = None
        self.http: aiohttp.ClientSession | None = None
        self.soak_rss: list[tuple[float, int]] = []
        self.result: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        """Fault kinds asked for but not injected, with the reason."""
        self.bogus_ids: list[int] = []
        self.spool_fs: Path | None = None
        """The tmpfs the spool lives on (disk_full), while mounted."""
        self.redis: Any = None
        self.tails: sinks.Tails | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- set-up ----------------------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        self.emu = Emulator(
            tokens={TOKEN},
            push_while_disconnected=False,
            history_size=int(args.rate * (args.duration + 300)) + 10_000,
            seed=args.seed,
        )
        redis = await sinks.redis_client()
        nc = None
        try:
            try:
                await redis.ping()
                nc = await sinks.nats_connect()
                await nc.jetstream().account_info()
            except Exception as exc:
                print(
                    f"soak: Redis ({sinks.REDIS_HOST}:{sinks.REDIS_PORT}) and NATS with "
                    f"JetStream ({sinks.NATS_HOST}:{sinks.NATS_PORT}) must be running "
                    f"(e.g. `redis-server` and `nats-server -js`): {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )
                return 2
            async with (
                self.emu,
                FaultProxy(sinks.REDIS_HOST, sinks.REDIS_PORT) as self.redis_proxy,
                FaultProxy(sinks.NATS_HOST, sinks.NATS_PORT) as self.nats_proxy,
                FaultProxy("127.0.0.1", self.emu.port) as self.ws_proxy,
                aiohttp.ClientSession() as self.http,
            ):
                try:
                    return await self._soak(redis, nc)
                finally:
                    if self.bridge is not None:
                        self.bridge.kill_now()
        finally:
            with contextlib.suppress(Exception):
                await sinks.delete_redis(redis, self.redis_stream)
            await redis.aclose()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await sinks.delete_nats(nc, self.nats_stream)
                await nc.close()
            self._unmount_spool_fs()
            if args.keep:
                print(f"soak: kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _mount_spool_fs(self) -> str | None:
        """Mount a small tmpfs for the spool; the reason it cannot be, or None once mounted."""
        where = self.tmp / "spool-fs"
        where.mkdir()
        if os.geteuid() != 0:
            return "mounting a tmpfs needs root"
        if shutil.which("mount") is None:
            return "no mount command"
        try:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_FS_MB}m,mode=0700", "neuroio-soak",
                 str(where)],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"mount failed: {exc}"
        if done.returncode != 0:
            return f"mount failed: {(done.stderr or done.stdout).strip() or done.returncode}"
        self.spool_fs = where
        return None

    def _unmount_spool_fs(self) -> None:
        where = self.spool_fs
        if where is None:
            return
        if self.args.keep:
            kept = self.tmp / "spool-kept"
            kept.mkdir(exist_ok=True)
            for path in where.glob("spool.db*"):
                with contextlib.suppress(OSError):
                    shutil.copy2(path, kept / path.name)
        done = subprocess.run(["umount", str(where)], capture_output=True, check=False)
        if done.returncode != 0:
            # Busy (a child still holding a file): detach it now, freed when the last user goes.
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        self.spool_fs = None

    def sink_uris(self) -> list[str]:
        assert self.redis_proxy is not None and self.nats_proxy is not None
        return [
            f"file:{self.events_file}",
            f"redis://127.0.0.1:{self.redis_proxy.port}/{sinks.REDIS_DB}"
            f"?stream={self.redis_stream}&socket_timeout=5",
            f"nats://127.0.0.1:{self.nats_proxy.port}"
            f"?subject={self.nats_subject}&stream={self.nats_stream}&timeout=5",
        ]

    def authenticated(self) -> int:
        assert self.emu is not None
        return sum(1 for r in self.emu.clients if r.authenticated)

    async def _soak(self, redis: Any, nc: Any) -> int:
        args = self.args
        emu, ws_proxy = self.emu, self.ws_proxy
        assert emu is not None and ws_proxy is not None
        self.redis = redis
        self.tails = sinks.Tails(
            self.events_file, redis, self.redis_stream, nc, self.nats_stream, self.nats_subject
        )
        spool_dir = self.tmp
        if "disk_full" in self.kinds:
            reason = self._mount_spool_fs()
            if reason is None:
                assert self.spool_fs is not None
                spool_dir = self.spool_fs
            else:
                print(f"soak: disk_full skipped: {reason}", file=sys.stderr)
                self.skipped["disk_full"] = reason
                self.kinds = tuple(k for k in self.kinds if k != "disk_full")
        self.t0 = time.monotonic()
        self.bridge = bridge = BridgeProcess(
            self.tmp,
            spool_dir / "spool.db",
            ws_proxy.url_for(),
            emu.api_url,
            self.sink_uris(),
            self.t0,
        )
        bridge.start()
        await self._wait_connection(0, timeout=60)
        bridge.current.live = self.now()
        emu.start_stream(args.rate)
        sampler = asyncio.create_task(self._sample_loop())
        try:
            await self._inject_faults()
            stream_end = self.t0 + args.duration
            # The stream runs its whole duration, and at least until the last fault is over.
            await asyncio.sleep(max(0.0, stream_end - time.monotonic()))
            await emu.stop_stream()
            stopped_at = self.now()
            emitted = await self._emitted_ids()
            drained, stored = await self._drain(emitted, redis, nc)
            drain_s = self.now() - stopped_at
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await self.tails.aclose()
        exit_code = await bridge.stop()
        self.result = self._report(emitted, stored, drained, drain_s, exit_code)
        self._print(self.result)
        if args.json:
            Path(args.json).write_text(json.dumps(self.result, indent=2) + "\n")
        return 0 if self.result["passed"] else 1

    async def _wait_connection(self, before: int, timeout: float = RECOVERY_TIMEOUT_S) -> None:
        """Wait for the bridge's authenticated connection number ``before + 1``."""
        assert self.emu is not None and self.bridge is not None
        bridge = self.bridge
        deadline = time.monotonic() + timeout
        while self.authenticated() <= before:
            bridge.check_exit()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no new authenticated connection within {timeout} s")
            # Short slices so an exited bridge is noticed (and restarted) meanwhile.
            with contextlib.suppress(TimeoutError):
                await self.emu.wait_until(
                    lambda: self.authenticated() > before, timeout=min(left, 0.5)
                )
        if bridge.current.live is None:
            bridge.current.live = self.now()

    async def _sample_loop(self) -> None:
        assert self.bridge is not None
        while True:
            self.bridge.check_exit()
            self.bridge.sample()
            rss = _rss_kb("self")
            if rss is not None:
                self.soak_rss.append((self.now(), rss))
            await asyncio.sleep(SAMPLE_EVERY_S)  # the sampling period, not a synchronisation

    # -- faults ----------------------------------------------------------------------------

    def _kinds(self) -> Iterator[str]:
        while True:
            round_ = list(self.kinds)
            self.rng.shuffle(round_)
            yield from round_

    async def _inject_faults(self) -> None:
        args = self.args
        # Leave time at the end for the last fault to be over before the stream stops.
        last_start = args.duration - max(5.0, args.fault_every)
        next_at = 3.0
        if not self.kinds:
            return
        kinds = self._kinds()
        # A short run goes on until each kind has been injected once (the first round).
        while next_at <= last_start or len(self.faults) < len(self.kinds):
            await asyncio.sleep(max(0.0, next_at - self.now()))  # the fault schedule
            fault = Fault(next(kinds), self.now())
            self.faults.append(fault)
            try:
                await self._inject(fault)
            except TimeoutError as exc:
                fault.error = str(exc)
                self._restore_all()
            jitter = self.rng.uniform(0.7, 1.3)
            next_at = max(next_at + args.fault_every * jitter, self.now() + 1.0)

    def _restore_all(self) -> None:
        assert self.emu is not None
        for proxy in (self.ws_proxy, self.redis_proxy, self.nats_proxy):
            if proxy is not None:
                proxy.restore()
        self.emu.heal_rest()

    async def _inject(self, fault: Fault) -> None:
        emu, bridge = self.emu, self.bridge
        ws_proxy, redis_proxy, nats_proxy = self.ws_proxy, self.redis_proxy, self.nats_proxy
        assert emu is not None and bridge is not None and ws_proxy is not None
        assert redis_proxy is not None and nats_proxy is not None
        start = time.monotonic()
        before = self.authenticated()

        def since() -> float:
            return time.monotonic() - start

        if fault.kind == "proxy_cut":
            ws_proxy.cut()
            await self._wait_connection(before)
            fault.detected = fault.recovered = since()
        elif fault.kind == "half_open":
            ws_proxy.blackhole("both")
            await self._wait_connection(before)
            fault.detected = fault.recovered = since()
            ws_proxy.restore()  # lets the dead connection's held close through
        elif fault.kind == "emulator_restart":
            fault.duration = round(self.rng.uniform(0.5, 2.0), 2)
            restart = asyncio.create_task(emu.restart(downtime=fault.duration))
            try:
                await self._wait_connection(before)
            finally:
                await restart
            fault.detected = fault.recovered = since()
        elif fault.kind == "rest_500":
            fault.duration = round(self.rng.uniform(2.0, 4.0), 2)
            emu.fail_rest(500)
            ws_proxy.cut()
            try:
                await self._wait_connection(before)
                fault.detected = since()
                await asyncio.sleep(max(0.0, fault.duration - since()))  # the outage itself
            finally:
                emu.heal_rest()
            requests = len(emu.rest_requests)
            await emu.wait_until(
                lambda: len(emu.rest_requests) > requests,
                timeout=RECOVERY_TIMEOUT_S,
                what="a REST request after the API healed",
            )
            fault.recovered = since()
        elif fault.kind in ("redis_outage", "nats_outage"):
            proxy = redis_proxy if fault.kind == "redis_outage" else nats_proxy
            sink = "redis" if fault.kind == "redis_outage" else "nats"
            fault.duration = round(self.rng.uniform(2.0, 4.0), 2)
            proxy.blackhole("both", new_connections=True)
            try:
                await asyncio.sleep(fault.duration)  # the outage itself
            finally:
                proxy.restore()
                # The path is back but its connections' state is gone: the next packet
                # of each is answered with a reset.
                proxy.cut()
            restored = time.monotonic()
            await self._wait_caught_up(sink)
            fault.recovered = since()
            fault.caught_up_after_restore = time.monotonic() - restored
        elif fault.kind == "sigkill":
            await bridge.sigkill()
            await self._wait_connection(before)
            fault.detected = fault.recovered = since()
        elif fault.kind == "redis_wrong_type":
            fault.duration = round(self.rng.uniform(2.0, 4.0), 2)
            if not await sinks.redis_wrong_type(self.redis, self.redis_stream):
                raise TimeoutError("the Redis stream does not exist yet")
            try:
                await asyncio.sleep(fault.duration)  # the fault itself
            finally:
                if not await sinks.redis_right_type(self.redis, self.redis_stream):
                    fault.error = "the stream was not found aside"
            restored = time.monotonic()
            await self._wait_caught_up("redis")
            fault.recovered = since()
            fault.caught_up_after_restore = time.monotonic() - restored
        elif fault.kind == "bogus_id":
            bogus = BOGUS_BASE + len(self.bogus_ids)
            self.bogus_ids.append(bogus)
            fault.note = f"id {bogus}"
            await emu.wait_until(
                lambda: bool(emu.live_clients), timeout=RECOVERY_TIMEOUT_S, what="a live bridge"
            )
            await emu.push_unlisted(id=bogus)
            await self._wait_delivered({bogus}, what=f"the bogus event {bogus}")
            await self._gap(fault, since)
            fault.recovered = since()
        elif fault.kind == "clock_skew":
            turn = sum(1 for f in self.faults if f.kind == "clock_skew") - 1
            was, emu.clock_offset = emu.clock_offset, CLOCK_OFFSETS[turn % len(CLOCK_OFFSETS)]
            fault.note = f"server clock offset {was:+.0f} -> {emu.clock_offset:+.0f} s"
            await self._gap(fault, since)
            fault.recovered = since()
        elif fault.kind == "disk_full":
            await self._disk_full(fault, since)
        else:
            raise AssertionError(fault.kind)

    async def _gap(self, fault: Fault, since: Callable[[], float]) -> None:
        """Cut the WebSocket and wait until every sink holds every event emitted until the
        bridge was back (``push_while_disconnected=False``: only the REST API has them)."""
        emu, ws_proxy = self.emu, self.ws_proxy
        assert emu is not None and ws_proxy is not None
        before = self.authenticated()
        first = emu.factory.next_id
        requests = len(emu.rest_requests)
        ws_proxy.cut()
        await self._wait_connection(before)
        fault.detected = since()
        gap = set(range(first, emu.factory.next_id))
        fault.gap = len(gap)
        try:
            await self._wait_delivered(gap, what=f"the gap of {len(gap)} events from id {first}")
        except TimeoutError as exc:
            # What the bridge asked the REST API for says why the gap was not recovered.
            asked = emu.rest_requests[requests : requests + 3]
            raise TimeoutError(f"{exc}; REST requests since the cut: {asked or 'none'}") from None

    async def _wait_delivered(self, ids: set[int], *, what: str) -> None:
        """Wait (up to ``GAP_TIMEOUT_S``) until every sink holds every id of ``ids``."""
        assert self.tails is not None and self.bridge is not None
        deadline = time.monotonic() + GAP_TIMEOUT_S
        while True:
            self.bridge.check_exit()
            missing = await self.tails.missing(ids)
            if not any(missing.values()):
                return
            if time.monotonic() > deadline:
                lost = "; ".join(
                    f"{len(m)} missing from {name} ({_id_ranges(m)})"
                    for name, m in missing.items()
                    if m
                )
                raise TimeoutError(f"{what}: after {GAP_TIMEOUT_S:.0f} s, {lost}")
            await asyncio.sleep(0.2)  # polling period of the read-back

    async def _disk_full(self, fault: Fault, since: Callable[[], float]) -> None:
        """Fill the spool's tmpfs while Redis is away (so the spool has to grow), hold it
        until the bridge stops committing, free it (all, or all but a little room)."""
        assert self.spool_fs is not None and self.redis_proxy is not None
        redis_proxy = self.redis_proxy
        turn = sum(1 for f in self.faults if f.kind == "disk_full")
        partial = turn % 2 == 0
        fault.duration = round(self.rng.uniform(2.0, 4.0), 2)
        ballast = self.spool_fs / "ballast"
        health: Counter[str] = Counter()
        full = asyncio.Event()
        prober = asyncio.create_task(self._probe_health(health, full))
        # A spool in its steady state rewrites pages it already has and needs no new room;
        # with a sink away it must hold the backlog, and grow: that is when a disk fills.
        redis_proxy.blackhole("both", new_connections=True)
        away = True
        try:
            size = await asyncio.to_thread(_fill, ballast)
            full.set()
            start = time.monotonic()
            bitten, committed = await self._hold_full(fault.duration, health)
            full.clear()
            fault.duration = round(time.monotonic() - start, 2)
            fault.detected = bitten
            fault.note = (
                f"ballast {size / (1 << 20):.1f} MiB, {committed:.0f} events committed while "
                + ("full" if bitten is not None else f"full, never stopped in {MAX_FULL_S:.0f} s")
            )
            if partial:
                await asyncio.to_thread(os.truncate, ballast, max(0, size - PARTIAL_ROOM))
                redis_proxy.restore()
                redis_proxy.cut()
                away = False
                fault.note += f"; {PARTIAL_ROOM >> 20} MiB freed first"
                released = time.monotonic()
                try:
                    await self._wait_recovered(PARTIAL_TIMEOUT_S, released)
                except TimeoutError as exc:
                    fault.error = f"with {PARTIAL_ROOM >> 20} MiB freed: {exc}"
                else:
                    fault.note += f", recovered in it after {time.monotonic() - released:.1f} s"
        finally:
            full.clear()
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            fault.health = dict(health)
            with contextlib.suppress(FileNotFoundError):
                ballast.unlink()
            if away:
                redis_proxy.restore()
                redis_proxy.cut()
        released = time.monotonic()
        await self._wait_recovered(RECOVERY_TIMEOUT_S, released)
        fault.recovered = since()
        fault.caught_up_after_restore = time.monotonic() - released

    async def _hold_full(self, duration: float, health: Counter[str]) -> tuple[float | None, float]:
        """Keep the disk full at least ``duration`` s and until the bridge is hit by it (its
        commits stop for ``STALL_S``, or ``/healthz`` answers 503), at most ``MAX_FULL_S``.

        Returns the seconds until it was hit (``None``: never) and the events it committed
        meanwhile."""
        start = time.monotonic()
        first = last = await self._received_total()
        changed = start
        bitten: float | None = None
        while True:
            await asyncio.sleep(0.1)  # polling period of an HTTP probe
            now = time.monotonic()
            total = await self._received_total()
            if total is not None and (last is None or total != last):
                if last is not None and total[0] != last[0]:
                    first = total  # a new process: count from its own start
                last, changed = total, now
            if bitten is None and (now - changed >= STALL_S or health.get("503")):
                bitten = round(now - start, 3)
            elapsed = now - start
            if (bitten is not None and elapsed >= duration) or elapsed >= MAX_FULL_S:
                committed = last[1] - first[1] if first is not None and last is not None else 0
                return bitten, committed

    async def _probe_health(self, health: Counter[str], full: asyncio.Event) -> None:
        """Count the ``/healthz`` answers while ``full`` is set."""
        assert self.http is not None and self.bridge is not None
        while True:
            await full.wait()
            url = f"http://127.0.0.1:{self.bridge.metrics_port}/healthz"
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    await r.read()
                    status = str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                status = "none"
            if full.is_set():
                health[status] += 1
            await asyncio.sleep(0.1)  # probing period

    async def _wait_recovered(self, timeout: float, since: float) -> None:
        """Wait until the bridge commits again after ``since`` and every sink caught up."""
        assert self.bridge is not None
        deadline = since + timeout
        base: tuple[int, float] | None = None
        while True:
            self.bridge.check_exit()
            total = await self._received_total()
            if total is not None:
                if base is None or base[0] != total[0]:
                    base = total
                elif total[1] > base[1]:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no commit within {timeout:.0f} s of the room coming back")
            await asyncio.sleep(0.05)  # polling period of an HTTP probe
        await self._wait_caught_up(None, deadline)

    async def _received_total(self) -> tuple[int, float] | None:
        """(process number, ``neuroio_events_received_total``) of the current bridge."""
        assert self.http is not None and self.bridge is not None
        gen = self.bridge.current.number
        url = f"http://127.0.0.1:{self.bridge.metrics_port}/metrics"
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                text = await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, UnicodeDecodeError):
            return None
        for line in text.splitlines():
            if line.startswith("neuroio_events_received_total "):
                return gen, float(line.split()[1])
        return None

    async def _sink_lags(self) -> dict[str, int] | None:
        """Each sink kind's lag from the bridge's ``/healthz`` (``None``: not answering)."""
        assert self.http is not None and self.bridge is not None
        url = f"http://127.0.0.1:{self.bridge.metrics_port}/healthz"
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
            return None
        lags: dict[str, int] = {}
        for name, status in body.get("sinks", {}).items():
            kind = name.split(":", 1)[0]
            lags[kind] = int(status.get("lag", 0))
        return lags

    async def _wait_caught_up(self, sink: str | None, deadline: float | None = None) -> None:
        """Wait until the sink's lag (every sink's: ``None``) is at most 50 ms of the stream."""
        assert self.bridge is not None
        limit = max(1, int(self.args.rate / 20))
        if deadline is None:
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        names = [sink] if sink is not None else ["file", "redis", "nats"]
        while True:
            self.bridge.check_exit()
            lags = await self._sink_lags()
            if lags is not None and all(lags.get(n, limit + 1) <= limit for n in names):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sinks {', '.join(names)} still behind: lags {lags}")
            await asyncio.sleep(0.02)  # polling period of an HTTP probe

    # -- the end ---------------------------------------------------------------------------

    async def _emitted_ids(self) -> list[int]:
        """Every id the emulator emitted, read from its REST history."""
        assert self.emu is not None and self.http is not None
        ids: list[int] = []
        url: str | None = f"{self.emu.api_url}/v1/entries/?limit=1000"
        headers = {"Authorization": f"Token {TOKEN}"}
        while url is not None:
            async with self.http.get(url, headers=headers) as response:
                response.raise_for_status()
                page = await response.json()
            ids.extend(int(e["id"]) for e in page["results"])
            url = page["next"]
        if len(ids) != self.emu.emitted:
            raise RuntimeError(f"REST history holds {len(ids)} of {self.emu.emitted} emitted")
        return ids

    async def _drain(
        self, emitted: list[int], redis: Any, nc: Any
    ) -> tuple[bool, dict[str, sinks.Stored]]:
        """Wait (bounded) until every sink holds every emitted id; returns what they hold."""
        assert self.bridge is not None
        want = set(emitted) | set(self.bogus_ids)
        deadline = time.monotonic() + self.args.drain_timeout
        stored: dict[str, sinks.Stored] = {}
        while True:
            self.bridge.check_exit()
            counts = {
                "file": sinks.count_file(self.events_file),
                "redis": int(await redis.xlen(self.redis_stream)),
                "nats": await sinks.nats_count(nc, self.nats_stream),
            }
            if all(n >= len(want) for n in counts.values()) or time.monotonic() > deadline:
                stored = {
                    "file": sinks.read_file(self.events_file),
                    "redis": await sinks.read_redis(redis, self.redis_stream),
                    "nats": await sinks.read_nats(nc, self.nats_stream, self.nats_subject),
                }
                if all(want <= set(s.ids) for s in stored.values()):
                    return True, stored
                if time.monotonic() > deadline:
                    return False, stored
            await asyncio.sleep(1.0)  # polling period of the read-back

    # -- report ----------------------------------------------------------------------------

    def _report(
        self,
        emitted: list[int],
        stored: dict[str, sinks.Stored],
        drained: bool,
        drain_s: float,
        exit_code: int | None,
    ) -> dict[str, Any]:
        assert self.bridge is not None and self.emu is not None
        args = self.args
        # The bogus events came on the socket, so they are delivered like any other.
        bogus = set(self.bogus_ids)
        want = set(emitted) | bogus
        checks: list[tuple[str, bool, str]] = []
        per_sink: dict[str, Any] = {}
        for name, s in stored.items():
            counts = Counter(s.ids)
            lost = want - counts.keys()
            missing = len(lost)
            dupes = sum(n - 1 for n in counts.values() if n > 1)
            extra = len(counts.keys() - want)
            per_sink[name] = {
                "delivered": len(s.ids),
                "distinct": len(counts),
                "missing": missing,
                "missing_ids": _id_ranges(lost, limit=20) if lost else None,
                "duplicates": dupes,
                "bogus_delivered": sum(counts[i] for i in bogus),
                "unknown_ids": extra,
                "unreadable": s.unreadable,
            }
            checks.append((f"{name}: missing = 0", missing == 0, str(missing)))
            if name in ("redis", "nats"):
                checks.append((f"{name}: duplicates = 0", dupes == 0, str(dupes)))
            checks.append(
                (
                    f"{name}: no unreadable entry or unknown id",
                    s.unreadable + extra == 0,
                    f"{s.unreadable} unreadable, {extra} unknown",
                )
            )
        checks.append(("sinks drained", drained, f"{drain_s:.1f} s after the stream stopped"))

        by_kind: dict[str, Any] = {}
        for kind in self.kinds:
            mine = [f for f in self.faults if f.kind == kind]
            ok = [f for f in mine if f.error is None and f.recovered is not None]
            detected = [f.detected for f in ok if f.detected is not None]
            recovered = [f.recovered for f in ok if f.recovered is not None]
            caught_up = [f.caught_up_after_restore for f in ok if f.caught_up_after_restore]
            by_kind[kind] = {
                "injected": len(mine),
                "recovered": len(ok),
                "max_detected_s": _round(max(detected, default=None)),
                "median_detected_s": _round(statistics.median(detected) if detected else None),
                "max_recovered_s": _round(max(recovered, default=None)),
                "max_caught_up_after_restore_s": _round(max(caught_up, default=None)),
                "errors": [f.error for f in mine if f.error],
                "gaps": [f.gap for f in mine if f.gap is not None],
                "healthz": [f.health for f in mine if f.health is not None],
                "notes": [f.note for f in mine if f.note],
            }
            checks.append(
                (
                    f"{kind}: injected and recovered",
                    bool(mine) and len(ok) == len(mine),
                    f"{len(ok)}/{len(mine)}",
                )
            )
        if "disk_full" in self.kinds:
            mine = [f for f in self.faults if f.kind == "disk_full"]
            # A fault the spool found room for (it kept committing) was no fault to it: 200 is
            # then the right answer.
            hit = [f for f in mine if f.detected is not None]
            answered = [f.health or {} for f in hit]
            checks.append(
                (
                    f"disk_full: /healthz answered 503 in every fault that stopped commits "
                    f"({len(hit)} of {len(mine)})",
                    all(h.get("503", 0) > 0 for h in answered),
                    "; ".join(
                        ", ".join(f"{k}: {v}" for k, v in sorted(h.items())) or "no answer"
                        for h in answered
                    )
                    or "none",
                )
            )
        checks.append(
            (
                "bridge never exited on its own",
                not self.bridge.unexpected_exits,
                "; ".join(self.bridge.unexpected_exits) or "none",
            )
        )
        logs = _scan_logs(self.tmp)
        checks.append(
            (
                "the token never appears in the bridge's output",
                logs["token"] == 0,
                f"{logs['token']} lines",
            )
        )

        generations = []
        for gen in self.bridge.generations:
            g = _resources(gen)
            generations.append(g)
            if g["start"] is None:
                continue
            rss_ok = g["end"]["rss_mb"] <= g["start"]["rss_mb"] + RSS_BOUND_MB
            fd_ok = g["end"]["fds"] <= g["start"]["fds"] + FD_BOUND
            checks.append(
                (
                    f"process {gen.number}: RSS end <= start + {RSS_BOUND_MB:.0f} MB",
                    rss_ok,
                    f"{g['start']['rss_mb']:.1f} -> {g['end']['rss_mb']:.1f} MB over "
                    f"{g['lifetime_s']:.0f} s",
                )
            )
            checks.append(
                (
                    f"process {gen.number}: fds end <= start + {FD_BOUND}",
                    fd_ok,
                    f"{g['start']['fds']} -> {g['end']['fds']}",
                )
            )
            if g["settled"] is not None:
                checks.append(
                    (
                        f"process {gen.number}: RSS end <= RSS {SETTLED_S:.0f} s after start "
                        f"+ {SETTLED_RSS_BOUND_MB:.0f} MB",
                        g["end"]["rss_mb"] <= g["settled"]["rss_mb"] + SETTLED_RSS_BOUND_MB,
                        f"{g['settled']['rss_mb']:.1f} -> {g['end']['rss_mb']:.1f} MB",
                    )
                )
        measured = [g for g in generations if g["start"] is not None]
        longest = max(measured, key=lambda g: g["lifetime_s"], default=None)
        if measured:
            first, last = measured[0], measured[-1]
            checks.append(
                (
                    f"across restarts: last process's end RSS <= first's start + "
                    f"{RSS_BOUND_MB:.0f} MB",
                    last["end"]["rss_mb"] <= first["start"]["rss_mb"] + RSS_BOUND_MB,
                    f"{first['start']['rss_mb']:.1f} -> {last['end']['rss_mb']:.1f} MB",
                )
            )
            checks.append(
                (
                    f"across restarts: last process's end fds <= first's start + {FD_BOUND}",
                    last["end"]["fds"] <= first["start"]["fds"] + FD_BOUND,
                    f"{first['start']['fds']} -> {last['end']['fds']}",
                )
            )
        else:
            checks.append(("resource samples taken", False, "no process lived long enough"))

        connections = self.authenticated()
        result: dict[str, Any] = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "duration_s": args.duration,
            "rate": args.rate,
            "fault_every_s": args.fault_every,
            "seed": args.seed,
            "kinds": list(self.kinds),
            "skipped_kinds": self.skipped,
            "bogus_ids": self.bogus_ids,
            "bridge_command": _shown_command(self.bridge.command()),
            "events_emitted": len(emitted),
            "sinks": per_sink,
            "faults_injected": len(self.faults),
            "faults": by_kind,
            "fault_log": [dataclasses.asdict(f) for f in self.faults],
            "authenticated_connections": connections,
            "bridge_processes": len(self.bridge.generations),
            "reconnects": connections - len(self.bridge.generations),
            "drain_s": round(drain_s, 2),
            "bridge_exit_code": exit_code,
            "bridge_log_lines": logs,
            "resources": generations,
            "longest_lived_process": longest["number"] if longest else None,
            "soak_process_rss_mb": {
                "start": _mb(self.soak_rss[0][1]) if self.soak_rss else None,
                "end": _mb(self.soak_rss[-1][1]) if self.soak_rss else None,
            },
            "checks": [{"check": c, "passed": ok, "value": v} for c, ok, v in checks],
            "passed": all(ok for _, ok, _ in checks),
        }
        return result

    @staticmethod
    def _print(r: dict[str, Any]) -> None:
        out = print
        out(f"\nsoak: {r['command']}  ({r['date']}, {r['machine']})")
        out(f"bridge: {r['bridge_command']}")
        out(
            f"duration {r['duration_s']} s at {r['rate']} events/s, a fault every ~"
            f"{r['fault_every_s']} s, seed {r['seed']}, faults: {', '.join(r['kinds'])}\n"
        )
        for kind, reason in r["skipped_kinds"].items():
            out(f"skipped: {kind} ({reason})")
        out(f"events emitted: {r['events_emitted']}, plus {len(r['bogus_ids'])} bogus ids pushed")
        out(
            f"{'sink':8} {'delivered':>10} {'distinct':>10} {'missing':>8} {'duplicates':>11} "
            f"{'bogus':>6}"
        )
        for name, s in r["sinks"].items():
            out(
                f"{name:8} {s['delivered']:>10} {s['distinct']:>10} {s['missing']:>8} "
                f"{s['duplicates']:>11} {s['bogus_delivered']:>6}"
            )
            if s["missing_ids"]:
                out(f"         missing: {s['missing_ids']}")
        logs = r["bridge_log_lines"]
        out("bridge log lines: " + ", ".join(f"{k} {v}" for k, v in sorted(logs.items())))
        out(
            f"\nfaults injected: {r['faults_injected']}; authenticated connections "
            f"{r['authenticated_connections']} = {r['bridge_processes']} bridge processes + "
            f"{r['reconnects']} reconnects; sinks drained {r['drain_s']} s after the stream "
            "stopped"
        )
        out(
            f"{'fault':17} {'injected':>8} {'recovered':>9} {'detect max':>11} "
            f"{'recover max':>12} {'caught up max':>14}"
        )
        for kind, f in r["faults"].items():
            out(
                f"{kind:17} {f['injected']:>8} {f['recovered']:>9} "
                f"{_s(f['max_detected_s']):>11} {_s(f['max_recovered_s']):>12} "
                f"{_s(f['max_caught_up_after_restore_s']):>14}"
            )
        out(
            "  (detect: injection -> next authenticated connection, for disk_full -> the bridge "
            "hit; recover: injection -> recovered; caught up: outage over -> sink lag within "
            "50 ms of the stream)"
        )
        for kind, f in r["faults"].items():
            for error in f["errors"]:
                out(f"  {kind} error: {error}")
            if f["healthz"]:
                out(f"  {kind} /healthz while full: {f['healthz']}")
        out(f"\n{'process':8} {'lived':>7} {'RSS start/mid/end MB':>24} {'fds start/mid/end':>19}")
        for g in r["resources"]:
            if g["start"] is None:
                out(f"{g['number']:<8} {g['lifetime_s']:>6.0f}s {'(too short to sample)':>24}")
                continue
            rss = "/".join(f"{g[k]['rss_mb']:.1f}" for k in ("start", "middle", "end"))
            fds = "/".join(str(g[k]["fds"]) for k in ("start", "middle", "end"))
            mark = "  <- longest-lived" if g["number"] == r["longest_lived_process"] else ""
            out(f"{g['number']:<8} {g['lifetime_s']:>6.0f}s {rss:>24} {fds:>19}{mark}")
        out("\nchecks:")
        for c in r["checks"]:
            out(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['check']}  ({c['value']})")
        out(f"\nsoak {'PASSED' if r['passed'] else 'FAILED'}")


def _scan_logs(tmp: Path) -> dict[str, int]:
    """Count the bridge's log lines by level, its tracebacks, and lines holding the token."""
    counts: Counter[str] = Counter()
    for path in sorted(tmp.glob("bridge-*.log")):
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                counts["token"] += TOKEN in line
                counts["traceback"] += "Traceback" in line
                try:
                    level = json.loads(line).get("level", "other")
                except (ValueError, AttributeError):
                    level = "not_json"
                counts[str(level)] += 1
    return {"token": 0, "traceback": 0, **counts}


def _resources(gen: Generation) -> dict[str, Any]:
    """Start (after warm-up), middle and end samples of one process."""
    end_t = gen.ended if gen.ended is not None else (gen.samples[-1][0] if gen.samples else 0)
    live = gen.live if gen.live is not None else gen.started
    usable = [s for s in gen.samples if s[0] >= live + WARMUP_S]
    out: dict[str, Any] = {
        "number": gen.number,
        "pid": gen.pid,
        "lifetime_s": round(end_t - gen.started, 1),
        "ended": gen.how_ended,
        "samples": len(gen.samples),
        "start": None,
        "middle": None,
        "end": None,
        "max_rss_mb": _mb(max((s[1] for s in gen.samples), default=0)),
    }
    out["series"] = [[round(t, 1), _mb(rss), fds] for t, rss, fds in gen.samples]
    out["settled"] = None
    if len(usable) < 2:
        return out
    first, last = usable[0], usable[-1]
    midpoint = (first[0] + last[0]) / 2
    middle = min(usable, key=lambda s: abs(s[0] - midpoint))
    for key, s in (("start", first), ("middle", middle), ("end", last)):
        out[key] = {"t": round(s[0], 1), "rss_mb": _mb(s[1]), "fds": s[2]}
    settled = [s for s in usable if s[0] >= live + SETTLED_S]
    if settled and last[0] - settled[0][0] >= SETTLED_S:
        s = settled[0]
        out["settled"] = {"t": round(s[0], 1), "rss_mb": _mb(s[1]), "fds": s[2]}
    return out


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system is full; returns the bytes written."""
    chunk = bytes(1 << 20)
    size = len(chunk)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Halving the write on ENOSPC fills the last pages too.
        while size >= 4096:
            try:
                written += os.write(fd, chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return written


def _id_ranges(ids: set[int], limit: int = 5) -> str:
    """``ids`` as ranges of consecutive ids, e.g. ``"ids 10-19, 25"`` (the first few)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    shown = [f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit]]
    more = f" and {len(runs) - limit} more ranges" if len(runs) > limit else ""
    return "ids " + ", ".join(shown) + more


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _shown_command(cmd: list[str]) -> str:
    shown = ["neuroio-events" if i == 0 else a for i, a in enumerate(cmd) if i not in (1, 2)]
    return " ".join(shown).replace(str(Path(tempfile.gettempdir())), "$TMP")


def _kinds_arg(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; known: {KINDS}")
    return tuple(dict.fromkeys(kinds))


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the soak; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of stream")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument(
        "--fault-every", type=float, default=5.0, help="mean seconds between faults"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds allowed to catch up at the end"
    )
    parser.add_argument(
        "--kinds",
        type=_kinds_arg,
        default=KINDS,
        help=f"comma-separated fault kinds to inject (default: all of {','.join(KINDS)})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    # A short run goes on until each kind has come once; this only keeps the stream's own
    # length sensible.
    if args.duration < args.fault_every + 10:
        parser.error("--duration must be at least --fault-every + 10 s")
    soak = Soak(args)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(soak.run())
    return 130


if __name__ == "__main__":
    sys.exit(main())
