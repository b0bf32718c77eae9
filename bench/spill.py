"""Spill-over under load: what ``routing.spill: wait`` and ``never`` keep on the cheapest
carrier, and what they cost in time, against ``spill: now`` (the default) measured in the
same run.

Run from the repository root:  .venv/bin/python bench/spill.py [--duration 5] [--rate 1000]

Each run is bench/routing.py's (``python -m smsc serve`` on the embedded default, then
``smsc load --port P --duration D --rate R``), with the routing section set to the spill
policy under test (the other routing keys at their defaults). Printed per run: the share of
accepted submits ``cheap`` carried, the money per 10,000 delivered messages, and the
client's view (messages, receipts, how long sending took: a held queue paces the client).
The last line is one JSON object: both runs and ``ratio_vs_now`` (cost per 10k delivered,
wait ÷ now).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from routing import ROOT, measure  # bench/routing.py: the same harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--spill-wait", type=float, default=0.05)
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = {}
    policies = {
        "now": {"spill": "now"},
        "wait": {"spill": "wait", "spill_wait": args.spill_wait},
        "never": {"spill": "never"},
    }
    for name, routing in policies.items():
        got = measure(ROOT, args.duration, args.rate, routing)
        print(f"spill: {name}: {json.dumps(got)}", flush=True)
        runs[name] = got
    result: dict[str, Any] = {
        "command": f"smsc load --port P --duration {args.duration:g} --rate {args.rate:g}",
        "spill_wait": args.spill_wait,
    }
    for name, got in runs.items():
        result[f"cheapest_share_{name}"] = got["cheapest_share"]
        result[f"cost_per_10k_delivered_{name}"] = got["cost_per_10k_delivered"]
        result[f"sending_s_{name}"] = got["client"]["sending_s"]
        result[f"receipts_missing_{name}"] = got["client"]["missing"]
    for name in ("now", "wait", "never"):
        result[f"receipts_{name}"] = runs[name]["client"]["receipts"]
    now_cost = runs["now"]["cost_per_10k_delivered"]
    wait_cost = runs["wait"]["cost_per_10k_delivered"]
    if now_cost and wait_cost:
        result["ratio_vs_now"] = round(wait_cost / now_cost, 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
