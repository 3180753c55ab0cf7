"""Cooldowns: one event per key per window, by event time, in bounded memory."""

from __future__ import annotations

from typing import Any

import pytest

from neuroio._routing.cooldown import Cooldown
from neuroio.exceptions import ConfigurationError


def event(**data: Any) -> dict[str, Any]:
    return {"id": 1, "data": data}


def test_one_event_per_key_per_window() -> None:
    cooldown = Cooldown(["pid"], 30)
    assert cooldown.admit(event(pid="a"), 100.0)
    assert not cooldown.admit(event(pid="a"), 129.9)
    assert cooldown.admit(event(pid="b"), 110.0)  # another key has its own window
    assert cooldown.admit(event(pid="a"), 130.0)  # the window runs from the one let through
    assert not cooldown.admit(event(pid="a"), 159.0)


def test_the_key_is_every_path_and_a_missing_value_is_unknown() -> None:
    cooldown = Cooldown(["pid", "source.id"], 10)
    assert cooldown.key_of(event(pid="a", source={"id": 3})) == ("a", "3")
    assert cooldown.key_of(event(source={"id": 3})) == ("unknown", "3")
    assert cooldown.key_of({"id": 1}) == ("unknown", "unknown")
    assert cooldown.admit(event(pid="a", source={"id": 1}), 0.0)
    assert cooldown.admit(event(pid="a", source={"id": 2}), 0.0)
    assert cooldown.admit(event(), 0.0)
    assert not cooldown.admit(event(pid=None), 1.0)  # null shares the unknown key
    assert not cooldown.admit({"id": 2, "data": {"pid": ""}}, 1.0)


def test_expired_keys_are_forgotten() -> None:
    cooldown = Cooldown(["pid"], 5)
    for i in range(1000):
        assert cooldown.admit(event(pid=str(i)), float(i))
    # Only the keys whose window is still open are kept.
    assert len(cooldown) == 5


def test_the_table_is_capped_by_forgetting_the_oldest() -> None:
    cooldown = Cooldown(["pid"], 3600, max_keys=3)
    for i in range(5):
        assert cooldown.admit(event(pid=str(i)), float(i))
    assert len(cooldown) == 3
    assert cooldown.admit(event(pid="0"), 10.0)  # forgotten: goes out early
    assert not cooldown.admit(event(pid="4"), 10.0)  # kept


def test_a_clock_stepped_back_silences_a_key_for_at_most_two_windows() -> None:
    cooldown = Cooldown(["pid"], 10)
    assert cooldown.admit(event(pid="a"), 1000.0)
    assert not cooldown.admit(event(pid="a"), 995.0)  # back 5 s: still within the window
    assert cooldown.admit(event(pid="a"), 900.0)  # back by more than a window: a new one
    assert not cooldown.admit(event(pid="a"), 905.0)


@pytest.mark.parametrize(
    ("key", "seconds", "message"),
    [
        ([], 10, "route r: cooldown.key: must be a non-empty list"),
        ("pid", 10, "route r: cooldown.key: must be a non-empty list"),
        (["pid", "a..b"], 10, "route r: cooldown.key"),
        (["{pid}"], 10, "route r: cooldown.key: '{pid}' is not a field path"),
        (["pid"], 0, "route r: cooldown.seconds: must be a positive number, got 0"),
        (["pid"], float("nan"), "route r: cooldown.seconds: must be a positive number"),
        (["pid"], True, "route r: cooldown.seconds"),
    ],
)
def test_bad_cooldowns_name_the_route_and_key(key: Any, seconds: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Cooldown(key, seconds, what="route r: cooldown")
    assert str(caught.value).startswith(message), str(caught.value)
