"""``neuroio-events emulate``: run the local NeuroIO events service standalone.

Prints the events URL and the REST URL on stdout (one per line, so a script can read them),
then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from .._net import is_loopback
from .._words import plural
from ..exceptions import ConfigurationError
from ..testing import MAX_SPACES, REST_ORDERS, REST_SHAPES, Emulator, RestOrder, RestShape
from ._options import LogSettings, logging_options, loop_option
from ._run import EXIT_OK, CommandFailed, StopSignals, run

__all__ = ["command", "serve"]

logger = logging.getLogger("neuroio.cli")


async def serve(
    emulator: Emulator,
    *,
    replaying: bool,
    tokens_file: Path | None = None,
    keep: frozenset[str] = frozenset(),
    port: int | None = None,
) -> int:
    """Start ``emulator``, print its URLs, serve until SIGINT/SIGTERM, stop it.

    ``tokens_file``: followed while serving (see :func:`_follow_tokens`). ``port``: the
    port asked for, named when it cannot be bound.

    Raises:
        CommandFailed: the port cannot be bound.
    """
    try:
        await emulator.start()
    except OSError as exc:
        raise CommandFailed(
            f"cannot listen on {emulator.host}:{port if port is not None else '?'}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    try:
        with contextlib.suppress(BrokenPipeError):
            # A space's token is how a client picks its space: the user needs them.
            sys.stdout.write(
                "".join(
                    f"{line}\n" for line in (emulator.url, emulator.api_url, *emulator.space_tokens)
                )
            )
            sys.stdout.flush()
        accepted = emulator.tokens
        tokens = "any non-empty token" if accepted is None else plural(len(accepted), "token")
        rate = f"{emulator.rate:g} events/s" if emulator.rate else "no generated events"
        if emulator.rate and emulator.space_tokens:
            rate += f" in each of {len(emulator.space_tokens)} spaces"
        if emulator.rate and emulator.stream_count is not None:
            rate += f" until {plural(emulator.stream_count, 'event')} each"
        logger.info(
            "emulating the NeuroIO events service on %s (REST %s): accepting %s, %s%s; "
            "Ctrl-C to stop",
            emulator.url,
            emulator.api_url,
            tokens,
            rate,
            ", replaying a recording once a client authenticates" if replaying else "",
        )
        with StopSignals() as signals:
            waits: list[asyncio.Task[Any]] = [asyncio.create_task(signals.requested.wait())]
            if replaying:
                waits.append(asyncio.create_task(_report_replay(emulator)))
            if tokens_file is not None:
                waits.append(asyncio.create_task(_follow_tokens(emulator, tokens_file, keep)))
            try:
                await signals.requested.wait()
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await emulator.stop()
    return EXIT_OK


def read_tokens(path: Path) -> set[str]:
    """The tokens of a tokens file: one a line, blank lines and ``#`` comments skipped.

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    return {t for line in lines if (t := line.strip()) and not t.startswith("#")}


async def _follow_tokens(
    emulator: Emulator, path: Path, keep: frozenset[str] = frozenset(), interval: float = 0.2
) -> None:
    """Read ``path`` again when it changes: new tokens accepted, removed ones revoked.

    ``keep``: the tokens given with ``--token``, accepted whatever the file says.

    A revoked token's live connections are dropped, as the platform does. A file that cannot
    be read keeps the tokens as they are, said once per change.
    """
    seen: tuple[int, int] | None = None
    while True:
        await asyncio.sleep(interval)  # polling a file: nothing to wait on
        try:
            info = path.stat()
            now = (info.st_mtime_ns, info.st_size)
            if now == seen:
                continue
            seen = now
            wanted = read_tokens(path) | keep
        except (OSError, UnicodeDecodeError) as exc:
            if seen != (0, 0):
                seen = (0, 0)
                logger.warning("cannot read the tokens file %s (%s); tokens unchanged", path, exc)
            continue
        current = set(emulator.tokens or ())
        for token in wanted - current:
            emulator.accept(token)
        for token in current - wanted:
            await emulator.revoke(token)
        logger.info("tokens file %s read: accepting %d token(s)", path, len(wanted))


async def _report_replay(emulator: Emulator) -> None:
    while True:
        try:
            await emulator.wait_replayed(timeout=3600.0)
        except TimeoutError:
            continue
        logger.info(
            "the recording has been replayed (%s emitted)", plural(emulator.emitted, "event")
        )
        return


