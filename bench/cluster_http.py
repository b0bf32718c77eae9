"""bench/http_api.py's load (POSTs with a status webhook each) against one node alone (the
API's records and webhook outbox in SQLite files: the peer) and one node in a cluster
(``cluster.redis``: the records, the outbox and the message store in Redis), in one run.

Run from the repository root:  .venv/bin/python bench/cluster_http.py [--seconds 3] [--clients 32]

Processes: as bench/http_api.py (the carrier, ``smsc serve``, the application: keep-alive
clients and the webhook receiver), and for the cluster run a ``redis-server``
(tests/redis_server.py: a free port, a temporary directory, no persistence).

Measured per run: ``msgs_per_s`` (202s per second), ``webhooks_per_s``, ``p99_post_ms``,
CPU µs per message of ``smsc serve`` (and of redis-server in the cluster run), and
``redis_cmds_per_msg``: every command Redis executed (``INFO commandstats``, those Lua
scripts run included, the bench's own INFO excluded) divided by the messages accepted,
with the commands by name. Last output line: one JSON object with
``ratio_cluster_vs_alone`` (cluster msgs_per_s / alone msgs_per_s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # (bench/queue.py would shadow the standard library's)
sys.path.insert(1, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402


def _load(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hb = _load("bench_http_api", "http_api.py")
cb = hb.cb


def commandstats(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "msgs_per_s": round(run["rps"], 1),
        "webhooks_per_s": round(run["webhooks_per_s"], 1),
        "webhooks_missing": run["webhooks_missing"],
        "p99_post_ms": round(run["p99_ms"], 2),
        "serve_cpu_us_per_msg": run["cpu_us_per_msg"]["serve"],
    }


def main(seconds: float, clients: int) -> dict[str, Any]:
    alone = hb.smsc(seconds, clients)
    print(f"alone (SQLite): {summary(alone)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="smsc-cluster-http-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            assert server.proc is not None
            before = commandstats(server.url)
            cpu = cb.cpu_seconds(server.proc.pid)
            extra = {"node_id": 1, "cluster": {"redis": server.url}}
            clustered = hb.smsc(seconds, clients, extra=extra)
            redis_cpu = cb.cpu_seconds(server.proc.pid) - cpu
            after = commandstats(server.url)
        finally:
            server.stop()
    accepted = max(1, clustered["accepted"])
    commands = {k: v - before.get(k, 0) for k, v in after.items() if k != "info"}
    commands = {k: v for k, v in sorted(commands.items()) if v > 0}
    cluster = {
        **summary(clustered),
        "redis_cpu_us_per_msg": round(1e6 * redis_cpu / accepted, 1),
        "redis_cmds_per_msg": round(sum(commands.values()) / accepted, 2),
        "redis_commands": commands,
    }
    print(f"cluster (Redis): {cluster}", flush=True)
    return {
        "ratio_cluster_vs_alone": round(clustered["rps"] / max(1.0, alone["rps"]), 3),
        "alone": summary(alone),
        "cluster": cluster,
        "clients": clients,
        "seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(main(args.seconds, args.clients)))
