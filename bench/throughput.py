"""Throughput, memory and latency benchmark of the events listener.

A load server in its own process pushes realistic events (about 850 bytes each, from
``neuroio.emulator.EntryFactory``) as fast as the socket takes them. Each client variant runs
in a fresh process of its own, the variants alternate over several repetitions, and the
medians are compared:

* ``null``: a socket-level reader that discards bytes: what the server alone can send;
* ``bare`` / ``bare-typed``: a bare aiohttp receive loop, without decoding and with one msgspec
  decoder into :class:`neuroio.Event`;
* ``raw`` / ``typed``: :class:`neuroio.EventListener` with a raw handler, and its typed iterator;
* ``ref``: the reference SDK ``neuroio==0.1.2``, installed by this script into
  ``bench/.venv-ref`` (skipped with a message when it cannot be installed).

Then, on entries with ten undocumented fields each (``entries=undocumented``, see
``bench/_loadserver.py``), on uvloop: the typed iterator against a raw handler decoding each
event with orjson (or msgspec's untyped decoder, its stand-in when orjson is not installed)
and against the reference SDK with a ``json.loads`` handler.

Then: peak RSS after ``--rss-events`` events, RSS with a handler stuck forever for two
``max_queue`` sizes and two stream lengths, and send-to-handler latency at ``--latency-rate``
events/s.

Usage::

    .venv/bin/python bench/throughput.py              # the full run, about five minutes
    .venv/bin/python bench/throughput.py --quick      # a smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from _loadserver import LoadServerProcess

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
REF_SPEC = "neuroio==0.1.2"

THROUGHPUT_VARIANTS = ("null", "bare", "bare-handler", "bare-typed", "raw", "typed", "ref")
LATENCY_VARIANTS = ("lat-bare", "lat-raw", "lat-typed", "lat-ref")
LABELS = {
    "null": "server alone (socket reader, no WebSocket)",
    "bare": "bare aiohttp loop, no decoding",
    "bare-handler": "bare aiohttp loop awaiting the raw handler",
    "bare-typed": "bare aiohttp loop + msgspec typed decode",
    "raw": "EventListener, raw handler",
    "typed": "EventListener, typed iterator",
    "ref": f"reference SDK {REF_SPEC}",
    "lat-bare": "bare aiohttp loop",
    "lat-raw": "EventListener, raw handler",
    "lat-typed": "EventListener, typed iterator",
    "lat-ref": f"reference SDK {REF_SPEC}",
}
# The baseline each variant is held against (the issue's targets).
BASELINE = {
    "raw": "bare",
    "typed": "bare-typed",
    "bare-typed": "bare",
    "bare-handler": "bare",
    "null": "bare",
}
TARGETS = {"raw": (0.85, 3.0), "typed": (0.85, 2.5)}  # (x bare baseline, x reference)
RSS_LIMIT_MB = 60.0
SECTIONS = ("throughput", "undocumented", "memory", "stuck", "latency", "profile")

# The "undocumented" section: (name, client variant, entries kind, label).
UNDOCUMENTED_VARIANTS = (
    ("typed", "typed", "undocumented", "EventListener, typed iterator"),
    ("raw-orjson", "raw-orjson", "undocumented", "EventListener, raw handler + orjson.loads"),
    (
        "raw-msgspec",
        "raw-msgspec",
        "undocumented",
        "EventListener, raw handler + msgspec untyped decode",
    ),
    ("ref-json", "ref-json", "undocumented", f"reference SDK {REF_SPEC} + json.loads handler"),
    ("raw", "raw", "undocumented", "EventListener, raw handler, no decoding"),
    ("typed-clean", "typed", "clean", "EventListener, typed iterator, documented fields only"),
)
# (variant, baseline, wanted ratio) of the issue's targets for these entries.
UNDOCUMENTED_TARGETS = (("typed", "raw-orjson", 0.8), ("typed", "ref-json", 2.5))


def say(text: str = "") -> None:
    """Progress and results go to stdout, unbuffered, as they come."""
    print(text, flush=True)


# ---------------------------------------------------------------------------- processes


@dataclass
class Child:
    """How to start one client variant."""

    argv: list[str]
    label: str


async def run_child(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a client process to its end; its last stdout line is the JSON result."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=BENCH
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": f"no result within {timeout:.0f}s"}
    except BaseException:
        # Interrupted: a listener left behind would reconnect forever to a server that is gone.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (err.decode().strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------------------- reference SDK


def reference_python(venv: Path) -> tuple[Path | None, str]:
    """The interpreter of a virtual environment holding the reference SDK, made if needed.

    Returns:
        the interpreter (``None`` when the SDK cannot be installed) and a note for the report.
    """
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import neuroio, websockets; print(neuroio.__version__)"]

    def installed() -> str | None:
        if not python.exists():
            return None
        done = subprocess.run(probe, capture_output=True, text=True, cwd=BENCH)
        return done.stdout.strip() if done.returncode == 0 else None

    version = installed()
    if version is None:
        say(f"installing {REF_SPEC} into {_shown(venv)} ...")
        made = subprocess.run([PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if made.returncode == 0:
            made = subprocess.run([*pip, REF_SPEC], capture_output=True, text=True)
        if made.returncode != 0:
            last = (made.stderr.strip().splitlines() or ["unknown error"])[-1]
            return None, f"reference SDK skipped: cannot install {REF_SPEC} ({last})"
        # uvloop is optional: without it the reference runs on the default loop only.
        subprocess.run([*pip, "uvloop"], capture_output=True, text=True)
        version = installed()
        if version is None:
            return None, f"reference SDK skipped: {REF_SPEC} installed but does not import"
    return python, f"reference SDK neuroio {version} in {_shown(venv)}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def has_uvloop(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import uvloop"], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    server: LoadServerProcess
    ref_python: Path | None
    ref_loops: set[str]
    listener_ok: bool
    orjson_ok: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    def child(self, variant: str, url: str, events: int, loop: str, *extra: str) -> list[str]:
        if variant in ("ref", "ref-json", "lat-ref"):
            assert self.ref_python is not None
            script = [str(self.ref_python), str(BENCH / "_refclient.py")]
        else:
            script = [PYTHON, str(BENCH / "_clients.py")]
        return [*script, variant, "--url", url, "--events", str(events), "--loop", loop, *extra]

    def runnable(self, variant: str, loop: str) -> bool:
        if variant in ("ref", "ref-json", "lat-ref"):
            return self.ref_python is not None and loop in self.ref_loops
        if variant == "raw-orjson":
            return self.listener_ok and self.orjson_ok
        if variant in ("raw", "typed", "raw-msgspec", "lat-raw", "lat-typed"):
            return self.listener_ok
        return True

    # -- throughput

    async def throughput(self) -> None:
        args = self.args
        say(
            f"\n## Throughput: {args.events:,} events per run, {args.reps} repetitions, "
            "variants alternating"
        )
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        errors: dict[tuple[str, str], str] = {}
        timeout = 60 + args.events / 10_000
        load_before = os.getloadavg()[0]
        for rep in range(args.reps):
            # Rotate the order so no variant always runs first (or right after another).
            shift = rep % len(THROUGHPUT_VARIANTS)
            order = THROUGHPUT_VARIANTS[shift:] + THROUGHPUT_VARIANTS[:shift]
            for loop in args.loops:
                for variant in order:
                    if not self.runnable(variant, loop):
                        continue
                    url, _tag = self.server.url(n=args.events)
                    result = await run_child(self.child(variant, url, args.events, loop), timeout)
                    key = (variant, loop)
                    if "error" in result:
                        errors[key] = result["error"]
                        say(f"  rep {rep + 1} {loop:7} {variant:10} FAILED: {result['error']}")
                        continue
                    runs.setdefault(key, []).append(result)
                    say(
                        f"  rep {rep + 1} {loop:7} {variant:10} {result['rate']:>10,.0f} ev/s"
                        f" {result['cpu_rate']:>10,.0f} ev/CPU-s"
                        f"  peak RSS {result['peak_rss_kb'] / 1024:5.1f} MB"
                    )
        load_after = os.getloadavg()[0]
        self.results["throughput"] = {f"{v}/{lp}": r for (v, lp), r in runs.items()}
        self.results["throughput_errors"] = {f"{v}/{lp}": e for (v, lp), e in errors.items()}
        say(
            f"\nLoad average (1 min) {load_before:.2f} before, {load_after:.2f} after, "
            f"on {os.cpu_count()} cores."
        )
        if max(load_before, load_after) > 2.5:
            say(
                "Other processes competed for the cores: the wall-clock figures are depressed "
                "and noisy; events per CPU-second of the client are the steadier comparison."
            )
        checks = self.results.setdefault("targets", [])
        for loop in args.loops:
            med: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for (variant, lp), results in runs.items():
                if lp == loop:
                    med[variant] = statistics.median(r["rate"] for r in results)
                    cpu[variant] = statistics.median(r["cpu_rate"] for r in results)
            say(f"\n### {loop}\n")
            say(
                "| variant | events/s (median) | min – max | events per CPU-s | "
                "vs baseline (wall / CPU) | vs reference (wall / CPU) | peak RSS |"
            )
            say("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for variant in THROUGHPUT_VARIANTS:
                if variant not in med:
                    why = errors.get((variant, loop), "not run")
                    say(f"| {LABELS[variant]} | – | – | – | – | – | {why} |")
                    continue
                wall = [r["rate"] for r in runs[(variant, loop)]]
                peak = max(r["peak_rss_kb"] for r in runs[(variant, loop)]) / 1024
                base = BASELINE.get(variant, "")
                vs_base = (
                    f"{med[variant] / med[base]:.2f} / {cpu[variant] / cpu[base]:.2f}x {base}"
                    if base in med
                    else "–"
                )
                vs_ref = (
                    f"{med[variant] / med['ref']:.2f} / {cpu[variant] / cpu['ref']:.2f}x"
                    if "ref" in med and variant != "ref"
                    else "–"
                )
                say(
                    f"| {LABELS[variant]} | {med[variant]:,.0f} | {min(wall):,.0f} – "
                    f"{max(wall):,.0f} | {cpu[variant]:,.0f} | {vs_base} | {vs_ref} "
                    f"| {peak:.1f} MB |"
                )
            clients = {v: m for v, m in med.items() if v != "null"}
            if "null" in med and clients:
                fastest = max(clients, key=clients.__getitem__)
                checks.append(
                    (
                        f"{loop}: server alone out-sends every client "
                        f"({med['null'] / clients[fastest]:.1f}x the fastest, {fastest})",
                        med["null"] > clients[fastest],
                    )
                )
            if "raw" in med and "bare-handler" in med:
                say(
                    f"\nThe listener's own cost, beside a bare loop awaiting the same handler: "
                    f"raw is {med['raw'] / med['bare-handler']:.2f}x (wall) / "
                    f"{cpu['raw'] / cpu['bare-handler']:.2f}x (CPU) of it.\n"
                )
            for variant, (x_base, x_ref) in TARGETS.items():
                for other, wanted in ((BASELINE[variant], x_base), ("ref", x_ref)):
                    if variant not in med or other not in med:
                        continue
                    ratio = med[variant] / med[other]
                    by_cpu = cpu[variant] / cpu[other]
                    name = "reference" if other == "ref" else other
                    text = (
                        f"{loop}: {variant} >= {wanted}x {name} "
                        f"(is {ratio:.2f}x; {by_cpu:.2f}x by CPU time)"
                    )
                    checks.append((text, ratio >= wanted))

    # -- entries with undocumented fields

    async def undocumented(self) -> None:
        args = self.args
        loop = "uvloop" if "uvloop" in args.loops else args.loops[0]
        frame = self.server.frame_bytes_by_kind.get("undocumented", 0.0)
        say(
            f"\n## Entries with ten undocumented fields ({frame:.0f} bytes per frame), {loop}: "
            f"{args.events:,} events per run, {args.reps} repetitions, variants alternating\n"
        )
        if not self.orjson_ok:
            say(
                "orjson is not installed in this environment (it is not a dependency): "
                "raw-orjson skipped, raw-msgspec (msgspec's untyped decoder) stands in for it "
                f"in the targets. To measure it: {_shown(Path(PYTHON))} -m pip install orjson\n"
            )
        if loop != "uvloop":
            say("uvloop is not installed: these figures are on the default loop\n")
        names = [v[0] for v in UNDOCUMENTED_VARIANTS]
        spec = {v[0]: v for v in UNDOCUMENTED_VARIANTS}
        runs: dict[str, list[dict[str, Any]]] = {}
        by_rep: list[dict[str, float]] = []
        errors: dict[str, str] = {}
        timeout = 60 + args.events / 10_000
        for rep in range(args.reps):
            shift = rep % len(names)
            this_rep: dict[str, float] = {}
            for name in names[shift:] + names[:shift]:
                _, variant, kind, _label = spec[name]
                if not self.runnable(variant, loop):
                    continue
                url, _tag = self.server.url(n=args.events, entries=kind)
                result = await run_child(self.child(variant, url, args.events, loop), timeout)
                if "error" in result:
                    errors[name] = result["error"]
                    say(f"  rep {rep + 1} {name:12} FAILED: {result['error']}")
                    continue
                runs.setdefault(name, []).append(result)
                this_rep[name] = result["rate"]
                say(
                    f"  rep {rep + 1} {name:12} {result['rate']:>10,.0f} ev/s"
                    f" {result['cpu_rate']:>10,.0f} ev/CPU-s"
                )
            by_rep.append(this_rep)
        self.results["undocumented"] = {"runs": runs, "errors": errors, "loop": loop}
        say("\n| variant | events/s (median) | min – max | events per CPU-s (median) |")
        say("| --- | ---: | ---: | ---: |")
        med: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name in names:
            label = spec[name][3]
            if name not in runs:
                why = errors.get(name) or (
                    "orjson not installed" if name == "raw-orjson" else "not run"
                )
                say(f"| {label} | – | – | {why} |")
                continue
            wall = [r["rate"] for r in runs[name]]
            med[name] = statistics.median(wall)
            cpu[name] = statistics.median(r["cpu_rate"] for r in runs[name])
            say(
                f"| {label} | {med[name]:,.0f} | {min(wall):,.0f} – {max(wall):,.0f} "
                f"| {cpu[name]:,.0f} |"
            )
        say(
            "\nRatios: of the medians (wall / CPU), and the median and range of the ratios of "
            "runs made in the same repetition (the steadier figure on a shared machine).\n"
        )
        say("| ratio | of medians, wall | of medians, CPU | per repetition: median | min – max |")
        say("| --- | ---: | ---: | ---: | ---: |")
        pairs = [("typed", "raw-orjson"), ("typed", "raw-msgspec"), ("typed", "ref-json")]
        pairs += [("typed", "typed-clean"), ("raw-orjson", "raw"), ("raw-msgspec", "raw")]
        paired: dict[tuple[str, str], float] = {}
        for a, b in pairs:
            if a not in med or b not in med:
                continue
            ratios = [r[a] / r[b] for r in by_rep if a in r and b in r and r[b] > 0]
            paired[(a, b)] = statistics.median(ratios) if ratios else med[a] / med[b]
            spread = f"{min(ratios):.2f} – {max(ratios):.2f}" if ratios else "–"
            say(
                f"| {a} / {b} | {med[a] / med[b]:.2f}x | {cpu[a] / cpu[b]:.2f}x "
                f"| {paired[(a, b)]:.2f}x | {spread} |"
            )
        checks = self.results.setdefault("targets", [])
        for variant, base, wanted in UNDOCUMENTED_TARGETS:
            if base == "raw-orjson" and base not in med:
                base = "raw-msgspec"  # the stated stand-in
            if variant not in med or base not in med:
                continue
            ratio = med[variant] / med[base]
            text = (
                f"undocumented fields, {loop}: {variant} >= {wanted}x {base} (is {ratio:.2f}x "
                f"of medians; {paired[(variant, base)]:.2f}x per repetition; "
                f"{cpu[variant] / cpu[base]:.2f}x by CPU time)"
            )
            checks.append((text, ratio >= wanted))

    # -- memory after many events

    async def memory(self) -> None:
        args = self.args
        if not args.rss_events or not self.listener_ok:
            return
        say(f"\n## Peak RSS after {args.rss_events:,} events (whole client process)\n")
        say("| variant | loop | events/s | peak RSS |")
        say("| --- | --- | ---: | ---: |")
        checks = self.results.setdefault("targets", [])
        out = self.results.setdefault("memory", {})
        for loop in args.loops:
            for variant in ("raw", "typed"):
                url, _tag = self.server.url(n=args.rss_events)
                argv = self.child(variant, url, args.rss_events, loop)
                result = await run_child(argv, 120 + args.rss_events / 5_000)
                if "error" in result:
                    say(f"| {LABELS[variant]} | {loop} | – | FAILED: {result['error']} |")
                    checks.append((f"{loop}: {variant} ran {args.rss_events:,} events", False))
                    continue
                mb = result["peak_rss_kb"] / 1024
                out[f"{variant}/{loop}"] = result
                say(f"| {LABELS[variant]} | {loop} | {result['rate']:,.0f} | {mb:.1f} MB |")
                checks.append(
                    (
                        f"{loop}: {variant} peak RSS < {RSS_LIMIT_MB:.0f} MB after "
                        f"{args.rss_events:,} events (is {mb:.1f} MB)",
                        mb < RSS_LIMIT_MB,
                    )
                )

    # -- handler stuck forever

    async def stuck(self) -> None:
        args = self.args
        if not args.stuck_events or not self.listener_ok:
            return
        loop = args.loops[0]
        lengths = (args.stuck_events // 4, args.stuck_events)
        say(
            f"\n## Handler stuck forever ({loop}): the server pushes N events; client RSS once "
            "the server can send no more\n"
        )
        say("| max_queue | N | server sent | queued (high water) | RSS before connecting | RSS |")
        say("| ---: | ---: | ---: | ---: | ---: | ---: |")
        out = self.results.setdefault("stuck", {})
        for max_queue in (16, 1024):
            rows = []
            for n in lengths:
                row = await self._stuck_once(loop, max_queue, n)
                out[f"{max_queue}/{n}"] = row
                if "error" in row:
                    say(f"| {max_queue} | {n:,} | FAILED: {row['error']} | | | |")
                    continue
                rows.append(row)
                say(
                    f"| {max_queue} | {n:,} | {row['sent']:,} | {row['queue_high_water']} "
                    f"| {row['baseline_rss_kb'] / 1024:.1f} MB | {row['rss_kb'] / 1024:.1f} MB |"
                )
            checks = self.results.setdefault("targets", [])
            if len(rows) == 2:
                growth = (rows[1]["rss_kb"] - rows[0]["rss_kb"]) / 1024
                held = max(r["queue_high_water"] or 0 for r in rows)
                ok = growth < 4.0 and held <= max_queue + 1
                checks.append(
                    (
                        f"stuck handler, max_queue={max_queue}: RSS does not grow with N "
                        f"({growth:+.1f} MB from {lengths[0]:,} to {lengths[1]:,} events, "
                        f"queue held <= {held})",
                        ok,
                    )
                )

    async def _stuck_once(self, loop: str, max_queue: int, n: int) -> dict[str, Any]:
        url, tag = self.server.url(n=n, stall=1.0)
        argv = self.child("stuck", url, n, loop, "--max-queue", str(max_queue))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=BENCH
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            if first.get("event") != "stuck":
                return {"error": f"unexpected {first}"}
            # The client is stuck; wait until the server has sent all or can send no more.
            report = await self.server.wait_for(tag, {"stalled", "done"}, 60 + n / 10_000)
            proc.stdin.write(b"report\n")
            await proc.stdin.drain()
            row: dict[str, Any] = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            row["sent"] = report["sent"]
            row["server"] = report["event"]
            return row
        except (asyncio.TimeoutError, json.JSONDecodeError, ValueError) as exc:
            return {"error": type(exc).__name__}
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.communicate()

    # -- latency

    async def latency(self) -> None:
        args = self.args
        if not args.latency_events:
            return
        say(
            f"\n## Latency, server send to handler call, at {args.latency_rate:,} events/s "
            f"({args.latency_events:,} events)\n"
        )
        say("| variant | loop | p50 | p90 | p99 | max |")
        say("| --- | --- | ---: | ---: | ---: | ---: |")
        out = self.results.setdefault("latency", {})
        timeout = 60 + 2 * args.latency_events / args.latency_rate
        for loop in args.loops:
            for variant in LATENCY_VARIANTS:
                if not self.runnable(variant, loop):
                    continue
                url, _tag = self.server.url(
                    mode="rate", rate=args.latency_rate, n=args.latency_events
                )
                result = await run_child(
                    self.child(variant, url, args.latency_events, loop), timeout
                )
                out[f"{variant}/{loop}"] = result
                if "error" in result:
                    say(f"| {LABELS[variant]} | {loop} | FAILED: {result['error']} | | | |")
                    continue
                say(
                    f"| {LABELS[variant]} | {loop} | {result['p50_ms']:.2f} ms "
                    f"| {result['p90_ms']:.2f} ms | {result['p99_ms']:.2f} ms "
                    f"| {result['max_ms']:.2f} ms |"
                )

    # -- profiles of the listener

    async def profile(self) -> None:
        directory = self.args.profile
        if not directory or not self.listener_ok:
            return
        import pstats

        Path(directory).mkdir(parents=True, exist_ok=True)
        for variant in ("raw", "typed"):
            path = Path(directory).resolve() / f"{variant}.prof"
            url, _tag = self.server.url(n=self.args.events)
            argv = self.child(variant, url, self.args.events, "asyncio", "--profile", str(path))
            result = await run_child(argv, 300)
            if "error" in result:
                say(f"\nprofile of {variant} failed: {result['error']}")
                continue
            say(f"\n## cProfile of `{variant}` (asyncio loop, {self.args.events:,} events)\n")
            say("```")
            stats = pstats.Stats(str(path), stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(14)
            say("```")

    def report_targets(self) -> None:
        checks = self.results.get("targets", [])
        if not checks:
            return
        say("\n## Targets\n")
        for text, ok in checks:
            say(f"- [{'x' if ok else ' '}] {'met' if ok else 'MISSED'}: {text}")


def machine(server: LoadServerProcess, ref_note: str) -> list[str]:
    """A description of where the figures were made."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB RAM"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    revision = "unknown revision"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "neuroio"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.split()[1::2]
        revision = f"commit {head}"
        if dirty:
            shown = ", ".join(dirty[:4]) + (", ..." if len(dirty) > 4 else "")
            revision += f" (uncommitted changes: {shown})"
    return [
        f"- code: {revision}",
        f"- machine: {cpu}, {os.cpu_count()} cores{memory}; "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; aiohttp {version('aiohttp')}, "
        f"msgspec {version('msgspec')}, uvloop {version('uvloop')}",
        f"- {ref_note}",
        f"- event frames: {server.frame_bytes:.0f} bytes on average "
        "(neuroio.emulator.EntryFactory entries, ids increasing); with ten undocumented fields "
        f"{server.frame_bytes_by_kind.get('undocumented', 0):.0f} bytes",
        f"- orjson {version('orjson')} (benchmark only, not a dependency)",
    ]


