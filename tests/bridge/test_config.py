"""BridgeConfig: flat CLI option names, the embedded listener options, one validation."""

from __future__ import annotations

import pytest

from neuroio.bridge import Bridge, BridgeConfig
from neuroio.exceptions import (
    ConfigurationError,
)

from ._common import TOKEN


def test_config_field_names_are_the_cli_options() -> None:
    """from_options takes CLI option names and builds the same sinks and config."""
    bridge = Bridge.from_options(
        TOKEN,
        to=["memory:a", "file:/tmp/x.jsonl"],
        spool="/tmp/never-opened.db",
        spool_max_bytes=1 << 20,
        webhook_secret="s3cret",
        metrics_port=None,
        health_max_sink_failure=30.0,
    )
    assert [s.name for s in bridge.sinks] == ["a", "file:/tmp/x.jsonl"]
    assert bridge.config == BridgeConfig(
        to=("memory:a", "file:/tmp/x.jsonl"),
        spool="/tmp/never-opened.db",
        spool_max_bytes=1 << 20,
        webhook_secret="s3cret",
        health_max_sink_failure=30.0,
    )
    assert "s3cret" not in repr(bridge.config) and TOKEN not in repr(bridge)
    with pytest.raises(ConfigurationError, match="invalid bridge option"):
        Bridge.from_options(TOKEN, to=["memory:"], no_such_option=1)
    with pytest.raises(ConfigurationError):
        Bridge.from_options(TOKEN, to=["memory:"], spool_max_bytes=0)
