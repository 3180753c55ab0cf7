"""The one sink-URI parser: typed options, the same one-line errors for every sink, redaction."""

from __future__ import annotations

from typing import Any

import pytest

from neuroio.exceptions import ConfigurationError, PermanentSinkError, SinkError
from neuroio.sinks import FileSink, MemorySink, from_uri, redact_uri
from neuroio.sinks._uri import (
    Bool,
    Choice,
    Duration,
    Float,
    Int,
    Option,
    Text,
    parse_options,
    parse_url,
)
from neuroio.sinks.base import retry_after_of
from neuroio.sinks.nats import NatsSink
from neuroio.sinks.redis import RedisSink
from neuroio.sinks.webhook import WebhookSink

URI = "x://h"


def value(option: Option[Any], raw: str) -> Any:
    return parse_options(f"{option.name}={raw}", [option], uri=URI, sink="test")[option]


@pytest.mark.parametrize(
    ("option", "raw", "expected"),
    [
        (Int("n", 0, minimum=1), "7", 7),
        (Int("n", 0), " 0", 0),
        (Float("f", 1.0), "2.5", 2.5),
        (Duration("d", 1.0), "30", 30.0),
        (Duration("d", 1.0), "1.5", 1.5),
        (Duration("d", 1.0), "500ms", 0.5),
        (Duration("d", 1.0), "5m", 300.0),
        (Duration("d", 1.0), "2h", 7200.0),
        (Duration("d", 1.0, whole=True), "1d", 86400.0),
        (Bool("b", False), "TRUE", True),
        (Bool("b", True), "off", False),
        (Bool("b", False), "1", True),
        (Choice("c", "a", choices=("none", "Required")), "required", "Required"),
        (Text("t", ""), "a b", "a b"),
        (Text("t", ""), "x%2By", "x+y"),
    ],
)
def test_values_are_converted_by_type(option: Option[Any], raw: str, expected: Any) -> None:
    """Each kind of option turns its text into a typed value (durations take units)."""
    assert value(option, raw) == expected


