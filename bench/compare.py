"""Listener throughput of two checkouts, measured in the same run against one load server.

For "within x% of the previous version": one load server (this checkout's), then
``bench/_clients.py`` of each checkout, each run by its own interpreter (so each imports its
own ``neuroio``), alternating per repetition with the order swapped every other one, for the
raw handler and the typed iterator on each loop, on entries with documented fields only or
also with ten undocumented ones (``--entries``). Prints the medians of events/s (wall clock)
and of events per CPU-second of the client (steadier on a shared machine), their ratios, and
the median and range of the ratios of the two runs of each repetition (run back to back, so
the load of the moment weighs on both alike).

Usage::

    git worktree add ../base <commit>          # with a venv of its own
    .venv/bin/python bench/compare.py ../base ../base/.venv/bin/python
    .venv/bin/python bench/compare.py ../base ../base/.venv/bin/python \
        --entries clean,undocumented --loops uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _loadserver import LoadServerProcess

BENCH = Path(__file__).resolve().parent


async def run_client(
    tree: Path, python: str, variant: str, url: str, events: int, loop: str
) -> dict[str, Any]:
    """One client process of ``tree``; its last stdout line is the JSON result."""
    bench = tree / "bench"
    argv = [python, str(bench / "_clients.py"), variant, "--url", url]
    argv += ["--events", str(events), "--loop", loop]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=bench
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60 + events / 10_000)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (err.decode().strip().splitlines() or ["no output"])[-1]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def amain(args: argparse.Namespace) -> None:
    trees = {"this": (BENCH.parent, sys.executable), "base": (Path(args.base), args.python)}
    loops = args.loops.split(",")
    variants = args.variants.split(",")
    kinds = args.entries.split(",")
    Key = tuple[str, str, str]
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    # Per repetition, the ratio this/base of wall and of CPU rates, for each (kind, loop, variant).
    paired: dict[Key, list[tuple[float, float]]] = {}
    server = LoadServerProcess()
    await server.start()
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    try:
        for rep in range(args.reps):
            order = ["this", "base"] if rep % 2 == 0 else ["base", "this"]
            for kind in kinds:
                for loop in loops:
                    for variant in variants:
                        pair: dict[str, dict[str, Any]] = {}
                        for name in order:
                            tree, python = trees[name]
                            url, _ = server.url(n=args.events, entries=kind)
                            r = await run_client(tree, python, variant, url, args.events, loop)
                            head = f"rep {rep + 1} {kind:12} {loop:7} {variant:6} {name:4}"
                            if "error" in r:
                                print(f"{head} FAILED: {r['error']}", flush=True)
                                continue
                            runs.setdefault((kind, loop, variant, name), []).append(r)
                            pair[name] = r
                            print(
                                f"{head} {r['rate']:>10,.0f} ev/s {r['cpu_rate']:>10,.0f} ev/CPU-s",
                                flush=True,
                            )
                        if len(pair) == 2:
                            this, base = pair["this"], pair["base"]
                            paired.setdefault((kind, loop, variant), []).append(
                                (
                                    this["rate"] / base["rate"],
                                    this["cpu_rate"] / base["cpu_rate"],
                                )
                            )
    finally:
        await server.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print(
        "| entries | loop | variant | this ev/s | base ev/s | wall ratio "
        "| this ev/CPU-s | base ev/CPU-s | CPU ratio "
        "| paired wall: median (min – max) | paired CPU: median (min – max) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        for loop in loops:
            for variant in variants:
                this_runs = runs.get((kind, loop, variant, "this"))
                base_runs = runs.get((kind, loop, variant, "base"))
                if not this_runs or not base_runs:
                    continue
                tw = statistics.median(r["rate"] for r in this_runs)
                bw = statistics.median(r["rate"] for r in base_runs)
                tc = statistics.median(r["cpu_rate"] for r in this_runs)
                bc = statistics.median(r["cpu_rate"] for r in base_runs)
                walls = [w for w, _ in paired.get((kind, loop, variant), [])]
                cpus = [c for _, c in paired.get((kind, loop, variant), [])]
                print(
                    f"| {kind} | {loop} | {variant} | {tw:,.0f} | {bw:,.0f} | {tw / bw:.3f} "
                    f"| {tc:,.0f} | {bc:,.0f} | {tc / bc:.3f} | {_spread(walls)} "
                    f"| {_spread(cpus)} |"
                )


def _spread(ratios: list[float]) -> str:
    if not ratios:
        return "–"
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f} – {max(ratios):.3f})"


def main() -> None:
    """Entry point: ``python bench/compare.py BASE_TREE BASE_PYTHON [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the other checkout (its bench/_clients.py is run)")
    parser.add_argument("python", help="the interpreter of the other checkout's environment")
    parser.add_argument("--reps", type=int, default=8, help="repetitions of each pair")
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--loops", default="asyncio,uvloop", help="comma-separated")
    parser.add_argument("--variants", default="raw,typed", help="comma-separated")
    parser.add_argument(
        "--entries",
        default="clean",
        help="comma-separated: clean (documented fields only), undocumented (ten more)",
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
