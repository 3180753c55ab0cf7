"""``neuroio-events demo``: a local emulator and a listener on it, in one process.

Nothing leaves the machine (the emulator listens on 127.0.0.1, on a free port) and no token
is needed: it shows what the stream looks like and how ``listen`` prints it, and serves the
status page (the listener's metrics server, on 127.0.0.1) whose URL it prints: the emulator's
face pictures arrive there live.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import click

from ..emulator import Emulator
from ._options import ListenerSettings, LogSettings, Secret, logging_options, loop_option
from ._run import run
from .listen import StreamSettings, stream

__all__ = ["command", "demo"]

logger = logging.getLogger("neuroio.cli")

# The emulator accepts any token; this one only has to be non-empty.
_DEMO_TOKEN = "neuroio-demo-token"


async def demo(
    rate: float,
    count: int | None,
    fmt: str,
    seed: int | None = None,
    status_port: int | None = 0,
) -> int:
    """Serve generated events at ``rate`` on loopback and print them until stopped; serve
    the status page on ``status_port`` (0: a free port; ``None``: none) and log its URL."""
    if status_port is not None and importlib.util.find_spec("prometheus_client") is None:
        logger.warning("demo: no status page: it needs pip install 'neuroio-events[metrics]'")
        status_port = None
    async with Emulator(rate=rate, seed=seed) as emulator:
        logger.info(
            "demo: a local emulator on %s sends %g events/s; Ctrl-C to stop", emulator.url, rate
        )
        settings = StreamSettings(fmt=fmt, count=count, status=True, metrics_port=status_port)
        return await stream(emulator.url, Secret(_DEMO_TOKEN), settings, ListenerSettings())


@click.command("demo", short_help="Show live demo events (local emulator; no network, no token).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    envvar="NEUROIO_DEMO_RATE",
    show_envvar=True,
    help="Events per second.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    envvar="NEUROIO_DEMO_COUNT",
    show_envvar=True,
    help="Exit after this many events.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "pretty"]),
    default=None,
    show_default="pretty on a terminal, else jsonl",
    envvar="NEUROIO_DEMO_FORMAT",
    show_envvar=True,
    help="How events are printed, as for 'listen'.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    envvar="NEUROIO_DEMO_SEED",
    show_envvar=True,
    help="Seed of the generated entries.",
)
@click.option(
    "--status-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default="a free port",
    envvar="NEUROIO_DEMO_STATUS_PORT",
    show_envvar=True,
    help="Port of the status page (on 127.0.0.1; its URL is printed).",
)
@loop_option
@logging_options
def command(
    rate: float,
    count: int | None,
    fmt: str | None,
    seed: int | None,
    status_port: int,
    use_uvloop: bool | None,
    log: LogSettings,
) -> None:
    """Start a local emulator and print its events as 'listen' would.

    No network and no token needed: the emulator runs in this process on 127.0.0.1. The
    status page (faces arriving live) is served on 127.0.0.1 too; its URL is printed.
    """
    log.configure()
    if log.verbosity <= 0:
        # The demo's own line says where the emulator is; its start/stop lines are noise here.
        logging.getLogger("neuroio.emulator").setLevel(logging.WARNING)
    if fmt is None:
        fmt = "pretty" if os.isatty(1) else "jsonl"
    run(lambda: demo(rate, count, fmt, seed, status_port), log=log, use_uvloop=use_uvloop)
