"""The emulator as a whole: its options and lifecycle."""

from __future__ import annotations

from typing import Any

import pytest

from neuroio.exceptions import ConfigurationError
from neuroio.testing import Emulator

# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"rate": 0},
        {"auth_timeout": 0},
        {"history_size": 0},
        {"replay_speed": -1},
        {"tokens": [""]},
        {"close_timeout": 0},
    ],
)
def test_invalid_options(kwargs: dict[str, Any]) -> None:
    """Invalid options raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        Emulator(**kwargs)


def test_url_needs_start() -> None:
    """url, api_url and port exist only once started."""
    with pytest.raises(RuntimeError):
        _ = Emulator().url
