"""``neuroio-events bridge --config FILE`` as a real subprocess: ``--check`` on a good file and
on each kind of mistake (one line naming the file and the key, status 2, no traceback), the
command line overriding the file, ``${VAR}``, and a running bridge configured by a file."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from neuroio.testing import Emulator

from ..helpers import eventually
from .conftest import TOKEN, StartCli, clean_env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bridge.toml"

GOOD = """
to = ["file:{out}"]

[connection]
url = "ws://127.0.0.1:9/events"
ping_interval = 2.5
token_file = "{token}"

[spool]
path = "{spool}"
max_bytes = "64MiB"

[webhook]
secret = "hook-secret-5e1f"

[[route]]
name = "doors"
to = "redis://neuroio:redis-pass-77@127.0.0.1:6379/0?stream=doors:{{source.id}}"
filter = {{ result = ["exact"], confidence_min = 80, liveness = ["passed"] }}
cooldown = {{ key = ["pid", "source.id"], seconds = 30 }}

[[route]]
name = "unknown"
to = "https://hooks.example.com/neuroio"
filter = {{ known = false }}
where = "data.age > `17`"
"""


def write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def check(
    cli: StartCli, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await cli("bridge", *args, "--check", env=env if env is not None else clean_env())
    code = await proc.finish(timeout=15)
    return code, proc.out, proc.err


@pytest.fixture
def good(tmp_path: Path, token_file: Path) -> Path:
    return write(
        tmp_path,
        GOOD.format(out=tmp_path / "all.jsonl", token=token_file, spool=tmp_path / "spool.db"),
    )


async def test_check_prints_the_resolved_routes_and_options_with_secrets_masked(
    cli: StartCli, good: Path
) -> None:
    """A good file: status 0; every route with its sink, filter and cooldown; the options with
    where each came from; no password, secret or token shown."""
    code, out, err = await check(cli, "--config", str(good))
    assert code == 0, err
    assert err == ""
    assert f"{good}: valid" in out
    assert "redis://neuroio:***@127.0.0.1:6379/0?stream=doors:{source.id}" in out
    assert 'result = ["exact"], liveness = ["passed"], confidence_min = 80.0' in out
    assert "cooldown: 30 s per pid, source.id" in out
    assert 'known = false, where = "data.age > `17`"' in out
    assert f"file:{good.parent / 'all.jsonl'}" in out
    assert f"ping_interval            2.5  ({good}: connection.ping_interval)" in out
    assert f"spool_max_bytes          67108864  ({good}: spool.max_bytes)" in out
    assert "webhook_secret           ***" in out
    assert "token file" in out
    for secret in ("redis-pass-77", "hook-secret-5e1f", TOKEN):
        assert secret not in out


MISTAKES = {
    "unknown top-level key": ("spoool = 3\n", "unknown key 'spoool' (did you mean 'spool'?)"),
    "unknown route key": (
        '[[route]]\nname = "doors"\nto = "file:x.jsonl"\nfliter = {}\n',
        "route[0] (doors): unknown key 'fliter' (did you mean 'filter'?)",
    ),
    "wrong type": ('[metrics]\nport = "lots"\n', 'metrics.port: expected an integer, got "lots"'),
    "bad size": ('[spool]\nmax_bytes = "big"\n', "spool.max_bytes: 'big' is not a size"),
    "unknown filter field": (
        '[[route]]\nname = "doors"\nto = "file:x.jsonl"\nfilter = { confidnce_min = 80 }\n',
        "route[0] (doors).filter: unknown key 'confidnce_min' (did you mean 'confidence_min'?)",
    ),
    "unknown result code": (
        '[[route]]\nname = "doors"\nto = "file:x.jsonl"\nfilter = { result = ["exakt"] }\n',
        "route[0] (doors).filter.result: unknown value 'exakt' (did you mean 'exact'?)",
    ),
    "bad template": (
        '[[route]]\nname = "daily"\nto = "file:/tmp/{source.id.jsonl"\n',
        "route[0] (daily).to: ",
    ),
    "bad URI scheme": (
        '[[route]]\nname = "doors"\nto = "gopher://user:pw-9@host/x"\n',
        "route[0] (doors).to: sink gopher://user:***@host/x: unknown scheme",
    ),
    "unset variable": (
        '[[route]]\nname = "doors"\nto = "redis://${REDIS_HOST_UNSET}:6379/0"\n',
        "route[0] (doors).to: environment variable REDIS_HOST_UNSET is not set",
    ),
    "missing secret file": (
        '[webhook]\nsecret_file = "/nonexistent/hook.secret"\n',
        "webhook.secret_file: cannot read /nonexistent/hook.secret: No such file or directory",
    ),
    "TOML syntax": ('[spool\npath = "x"\n', "line 2, column 7: invalid TOML"),
    "route as a table": (
        '[route]\nname = "doors"\n',
        "route: expected a list, got a table (write [[route]] for each route)",
    ),
    "stream: no token": ('[[stream]]\nname = "a"\n', "stream[0]: stream a: give exactly one of"),
    "stream: both tokens": (
        '[[stream]]\nname = "a"\ntoken_file = "x"\ntoken_command = "y"\n',
        "give exactly one of token_file and token_command",
    ),
    "stream: bad name": (
        '[[stream]]\nname = "a b"\ntoken_file = "x"\n',
        "stream name 'a b' must be",
    ),
    "stream: twice": (
        '[[stream]]\nname = "a"\ntoken_file = "x"\n[[stream]]\nname = "a"\ntoken_file = "y"\n',
        "stream[1] (a).name: stream[0] has the same name",
    ),
    "stream: unknown key": (
        '[[stream]]\nname = "a"\ntoken_fle = "x"\n',
        "token_fle",
    ),
    "stream: bad url": (
        '[[stream]]\nname = "a"\ntoken_file = "x"\nurl = "http//nope"\n',
        "stream[0] (a).url:",
    ),
    "stream: rate": ("[streams]\nconnect_rate = 0\n", "streams.connect_rate"),
}


async def test_each_mistake_is_one_line_naming_the_file_and_the_key(
    cli: StartCli, tmp_path: Path
) -> None:
    """Every kind of mistake: status 2, exactly one line on stderr naming the file and the key,
    no traceback, nothing on stdout, no password shown (all files checked at once)."""
    paths = {}
    for index, (what, (body, _)) in enumerate(MISTAKES.items()):
        paths[what] = write(tmp_path, 'to = ["file:all.jsonl"]\n' + body, f"bad{index}.toml")
    results = await asyncio.gather(*(check(cli, "--config", str(p)) for p in paths.values()))
    for (what, (_, expected)), (code, out, err) in zip(MISTAKES.items(), results, strict=True):
        assert code == 2, (what, err)
        lines = err.splitlines()
        assert len(lines) == 1, (what, err)
        assert lines[0].startswith(f"Error: {paths[what]}: "), (what, err)
        assert expected in lines[0], (what, err)
        assert "Traceback" not in err and out == "", what
        assert "pw-9" not in err


async def test_a_missing_config_file_is_one_line(cli: StartCli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, _, err = await check(cli, "--config", str(missing))
    assert code == 2
    assert err == f"Error: {missing}: cannot read the config file: No such file or directory\n"


async def test_the_command_line_and_the_environment_win_over_the_file(
    cli: StartCli, good: Path, tmp_path: Path
) -> None:
    """--spool on the command line and NEUROIO_PING_INTERVAL beat the file's; --to adds a
    route that takes every event to the file's."""
    extra = tmp_path / "extra.jsonl"
    code, out, err = await check(
        cli,
        "--config",
        str(good),
        "--spool",
        str(tmp_path / "other.db"),
        "--to",
        f"file:{extra}",
        env=clean_env(NEUROIO_PING_INTERVAL="7"),
    )
    assert code == 0, err
    assert f"{tmp_path / 'other.db'}  (command line)" in out
    assert "ping_interval            7.0  (environment)" in out
    assert f"file:{extra}  (--to)" in out
    assert f"file:{tmp_path / 'all.jsonl'}  ({good}: to[0])" in out


