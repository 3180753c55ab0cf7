"""``neuroio-events deadletters``: see, retry and purge the events sinks refused for good.

Works on the spool of a running bridge: it never takes the bridge's lock
(:class:`~neuroio.bridge.spool.DeadLetterStore`). ``retry`` only writes requests into the
spool; the running bridge delivers them to their sinks within about a second (the next bridge
to start, when none runs), and removes each dead letter once its sink confirmed it.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import click
import msgspec

from .._io import write_all
from ..bridge.spool import DeadLetter, DeadLetterStore, default_spool_path
from ..exceptions import SpoolError
from ._options import LogSettings, logging_options, spool_option
from ._run import EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail

__all__ = ["command"]

_encoder = msgspec.json.Encoder()
_ACTIONS = ("list", "show", "retry", "purge")


def _when(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _record(letter: DeadLetter, *, event: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "sink": letter.sink,
        "id": letter.event.id,
        "seq": letter.event.seq,
        "reason": letter.error,
        "at": _when(letter.at),
        "received_at": _when(letter.event.received_at),
        "retry_pending": letter.retry_pending,
    }
    if event:
        try:
            record["event"] = msgspec.json.decode(letter.event.payload)
        except msgspec.DecodeError:
            record["event"] = letter.event.payload.decode("utf-8", "replace")
    return record


def _line(letter: DeadLetter) -> str:
    pending = "  (retry pending)" if letter.retry_pending else ""
    return (
        f"{_when(letter.at)}  {letter.sink}  id={letter.event.id}  seq={letter.event.seq}  "
        f"{letter.error}{pending}"
    )


def _out(text: str) -> None:
    write_all(sys.stdout.fileno(), text.encode("utf-8", "replace"))


def _stop(message: str, code: int, log: LogSettings) -> None:
    fail(message, log)
    sys.exit(code)


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _what(sink: str | None, event_id: int | None) -> str:
    """How the selection reads in a message: ``of sink 'hooks' of event 12``, or empty."""
    return _words(
        f"of sink {sink!r}" if sink is not None else "",
        f"of event {event_id}" if event_id is not None else "",
    )


@click.command(
    "deadletters",
    short_help="List, show, retry or purge the events sinks refused (works beside the bridge).",
)
@click.argument("action", type=click.Choice(_ACTIONS))
@spool_option("The bridge's spool (the same variable as the bridge's --spool).")
@click.option(
    "--sink",
    metavar="NAME",
    default=None,
    show_default="every sink",
    envvar="NEUROIO_DEADLETTERS_SINK",
    show_envvar=True,
    help="Only the dead letters of this sink (route) name.",
)
@click.option(
    "--id",
    "event_id",
    type=int,
    metavar="N",
    default=None,
    show_default="every event",
    help="Only the dead letters of this event id.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON lines on stdout: one object per dead letter (list, show: with the event), "
    "one summary object (retry, purge).",
)
@click.option("--yes", is_flag=True, help="Confirm purge: the selected dead letters are deleted.")
@logging_options
def command(
    action: str,
    spool: str | None,
    sink: str | None,
    event_id: int | None,
    as_json: bool,
    yes: bool,
    log: LogSettings,
) -> None:
    """List, show, retry or purge dead letters: events a sink refused for good.

    \b
    list   one line per dead letter: when, sink, event id, seq, reason
    show   the same, each followed by the event as spooled
    retry  deliver them again, each to its own sink, once: the running bridge
           does within about a second (or the next one to start); a dead letter
           refused again stays, with the new reason
    purge  delete them (needs --yes)

    Works while the bridge runs (it never takes the bridge's lock of the spool). --sink and
    --id narrow the selection. Exit 0 done (also an empty list); 1 nothing selected to show,
    retry or purge, or the spool cannot be read; 2 a usage error (an unknown sink, purge
    without --yes).

    \b
    Examples:
      neuroio-events deadletters list --spool /var/lib/neuroio/spool.db
      neuroio-events deadletters show --sink hooks --id 1234 --json | jq .event
      neuroio-events deadletters retry --sink hooks
      neuroio-events deadletters purge --sink old --yes
    """
    log.configure()
    if action == "purge" and not yes:
        _stop("purge deletes dead letters for good: add --yes to confirm", EXIT_USAGE, log)
    # Opening the database may create its write-ahead log and shared-memory files (when no
    # bridge runs): private from their first byte, as the spool makes them.
    os.umask(0o077)
    if spool is None:
        spool = str(default_spool_path())
    try:
        with DeadLetterStore(spool) as store:
            code = _act(store, action, sink, event_id, as_json, log)
    except SpoolError as exc:
        _stop(str(exc), EXIT_ERROR, log)
    except BrokenPipeError:
        code = EXIT_OK  # the reader had enough (`| head`): a quiet end
    sys.exit(code)


def _print(
    store: DeadLetterStore, show: bool, sink: str | None, event_id: int | None, as_json: bool
) -> int:
    """Write the selected dead letters to stdout as they are read; how many."""
    shown = 0
    lines: list[str] = []
    for letter in store.iterate(sink, event_id, payloads=show):
        shown += 1
        if as_json:
            lines.append(_encoder.encode(_record(letter, event=show)).decode() + "\n")
        else:
            lines.append(_line(letter) + "\n")
            if show:
                lines.append(letter.event.payload.decode("utf-8", "replace") + "\n")
        if len(lines) >= 500:  # memory stays bounded
            _out("".join(lines))
            lines.clear()
    _out("".join(lines))
    return shown


def _act(
    store: DeadLetterStore,
    action: str,
    sink: str | None,
    event_id: int | None,
    as_json: bool,
    log: LogSettings,
) -> int:
    if sink is not None:
        known = store.sinks()
        if sink not in known:
            names = ", ".join(sorted(known)) or "none"
            fail(f"no sink named {sink!r} in spool {str(store.path)!r} (sinks: {names})", log)
            return EXIT_USAGE
    what = _what(sink, event_id)
    nothing = _words("no dead letters", what, f"in spool {str(store.path)!r}")
    if action in ("list", "show"):
        if not _print(store, action == "show", sink, event_id, as_json):
            fail(nothing, log)
            return EXIT_OK if action == "list" else EXIT_ERROR
        return EXIT_OK
    if action == "retry":
        selected, added = store.retry(sink, event_id)
        if not selected:
            fail(nothing, log)
            return EXIT_ERROR
        waiting = {letter.sink for letter in store.select(sink, event_id, payloads=False)}
        absent = sorted(waiting - store.registered())
        if absent:
            fail(
                f"sink {', '.join(absent)} is not configured in the bridge that last ran on this "
                "spool: its retries wait until a bridge with it starts",
                log,
            )
        summary = {"action": "retry", "selected": selected, "requested": added}
        text = _words(
            f"{selected} dead letters",
            what,
            f"to retry ({selected - added} already waiting): the running bridge delivers them "
            "within about a second, else the next one to start\n",
        )
    else:
        removed = store.purge(sink, event_id)
        if not removed:
            fail(nothing, log)
            return EXIT_ERROR
        summary = {"action": "purge", "removed": removed}
        text = _words(f"{removed} dead letters", what, "deleted\n")
    _out(_encoder.encode(summary).decode() + "\n" if as_json else text)
    return EXIT_OK
