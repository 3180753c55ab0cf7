"""Helpers shared by the benchmark's client processes.

Standard library only: the reference-SDK client imports this from its own virtual environment,
where neither this project nor its dependencies are installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = [
    "EVENT_PREFIX",
    "current_rss_kb",
    "emit",
    "peak_rss_kb",
    "percentile",
    "rates",
    "run",
    "stdin_lines",
]

EVENT_PREFIX = '{"id":'
"""How every event frame of the load server starts; other frames (auth, PONG) do not."""


def peak_rss_kb() -> int:
    """Peak resident set size of this process, KiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kb() -> int:
    """Resident set size of this process now, KiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def rates(count: int, seconds: float, cpu_seconds: float) -> dict[str, Any]:
    """Events per second of wall-clock time and per second of this process's CPU time.

    ``count`` events were seen between the two marks, so ``count - 1`` intervals passed. The
    CPU rate holds up when other processes compete for the cores; the wall rate does not.
    """
    return {
        "events": count,
        "seconds": seconds,
        "rate": (count - 1) / seconds if seconds > 0 else 0.0,
        "cpu_seconds": cpu_seconds,
        "cpu_rate": (count - 1) / cpu_seconds if cpu_seconds > 0 else 0.0,
    }


def emit(result: dict[str, Any]) -> None:
    """Hand one result line to the harness."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def stdin_lines() -> asyncio.StreamReader:
    """Our stdin as a stream: the harness sends commands there."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def run(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    """Run ``main`` on the default asyncio loop or on uvloop."""
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