async def amain(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    ref_python: Path | None = None
    ref_note = "reference SDK not requested (--no-ref)"
    if not args.no_ref:
        ref_python, ref_note = await asyncio.to_thread(reference_python, Path(args.ref_venv))
    ref_loops = {"asyncio"}
    if ref_python is not None and await asyncio.to_thread(has_uvloop, ref_python):
        ref_loops.add("uvloop")
    probe = await asyncio.create_subprocess_exec(
        PYTHON, "-c", "from neuroio import EventListener", cwd=ROOT, stderr=subprocess.DEVNULL
    )
    listener_ok = await probe.wait() == 0
    probe = await asyncio.create_subprocess_exec(
        PYTHON, "-c", "import orjson", cwd=ROOT, stderr=subprocess.DEVNULL
    )
    orjson_ok = await probe.wait() == 0

    server = LoadServerProcess()
    await server.start()
    say(f"# neuroio-events benchmark ({' '.join(['bench/throughput.py', *sys.argv[1:]])})\n")
    for line in machine(server, ref_note):
        say(line)
    if not listener_ok:
        say("\nneuroio.EventListener cannot be imported: listener variants skipped")
    if args.quick:
        say("\n--quick: short runs, one repetition: a smoke test, too noisy to compare figures")
    bench = Bench(args, server, ref_python, ref_loops, listener_ok, orjson_ok)
    try:
        for section in SECTIONS:
            if section in args.only:
                await getattr(bench, section)()
    finally:
        await server.stop()
    bench.report_targets()
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str))
    checks = bench.results.get("targets", [])
    return 0 if all(ok for _, ok in checks) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Throughput, memory and latency benchmark of neuroio.EventListener."
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each variant")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop", "both"), default="both", help="event loop(s)"
    )
    parser.add_argument(
        "--rss-events", type=int, default=1_000_000, help="events of the peak-RSS run; 0 skips"
    )
    parser.add_argument(
        "--stuck-events", type=int, default=200_000, help="events pushed at a stuck handler"
    )
    parser.add_argument("--latency-rate", type=int, default=2_000, help="events/s")
    parser.add_argument(
        "--latency-events", type=int, default=6_000, help="events of each latency run; 0 skips"
    )
    parser.add_argument("--no-ref", action="store_true", help="skip the reference SDK")
    parser.add_argument(
        "--ref-venv",
        default=str(BENCH / ".venv-ref"),
        metavar="DIR",
        help=f"virtual environment for {REF_SPEC}, created when missing",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small runs, one repetition: a smoke test"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeatable); default: all but profile",
    )
    parser.add_argument("--profile", metavar="DIR", help="also cProfile the listener variants")
    parser.add_argument("--json", metavar="FILE", help="write every measurement here")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 50_000)
        args.reps = 1
        args.rss_events = min(args.rss_events, 100_000)
        args.stuck_events = min(args.stuck_events, 40_000)
        args.latency_events = min(args.latency_events, 1_000)
    args.loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if not args.only:
        args.only = [section for section in SECTIONS if section != "profile" or args.profile]
    elif "profile" in args.only and not args.profile:
        parser.error("--only profile needs --profile DIR")
    return args


def main() -> None:
    """Entry point: ``python bench/throughput.py [options]``."""
    args = parse_args()
    if "uvloop" in args.loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            say("uvloop is not installed: running the default loop only")
            args.loops = ["asyncio"]
    try:
        sys.exit(asyncio.run(amain(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
