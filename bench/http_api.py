"""The application HTTP API under load, with webhooks on: keep-alive clients POST single
messages (closed loop) → ``smsc serve`` → a simulated carrier (``smsc carrier``, an
immediate DELIVRD receipt) → a signed status webhook per message to a receiver in the
client's process (the application: it sends, and takes its webhooks).

Run from the repository root:  .venv/bin/python bench/http_api.py [--seconds 5] [--clients 32]

Processes (each its own, as bench/e2e.py sets them up): the carrier ``python -m smsc
carrier --config bench/conf/carrier-bench.yaml``; ``python -m smsc serve`` on a config
written here (one account with an API key and a status webhook, one router carrier of 2
binds x window 500 at that process, ack_after enqueue, the store in a temporary
directory); and the application (``--client``): C keep-alive HTTP/1.1 connections on raw
asyncio protocols, one POST in flight each, and a webhook receiver of the same make that
answers 204 — both small, so that the load is not what saturates.

Runs, in this order, each with the same application:

1. peer — a bare aiohttp handler in its own process (reads the JSON body, answers 202
   with a small JSON): the ceiling of an aiohttp server here (``bare_rps``; smsc's
   listener reads a plain POST /v1/messages itself, smsc/http_fast.py, not through
   aiohttp, so this is a yardstick now, not its ceiling);
2. smsc — ``msgs_per_s``: messages accepted (202) per second; ``p99_post_ms``: the
   POST's 99th percentile (closed loop, service time); then every webhook is awaited (up
   to 60 s): ``webhooks_per_s`` = status webhooks received / seconds from the first POST
   to the last webhook; ``webhooks_missing``: accepted messages without a webhook then.

The machine has 2 cores for the application, smsc serve and the carrier (and whatever
else runs); each process's CPU (1.0 = one core) is reported for each run.

Last output line: one JSON object with ``msgs_per_s``, ``webhooks_per_s``,
``p99_post_ms``, ``ratio_vs_bare_aiohttp`` (msgs_per_s / bare_rps) and the details.
Target (issue 16): ≥ 5,000 messages/s with every webhook delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The repository, not bench/ (whose queue.py would shadow the standard library's).
sys.path[0] = str(ROOT)

from smsc.apikeys import new_key  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_carrier", ROOT / "bench" / "carrier.py")
assert _spec is not None
assert _spec.loader is not None
cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cb)

KEY, KEY_HASH = new_key(bytes(range(32)))
SECRET = "bench-secret-0123456789"
BODY = json.dumps({"to": "447700900001", "text": "bench"}).encode()


def serve_config(
    store: Path, carrier_port: int, hook_url: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``extra``: top-level keys added (bench/cluster_http.py: ``node_id``, ``cluster``)."""
    return {
        **(extra or {}),
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
                    "host": "127.0.0.1",
                    "port": carrier_port,
                    "system_id": "smsc",
                    "password": "secret",
                    "binds": 2,
                    "window": 500,
                }
            ],
            "routes": [{"prefix": "", "carriers": [{"carrier": "sim", "price": "0.001"}]}],
            "queue_max": 200_000,
            "ack_after": "enqueue",
            "store": {"path": str(store / "smsc.db")},
        },
        "logging": {"level": "warning"},
    }


# --- the application: a fast HTTP/1.1 client and webhook receiver (a child process) -----------


