"""Shared fixtures: real services on loopback, skipped (or failed under CI=true) when absent."""

from __future__ import annotations

import os
import socket

import pytest

REDIS_START = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
NATS_START = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)

MQTT_START = "mosquitto -d -c /etc/mosquitto/mosquitto.conf"
AMQP_START = "service rabbitmq-server start"
POSTGRES_START = "service postgresql start"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, port: int, start: str) -> None:
    """Skip the test when the service is down; under CI=true, fail instead."""
    if _reachable("127.0.0.1", port):
        return
    message = f"{name} is not reachable on 127.0.0.1:{port}; start it with: {start}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis server (db 15, flushed by the tests that use it)."""
    require_service("Redis", 6379, REDIS_START)
    return "redis://127.0.0.1:6379/15"


@pytest.fixture
def nats_url() -> str:
    """URL of the real NATS server with JetStream."""
    require_service("NATS", 4222, NATS_START)
    return "nats://127.0.0.1:4222"


@pytest.fixture
def mqtt_url() -> str:
    """URL of the real Mosquitto broker (anonymous)."""
    require_service("Mosquitto", 1883, MQTT_START)
    return "mqtt://127.0.0.1:1883"


@pytest.fixture
def amqp_url() -> str:
    """URL of the real RabbitMQ broker (guest/guest, vhost ``/``)."""
    require_service("RabbitMQ", 5672, AMQP_START)
    return "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def postgres_url() -> str:
    """URL of the real PostgreSQL server (database ``test``, trust auth)."""
    require_service("PostgreSQL", 5432, POSTGRES_START)
    return "postgresql://postgres@127.0.0.1:5432/test"
