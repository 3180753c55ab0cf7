"""BridgeConfig: flat CLI option names, the embedded listener options, one validation."""

from __future__ import annotations

import re

import msgspec
import pytest

from neuroio._config import ConnectionOptions, RecoveryOptions
from neuroio.bridge import BRIDGE_RECOVERY, Bridge, BridgeConfig
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


def test_flat_names_land_in_the_embedded_listener_options() -> None:
    """Listener option names go into connection/recovery, the bridge's own stay on the
    config; what is not given keeps the shared defaults, with the bridge's recovery ones."""
    config = BridgeConfig.from_flat(
        to=["memory:"], ping_interval=0.2, max_queue=7, since="41", sink_retry_delay=0.1
    )
    assert config.connection == msgspec.structs.replace(
        ConnectionOptions(), ping_interval=0.2, max_queue=7
    )
    assert config.recovery == msgspec.structs.replace(BRIDGE_RECOVERY, since="41")
    assert config.sink_retry_delay == 0.1 and config.to == ("memory:",)
    assert BridgeConfig().recovery.backfill is True
    assert BridgeConfig().recovery.backfill_max_events is None
    assert BridgeConfig().recovery.backfill_max_age is None
    assert RecoveryOptions().backfill is False  # the listener's default differs on purpose


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ping_interval": 0}, "ping_interval must be positive"),
        ({"api_url": "ftp://x"}, "api_url must start with http"),
        ({"sink_retry_delay": 2.0, "sink_max_retry_delay": 1.0}, "sink_retry_delay"),
        ({"metrics_port": 70000}, "metrics_port must be 0..65535"),
        ({"spool_sync": "sometimes"}, "spool_sync must be"),
        ({"bogus": 1, "other": 2}, "invalid bridge option: unknown bogus, other"),
    ],
)
def test_bad_options_are_one_configuration_error(options: dict[str, object], message: str) -> None:
    """Every bad option, the listener's or the bridge's, is one ConfigurationError line."""
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        BridgeConfig.from_flat(**options)
    assert "\n" not in str(caught.value)
