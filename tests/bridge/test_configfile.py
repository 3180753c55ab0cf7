"""The config file layer in-process: ${VAR}, secret files, where merged into the filter, the
routes handed to BridgeConfig, and errors naming the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from neuroio.bridge._configfile import expand, load
from neuroio.bridge.config import CooldownConfig, FilterConfig, RouteConfig
from neuroio.exceptions import ConfigurationError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "1"),
        ("x${A}y${B}", "x1y"),
        ("${UNSET:-dflt}", "dflt"),
        ("${B:-dflt}", "dflt"),  # empty counts as unset with :-, as in a shell
        ("$${A}", "${A}"),
        ("$A and $", "$A and $"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": ""}) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${UNSET}", "k: environment variable UNSET is not set"),
        ("${A", "k: '${' is not closed"),
        ("${1x}", "k: ${1x} is not a variable name"),
    ],
)
def test_expand_refuses(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem.replace("$", r"\$").replace("{", r"\{")):
        expand(text, {"A": "1"}, "k")


def test_routes_reach_the_bridge_config_with_where_merged(tmp_path: Path) -> None:
    """[[route]] tables become RouteConfig; a route's where is ANDed with the filter's; --to
    style routes and options keep their flat names."""
    path = write(
        tmp_path,
        'to = ["file:all.jsonl"]\n'
        "[spool]\nmax_bytes = 1048576\n"
        '[[route]]\nname = "a"\nto = "memory:a"\n'
        'filter = { result = ["exact"], where = "data.age > `3`" }\n'
        'where = "data.sex == `1`"\n'
        'cooldown = { key = ["pid"], seconds = 2.5 }\n'
        '[[route]]\nname = "b"\nto = "memory:b"\nwhere = "data.pid"\n',
    )
    config = load(path).bridge_config()
    assert config.to == ("file:all.jsonl",)
    assert config.spool_max_bytes == 1048576
    assert config.routes == (
        RouteConfig(
            name="a",
            to="memory:a",
            filter=FilterConfig(result=("exact",), where="(data.age > `3`) && (data.sex == `1`)"),
            cooldown=CooldownConfig(key=("pid",), seconds=2.5),
        ),
        RouteConfig(name="b", to="memory:b", filter=FilterConfig(where="data.pid")),
    )


def test_a_route_uri_from_a_secret_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """to_file: the URI is the file's first line; a file others can read is warned about."""
    secret = tmp_path / "uri"
    secret.write_text("redis://:pw@127.0.0.1:6379/0\n")
    secret.chmod(0o644)
    path = write(tmp_path, f'[[route]]\nname = "r"\nto_file = "{secret}"\n')
    with caplog.at_level(logging.WARNING, logger="neuroio.bridge"):
        routes = load(path).routes
    assert routes[0].to == "redis://:pw@127.0.0.1:6379/0"
    assert "can be read by other users (mode 644)" in caplog.text


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[[route]]\nname = "r"\n', "route[0] (r): missing required key 'to'"),
        (
            '[[route]]\nname = "r"\nto = "memory:"\n[[route]]\nname = "r"\nto = "memory:x"\n',
            "route[1] (r).name: route[0] has the same name",
        ),
        (
            '[[route]]\nname = "r"\nto = "memory:"\nfilter = { age_min = 30, age_max = 20 }\n',
            r"route[0] (r).filter.age_min: 30 is greater than age_max 20",
        ),
        (
            '[[route]]\nname = "r"\nto = "memory:"\ncooldown = { key = ["pid"], seconds = 0 }\n',
            "route[0] (r).cooldown.seconds: must be a positive number",
        ),
        (
            '[[route]]\nname = "r"\nto = "memory:"\nwhere = "a[["\n',
            "route[0] (r).filter.where: invalid JMESPath expression",
        ),
        ('[connection]\nurl = "http://x"\n', "connection.url: must start with ws://"),
        ("[connection]\nmax_retries = -1\n", "connection.max_retries: expected an integer >= 0"),
        ('[webhook]\nsecret = "a"\nsecret_file = "b"\n', "webhook: give secret or secret_file"),
        ('[log]\nlevel = "loud"\n', "log.level: must be one of 'debug', 'error'"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, body: str, problem: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigurationError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: {problem}")


def test_a_to_sink_named_as_a_route_is_refused(tmp_path: Path) -> None:
    """A route and a take-everything sink of one name would share a place in the spool."""
    from neuroio.bridge._configfile import check_sinks

    path = write(tmp_path, 'to = ["memory:x"]\n[[route]]\nname = "x"\nto = "memory:y"\n')
    file = load(path)
    with pytest.raises(ConfigurationError, match=r"to\[0\]: the sink x has the name of a"):
        check_sinks(file.bridge_config(), origin={"memory:x": f"{path}: to[0]"})
