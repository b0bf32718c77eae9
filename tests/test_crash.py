"""Acknowledged means kept under ``kill -9`` (issue 13 §5): bench/crash.py, small.

``smsc serve`` (``ack_after: store``) in front of two ``smsc carrier`` processes, all
children of this test; a client submits with receipts while serve is SIGKILLed five times
and a carrier twice, at seeded moments, each restarted at once (the client binds again).
At the end every acknowledged message has exactly one final receipt, and no receipt names
a message the client was never given — except where SMPP leaves a window, which the
harness tells apart and bounds (see bench/crash.py): a receipt the client answered just
before serve died is sent again by the carrier; a submit in flight at the kill may have
been committed without its answer reaching the client.

Every wait in the harness has a deadline; it sleeps only to pace the submits.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

from loops import LOOP_FACTORIES

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_crash", ROOT / "bench" / "crash.py")
assert _spec is not None
assert _spec.loader is not None
crash = importlib.util.module_from_spec(_spec)
sys.modules["bench_crash"] = crash  # dataclasses look their module up
_spec.loader.exec_module(crash)


def test_kill_9_of_serve_and_of_a_carrier_loses_no_receipt(tmp_path: Path) -> None:
    params = crash.Params(
        messages=2000,
        rate=400.0,
        window=100,
        serve_kills=5,
        carrier_kills=2,
        seed=13,
        receipt_timeout=3.0,
        deadline=30.0,
        # The window is the final state's commit after the client's answer: a few ms
        # measured (bench/crash.py); a machine starved of CPU stretches it.
        window_s=2.0,
        workdir=tmp_path,
    )
    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        result = runner.run(crash.run(params))
    print(json.dumps(result))  # shown in full when an assertion fails
    assert result["serve_kills"] == 5
    assert result["carrier_kills"] == 2
    assert result["acked"] > 1000, result
    assert result["missing"] == 0, result
    assert result["other_duplicates"] == 0, result
    assert result["stray_receipts"] == 0, result
    # SMPP's windows, bounded: a few receipts per serve kill at most
    assert result["window_duplicates"] <= 5 * 20, result
    assert result["ok"], result
