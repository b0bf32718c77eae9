"""Least cost under load: the traffic's share and the money spent per delivered message.

Run from the repository root:  .venv/bin/python bench/routing.py [--duration 20]

Twice, with the code of this checkout: ``python -m smsc serve`` on its embedded default
(three simulated carriers: cheap, mid, premium; ``--port 0`` and a free metrics port, the
store in a temporary directory) — once as it is (``routing.rank: delivered_cost``, 2 %
exploration, adaptive rates), once as the price-only baseline the issue names (the same
configuration with ``routing: {rank: price, explore: 0}`` and the fixed pause: each
carrier's ``adaptive.min_rate`` at 1e9, so that every ESME_RTHROTTLED holds the bind back
for ``throttle_pause`` as before router/aimd.py) — then, once every carrier bind is up,
exactly what a new user types:

    smsc load --port <port> --duration 20 --rate 1000

(``python -m smsc load``, the harness's defaults otherwise: destinations 4479..., the
route "44"). Then /metrics is read: ``smsc_route_decisions_total``, the carriers' accepted
submits (``smsc_carrier_pdus_total{command="submit_sm",status="ESME_ROK"}``) and their
receipts by state (``smsc_carrier_receipts_total``).

``cheapest_share`` is the share of the submits the carriers accepted that ``cheap``
accepted (what it carried); ``decisions_share`` the share of routing decisions that chose
it. ``cost_per_10k_delivered`` is the money spent (each accepted submit — one part — at
its carrier's price on route "44") per 10,000 DELIVRD receipts. The last output line is
one JSON object with both runs' figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_procs", ROOT / "bench" / "procs.py")
assert _spec is not None
assert _spec.loader is not None
procs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(procs)

CARRIERS = ("cheap", "mid", "premium")


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


def default_config(
    routing: dict[str, Any] | None, fixed_pause: bool = False
) -> tuple[dict[str, Any], dict[str, Decimal]]:
    """The embedded default as plain data (``routing`` replacing its routing section;
    ``fixed_pause``: every carrier's adaptive ``min_rate`` so high that each throttle
    pauses the bind for ``throttle_pause`` instead of cutting its rate — the router before
    router/aimd.py), and route "44"'s price per carrier."""
    sys.path.insert(0, str(ROOT))
    import msgspec

    from smsc.defaults import DEFAULT

    data: dict[str, Any] = msgspec.to_builtins(DEFAULT)
    if routing is not None:
        data["router"]["routing"] = routing
    if fixed_pause:
        for carrier in data["router"]["carriers"]:
            carrier["adaptive"] = {**carrier["adaptive"], "min_rate": 1e9}
    route = next(r for r in DEFAULT.router.routes if r.prefix == "44")
    return data, {cp.carrier: cp.amount for cp in route.carriers}


def measure(
    source: Path,
    duration: float,
    rate: float,
    routing: dict[str, Any] | None,
    fixed_pause: bool = False,
) -> dict[str, Any]:
    """One serve + load run with the code in ``source`` (``routing``: a routing section
    replacing the embedded default's; None: the default as it is; ``fixed_pause``: see
    :func:`default_config`)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    metrics_port = procs.free_port()
    data, prices = default_config(routing, fixed_pause)
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        if routing is not None or fixed_pause:
            (Path(tmp) / "smsc.yaml").write_text(json.dumps(data))  # JSON is YAML
            args = ["--config", "smsc.yaml"]
        serve, port = procs.start_server(
            [sys.executable, "-m", "smsc", "serve", *args, "--port", "0",
             "--metrics-port", str(metrics_port), "--log-level", "warning"],
            env, Path(tmp),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + procs.START_DEADLINE
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
            procs.stop_server(serve)
    decisions = samples(text, "smsc_route_decisions_total")
    accepted = samples(text, "smsc_carrier_pdus_total", command="submit_sm", status="ESME_ROK")
    throttled = samples(
        text, "smsc_carrier_pdus_total", command="submit_sm", status="ESME_RTHROTTLED"
    )
    limits = samples(text, "smsc_carrier_rate_limit")
    delivered = samples(text, "smsc_carrier_receipts_total", state="DELIVERED")
    explored = samples(text, "smsc_router_events_total", event="explored")
    total_dec = sum(decisions.values()) or 1.0
    total_acc = sum(accepted.values()) or 1.0
    spent = sum(Decimal(int(n)) * prices[c] for c, n in accepted.items() if c in prices)
    total_dlv = sum(delivered.values())
    cost = float(spent) / total_dlv * 10_000 if total_dlv else None
    return {
        "cost_per_10k_delivered": None if cost is None else round(cost, 3),
        "spent": str(spent),
        "delivered": {c: int(delivered.get(c, 0)) for c in CARRIERS},
        "explored": {c: int(explored.get(c, 0)) for c in CARRIERS},
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
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    result: dict[str, Any] = {"command": f"smsc load --port P --duration "
                              f"{args.duration:g} --rate {args.rate:g}"}  # fmt: skip
    if not args.no_baseline:
        price_only = {"rank": "price", "explore": 0}
        base = measure(ROOT, args.duration, args.rate, price_only, fixed_pause=True)
        print(f"baseline (rank: price, fixed pause): {json.dumps(base)}", flush=True)
        result["baseline_cost_per_10k_delivered"] = base["cost_per_10k_delivered"]
        result["baseline_cheapest_share"] = base["cheapest_share"]
    now = measure(ROOT, args.duration, args.rate, None)
    print(f"delivered_cost (the default): {json.dumps(now)}", flush=True)
    result["cost_per_10k_delivered"] = now["cost_per_10k_delivered"]
    result["cheapest_share"] = now["cheapest_share"]
    result["decisions_share"] = now["decisions_share"]
    if not args.no_baseline and now["cost_per_10k_delivered"] and base["cost_per_10k_delivered"]:
        result["ratio_vs_baseline"] = round(
            now["cost_per_10k_delivered"] / base["cost_per_10k_delivered"], 4
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
