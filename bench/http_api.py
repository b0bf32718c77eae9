"""The application HTTP API under load, with webhooks on: keep-alive clients POST single
messages (closed loop) → smsc (App, in this process) → a simulated carrier on loopback
(immediate DELIVRD receipt) → a signed status webhook per message to an aiohttp receiver
in the client's process (the application: it sends, and takes its webhooks).

Run from the repository root:  .venv/bin/python bench/http_api.py [--seconds 5] [--clients 32]

Runs, in this order, each with the same client (a child process: ``--client``, which also
runs the webhook receiver):

1. peer — a bare aiohttp handler on this machine (reads the JSON body, answers 202 with
   a small JSON): the ceiling of an aiohttp server here (``bare_rps``);
2. smsc — ``msgs_per_s``: messages accepted (202) per second; ``p99_post_ms``: the
   POST's 99th percentile (closed loop, service time); then every webhook is awaited (up
   to 60 s): ``webhooks_per_s`` = status webhooks received / seconds from the first POST
   to the last webhook; ``webhooks_missing`` those not received by then.

The machine has 2 cores for the client, smsc (API, router, carrier simulator, webhook
sender) and the receiver, and whatever else runs.

Last output line: one JSON object with ``msgs_per_s``, ``webhooks_per_s``,
``p99_post_ms``, ``ratio_vs_bare_aiohttp`` (msgs_per_s / bare_rps) and the details.
Target (issue 16): ≥ 5,000 messages/s with every webhook delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The repository, not bench/ (whose queue.py would shadow the standard library's).
sys.path[0] = str(ROOT)

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web  # noqa: E402

from smppcore.config import load_config  # noqa: E402
from smsc.apikeys import new_key  # noqa: E402
from smsc.app import App  # noqa: E402
from smsc.config import SmscConfig  # noqa: E402

KEY, KEY_HASH = new_key(bytes(range(32)))
SECRET = "bench-secret-0123456789"
CARRIER = {
    "seed": 1,
    "submit_latency": {"kind": "fixed", "ms": 0},
    "receipt_delay": {"kind": "fixed", "ms": 0},
    "states": {"DELIVRD": 1.0},
}


def config(store: Path, hook_url: str) -> SmscConfig:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"port": None},
        "http_api": {"host": "127.0.0.1", "port": 0},
        "accounts": [
            {
                "system_id": "bench",
                "password": "bench",
                "api_keys": [KEY_HASH],
                "webhooks": {"status_url": hook_url, "secret": SECRET},
            }
        ],
        "router": {
            "carriers": [
                {
                    "name": "sim",
                    "system_id": "smsc",
                    "password": "secret",
                    "binds": 2,
                    "window": 500,
                }
            ],
            "routes": [{"prefix": "", "carriers": [{"carrier": "sim", "price": "0.001"}]}],
            "store": {"path": str(store / "smsc.db")},
        },
        "simulated_carriers": [
            {
                "name": "sim",
                "config": {
                    "system_id": "sim",
                    "accounts": [{"system_id": "smsc", "password": "secret"}],
                    "profiles": {"default": CARRIER},
                    "session": {"window": 1000, "inbound_window": 1000},
                },
            }
        ],
        "logging": {"level": "warning"},
    }
    return load_config(data, SmscConfig, source="bench")


# --- the client and the webhook receiver (a child process) ------------------------------------


async def client(url: str, seconds: float, clients: int, auth: str) -> dict[str, Any]:
    """POST single messages to ``url`` for ``seconds`` from ``clients`` keep-alive
    connections (closed loop)."""
    body = json.dumps({"to": "447700900001", "text": "bench"}).encode()
    headers = {"Content-Type": "application/json", "Authorization": auth}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    async with ClientSession(
        connector=TCPConnector(limit=clients), timeout=ClientTimeout(total=30)
    ) as session:
        end = loop.time() + seconds

        async def worker() -> None:
            while loop.time() < end:
                start = loop.time()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                latencies.append(loop.time() - start)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        began = loop.time()
        await asyncio.gather(*(worker() for _ in range(clients)))
        took = loop.time() - began
    latencies.sort()
    ok = statuses.get(202, 0)
    return {
        "rps": ok / took,
        "accepted": ok,
        "statuses": statuses,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "seconds": took,
    }


async def child(seconds: float, clients: int, auth: str) -> dict[str, Any]:
    """The application: a webhook receiver (its port on stdout), then, once told the API's
    URL on stdin, the load; then it waits (up to 60 s) for a webhook per accepted message."""
    received: list[float] = []
    changed = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        received.append(time.monotonic())
        changed.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    url = (await asyncio.to_thread(sys.stdin.readline)).strip()
    began = time.monotonic()
    result = await client(url, seconds, clients, auth)
    try:
        async with asyncio.timeout(60.0):
            while len(received) < result["accepted"] and auth != "Bearer x":
                changed.clear()
                await changed.wait()
    except TimeoutError:
        pass
    last = received[-1] if received else time.monotonic()
    result["webhooks"] = len(received)
    result["webhooks_missing"] = max(0, result["accepted"] - len(received))
    result["webhooks_per_s"] = len(received) / max(1e-9, last - began)
    await runner.cleanup()
    return result


class Child:
    """The child process: ``await start()`` → the receiver's URL; ``await run(api_url)``."""

    def __init__(self, seconds: float, clients: int, auth: str) -> None:
        self.args = [
            sys.executable, __file__, "--client", "--seconds", str(seconds),
            "--clients", str(clients), "--auth", auth,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60.0):
            line = (await self.proc.stdout.readline()).decode().split()
        return f"http://127.0.0.1:{line[1]}/hook"

    async def run(self, api_url: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(api_url.encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            out, _ = await self.proc.communicate()
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


# --- the runs ----------------------------------------------------------------------------------


async def bare(seconds: float, clients: int) -> dict[str, Any]:
    async def handler(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"messages": [{"id": "x", "status": "accepted"}]}, status=202)

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        child_ = Child(seconds, clients, "Bearer x")
        await child_.start()
        return await child_.run(f"http://127.0.0.1:{port}/v1/messages", seconds + 120)
    finally:
        await runner.cleanup()


async def smsc(seconds: float, clients: int) -> dict[str, Any]:
    child_ = Child(seconds, clients, f"Bearer {KEY}")
    hook_url = await child_.start()
    with tempfile.TemporaryDirectory() as tmp:
        app = App(config(Path(tmp), hook_url))
        try:
            await app.start()
            assert app.router is not None
            await app.router.wait_carriers_bound(30.0)
            url = f"http://127.0.0.1:{app.api_port}/v1/messages"
            return await child_.run(url, seconds + 120)
        finally:
            await app.stop(10.0)


async def main(seconds: float, clients: int) -> dict[str, Any]:
    peer = await bare(seconds, clients)
    print(f"bare aiohttp: {peer['rps']:,.0f} requests/s, p99 {peer['p99_ms']:.1f} ms", flush=True)
    ours = await smsc(seconds, clients)
    print(
        f"smsc: {ours['rps']:,.0f} messages/s accepted, p99 POST {ours['p99_ms']:.1f} ms,"
        f" statuses {ours['statuses']}; webhooks {ours['webhooks']:,}"
        f" ({ours['webhooks_per_s']:,.0f}/s, {ours['webhooks_missing']} missing)",
        flush=True,
    )
    return {
        "msgs_per_s": round(ours["rps"], 1),
        "webhooks_per_s": round(ours["webhooks_per_s"], 1),
        "p99_post_ms": round(ours["p99_ms"], 2),
        "ratio_vs_bare_aiohttp": round(ours["rps"] / peer["rps"], 3),
        "bare_rps": round(peer["rps"], 1),
        "webhooks_missing": ours["webhooks_missing"],
        "clients": clients,
        "seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--auth", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run  # type: ignore[assignment]
    if args.client:
        print(json.dumps(runner(child(args.seconds, args.clients, args.auth))))
    else:
        print(json.dumps(runner(main(args.seconds, args.clients))))
