"""The ``neuroio-events`` command line (also ``python -m neuroio``).

Commands are registered in :data:`COMMANDS`: the name a user types, and the module of this
package defining it as a ``click.Command`` named ``command``. A module is imported only when
its command runs or ``--help`` lists it, and a registered module that does not exist is left
out, so a new command is one new module plus one line here. Shared options (token, URL,
listener timings, uvloop, logging) are decorators in :mod:`neuroio.cli._options`; running a
coroutine with the common exit codes is :func:`neuroio.cli._run.run`.

click and rich are the optional ``cli`` extra: without them, :func:`main` prints how to
install them and exits with status 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "listen": "listen",
    "emulate": "emulate",
    "demo": "demo",
    "doctor": "doctor",
    "bridge": "bridge",
    "deadletters": "deadletters",
}
"""Command name → module of :mod:`neuroio.cli` whose ``command`` attribute implements it."""

_INSTALL_HINT = (
    "neuroio-events: the command line needs the optional dependencies of the 'cli' extra "
    "(missing: {missing}).\nInstall them with:  pip install 'neuroio-events[cli]'\n"
)

try:
    import click
    import rich  # noqa: F401  (checked here so that a missing rich is reported up front)
except ImportError as _exc:
    _missing: str | None = _exc.name or "click"
else:
    _missing = None


if _missing is None:

    class _LazyGroup(click.Group):
        """A group that imports a command's module only when the command is needed."""

        def list_commands(self, ctx: click.Context) -> list[str]:
            return [name for name, module in COMMANDS.items() if _module_exists(module)]

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            module_name = COMMANDS.get(cmd_name)
            if module_name is None or not _module_exists(module_name):
                return None
            try:
                module = importlib.import_module(f"{__name__}.{module_name}")
            except ImportError as exc:
                return _unavailable(cmd_name, exc)
            command: object = getattr(module, "command", None)
            if not isinstance(command, click.Command):
                raise RuntimeError(f"{module.__name__} defines no click command named 'command'")
            return command

    @click.group(
        cls=_LazyGroup,
        context_settings={
            "help_option_names": ["-h", "--help"],
            "auto_envvar_prefix": "NEUROIO",
            "max_content_width": 100,
        },
    )
    @click.version_option(package_name="neuroio-events", prog_name="neuroio-events")
    def cli() -> None:
        """Client for the NeuroIO real-time events stream.

        Start with `neuroio-events demo` (no network, no token). Exit codes: 0 ok or
        stopped by a signal, 1 error, 2 usage error, 3 token rejected, 4 no connection
        after --max-retries.
        """


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{name}") is not None


def _unavailable(name: str, exc: ImportError) -> click.Command:
    """A stand-in for a command whose module needs something that is not installed."""
    missing = exc.name or str(exc)

    @click.command(name, short_help=f"(unavailable: needs {missing})")
    def stand_in() -> None:
        raise click.UsageError(
            f"'{name}' needs {missing}, which is not installed: pip install 'neuroio-events[all]'"
        )

    return stand_in


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``neuroio-events`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    if _missing is not None:
        sys.stderr.write(_INSTALL_HINT.format(missing=_missing))
        sys.exit(2)
    cli.main(args=list(argv) if argv is not None else None, prog_name="neuroio-events")
    sys.exit(0)  # pragma: no cover  (click exits itself in standalone mode)
