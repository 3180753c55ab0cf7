"""The API token's one home: a fixed string, or a provider asked again when the token fails.

A provider is a callable or an async callable returning the token. :class:`Tokens` asks it
once and keeps its answer as long as the server accepts it; after a rejection the next
:meth:`Tokens.get` asks again. Every token it ever held is registered for redaction until
:meth:`Tokens.release` (the owner's end of life), so a rotated-out token that an old log
line or error could still quote stays hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import _redact
from .exceptions import ConfigurationError

logger = logging.getLogger("neuroio.token")

TokenProvider = Callable[[], str] | Callable[[], Awaitable[str]]
"""A callable or async callable giving the current API token."""

TokenSource = str | TokenProvider
"""What ``api_token=`` accepts: the token, or a provider of it."""


class TokenError(Exception):
    """The provider raised or gave no token (internal); the message never holds a token."""


class Tokens:
    """The token for the next connection attempt or REST request.

    Args:
        source: the token, or a provider of it.
        guard: register a fixed token for redaction (provided tokens always are).

    Raises:
        ConfigurationError: ``source`` is neither a non-empty string nor a callable.
    """

    __slots__ = ("_provider", "_current", "_used")

    def __init__(self, source: TokenSource, *, guard: bool = True) -> None:
        self._used: list[str] = []
        self._provider: TokenProvider | None = None
        self._current: str | None = None
        if isinstance(source, str):
            if not source:
                raise ConfigurationError("api_token must be a non-empty string")
            self._current = source
            if guard:
                self._remember(source)
        elif callable(source):
            self._provider = source
        else:
            raise ConfigurationError(
                "api_token must be a non-empty string or a callable returning one"
            )

    def __repr__(self) -> str:
        kind = "fixed" if self._provider is None else "provided"
        return f"<Tokens {kind}, {len(self._used)} used>"

    @property
    def dynamic(self) -> bool:
        """Whether a provider can give another token after a rejection."""
        return self._provider is not None

    async def get(self) -> str:
        """The token to use now: the one that last worked, else the provider's answer.

        Raises:
            TokenError: the provider raised, or returned something that is not a token.
        """
        current = self._current
        if current is not None:
            return current
        provider = self._provider
        assert provider is not None
        try:
            value = provider()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            detail = _redact.redact(str(exc)) or type(exc).__name__
            raise TokenError(f"the token provider failed: {detail}") from None
        if not isinstance(value, str) or not value.strip():
            raise TokenError("the token provider gave no token")
        token = value.strip()
        self._remember(token)
        self._current = token
        return token

    def rejected(self, token: str) -> None:
        """The server refused ``token``: the next :meth:`get` asks the provider again."""
        if self._provider is not None and self._current == token:
            self._current = None

    def release(self) -> None:
        """Stop redacting every token held (the owner is gone)."""
        used, self._used = self._used, []
        for token in used:
            _redact.release(token)

    def _remember(self, token: str) -> None:
        if token not in self._used:
            self._used.append(token)
            _redact.guard(token)


class TokenFile:
    """A token provider reading the first line of a file, again whenever the file changes.

    Made by :func:`token_file`; see there.
    """

    __slots__ = ("path", "_seen", "_token", "_warned")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._token: str | None = None
        self._warned = False

    def __repr__(self) -> str:
        return f"<TokenFile {str(self.path)!r}>"

    def __call__(self) -> str:
        """The token: the file's first line, stripped; read again only when the file changed.

        Raises:
            ConfigurationError: the file cannot be read, is not UTF-8 text, or is empty.
        """
        path = self.path
        try:
            info = os.stat(path)
            seen = (info.st_mtime_ns, info.st_size, info.st_ino)
            if seen == self._seen and self._token is not None:
                return self._token
            with path.open(encoding="utf-8") as file:
                first = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigurationError(f"cannot read the token file {path}: {reason}") from None
        if not first:
            raise ConfigurationError(
                f"the token file {path} is empty (the token is its first line)"
            )
        if info.st_mode & (stat.S_IRGRP | stat.S_IROTH) and not self._warned:
            self._warned = True
            logger.warning(
                "the token file %s can be read by other users (mode %03o); run: chmod 600 %s",
                path,
                stat.S_IMODE(info.st_mode),
                path,
            )
        if first != self._token:
            # Guarded as soon as read: a later error or log line quoting it stays clean.
            # Never released: the file's tokens live as long as the provider may hand them.
            _redact.guard(first)
        self._seen, self._token = seen, first
        return first


def token_file(path: str | os.PathLike[str]) -> TokenFile:
    """A token provider for ``EventListener(api_token=...)`` that reads ``path``.

    The token is the file's first line, whitespace stripped. The file is read again when
    its modification time, size or inode changes (a rewrite, or a new file moved over it),
    so a rotation is one write of the file. A file that cannot be read or is empty makes the
    call raise :class:`~neuroio.exceptions.ConfigurationError` (for the listener: a failed
    connection attempt, retried with backoff). A file other users can read is warned about,
    once.
    """
    return TokenFile(path)


class TokenCommand:
    """A token provider running a command and taking the first line of its output.

    Args:
        argv: the command and its arguments (no shell: write ``sh -c '...'`` for one).
        timeout: seconds the command may take; it is killed after.
    """

    __slots__ = ("argv", "timeout")

    def __init__(self, argv: list[str], timeout: float = 10.0) -> None:
        if not argv:
            raise ConfigurationError("the token command is empty")
        self.argv = list(argv)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<TokenCommand {self.argv[0]!r}>"

    async def __call__(self) -> str:
        """Run the command; its first line of stdout, stripped. Its stderr is logged.

        Raises:
            ConfigurationError: it cannot be started, times out, exits non-zero or prints
                no token.
        """
        name = self.argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot run the token command {name}: {exc.strerror}"
            ) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ConfigurationError(
                f"the token command {name} did not finish within {self.timeout:g} s"
            ) from None
        first = out.decode("utf-8", "replace").partition("\n")[0].strip()
        if first:
            _redact.guard(first)  # before its stderr is logged, which might quote it
        for line in err.decode("utf-8", "replace").splitlines():
            if line.strip():
                logger.warning("token command %s: %s", name, _redact.redact(line.rstrip()))
        if proc.returncode != 0:
            raise ConfigurationError(
                f"the token command {name} exited with status {proc.returncode}"
            )
        if not first:
            raise ConfigurationError(f"the token command {name} printed no token")
        return first


def token_command(argv: list[str], *, timeout: float = 10.0) -> TokenCommand:
    """A token provider that runs ``argv`` (no shell) and uses its first line of stdout.

    Its stderr is logged (tokens redacted); a non-zero exit, a timeout or no output makes
    the call raise :class:`~neuroio.exceptions.ConfigurationError`, which the listener
    counts as a failed connection attempt, retried with backoff.
    """
    return TokenCommand(argv, timeout)
