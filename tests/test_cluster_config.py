"""The ``cluster:`` section and ``smsc serve --redis URL --node-id N``: decoded strictly,
errors naming the key, the password never shown, the command line winning over the file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loops import Run
from processes import smsc_run
from redis_server import redis_server, redis_url  # noqa: F401
from smsc_fixtures import closed_port, serve_process

from router.cluster import coordinator
from router.cluster.config import ClusterConfig
from router.cluster.local import LocalCoordinator
from smppcore.config import ConfigError, load_config
from smsc.cli import _parser, serve_config
from smsc.config import SmscConfig


def test_without_redis_a_node_runs_alone() -> None:
    config = load_config({}, SmscConfig)
    assert not config.cluster.enabled
    assert isinstance(coordinator(config.cluster, "0"), LocalCoordinator)


def test_a_cluster_section_decodes() -> None:
    config = load_config(
        {
            "node_id": 4,
            "cluster": {
                "redis": "rediss://redis.example:6380/2",
                "password": "s3cret-pass",
                "lease": 6,
                "heartbeat": 1.5,
            },
        },
        SmscConfig,
    )
    assert config.cluster.enabled
    assert (config.cluster.lease, config.cluster.heartbeat) == (6.0, 1.5)
    shown = repr(config.cluster)
    assert "rediss://redis.example:6380" in shown
    assert "s3cret" not in shown


def test_the_password_in_the_url_is_not_shown() -> None:
    config = ClusterConfig(redis="redis://:hunter2pass@10.0.0.9:6379/0")
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    ("cluster", "where", "reason"),
    [
        ({"redis": "http://x:6379"}, "$.cluster.redis", "scheme 'http'"),
        ({"redis": "redis://:6379"}, "$.cluster.redis", "no host"),
        ({"redis": "redis://h:6379/zero"}, "$.cluster.redis", "database 'zero'"),
        ({"redis": "redis://h:99999"}, "$.cluster.redis", "not a URL"),
        ({"lease": 2, "heartbeat": 2}, "$.cluster.heartbeat", "must be below lease"),
        ({"lease": 0}, "$.cluster.lease", "Expected `float` > 0.0"),
        ({"username": "smsc"}, "$.cluster.username", "needs a password"),
        ({"redis_url": "redis://h"}, "$.cluster.redis_url", "unknown key"),
        ({"key_prefix": "a{b}"}, "$.cluster.key_prefix", "matching regex"),
    ],
)
def test_a_bad_cluster_section_names_the_key(
    cluster: dict[str, object], where: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"cluster": cluster}, SmscConfig)
    assert caught.value.path == where
    assert reason in caught.value.reason


def test_the_command_line_overrides_the_file() -> None:
    args = _parser().parse_args(
        ["serve", "--redis", "redis://127.0.0.1:6379/1", "--node-id", "7"]
    )
    config = serve_config(args)
    assert config.cluster.redis == "redis://127.0.0.1:6379/1"
    assert config.node_id == 7
    plain = serve_config(_parser().parse_args(["serve"]))
    assert (plain.cluster.redis, plain.node_id) == (None, 0)


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--redis", "mysql://db", "not a Redis URL: scheme 'mysql'"),
        ("--node-id", "36", "36 is not in 0..35"),
        ("--node-id", "x", "'x' is not a number"),
    ],
)
def test_a_bad_flag_exits_2(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, reason: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["serve", flag, value])
    assert caught.value.code == 2
    assert reason in capsys.readouterr().err


# --- smsc serve in a cluster -----------------------------------------------------------------


def test_serve_exits_1_when_redis_cannot_be_reached(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = smsc_run("serve", "--redis", url, "--port", "0", "--metrics-port", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("smsc serve: ")
    assert "does not answer" in result.stderr  # the store's Redis, the first one asked
    assert "Traceback" not in result.stderr


def test_serve_exits_1_when_a_live_node_has_its_id(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    args = ("--redis", redis_url, "--node-id", "3", "--port", "0", "--metrics-port", "0")

    async def main() -> None:
        first = tmp_path / "first"
        first.mkdir()
        async with serve_process(first, *args):
            second = tmp_path / "second"
            second.mkdir()
            result = await asyncio.to_thread(smsc_run, "serve", *args, cwd=second)
        assert result.returncode == 1
        assert "node id '3' is in use by a live node" in result.stderr
        assert "Traceback" not in result.stderr

    run1(main())
