"""Least-cost share under load: how much of the traffic the cheapest carrier carries.

Run from the repository root:  .venv/bin/python bench/routing.py [--baseline REV]

For the code under test (this checkout) and, unless ``--no-baseline``, for ``--baseline``
(a git revision, default ``main``, exported with ``git archive`` into a temporary
directory): ``python -m smsc serve`` on its embedded default (three simulated carriers:
cheap, mid, premium; ``--port 0`` and a free metrics port, the store in a temporary
directory), then, once every carrier bind is up, exactly what a new user types:

    smsc load --port <port> --duration 20 --rate 1000

(``python -m smsc load``, the harness's defaults otherwise). Then /metrics is read:
``smsc_route_decisions_total`` and the carriers' accepted submits
(``smsc_carrier_pdus_total{command="submit_sm",status="ESME_ROK"}``) per carrier.

``cheapest_share`` is the share of the submits the carriers accepted that ``cheap``
accepted (what it carried); ``decisions_share`` the share of routing decisions that chose
it (the figure issue 15 quotes: a throttled attempt is a decision too). The last output
line is one JSON object with both, for the code under test and the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CARRIERS = ("cheap", "mid", "premium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """carrier → value of ``name`` samples whose labels include ``labels``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()) and "carrier" in found:
            out[found["carrier"]] = out.get(found["carrier"], 0.0) + float(value)
    return out


def measure(source: Path, duration: float, rate: float) -> dict[str, Any]:
    """One serve + load run with the code in ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        serve = subprocess.Popen(
            [sys.executable, "-m", "smsc", "serve", "--port", "0",
             "--metrics-port", str(metrics_port), "--log-level", "warning"],
            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            port = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = serve.stdout.readline()
                if not line:
                    break
                if "listening on" in line:
                    port = int(line.strip().rsplit(":", 1)[-1])
                    break
            if port is None:
                raise SystemExit(f"bench/routing.py: smsc serve from {source} did not start")
            while time.monotonic() < deadline:  # every carrier bind up (a poll: a bench)
                text = scrape(metrics_port)
                bound = samples(text, "smsc_carrier_binds")
                wanted = samples(text, "smsc_carrier_binds_configured")
                if wanted and bound == wanted:
                    break
                time.sleep(0.1)
            cmd = [sys.executable, "-m", "smsc", "load", "--port", str(port),
                   "--duration", str(duration), "--rate", str(rate), "--progress", "never",
                   "--json", str(Path(tmp) / "load.json")]  # fmt: skip
            load = subprocess.run(
                cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=duration + 120
            )
            if load.returncode != 0:
                raise SystemExit(f"bench/routing.py: smsc load failed:\n{load.stdout}")
            report = json.loads((Path(tmp) / "load.json").read_text())["summary"]
            text = scrape(metrics_port)
        finally:
            serve.terminate()
            try:
                serve.wait(20)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(5)
    decisions = samples(text, "smsc_route_decisions_total")
    accepted = samples(text, "smsc_carrier_pdus_total", command="submit_sm", status="ESME_ROK")
    throttled = samples(
        text, "smsc_carrier_pdus_total", command="submit_sm", status="ESME_RTHROTTLED"
    )
    limits = samples(text, "smsc_carrier_rate_limit")
    total_dec = sum(decisions.values()) or 1.0
    total_acc = sum(accepted.values()) or 1.0
    return {
        "cheapest_share": round(accepted.get("cheap", 0.0) / total_acc, 4),
        "decisions_share": round(decisions.get("cheap", 0.0) / total_dec, 4),
        "decisions": {c: int(decisions.get(c, 0)) for c in CARRIERS},
        "accepted": {c: int(accepted.get(c, 0)) for c in CARRIERS},
        "throttled": {c: int(throttled.get(c, 0)) for c in CARRIERS},
        "rate_limit_at_end": {c: limits[c] for c in CARRIERS if c in limits},
        "client": {
            "messages": report["messages"],
            "accepted": report["accepted"],
            "rejected": report["rejected"],
            "receipts": report["receipts"]["received"],
            "missing": report["receipts"]["missing"],
            "sending_s": report["sending_s"],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    result: dict[str, Any] = {"command": f"smsc load --port P --duration "
                              f"{args.duration:g} --rate {args.rate:g}"}  # fmt: skip
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(
                ["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            rev = subprocess.run(
                ["git", "rev-parse", "--short", args.baseline],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            base = measure(Path(tmp), args.duration, args.rate)
            print(f"baseline {rev}: {json.dumps(base)}", flush=True)
            result["baseline_rev"] = rev
            result["baseline_cheapest_share"] = base["cheapest_share"]
            result["baseline_decisions_share"] = base["decisions_share"]
            result["baseline"] = base
    now = measure(ROOT, args.duration, args.rate)
    print(f"this checkout: {json.dumps(now)}", flush=True)
    result["cheapest_share"] = now["cheapest_share"]
    result["decisions_share"] = now["decisions_share"]
    result["run"] = now
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
