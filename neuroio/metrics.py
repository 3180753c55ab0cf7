"""Kept so that ``neuroio.metrics`` still imports: the metrics are :mod:`neuroio.bridge.metrics`."""

from .bridge.metrics import BridgeCollector, BridgeMetrics

__all__ = ["BridgeCollector", "BridgeMetrics"]
