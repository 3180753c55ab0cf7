"""Benchmark of the bridge: socket → spool → sinks, beside the bare listener.

A load server in its own process (``bench/_loadserver.py``) pushes realistic events (about
850 bytes each) as fast as the socket takes them. Each variant runs in a fresh process:

* ``bare``: :class:`neuroio.EventListener` with a handler that only counts events;
* ``file`` / ``redis`` / ``nats`` / ``mqtt`` / ``amqp`` / ``postgres`` / ``sqlite``: a
  :class:`neuroio.bridge.Bridge` with a fresh spool (``--spool-sync``, ``normal`` by default as
  for the bridge) and that one sink; the clock runs from the first event received to the last
  event confirmed by the sink (``mqtt``: QoS 1, every PUBACK; ``amqp``: persistent messages
  into a durable queue, every publisher confirm; ``sqlite`` with its default ``sync=full``);
* ``all``: one bridge delivering to the file, Redis and NATS sinks at once;
* ``page``: the ``file`` bridge with its status page open: the metrics server on, and a
  client of the page's live stream (``/api/events``, what a browser's page reads) connected and
  reading throughout, on the bridge's own loop (so its reading is counted against the bridge,
  more than a browser in its own process would cost); compared with ``file`` in the same run,
  as a ratio (target >= 0.9);
* ``routes``: one bridge with ten routes, each with a filter (a camera and a result group:
  every event is taken by exactly one route, so as many lines are written as with ``file``),
  each into its own file sink; compared with ``file`` (one route taking everything) in the
  same run, as a ratio (target >= 0.8).

Then the delivery latency (an event received by the bridge → confirmed by the sink) at a
steady ``--rate`` events/s for each sink, and, per variant, the peak RSS of its process.

With ``--page-streams N`` it measures the status page of a bridge of ``N`` named streams
instead, in this process and with no service: the HTML of ``/`` (the state from a snapshot, the
rendering, the redaction: what a page load costs the bridge) and the JSON of one live-stream
push, each with ``N`` streams (two not live: one rejected, one in backoff; and all ``N`` in
backoff, a platform-wide outage) against one stream; size and time (best of 20), and their
ratios (target: the page of 1,000 streams, two not live, at most 2x the size of the page of
one; every case rendered in under 5 ms; the outage's table is cut at 100 rows).

With ``--gap N`` it measures gap recovery instead: the real bridge (the CLI, in its own
process) against the emulator in this process, stopped while the platform records ``N``
entries that only the REST API can give back, then started again on the same spool; it
prints the peak RSS of the restarted bridge (``VmHWM``) and the time until the file sink holds
every entry. Gap recovery streams a page at a time, so the peak must not grow with ``N``
(target: under 100 MB for 50,000 entries).

Usage::

    .venv/bin/python bench/bridge.py            # about a minute
    .venv/bin/python bench/bridge.py --quick    # a smoke run
    .venv/bin/python bench/bridge.py --variants file,routes --latency-seconds 0
    .venv/bin/python bench/bridge.py --variants file,page --latency-seconds 0
    .venv/bin/python bench/bridge.py --gap 50000
    .venv/bin/python bench/bridge.py --page-streams 1000

Redis on 127.0.0.1:6379 (db 14), NATS JetStream on 127.0.0.1:4222, Mosquitto on 127.0.0.1:1883,
RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on 127.0.0.1:5432 (database ``test``)
must be running; each run uses its own stream, topic, exchange and queue or table, and deletes
them afterwards (the SQLite database is a file in the run's temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _loadserver import LoadServerProcess

from neuroio.sinks import Sink

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOKEN = "bench-token"
REDIS = "redis://127.0.0.1:6379/14"
NATS = "nats://127.0.0.1:4222"
MQTT = "mqtt://127.0.0.1:1883"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
# The AMQP variant's queue keeps at most this many messages (the oldest are dropped), so a run
# does not fill the broker; every publish is still routed, persisted and confirmed.
AMQP_QUEUE_MAX = 50_000
TARGETS = {"file": 50_000, "redis": 20_000, "nats": 20_000, "mqtt": 5_000, "amqp": 5_000,
           "postgres": 20_000, "sqlite": 30_000}  # fmt: skip
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 150.0
TARGET_GAP_RSS_MB = 100.0
TARGET_ROUTES_RATIO = 0.8
TARGET_PAGE_RATIO = 0.9
TARGET_STREAMS_PAGE_RATIO = 2.0
TARGET_STREAMS_PAGE_MS = 5.0
OTHER_RESULTS = ("new", "reinit", "ha", "junk", "nm", "det")


# ---------------------------------------------------------------------------- child side


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sink_uris(kind: str, tmp: Path, tag: str) -> list[str]:
    uris = {
        "file": f"file:{tmp / 'events.jsonl'}",
        "redis": f"{REDIS}?stream=bench:{tag}",
        "nats": f"{NATS}?subject=bench.{tag}&stream=BENCH{tag.upper()}",
        "mqtt": f"{MQTT}/bench/{tag}/{{source.id}}?qos=1&availability=bench/{tag}/available",
        "amqp": f"{AMQP}?exchange=bench-{tag}&routing_key=bench.{{source.id}}",
        "postgres": f"{POSTGRES}?table=bench_{tag}",
        "sqlite": f"sqlite:{tmp / 'events.db'}",
    }
    return [uris[k] for k in ("file", "redis", "nats")] if kind == "all" else [uris[kind]]


async def _prepare(uris: Sequence[str], tag: str) -> None:
    """Give the AMQP exchange a durable queue, so its messages are routed and persisted."""
    if any(u.startswith("amqp") for u in uris):
        import aio_pika

        connection = await aio_pika.connect(AMQP)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"bench-{tag}", "topic", durable=True)
        queue = await channel.declare_queue(
            f"bench-{tag}", durable=True, arguments={"x-max-length": AMQP_QUEUE_MAX}
        )
        await queue.bind(exchange, "bench.#")
        await connection.close()


def _ten_routes(tmp: Path) -> list[Any]:
    """Ten filtered routes into file sinks; together they take each event exactly once."""
    from neuroio.bridge.config import FilterConfig, RouteConfig

    routes = []
    for source in range(1, 6):
        for group, results in (("exact", ("exact",)), ("other", OTHER_RESULTS)):
            name = f"camera{source}-{group}"
            routes.append(
                RouteConfig(
                    name=name,
                    to=f"file:{tmp / name}.jsonl",
                    filter=FilterConfig(source_id=(source,), result=results, confidence_min=0),
                )
            )
    return routes


def routing_cost(count: int = 10_000) -> dict[str, float]:
    """CPU per event of the ten routes' rules, measured in this process (best of 5): judging
    an event for every route (done once, at input, where the event is decoded anyway), the
    routes' selections, and the decode a route would cost if it decoded for itself."""
    from datetime import datetime, timezone

    import msgspec

    from neuroio._routing.rules import Judges, RouteRules
    from neuroio.emulator import EntryFactory
    from neuroio.sinks import SpooledEvent

    factory = EntryFactory(1, start_time=datetime(2024, 5, 17, 8, 0, tzinfo=timezone.utc))
    now = time.time()
    events = [
        SpooledEvent(i, i, msgspec.json.encode({"id": i, "data": factory.make()}), now)
        for i in range(1, count + 1)
    ]
    values = [msgspec.json.decode(e.payload) for e in events]
    with tempfile.TemporaryDirectory() as tmp:
        rules = [RouteRules.from_config(r) for r in _ten_routes(Path(tmp))]
    judges = Judges([r for r in rules if r is not None])
    verdicts = [judges(v) for v in values]

    def judge_all() -> None:
        for value in values:
            judges(value)

    def select_all() -> None:
        for index, route in enumerate(r for r in rules if r is not None):
            for start in range(0, count, 1000):
                batch = events[start : start + 1000]
                route.select(batch, [v[index] for v in verdicts[start : start + 1000]])

    def decode_all() -> None:
        for event in events:
            msgspec.json.decode(event.payload)

    def best_us(fn: Any) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return min(runs) / count * 1e6

    return {"judge_us": best_us(judge_all), "select_us": best_us(select_all),
            "decode_us": best_us(decode_all)}  # fmt: skip


