"""Which addresses name this machine only: the one loopback test of the package."""

from __future__ import annotations

import ipaddress

import yarl

__all__ = ["is_loopback", "is_loopback_url"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether the host of ``url`` names this machine only."""
    try:
        host = yarl.URL(url).host
    except (ValueError, TypeError):
        return False
    return host is not None and is_loopback(host)
