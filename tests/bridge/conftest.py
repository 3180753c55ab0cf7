"""Fixtures of the bridge's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroio.bridge.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()
