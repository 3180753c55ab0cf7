"""The API token's one home: a fixed string, or a provider asked again when the token fails.

A provider is a callable or an async callable returning the token. :class:`Tokens` asks it
once and keeps its answer as long as the server accepts it; after a rejection the next
:meth:`Tokens.get` asks again. Every token it ever held is registered for redaction until
:meth:`Tokens.release` (the owner's end of life), so a rotated-out token that an old log
line or error could still quote stays hidden.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from . import _redact
from .exceptions import ConfigurationError

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
