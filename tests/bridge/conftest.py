"""Fixtures of the bridge's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from neuroio.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s  # type: ignore[misc]
    s.close()
