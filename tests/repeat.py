"""Run the test suite N times, each in a fresh process, and list every test that failed.

    make test-repeat N=10            # the whole suite ten times
    make test-repeat N=10 HOG=1      # ... with a CPU-heavy process beside it
    .venv/bin/python tests/repeat.py --runs 5 -- tests/test_e2e.py -k receipt

A flaky test is one that fails in some runs and passes in others; one run says nothing about
it. Each run is a new ``pytest`` process (no state carried over; the Hypothesis ci profile is
derandomized, so the draws are the same each time and what varies is timing). With
``--hog`` a busy-looping process runs beside the suite on one core, as a shared CI machine
would: timing assumptions are the usual cause of flakes, and they show under load.

Prints one line per run, then every test that failed at least once with how often; exits 1
if any did (or a run failed without a test to blame, e.g. a collection error), 0 otherwise.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_HOG = "while True: pass"


def failed_tests(report: Path) -> list[str]:
    """The node ids of the tests that failed or errored in one junit-xml report."""
    try:
        tree = ET.parse(report)
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in tree.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            out.append(f"{module}.py::{case.get('name', '?')}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--hog", action="store_true", help="a busy process beside the suite")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    failures: Counter[str] = Counter()
    unexplained = 0
    hog = subprocess.Popen([sys.executable, "-c", _HOG]) if args.hog else None
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="smsc-repeat-") as tmp:
            for run in range(1, args.runs + 1):
                report = Path(tmp) / f"run-{run}.xml"
                t0 = time.monotonic()
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        "-q",
                        "-p",
                        "no:cacheprovider",
                        f"--junitxml={report}",
                        *args.pytest_args,
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    check=False,
                )
                failed = failed_tests(report)
                failures.update(failed)
                if proc.returncode != 0 and not failed:
                    unexplained += 1
                    print(proc.stdout[-4000:])
                elif failed:
                    # The failures' own output, for the record (the tail holds the summary).
                    print(proc.stdout[-8000:])
                last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
                print(
                    f"run {run}/{args.runs}: exit {proc.returncode} in "
                    f"{time.monotonic() - t0:.0f}s: {last[0]}",
                    flush=True,
                )
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()

    if failures:
        print("\ntests that failed at least once:")
        for test, n in failures.most_common():
            print(f"  {n}/{args.runs}  {test}")
    if unexplained:
        print(f"\n{unexplained} run(s) failed without a failing test (see their output above)")
    print(
        json.dumps(
            {
                "runs": args.runs,
                "hog": args.hog,
                "failing_tests": dict(failures),
                "runs_failed_unexplained": unexplained,
                "seconds": round(time.monotonic() - started),
            }
        )
    )
    return 1 if failures or unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