@pytest.mark.parametrize(
    ("option", "raw", "problem"),
    [
        (Int("n", 0), "lots", "n must be an integer, got 'lots'"),
        (Int("n", 0, minimum=1), "0", "n must be >= 1, got '0'"),
        (Float("f", 1.0), "-1", "f must be > 0"),
        (Float("f", 1.0), "nan", "f must be > 0"),
        (Duration("d", 1.0), "soon", "d must be a duration in seconds"),
        (Duration("d", 1.0), "0", "d must be > 0 seconds"),
        (Duration("d", 1.0, minimum=1), "500ms", "d must be >= 1 seconds"),
        (Duration("d", 1.0, whole=True), "1.5", "d must be a whole number of seconds"),
        (Bool("b", False), "maybe", "b must be true or false, got 'maybe'"),
        (Choice("c", "a", choices=("a", "b")), "z", "c must be one of a, b, got 'z'"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(
    option: Option[Any], raw: str, problem: str
) -> None:
    """A value its option cannot take: one line with the URI, the option, what it must be."""
    with pytest.raises(ConfigurationError) as info:
        value(option, raw)
    message = str(info.value)
    assert message.startswith(f"sink {URI}: ") and problem in message
    assert "\n" not in message


def test_defaults_given_and_rest() -> None:
    """Options not given keep their defaults; ``given`` and ``chosen`` say which were given;
    with keep_unknown, other pairs are kept in order instead of refused."""
    a, b = Int("a", 1), Int("b", 2)
    parsed = parse_options("b=5&x=1&y=&x=2", [a, b], uri=URI, sink="t", keep_unknown=True)
    assert (parsed[a], parsed[b]) == (1, 5)
    assert parsed.given == {"b"} and parsed.chosen([a, b]) == {"b": 5}
    assert parsed.rest == (("x", "1"), ("y", ""), ("x", "2"))
    assert parse_options("", [a], uri=URI, sink="t")[a] == 1


def test_unknown_and_repeated_options_are_refused() -> None:
    """An unknown option names the option, the sink and the known options; an option given
    twice is refused rather than one of the values silently winning."""
    a, b = Int("a", 1), Int("b", 2)
    with pytest.raises(ConfigurationError) as info:
        parse_options("a=1&colour=red", [b, a], uri=URI, sink="Thing")
    assert str(info.value) == (
        "sink x://h: unknown option 'colour' for the Thing sink; known options: a, b"
    )
    with pytest.raises(ConfigurationError, match="option 'a' is given twice"):
        parse_options("a=1&a=2", [a], uri=URI, sink="Thing")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("redis://127.0.0.1:6379/0?colour=red", "unknown option 'colour' for the Redis sink"),
        ("redis://127.0.0.1:6379/0?socket_timout=5", "unknown option 'socket_timout'"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/x", "unknown option 'ssl_ca_certs'"),
        ("redis://127.0.0.1:6379/0?maxlen=lots", "maxlen must be an integer, got 'lots'"),
        ("redis://127.0.0.1:6379/0?dedupe_ttl=1.5", "dedupe_ttl must be a whole number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=x", "socket_timeout must be a duration"),
        ("redis://127.0.0.1:6379/0?protocol=4", "protocol must be one of 2, 3"),
        ("redis://127.0.0.1:6379/0?stream=", "stream must not be empty"),
        ("redis://127.0.0.1:6379/0?db=x", "db must be a number"),
        ("redis://127.0.0.1:6379/abc", "the database must be a number"),
        ("redis:///0", "expected redis://host:port/db"),
        ("redis://h:99999/0", "invalid URL"),
        ("nats://127.0.0.1:4222?colour=red", "unknown option 'colour' for the NATS sink"),
        ("nats://127.0.0.1:4222?timeout=0", "timeout must be > 0 seconds"),
        ("nats://127.0.0.1:4222?subject=a.*", "subject must be a literal subject"),
        ("nats://127.0.0.1:4222?stream=a.b", "stream must be a stream name"),
        ("nats://?stream=A", "expected nats://host:port"),
        ("http://h/x?batch=0", "batch must be >= 1"),
        ("http://h/x?batch=2&batch=3", "option 'batch' is given twice"),
        ("http:///x", "expected http(s)://host/path"),
        ("file:/tmp/x.jsonl?fsynk=0", "unknown option 'fsynk' for the file sink"),
        ("file:/tmp/x.jsonl?fsync=perhaps", "fsync must be true or false"),
        ("memory:m?max_batch=0", "max_batch must be >= 1"),
    ],
)
def test_every_sink_refuses_mistakes_the_same_way(uri: str, problem: str) -> None:
    """A misspelled option, a bad value, a missing host: a ConfigurationError of one line,
    with the URI, for every kind of sink (no TypeError from a client library)."""
    with pytest.raises(ConfigurationError) as info:
        from_uri(uri)
    message = str(info.value)
    assert problem in message and "\n" not in message and message.startswith("sink ")


def test_options_that_work_keep_working() -> None:
    """Each documented option keeps its name and meaning; redis-py connection options reach
    the client typed, with the sink's own defaults when not given."""
    redis = from_uri(
        "redis://127.0.0.1:6379/3?stream=s&maxlen=10&dedupe_ttl=1h&socket_timeout=5"
        "&retry_on_timeout=true&max_connections=4&protocol=3&client_name=bridge"
    )
    assert isinstance(redis, RedisSink)
    assert (redis.stream, redis.maxlen, redis.dedupe_ttl) == ("s", 10, 3600)
    assert redis.name == "redis://127.0.0.1:6379/3?stream=s"
    assert redis._connection == {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30.0,
        "retry_on_timeout": True,
        "max_connections": 4,
        "protocol": 3,
        "client_name": "bridge",
    }
    tls = from_uri("rediss://h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false")
    assert isinstance(tls, RedisSink)
    assert tls._connection["ssl_cert_reqs"] == "none"
    assert tls._connection["ssl_check_hostname"] is False
    nats = from_uri("nats://127.0.0.1:4222?subject=a.b&stream=S&dedupe_window=60&timeout=2.5")
    assert isinstance(nats, NatsSink)
    assert (nats.subject, nats.stream, nats.dedupe_window, nats.timeout) == ("a.b", "S", 60, 2.5)
    assert nats.name == "nats://127.0.0.1:4222?subject=a.b&stream=S"
    hook = from_uri("http://h/x?batch=5&timeout=3&keep=1&name=orders")
    assert isinstance(hook, WebhookSink)
    assert (hook.batch, hook.timeout, hook.url, hook.name) == (
        5,
        3.0,
        "http://h/x?keep=1",
        "orders",
    )
    file = from_uri("file:/tmp/x.jsonl?fsync=false&name=archive")
    assert isinstance(file, FileSink)
    assert (file.path, file.fsync, file.name) == ("/tmp/x.jsonl", False, "archive")
    memory = from_uri("memory:m?max_batch=7")
    assert isinstance(memory, MemorySink) and (memory.name, memory.max_batch) == ("m", 7)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://:pw-1@h:6379/0", "redis://:***@h:6379/0"),
        ("mqtt://user:pw-1@broker:1883/x", "mqtt://user:***@broker:1883/x"),
        ("nats://pw-1@h:4222", "nats://***@h:4222"),
        ("https://pw-1@hooks.example/x", "https://***@hooks.example/x"),
        ("redis://:p@pw-1@h/0", "redis://:***@h/0"),
        ("http://h/x?token=pw-1&batch=5", "http://h/x?token=***&batch=5"),
        ("http://h/x?api%5Fkey=pw-1&a=b#f", "http://h/x?api%5Fkey=***&a=b#f"),
        ("redis://h/0?password=pw-1", "redis://h/0?password=***"),
        ("http://h:99999/x?sig=pw-1", "http://h:99999/x?sig=***"),
        ("http://h/x", "http://h/x"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    """Passwords, a lone user name (a token in nats:// and https://) and credential-like
    query values are masked; the rest is kept as written, even in an invalid URI."""
    assert redact_uri(uri) == shown


def test_secrets_never_show_in_errors_or_reprs() -> None:
    """A secret in a URI stays out of every error and repr, bad value or not."""
    for uri in (
        "nats://tok-secret@127.0.0.1:4222?colour=red",
        "redis://:tok-secret@127.0.0.1:6379/0?maxlen=-1",
        "redis://127.0.0.1:6379/0?password=tok-secret&protocol=9",
        "redis://127.0.0.1:6379/0?password=tok-secret&password=tok-secret",
        "https://tok-secret@h:99999/x",
    ):
        with pytest.raises(ConfigurationError) as info:
            from_uri(uri)
        assert "tok-secret" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        parse_options("password=", [Int("password", 0)], uri=URI, sink="t")
    assert "'***'" in str(info.value)
    for uri in ("nats://tok-secret@127.0.0.1:4222", "https://tok-secret@h/x?auth=tok-secret"):
        sink = from_uri(uri)
        assert "tok-secret" not in sink.name and "tok-secret" not in repr(sink)
    redis = from_uri("redis://127.0.0.1:6379/0?password=tok-secret")
    assert "tok-secret" not in redis.name and "tok-secret" not in repr(redis)


def test_parse_url_checks_scheme_host_and_port() -> None:
    """parse_url gives the parsed URL, or one line saying what form was expected."""
    url = parse_url("nats://u:p@[::1]:4223", schemes=("nats",), expected="nats://host:port")
    assert (url.host, url.explicit_port, url.user, url.password) == ("::1", 4223, "u", "p")
    with pytest.raises(ConfigurationError, match="expected nats://host:port"):
        parse_url("http://h", schemes=("nats",), expected="nats://host:port")


def test_sink_error_carries_retry_after() -> None:
    """SinkError takes retry_after as an argument; without one the backoff decides."""
    assert SinkError("busy", retry_after=2.5).retry_after == 2.5
    assert SinkError("busy").retry_after is None
    assert PermanentSinkError("no").retry_after is None
    assert retry_after_of(SinkError("busy", retry_after=2.5)) == 2.5
    assert retry_after_of(SinkError("busy")) == 0.0
    assert retry_after_of(ValueError("x")) == 0.0


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("api_key", True),
        ("token", True),
        ("routing_key", False),
        ("stream", False),
    ],  # fmt: skip
)
def test_which_options_are_credentials(name: str, secret: bool) -> None:
    """Credential-looking names are masked; an AMQP routing key is not a credential."""
    from neuroio.sinks._uri import is_secret_option

    assert is_secret_option(name) is secret