@click.command("emulate", short_help="Run a local NeuroIO events service (for tests and demos).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="NEUROIO_EMULATE_HOST",
    show_envvar=True,
    help="Address to listen on; anything but loopback needs --public.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    envvar="NEUROIO_EMULATE_PORT",
    show_envvar=True,
    help="Port to listen on; 0 picks a free one (printed on stdout).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=None,
    show_default="1, or 0 with --replay",
    envvar="NEUROIO_EMULATE_RATE",
    show_envvar=True,
    help="Generated events per second (in each space with --spaces); 0 for none.",
)
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    envvar="NEUROIO_EMULATE_COUNT",
    show_envvar=True,
    help="Stop generating after N events (in each space with --spaces); the REST API and "
    "connections are still served.",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="TOKEN",
    envvar="NEUROIO_EMULATE_TOKENS",
    show_envvar=True,
    help="Accept this API token (repeatable); without any, accept every non-empty token.",
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="NEUROIO_EMULATE_TOKENS_FILE",
    show_envvar=True,
    help="Accept the tokens in this file (one a line), read again when it changes: removed "
    "tokens are revoked and their connections dropped.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    envvar="NEUROIO_EMULATE_SEED",
    show_envvar=True,
    help="Seed of the generated entries (the same seed gives the same entries).",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="NEUROIO_EMULATE_REPLAY",
    show_envvar=True,
    help="Play back a recording made with 'listen --record' once a client authenticates.",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    envvar="NEUROIO_EMULATE_SPEED",
    show_envvar=True,
    help="Replay speed: 2 is twice as fast, 0 as fast as possible.",
)
@click.option(
    "--push-while-disconnected/--no-push-while-disconnected",
    default=True,
    show_default=True,
    envvar="NEUROIO_EMULATE_PUSH_WHILE_DISCONNECTED",
    show_envvar=True,
    help="Send events emitted while no client was connected once one authenticates; with "
    "--no-push-while-disconnected they are lost, as on the platform (only the REST API "
    "has them).",
)
@click.option(
    "--clock-offset",
    type=click.FloatRange(min=-1e9, max=1e9),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    envvar="NEUROIO_EMULATE_CLOCK_OFFSET",
    show_envvar=True,
    help="Run the server's clock this many seconds off (negative: behind): the 'created' of "
    "generated entries, and so the REST date_from/date_to filters, follow it.",
)
@click.option(
    "--rest-order",
    type=click.Choice(REST_ORDERS),
    default="desc",
    show_default=True,
    envvar="NEUROIO_EMULATE_REST_ORDER",
    show_envvar=True,
    help="Order of GET /v1/entries/ results: desc (newest first) or asc (oldest first).",
)
@click.option(
    "--rest-shape",
    type=click.Choice(REST_SHAPES),
    default="page",
    show_default=True,
    envvar="NEUROIO_EMULATE_REST_SHAPE",
    show_envvar=True,
    help="Shape of GET /v1/entries/ answers: page ({count, next, previous, results}) or "
    "list (a bare JSON list, still honouring limit and offset).",
)
@click.option(
    "--spaces",
    type=click.IntRange(1, MAX_SPACES),
    default=None,
    metavar="N",
    help=f"Serve N spaces (up to {MAX_SPACES:,}), each with its own token, ids (space k's from "
    "k*10**9+1), REST history and events; the tokens are printed after the URLs, one a line; "
    "--rate applies to each space. Not with --token, --tokens-file or --replay.",
)
@click.option(
    "--history-size",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    metavar="N",
    envvar="NEUROIO_EMULATE_HISTORY_SIZE",
    show_envvar=True,
    help="Entries the REST API keeps (in each space with --spaces); the oldest go first.",
)
@click.option(
    "--connection-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    envvar="NEUROIO_EMULATE_CONNECTION_LOG",
    show_envvar=True,
    help="Append a JSON line to FILE when a connection opens, is authenticated and closes "
    "(its id, space, time and who closed it; never the token).",
)
@click.option(
    "--public",
    is_flag=True,
    help="Allow listening on a non-loopback address (the emulator has no real security).",
)
@loop_option
@logging_options
def command(
    host: str,
    port: int,
    rate: float | None,
    count: int | None,
    tokens: tuple[str, ...],
    tokens_file: Path | None,
    seed: int | None,
    replay: Path | None,
    speed: float,
    push_while_disconnected: bool,
    clock_offset: float,
    rest_order: RestOrder,
    rest_shape: RestShape,
    spaces: int | None,
    history_size: int,
    connection_log: Path | None,
    public: bool,
    use_uvloop: bool | None,
    log: LogSettings,
) -> None:
    """Run the NeuroIO events emulator: WebSocket events and the REST entries list.

    Prints the events URL and the REST URL on stdout (then, with --spaces, the token of
    each space, one a line), then serves until Ctrl-C.

    \b
    Examples:
      neuroio-events emulate --rate 10 --token test-token
      neuroio-events emulate --port 0 --replay incident.rec --speed 10
      neuroio-events emulate --spaces 3 --rate 5
      neuroio-events emulate --spaces 1000 --connection-log conn.jsonl
    """
    log.configure()
    if not public and not is_loopback(host):
        raise click.UsageError(
            f"{host} is not a loopback address: anyone who can reach it could connect; "
            "add --public if that is what you want"
        )
    if public and not is_loopback(host):
        logger.warning("listening on %s: reachable from other machines", host)
    if rate is None:
        rate = 0.0 if replay is not None else 1.0
    accepted = [t for t in tokens if t]
    if spaces is not None and (accepted or tokens_file is not None):
        raise click.UsageError("--spaces generates the tokens: not with --token or --tokens-file")
    if tokens_file is not None:
        try:
            accepted += sorted(read_tokens(tokens_file))
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"cannot read the tokens file {tokens_file}: {exc}") from None
        if not accepted:
            raise click.UsageError(f"the tokens file {tokens_file} holds no token")
    try:
        emulator = Emulator(
            host=host,
            port=port,
            tokens=accepted or None,
            rate=rate or None,
            stream_count=count,
            seed=seed,
            push_while_disconnected=push_while_disconnected,
            replay=replay,
            replay_speed=speed,
            clock_offset=clock_offset,
            rest_order=rest_order,
            rest_shape=rest_shape,
            spaces=spaces,
            history_size=history_size,
            connection_log=connection_log,
        )
    except ConfigurationError as exc:
        # nan passes click's number ranges; the emulator's own check words it.
        raise click.UsageError(str(exc)) from None
    run(
        lambda: serve(
            emulator,
            replaying=replay is not None,
            tokens_file=tokens_file,
            keep=frozenset(t for t in tokens if t),
            port=port,
        ),
        log=log,
        use_uvloop=use_uvloop,
    )