async def test_variables_are_expanded_with_defaults_and_literals(
    cli: StartCli, tmp_path: Path
) -> None:
    """${VAR} from the environment, ${VAR:-default} when unset, $${ for a literal ${."""
    path = write(
        tmp_path,
        '[metrics]\nport = "${METRICS_PORT}"\nhost = "${METRICS_HOST:-127.0.0.2}"\n'
        '[[route]]\nname = "lit"\nto = "file:${OUT_DIR}/$${x}.jsonl"\n',
    )
    env = clean_env(METRICS_PORT="9465", OUT_DIR=str(tmp_path))
    code, out, err = await check(cli, "--config", str(path), env=env)
    assert code == 0, err
    assert f"metrics_port             9465  ({path}: metrics.port)" in out
    assert f"metrics_host             127.0.0.2  ({path}: metrics.host)" in out
    assert f"to:       file:{tmp_path}/${{x}}.jsonl" in out


async def test_the_example_config_is_valid(cli: StartCli, tmp_path: Path, token_file: Path) -> None:
    """examples/bridge.toml passes --check (its variables set, its secret file present)."""
    secret = tmp_path / "hook.secret"
    secret.write_text("example-secret\n")
    secret.chmod(0o600)
    env = clean_env(
        NEUROIO_EXAMPLE_DIR=str(tmp_path),
        NEUROIO_TOKEN_FILE=str(token_file),
        REDIS_PASSWORD="redis-pw",
        WEBHOOK_SECRET_FILE=str(secret),
    )
    code, out, err = await check(cli, "--config", str(EXAMPLE), env=env)
    assert code == 0, err
    assert err == ""
    assert "redis-pw" not in out and "example-secret" not in out