def _head(buf: bytearray) -> tuple[int, int, bytes] | None:
    """(end of the head, Content-Length, head) of the first message in ``buf``; None
    while its head is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("the bench's HTTP parser takes Content-Length only")
    return end + 4, length, head


class Poster(asyncio.Protocol):
    """One keep-alive connection POSTing ``request`` over and over (one at a time)."""

    def __init__(self, request: bytes, stats: dict[str, Any], end: float) -> None:
        self.request = request
        self.stats = stats
        self.end = end
        self.buf = bytearray()
        self.sent = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            found = _head(self.buf)
            if found is None or len(self.buf) < found[0] + found[1]:
                return
            start, length, head = found
            del self.buf[: start + length]
            now = time.perf_counter()
            self.stats["latencies"].append(now - self.sent)
            status = int(head.split(b" ", 2)[1])
            statuses = self.stats["statuses"]
            statuses[status] = statuses.get(status, 0) + 1
            if now < self.end:
                self._send()
            elif not self.done.done():
                self.done.set_result(None)
                assert self.transport is not None
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Receiver(asyncio.Protocol):
    """The webhook receiver's side of one connection: 204 to each request."""

    def __init__(self, seen: set[bytes], changed: asyncio.Event, times: list[float]) -> None:
        self.seen = seen
        self.changed = changed
        self.times = times
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answers = 0
        while True:
            found = _head(self.buf)
            if found is None or len(self.buf) < found[0] + found[1]:
                break
            start, length, head = found
            del self.buf[: start + length]
            at = head.lower().find(b"smsc-event-id:")
            if at >= 0:
                self.seen.add(head[at + 14 : head.find(b"\r\n", at)].strip())
            answers += 1
        if answers:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n" * answers)
            self.times.append(time.monotonic())
            self.changed.set()


async def client(url: str, seconds: float, clients: int, auth: str) -> dict[str, Any]:
    """POST single messages to ``url`` for ``seconds`` from ``clients`` keep-alive
    connections (closed loop)."""
    rest = url.removeprefix("http://")
    where, _, path = rest.partition("/")
    host, _, port = where.partition(":")
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {where}\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    stats: dict[str, Any] = {"latencies": [], "statuses": {}}
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    end = began + seconds
    conns = []
    for _ in range(clients):
        _, proto = await loop.create_connection(
            lambda: Poster(request, stats, end), host, int(port)
        )
        conns.append(proto)
    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(*(c.done for c in conns))
    took = time.perf_counter() - began
    latencies = sorted(stats["latencies"])
    statuses = stats["statuses"]
    ok = statuses.get(202, 0)
    return {
        "rps": ok / took,
        "accepted": ok,
        "statuses": statuses,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "seconds": took,
    }


async def child(seconds: float, clients: int, auth: str, hooks: bool) -> dict[str, Any]:
    """The application: a webhook receiver (its port on stdout), then, once told the API's
    URL on stdin, the load; then it waits (up to 60 s) for a webhook per accepted message."""
    seen: set[bytes] = set()
    times: list[float] = []
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(seen, changed, times), "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    url = (await asyncio.to_thread(sys.stdin.readline)).strip()
    began = time.monotonic()
    cpu = time.process_time()
    result = await client(url, seconds, clients, auth)
    try:
        async with asyncio.timeout(60.0):
            while hooks and len(seen) < result["accepted"]:
                changed.clear()
                await changed.wait()
    except TimeoutError:
        pass
    last = times[-1] if times else time.monotonic()
    result["webhooks"] = len(seen)
    result["webhooks_missing"] = max(0, result["accepted"] - len(seen))
    result["webhooks_per_s"] = len(seen) / max(1e-9, last - began)
    result["cpu"] = time.process_time() - cpu
    server.close()
    return result


class App:
    """The application's process: ``start()`` → the receiver's URL; ``run(api_url)``."""

    def __init__(self, seconds: float, clients: int, auth: str, hooks: bool) -> None:
        args = [sys.executable, __file__, "--client", "--seconds", str(seconds)]
        args += ["--clients", str(clients), "--auth", auth] + (["--hooks"] if hooks else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def start(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        return f"http://127.0.0.1:{line[1]}/hook"

    def run(self, api_url: str, timeout: float) -> dict[str, Any]:
        out, _ = self.proc.communicate(api_url + "\n", timeout=timeout)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


# --- the peer: a bare aiohttp handler (a child process) ----------------------------------------


async def bare_server() -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"messages": [{"id": "x", "status": "accepted"}]}, status=202)

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"bare aiohttp: listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


# --- the runs ----------------------------------------------------------------------------------


def measured(app: App, url: str, pids: dict[str, int], seconds: float) -> dict[str, Any]:
    before = {k: cb.cpu_seconds(p) for k, p in pids.items()}
    began = time.monotonic()
    result = app.run(url, seconds + 120)
    took = time.monotonic() - began
    spent = {k: cb.cpu_seconds(p) - before[k] for k, p in pids.items()}
    spent["application"] = result.pop("cpu")
    result["cpu"] = {k: round(v / took, 2) for k, v in spent.items()}
    # CPU per accepted message, each process (from the first POST to the last webhook)
    result["cpu_us_per_msg"] = {
        k: round(1e6 * v / max(1, result["accepted"]), 1) for k, v in spent.items()
    }
    return result


