"""``neuroio-events demo``: a local emulator and a listener on it, in one process.

Nothing leaves the machine (the emulator listens on 127.0.0.1, on a free port) and no token
is needed: it shows what the stream looks like and how ``listen`` prints it.
"""

from __future__ import annotations

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


async def demo(rate: float, count: int | None, fmt: str, seed: int | None = None) -> int:
    """Serve generated events at ``rate`` on loopback and print them until stopped."""
    async with Emulator(rate=rate, seed=seed) as emulator:
        logger.info(
            "demo: a local emulator on %s sends %g events/s; Ctrl-C to stop", emulator.url, rate
        )
        settings = StreamSettings(fmt=fmt, count=count, status=True)
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
@loop_option
@logging_options
def command(
    rate: float,
    count: int | None,
    fmt: str | None,
    seed: int | None,
    use_uvloop: bool | None,
    log: LogSettings,
) -> None:
    """Start a local emulator and print its events as 'listen' would.

    No network and no token needed: the emulator runs in this process on 127.0.0.1.
    """
    log.configure()
    if log.verbosity <= 0:
        # The demo's own line says where the emulator is; its start/stop lines are noise here.
        logging.getLogger("neuroio.emulator").setLevel(logging.WARNING)
    if fmt is None:
        fmt = "pretty" if os.isatty(1) else "jsonl"
    run(lambda: demo(rate, count, fmt, seed), log=log, use_uvloop=use_uvloop)