async def test_a_bridge_configured_by_a_file_delivers_to_its_file_route(
    cli: StartCli, tmp_path: Path, token_file: Path
) -> None:
    """A running bridge, everything from the file (connection, token file, spool, timings)
    but the spool path, which the command line overrides: the file's route, a templated path
    (a file per camera), gets every event, each in its camera's file, in order; the spool
    named in the file is never created."""
    out = tmp_path / "by-camera"
    async with Emulator(tokens={TOKEN}, seed=3) as server:
        path = write(
            tmp_path,
            f'to = ["file:{out}/cam-{{source.id}}.jsonl"]\n'
            f'[connection]\nurl = "{server.url}"\napi_url = "{server.api_url}"\n'
            f'token_file = "{token_file}"\nreconnect_delay = 0.01\n'
            f'[spool]\npath = "{tmp_path / "unused.db"}"\n'
            "[sink]\nretry_delay = 0.01\nmax_retry_delay = 0.1\n",
        )
        proc = await cli(
            "bridge", "--config", str(path), "--spool", str(tmp_path / "spool.db"), "--no-uvloop"
        )
        await server.wait_for_clients(1, timeout=10)
        sent = [await server.emit() for _ in range(30)]

        def written() -> dict[str, list[dict[str, object]]]:
            if not out.exists():
                return {}
            return {
                p.name: [json.loads(line) for line in p.read_text().splitlines()]
                for p in out.iterdir()
            }

        def count() -> int:
            return sum(len(events) for events in written().values())

        await eventually(lambda: count() >= len(sent), "30 events in the files", 10)
        proc.send(signal.SIGTERM)
        assert await proc.finish(timeout=10) == 0
    expected: dict[str, list[int]] = {}
    for entry in sent:
        expected.setdefault(f"cam-{entry['source']['id']}.jsonl", []).append(entry["id"])
    assert len(expected) > 1  # the emulator's events come from several cameras
    assert {name: [e["id"] for e in events] for name, events in written().items()} == expected
    assert (tmp_path / "spool.db").exists()
    assert not (tmp_path / "unused.db").exists()
