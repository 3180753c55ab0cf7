"""The async halves of the neuroio fixtures, on the test's loop: registered by the plugin
(``_pytest_plugin``) only when pytest-asyncio runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ._emulator import Emulator
from ._listeners import ListenerFactory
from ._pytest_plugin import emulator_options

__all__: list[str] = []


@pytest_asyncio.fixture
async def _neuroio_emulator_async(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with Emulator(**emulator_options(request)) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def _neuroio_listener_async(
    _neuroio_emulator_async: Any,
) -> AsyncIterator[ListenerFactory]:
    emulator = _neuroio_emulator_async
    factory = ListenerFactory(emulator.url, emulator.api_url)
    try:
        yield factory
    finally:
        await factory.aclose()
