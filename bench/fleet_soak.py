"""The fleet's long check (issue 15, done when): three workers on 60 streams for 20 minutes,
a worker SIGKILLed or added every two minutes, and then every event of every stream in
PostgreSQL exactly once, no stream held by two workers beyond the overlap bound, and the
streams spread within one of even.

The parts are ``bench/fleet.py``'s (read its docstring for how each figure is found): the
emulator (``--count`` events in each space, nothing pushed that was missed) with its
connection log, the workers (``bridge --config F --fleet nats://...``, each its own spool and
metrics port), one PostgreSQL table. Every ``--every`` seconds one action, at random
(``--seed``): SIGKILL a random worker (never below ``--min-workers``), whose streams must be
taken over within TTL + 5 s, or start a new worker (never above ``--max-workers``), and the
time until the spread is even again is printed. By default one more stream has a token the
emulator refuses (``--no-rejected`` drops it): it must be named on every worker's
``/healthz`` and not move between workers in a loop (no more attempts than starts, kills and
joins, plus one).

Usage::

    .venv/bin/python bench/fleet_soak.py                 # 20 minutes
    .venv/bin/python bench/fleet_soak.py --minutes 6 --every 60

NATS JetStream on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432 must be running. Exit code 1
when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _harness import say
from fleet import TAKEOVER_SLACK, Fleet, arguments, finish


async def main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    count = int(args.rate * args.seconds)
    say(f"fleet soak: {args.workers} workers, {args.streams} streams at {args.rate:g} events/s "
        f"for {args.minutes:g} min ({count} per stream), an action every {args.every:g} s, "
        f"lease TTL {args.ttl:g} s, seed {args.seed}")  # fmt: skip
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="neuroio-bench-fleet-soak-") as tmp_dir:
        fleet = Fleet(args, Path(tmp_dir), count)
        t0 = time.monotonic()
        try:
            await fleet.start()
            live = await fleet.wait_all_live(60)
            say(f"  all {args.streams} streams live {live:.1f} s after the start")
            action = 1
            while True:
                next_at = t0 + action * args.every
                if next_at > t0 + args.seconds - args.every / 2:
                    break  # the last action leaves time to settle before the stream ends
                await asyncio.sleep(max(next_at - time.monotonic(), 0))  # the schedule
                await act(fleet, args, rng, missed, time.monotonic() - t0)
                action += 1
            return await finish(fleet, args, missed)
        except RuntimeError as exc:
            say(f"FAILED  {exc}")
            return 1
        finally:
            await fleet.close()


async def act(
    fleet: Fleet, args: argparse.Namespace, rng: random.Random, missed: list[str], at: float
) -> None:
    """Kill a random worker or add one; report the takeover or the rebalance."""
    spread = fleet.spread()
    live = len(fleet.workers)
    kill = live > args.min_workers and (live >= args.max_workers or rng.random() < 0.5)
    if kill:
        victim = rng.choice(fleet.workers)
        held = len(fleet.holders()[victim.name])
        seconds = await fleet.kill(victim)
        say(f"  {at:6.0f} s  SIGKILL {victim.name} (held {held}; spread was {spread}): "
            f"taken over in {seconds:.1f} s")  # fmt: skip
        if seconds > args.ttl + TAKEOVER_SLACK:
            say("           MISSED: later than TTL + 5 s (judged again at the end)")
    else:
        worker = await fleet.add_worker()
        fleet.actions += 1
        say(f"  {at:6.0f} s  started {worker.name} (spread was {spread})")
    balance = await fleet.wait_balanced(args.every * 0.75)
    after = fleet.spread()
    if balance is None:
        say(f"           spread {after}: not even within {args.every * 0.75:.0f} s")
        missed.append(f"spread {after} not even {args.every * 0.75:.0f} s after an action")
    else:
        say(f"           spread {after}, even {balance:.1f} s later")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = arguments(__doc__, soak=True)
    parser.set_defaults(rejected=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=120.0, help="seconds between actions")
    parser.add_argument("--min-workers", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.seconds = args.minutes * 60
    return args


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
