"""The reference SDK (``neuroio==0.1.2`` from PyPI) as a benchmark client process.

Runs with the interpreter of the benchmark's own virtual environment for that SDK, so
``import neuroio`` here is the reference package, not this project. Variants: ``ref``
(throughput, timed from the first event to the last) and ``lat-ref`` (latency from the
server's ``data.sent_at`` stamp to the handler call), and ``ref-json``: ``ref`` with a handler
that decodes every event with ``json.loads``, as that SDK's users do (it hands the handler the
raw text). One JSON result line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from _common import EVENT_PREFIX, emit, peak_rss_kb, percentile, rates, run

import neuroio

# The reference package, not this project: its names are not this project's types.
from neuroio import EventListener, constants  # type: ignore[attr-defined]

TOKEN = "bench-token-0123456789"


async def _main(args: argparse.Namespace) -> None:
    # The SDK connects to constants.EVENTS_BASE_URL, read when listen() starts; pointing that
    # module attribute at the load server is the only way in without editing the package.
    constants.EVENTS_BASE_URL = args.url
    target = args.events
    done = asyncio.get_running_loop().create_future()
    samples: list[float] = []
    marks = {"count": 0, "first": 0.0, "last": 0.0, "first_cpu": 0.0, "last_cpu": 0.0}

    decode = args.variant == "ref-json"

    async def count(message: str) -> None:
        if message.startswith(EVENT_PREFIX):
            if decode:
                json.loads(message)
            n = marks["count"] = marks["count"] + 1
            if n == 1:
                marks["first"] = time.perf_counter()
                marks["first_cpu"] = time.process_time()
            if n >= target and not done.done():
                marks["last"] = time.perf_counter()
                marks["last_cpu"] = time.process_time()
                done.set_result(None)

    async def stamp(message: str) -> None:
        now = time.time()
        if message.startswith(EVENT_PREFIX):
            samples.append(now - json.loads(message)["data"]["sent_at"])
            if len(samples) >= target and not done.done():
                done.set_result(None)

    handler = stamp if args.variant == "lat-ref" else count
    listener = EventListener(api_token=TOKEN, event_handler_func=handler)
    task = asyncio.create_task(listener.listen())
    await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    # The SDK has no close(): cancelling listen() is how its users stop it.
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    result: dict[str, Any]
    if args.variant == "lat-ref":
        samples.sort()
        result = {
            "events": len(samples),
            "p50_ms": percentile(samples, 0.50) * 1000,
            "p90_ms": percentile(samples, 0.90) * 1000,
            "p99_ms": percentile(samples, 0.99) * 1000,
            "max_ms": samples[-1] * 1000,
        }
    else:
        result = rates(
            int(marks["count"]),
            marks["last"] - marks["first"],
            marks["last_cpu"] - marks["first_cpu"],
        )
    result.update(
        variant=args.variant,
        loop=args.loop,
        peak_rss_kb=peak_rss_kb(),
        sdk_version=getattr(neuroio, "__version__", "?"),
    )
    emit(result)


def main() -> None:
    """Command line: ``python bench/_refclient.py {ref,ref-json,lat-ref} --url URL --events N``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=("ref", "ref-json", "lat-ref"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    run(_main(args), args.loop)


if __name__ == "__main__":
    main()