async def _cleanup(uris: Sequence[str], tag: str) -> None:
    if any(u.startswith("redis") for u in uris):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        batch: list[bytes] = []
        async for key in client.scan_iter(f"bench:{tag}*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
        await client.aclose()
    if any(u.startswith("nats") for u in uris):
        import nats

        nc = await nats.connect(NATS)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(f"BENCH{tag.upper()}")
        await nc.close()
    if any(u.startswith("mqtt") for u in uris):
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", 1883) as mqtt:  # clear the retained status
            await mqtt.publish(f"bench/{tag}/available", b"", qos=1, retain=True)
    if any(u.startswith("amqp") for u in uris):
        import aio_pika

        connection = await aio_pika.connect(AMQP)
        channel = await connection.channel()
        await channel.queue_delete(f"bench-{tag}")
        await channel.exchange_delete(f"bench-{tag}")
        await connection.close()
    if any(u.startswith("postgresql") for u in uris):
        import asyncpg

        conn = await asyncpg.connect(POSTGRES)
        await conn.execute(f"DROP TABLE IF EXISTS bench_{tag}")
        await conn.close()


async def child_bare(url: str, events: int) -> dict[str, Any]:
    """Events/s through the listener alone, counting events in the handler."""
    from neuroio import EventListener

    done = asyncio.Event()
    count = 0
    first = 0.0

    async def handler(message: str | bytes) -> None:
        nonlocal count, first
        if isinstance(message, str) and message.startswith('{"id":'):
            if count == 0:
                first = time.perf_counter()
            count += 1
            if count >= events:
                done.set()

    listener = EventListener(TOKEN, handler, url=url, ping_interval=5.0)
    task = asyncio.create_task(listener.listen())
    await asyncio.wait_for(done.wait(), 300)
    seconds = time.perf_counter() - first
    await listener.close()
    await task
    return {"events": count, "seconds": seconds, "rate": (count - 1) / seconds}


class _TimedSink(Sink):
    """Wraps a sink to record, per event, how long after receiving it the sink confirmed it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self.received: list[float] = []
        self.sent: list[float] = []

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, events: Sequence[Any]) -> None:
        await self.inner.send(events)
        now = time.time()
        for event in events:
            self.received.append(now - event.received_at)
            sent_at = event.json()["data"].get("sent_at")
            if sent_at is not None:
                self.sent.append(now - sent_at)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def child_bridge(
    url: str, events: int, kind: str, timed: bool, spool_sync: str = "normal"
) -> dict[str, Any]:
    """Events/s from the socket through the spool into the sinks (or latency when timed)."""
    from neuroio.bridge import Bridge
    from neuroio.sinks import from_uri

    tag = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="neuroio-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        watched = kind == "page"
        if watched:
            kind = "file"
        uris = [] if kind == "routes" else _sink_uris(kind, tmp, tag)
        routes = _ten_routes(tmp) if kind == "routes" else []
        await _prepare(uris, tag)
        sinks: list[Any] = [from_uri(u) for u in uris]
        if timed:
            sinks = [_TimedSink(s) for s in sinks]
        bridge = Bridge(
            TOKEN,
            sinks,
            routes=routes,
            url=url,
            spool=tmp / "spool.db",
            spool_sync=spool_sync,
            backfill=False,
            ping_interval=5.0,
            metrics_port=0 if watched else None,
        )
        watcher: asyncio.Task[int] | None = None
        try:
            await bridge.start()
            assert bridge.pipeline is not None
            pipeline = bridge.pipeline
            if bridge.metrics is not None:
                watcher = asyncio.create_task(_watch_page(bridge.metrics.url("/api/events")))
            first = 0.0
            while pipeline.received == 0 and not pipeline.uncommitted:
                await asyncio.sleep(0.001)
            first = time.perf_counter()
            deadline = time.monotonic() + 600
            while min(s.cursor for s in pipeline.status.values()) < events:
                if time.monotonic() > deadline:
                    raise TimeoutError("events not delivered")
                await asyncio.sleep(0.002)
            seconds = time.perf_counter() - first
            result: dict[str, Any] = {
                "events": events,
                "seconds": seconds,
                "rate": events / seconds,
                "spool_file_mb": bridge.spool.file_bytes() / 2**20 if bridge.spool else 0,
            }
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                result["pushes"] = _pushes
                if _pushes < seconds * 2:
                    raise RuntimeError(f"the page's stream pushed only {_pushes} updates")
            if timed:
                for t in sinks:
                    result.setdefault("latency", {})[t.name.split(":")[0]] = {
                        "received_p50_ms": _pct(t.received, 0.5) * 1000,
                        "received_p99_ms": _pct(t.received, 0.99) * 1000,
                        "received_max_ms": max(t.received) * 1000,
                        "sent_p50_ms": _pct(t.sent, 0.5) * 1000,
                        "sent_p99_ms": _pct(t.sent, 0.99) * 1000,
                    }
        finally:
            await bridge.close()
            await _cleanup(uris, tag)
    return result


_pushes = 0


async def _watch_page(url: str) -> int:
    """Read the status page's live stream as the page does, counting its pushes."""
    import aiohttp

    global _pushes
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        async for chunk in answer.content.iter_any():
            _pushes += chunk.count(b"\n\n")
    return _pushes


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


async def child_main(args: argparse.Namespace) -> None:
    if args.child == "bare":
        result = await child_bare(args.url, args.events)
    else:
        result = await child_bridge(args.url, args.events, args.child, args.timed, args.spool_sync)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent side


async def run_child(argv: list[str], timeout: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": f"no result within {timeout:.0f} s"}
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (err.decode().strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def say(text: str = "") -> None:
    print(text, flush=True)


async def parent_main(args: argparse.Namespace) -> int:
    server = LoadServerProcess()
    await server.start()
    failures: list[str] = []
    summary: dict[str, Any] = {"throughput": {}, "latency": {}}
    try:
        say(f"bridge benchmark on {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}; {args.events} events per run, "
            f"{args.repeat} runs per variant (median)")  # fmt: skip
        say()
        say(f"{'variant':<8} {'events/s':>10} {'vs bare':>8} {'peak RSS':>9}  runs")
        rates: dict[str, list[float]] = {}
        rss: dict[str, float] = {}
        # bare always runs: it is the baseline of every ratio.
        variants = [v for v in ["bare", "file", "redis", "nats", "mqtt", "amqp", "postgres",
                                "sqlite", "all", "routes", "page"]
                    if args.variants is None or v in args.variants or v == "bare"]  # fmt: skip
        for _ in range(args.repeat):
            for variant in variants:
                url, _tag = server.url(n=args.events)
                result = await run_child(
                    [
                        "--child",
                        variant,
                        "--url",
                        url,
                        "--events",
                        str(args.events),
                        "--spool-sync",
                        args.spool_sync,
                    ],
                    900,
                )
                if "error" in result:
                    failures.append(f"{variant}: {result['error']}")
                    continue
                rates.setdefault(variant, []).append(result["rate"])
                rss[variant] = max(rss.get(variant, 0.0), result["peak_rss_mb"])
        bare = statistics.median(rates["bare"]) if rates.get("bare") else float("nan")
        for variant in variants:
            if variant not in rates:
                continue
            rate = statistics.median(rates[variant])
            runs = ", ".join(f"{r:,.0f}" for r in rates[variant])
            say(f"{variant:<8} {rate:>10,.0f} {rate / bare:>8.2f} {rss[variant]:>7.1f}MB  {runs}")
            summary["throughput"][variant] = {"rate": rate, "peak_rss_mb": rss[variant]}
            target = TARGETS.get(variant)
            if target is not None and rate < target:
                failures.append(f"{variant}: {rate:,.0f} events/s < target {target:,}")
            if rss[variant] > TARGET_RSS_MB:
                failures.append(f"{variant}: peak RSS {rss[variant]:.1f} MB > {TARGET_RSS_MB}")
        if rates.get("routes") and rates.get("file"):
            ratio = statistics.median(rates["routes"]) / statistics.median(rates["file"])
            say(f"ten filtered routes vs one route (file sinks): {ratio:.2f}x "
                f"(target >= {TARGET_ROUTES_RATIO})")  # fmt: skip
            summary["routes_vs_file"] = ratio
            cost = routing_cost()
            say(f"  routing CPU per event (ten routes): judged for all {cost['judge_us']:.2f} us "
                f"(once, at input), selected by all {cost['select_us']:.2f} us; a decode per "
                f"route would add {cost['decode_us']:.2f} us each")  # fmt: skip
            summary["routing_cost_us"] = cost
            if ratio < TARGET_ROUTES_RATIO:
                failures.append(f"routes: {ratio:.2f}x of one route < {TARGET_ROUTES_RATIO}")
        if rates.get("page") and rates.get("file"):
            ratio = statistics.median(rates["page"]) / statistics.median(rates["file"])
            say(f"status page open (live stream read) vs closed (file sink): {ratio:.2f}x "
                f"(target >= {TARGET_PAGE_RATIO})")  # fmt: skip
            summary["page_vs_file"] = ratio
            if ratio < TARGET_PAGE_RATIO:
                failures.append(f"page: {ratio:.2f}x of the closed page < {TARGET_PAGE_RATIO}")
        say()
        count = int(args.rate * args.latency_seconds)
        say(f"delivery latency at {args.rate:,.0f} events/s ({count} events), ms:")
        say(f"{'sink':<8} {'recv→ok p50':>12} {'p99':>8} {'max':>8} "
            f"{'sent→ok p50':>12} {'p99':>8} {'peak RSS':>9}")  # fmt: skip
        latency_variants = [v for v in ("file", "redis", "nats", "mqtt", "amqp", "postgres",
                                        "sqlite")
                            if args.variants is None or v in args.variants]  # fmt: skip
        for variant in latency_variants if count else ():
            url, _tag = server.url(n=count, mode="rate", rate=args.rate)
            result = await run_child(
                [
                    "--child",
                    variant,
                    "--url",
                    url,
                    "--events",
                    str(count),
                    "--timed",
                    "--spool-sync",
                    args.spool_sync,
                ],
                900,
            )
            if "error" in result:
                failures.append(f"latency {variant}: {result['error']}")
                continue
            lat = next(iter(result["latency"].values()))
            say(
                f"{variant:<8} {lat['received_p50_ms']:>12.2f} {lat['received_p99_ms']:>8.2f} "
                f"{lat['received_max_ms']:>8.2f} {lat['sent_p50_ms']:>12.2f} "
                f"{lat['sent_p99_ms']:>8.2f} {result['peak_rss_mb']:>7.1f}MB"
            )
            summary["latency"][variant] = lat
            if lat["received_p99_ms"] >= TARGET_P99_MS:
                failures.append(
                    f"latency {variant}: p99 {lat['received_p99_ms']:.1f} ms >= {TARGET_P99_MS}"
                )
            if result["peak_rss_mb"] > TARGET_RSS_MB:
                failures.append(f"latency {variant}: peak RSS {result['peak_rss_mb']:.1f} MB")
    finally:
        await server.stop()
    say()
    say("targets: file >= 50,000/s, redis, nats and postgres >= 20,000/s, sqlite >= 30,000/s, "
        "mqtt (QoS 1) and amqp (confirms) >= 5,000/s, ten filtered routes >= 0.8x one route, "
        "status page open >= 0.9x closed, p99 < 50 ms, RSS < 150 MB")  # fmt: skip
    for failure in failures:
        say(f"MISSED  {failure}")
    if not failures:
        say("all targets met")
    say(json.dumps(summary))
    return 1 if failures else 0


# ------------------------------------------------------------------------- gap recovery


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of process ``pid`` so far (Linux ``VmHWM``), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def _bridge_process(emulator: Any, tmp: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, NEUROIO_API_TOKEN=TOKEN)
    argv = ["-m", "neuroio", "bridge", "--url", emulator.url, "--api-url", emulator.api_url]
    argv += ["--spool", str(tmp / "spool.db"), "--to", f"file:{tmp / 'events.jsonl'}"]
    argv += ["--no-uvloop"]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "bridge.log", "ab"),  # noqa: SIM115
    )


async def _wait_lines(path: Path, count: int, proc: asyncio.subprocess.Process) -> float:
    """Seconds until ``path`` holds ``count`` lines; the bridge's peak RSS is watched."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    while _lines(path) < count:
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not deliver {count} events")
        await asyncio.sleep(0.05)
    return time.perf_counter() - t0


async def gap_main(args: argparse.Namespace) -> int:
    """Recover a gap of ``args.gap`` entries with the real bridge; print RSS and time."""
    from neuroio.testing import Emulator

    gap = args.gap
    live = 10
    with tempfile.TemporaryDirectory(prefix="neuroio-bench-gap-") as tmp_dir:
        tmp = Path(tmp_dir)
        out = tmp / "events.jsonl"
        emulator = Emulator(
            tokens=[TOKEN], push_while_disconnected=False, history_size=gap + 10 * live
        )
        async with emulator:
            proc = await _bridge_process(emulator, tmp)
            try:
                await emulator.wait_for_clients(1, timeout=30)
                for _ in range(live):
                    await emulator.emit()
                await _wait_lines(out, live, proc)
            finally:
                proc.terminate()
                await proc.wait()
            await emulator.burst(gap)  # while no bridge runs: only the REST API has them
            requests = emulator.rest_request_count()
            proc = await _bridge_process(emulator, tmp)
            try:
                seconds = await _wait_lines(out, live + gap, proc)
                peak = _vm_hwm_mb(proc.pid)
            finally:
                proc.terminate()
                await proc.wait()
            requests = emulator.rest_request_count() - requests
        delivered = _lines(out)
    say(f"gap recovery of {gap:,} entries by the bridge (CLI process, file sink, page size 100)")
    say(f"  delivered      {delivered - live:,} of {gap:,} (plus {live} live before the gap)")
    say(f"  time           {seconds:.1f} s ({gap / seconds:,.0f} entries/s, from the restart)")
    say(f"  REST requests  {requests:,}")
    say(f"  peak RSS       {peak:.1f} MB (target < {TARGET_GAP_RSS_MB:.0f} MB)")
    say(json.dumps({"gap": gap, "seconds": seconds, "peak_rss_mb": peak, "requests": requests}))
    ok = delivered - live == gap and peak < TARGET_GAP_RSS_MB
    say("target met" if ok else "MISSED")
    return 0 if ok else 1


def page_streams_main(args: argparse.Namespace) -> int:
    """The status page of ``args.page_streams`` named streams against one: size and time."""
    from datetime import datetime, timezone

    from neuroio import _redact
    from neuroio._status import summarize
    from neuroio._status._render import page
    from neuroio.bridge._snapshot import BridgeSnapshot, StreamSnapshot, page_state
    from neuroio.emulator import EntryFactory

    count = args.page_streams
    now = time.time()
    factory = EntryFactory(1, start_time=datetime(2024, 5, 17, 8, 0, tzinfo=timezone.utc))
    cards = [summarize({"id": i, "data": factory.make()}) for i in range(1, 51)]

    def stream(i: int, state: str) -> StreamSnapshot:
        return StreamSnapshot(f"shop-{i:04d}", state, True, events=1000 + i, frames=2000 + i,
                              reconnects=(("timeout", i % 3),), rtt=0.002,
                              last_event_at=now - i % 7)  # fmt: skip

    def case(states: list[str]) -> tuple[BridgeSnapshot, dict[str, Any]]:
        streams = tuple(stream(i, s) for i, s in enumerate(states))
        reasons = {s.name: {"rejected": "401 token refused"} for s in streams
                   if s.state == "rejected"}  # fmt: skip
        return BridgeSnapshot(taken_at=now, received=123_456, streams=streams), {
            "problems": [],
            "streams": reasons,
        }

    def measure(states: list[str]) -> tuple[int, int, float]:
        snap, health = case(states)
        runs = []
        for _ in range(20):
            t0 = time.perf_counter()
            state = page_state(snap, health, {}, {})
            body = _redact.redact(page(state, cards, csrf="x" * 43))
            push = _redact.redact(json.dumps({"state": state}, separators=(",", ":")))
            runs.append(time.perf_counter() - t0)
        return len(body.encode()), len(push.encode()), min(runs) * 1000

    cases = {
        "1 stream, live": ["live"],
        f"{count:,} streams, 2 not live": ["rejected", "backoff"] + ["live"] * (count - 2),
        f"{count:,} streams, all in backoff": ["backoff"] * count,
    }
    say("status page of a bridge of named streams (50 cards; best of 20, in this process)")
    say(f"{'case':<32} {'HTML':>9} {'vs 1':>6} {'push':>9} {'vs 1':>6} {'time':>9} {'vs 1':>6}")
    results = {name: measure(states) for name, states in cases.items()}
    base = results["1 stream, live"]
    failures = []
    for name, (html, push, ms) in results.items():
        say(f"{name:<32} {html:>8,}B {html / base[0]:>6.2f} {push:>8,}B {push / base[1]:>6.2f} "
            f"{ms:>7.2f}ms {ms / base[2]:>6.2f}")  # fmt: skip
        # The outage's table is cut at STREAM_DOWN_ROWS rows: bounded, not held to the ratio.
        if "2 not live" in name and html / base[0] > TARGET_STREAMS_PAGE_RATIO:
            failures.append(f"{name}: HTML {html / base[0]:.2f}x > {TARGET_STREAMS_PAGE_RATIO}x")
        if ms > TARGET_STREAMS_PAGE_MS:
            failures.append(f"{name}: {ms:.2f} ms > {TARGET_STREAMS_PAGE_MS} ms")
    say(json.dumps({name: {"html": h, "push": p, "ms": m} for name, (h, p, m) in results.items()}))
    for failure in failures:
        say(f"MISSED  {failure}")
    say(f"targets: HTML <= {TARGET_STREAMS_PAGE_RATIO}x of one stream's page, "
        f"< {TARGET_STREAMS_PAGE_MS} ms" + ("" if failures else ": met"))  # fmt: skip
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run rate, events/s")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--spool-sync",
        choices=["full", "normal"],
        default="normal",
        help="the spool's synchronous level (the bridge's default is normal)",
    )
    parser.add_argument(
        "--gap",
        type=int,
        metavar="N",
        help="measure the recovery of a gap of N entries instead (peak RSS and time)",
    )
    parser.add_argument(
        "--page-streams",
        type=int,
        metavar="N",
        help="measure the status page of N named streams against one instead (size, time)",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: set(text.split(",")),
        help="variants to run, comma-separated (default: all; bare always runs); also limits "
        "the latency runs",
    )
    parser.add_argument("--asyncio", action="store_true", help="do not use uvloop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.latency_seconds = 50_000, 1, 3.0
    return args


def main() -> None:
    args = parse_args()
    runner: Any = asyncio.run
    if not args.asyncio:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    if args.child:
        runner(child_main(args))
    elif args.page_streams:
        sys.exit(page_streams_main(args))
    elif args.gap:
        sys.exit(runner(gap_main(args)))
    else:
        sys.exit(runner(parent_main(args)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
