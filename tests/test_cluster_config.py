"""The ``cluster:`` section and ``smsc serve --redis URL --node-id N``: decoded strictly,
errors naming the key, the password never shown, the command line winning over the file."""

from __future__ import annotations

import pytest

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