def bare(seconds: float, clients: int) -> dict[str, Any]:
    proc, port = cb.start_server([sys.executable, __file__, "--bare"])
    try:
        app = App(seconds, clients, "Bearer x", hooks=False)
        app.start()
        return measured(app, f"http://127.0.0.1:{port}/v1/messages", {"bare": proc.pid}, seconds)
    finally:
        cb.stop_server(proc)


def smsc(
    seconds: float, clients: int, entry: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    carrier, carrier_port = cb.start_server([sys.executable, "-m", "smsc", *cb.CARRIER_ARGS])
    app = App(seconds, clients, f"Bearer {KEY}", hooks=True)
    try:
        hook_url = app.start()
        with tempfile.TemporaryDirectory(prefix="smsc-http-") as tmpdir:
            tmp = Path(tmpdir)
            conf = tmp / "smsc.yaml"
            conf.write_text(yaml.safe_dump(serve_config(tmp, carrier_port, hook_url, extra)))
            serve = subprocess.Popen(
                [
                    sys.executable,
                    *([entry] if entry else ["-m", "smsc"]),
                    "serve",
                    "--config",
                    str(conf),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                assert serve.stdout is not None
                api = ""
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    line = serve.stdout.readline()
                    if not line or "listening" in line:
                        break
                    if "application API at" in line:
                        api = line.split(" at ", 1)[1].strip()
                if not api:
                    raise SystemExit("bench/http_api.py: smsc serve did not start")
                time.sleep(1.0)  # the router binds its carrier after "listening"
                pids = {"serve": serve.pid, "carrier": carrier.pid}
                return measured(app, f"{api}/messages", pids, seconds)
            finally:
                cb.stop_server(serve)  # type: ignore[arg-type]
    finally:
        if app.proc.poll() is None:
            app.proc.kill()
        cb.stop_server(carrier)


def main(seconds: float, clients: int, entry: str | None = None) -> dict[str, Any]:
    peer = bare(seconds, clients)
    print(
        f"bare aiohttp: {peer['rps']:,.0f} requests/s, p99 {peer['p99_ms']:.1f} ms;"
        f" CPU {peer['cpu']}",
        flush=True,
    )
    ours = smsc(seconds, clients, entry)
    print(
        f"smsc: {ours['rps']:,.0f} messages/s accepted, p99 POST {ours['p99_ms']:.1f} ms,"
        f" statuses {ours['statuses']}; webhooks {ours['webhooks']:,}"
        f" ({ours['webhooks_per_s']:,.0f}/s, {ours['webhooks_missing']} missing);"
        f" CPU {ours['cpu']}; CPU µs per message {ours['cpu_us_per_msg']}",
        flush=True,
    )
    return {
        "msgs_per_s": round(ours["rps"], 1),
        "webhooks_per_s": round(ours["webhooks_per_s"], 1),
        "p99_post_ms": round(ours["p99_ms"], 2),
        "ratio_vs_bare_aiohttp": round(ours["rps"] / peer["rps"], 3),
        "bare_rps": round(peer["rps"], 1),
        "webhooks_missing": ours["webhooks_missing"],
        "cpu": {"smsc_run": ours["cpu"], "bare_run": peer["cpu"]},
        "cpu_us_per_msg": ours["cpu_us_per_msg"],
        "bare_cpu_us_per_request": peer["cpu_us_per_msg"],
        "clients": clients,
        "seconds": seconds,
        "target_msgs_per_s": 5000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--serve-entry",
        metavar="FILE.py",
        help="start smsc serve as `python FILE.py serve ...` (a patch under trial; FILE ends"
        " by calling smsc.cli.main), as bench/e2e.py does",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hooks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--auth", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run  # type: ignore[assignment]
    if args.client:
        print(json.dumps(runner(child(args.seconds, args.clients, args.auth, args.hooks))))
    elif args.bare:
        runner(bare_server())
    else:
        print(json.dumps(main(args.seconds, args.clients, args.serve_entry)))
