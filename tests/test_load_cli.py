"""``python -m simulator.load`` (what ``smsc load`` runs): arguments, configuration errors,
real worker processes against the carrier simulator, the reports, Ctrl-C and exit codes.

The servers run in the test's event loop while the harness runs as a subprocess; every wait
is on the subprocess or an event, under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_load as scripts
from carrier_fixtures import PASSWORD, SYSTEM_ID, profile, running_carrier

from smppcore.constants import CommandId

ROOT = Path(__file__).resolve().parent.parent
#: A bound on how long a run may take (against hangs), far above what it needs even on a
#: loaded machine: three Python processes start, import, run 1 s and write reports.
DEADLINE = 60.0


def load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator.load", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=DEADLINE,
    )


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator.load",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def finish(proc: asyncio.subprocess.Process) -> Result:
    try:
        async with asyncio.timeout(DEADLINE):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return Result(proc.returncode, out.decode(), err.decode())


# --- arguments and configuration ----------------------------------------------------------------


def test_help_documents_the_command() -> None:
    result = load("--help")
    assert result.returncode == 0
    for flag in ("--rate", "--duration", "--binds", "--window", "--json", "--html", "--workers"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "0"], "smsc load: --window: Expected `int` >= 1"),
        (["--binds", "0"], "smsc load: --binds: Expected `int` >= 1"),
        (["--system-id", "x" * 16], "smsc load: --system-id: Expected `str` of length <= 15"),
        (["--port", "70000"], "smsc load: --port: Expected `int` <= 65535"),
        (["nope.yaml"], "smsc load: nope.yaml: $: no such file"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = load(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""


def test_a_scenario_error_names_the_file_and_key(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("binds:\n  count: 2\n  windw: 10\n")
    result = load(str(scenario))
    assert result.returncode == 2
    assert result.stderr.strip() == f"smsc load: {scenario}: $.binds.windw: unknown key"


def test_an_unknown_flag_is_a_usage_error() -> None:
    result = load("--frobnicate")
    assert result.returncode == 2
    assert "smsc load: error: unrecognized arguments: --frobnicate" in result.stderr


def test_nothing_to_bind_to_exits_1(run1: scripts.Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            port = carrier.port
        proc = await start("--port", str(port), "--workers", "1", "--duration", "1")
        result = await finish(proc)
        assert result.code == 1
        assert f"smsc load: cannot bind to 127.0.0.1:{port}" in result.stderr
        assert "error" in result.summary

    run1(main())


def test_a_refused_bind_exits_1_with_the_status(run1: scripts.Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            proc = await start(
                "--port", str(carrier.port), "--system-id", SYSTEM_ID, "--password", "nope",
                "--workers", "2", "--binds", "2",
            )  # fmt: skip
            result = await finish(proc)
        assert result.code == 1
        assert "bind refused: ESME_RINVPASWD" in result.stderr

    run1(main())


# --- real runs ------------------------------------------------------------------------------------


def test_two_worker_processes_against_the_carrier_with_both_reports(
    run1: scripts.Run, tmp_path: Path
) -> None:
    async def main() -> None:
        prof = profile(receipt_delay={"kind": "fixed", "ms": 50}, states={"DELIVRD": 1.0})
        async with running_carrier(profiles={"default": prof}) as carrier:
            scenario = tmp_path / "run.yaml"
            scenario.write_text(
                "binds: {count: 4, window: 20}\n"
                "load: {duration: 1.0}\n"
                "traffic:\n"
                "  mix:\n"
                "    - {weight: 3, coding: gsm7, length: 60}\n"
                "    - {weight: 1, coding: ucs2, length: 200, long: payload}\n"
                "receipts: {grace: 5}\n"
            )
            proc = await start(
                str(scenario),
                "--port", str(carrier.port), "--system-id", SYSTEM_ID, "--password", PASSWORD,
                "--workers", "2", "--json", str(tmp_path / "r.json"),
                "--html", str(tmp_path / "r.html"),
            )  # fmt: skip
            result = await finish(proc)
            carrier_accepted = carrier.metrics.pdus_out[(CommandId.SUBMIT_SM_RESP, 0)]
        assert result.code == 0, result.stderr
        s = result.summary
        scripts.assert_counts_add_up(s)
        assert s["workers"] == 2
        assert s["binds"] == 4
        assert s["accepted"] == s["submitted"] == carrier_accepted > 0
        assert s["receipts"]["received"] == s["accepted"]
        assert s["receipts"]["by_state"] == {"DELIVRD": s["accepted"]}
        assert s["receipts"]["missing"] == s["receipts"]["unmatched"] == 0
        # stdout: a readable summary, then the JSON summary as the last line.
        assert result.stdout.startswith("smsc load: 127.0.0.1:")
        assert result.stderr == ""  # no terminal: no progress line
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["summary"] == s
        assert report["params"]["binds"]["count"] == 4
        assert report["series"]
        assert report["distribution"]
        page = (tmp_path / "r.html").read_text()
        assert page.count("<svg") == 4
        for fetch in ('src="http', 'href="http', "<script", "<link", "@import"):
            assert fetch not in page  # readable offline: nothing to fetch or run
        assert PASSWORD not in page.split("<h2>Parameters</h2>")[1]

    run1(main())


def test_progress_line_when_asked(run1: scripts.Run) -> None:
    async def main() -> None:
        async with scripts.scripted(scripts.Script()) as port:
            proc = await start(
                "--port", str(port), "--workers", "1", "--duration", "1.2",
                "--no-registered-delivery", "--progress", "always",
            )  # fmt: skip
            result = await finish(proc)
        assert result.code == 0
        assert "\r" in result.stderr
        assert "/s" in result.stderr
        assert "ok " in result.stderr

    run1(main())


def test_ctrl_c_stops_the_workers_and_yields_a_partial_report(
    run1: scripts.Run, tmp_path: Path
) -> None:
    async def main() -> None:
        script = scripts.Script(delay=lambda n: 0.002, notify_at=2000)
        async with scripts.scripted(script) as port:
            proc = await start(
                "--port", str(port), "--workers", "2", "--binds", "2", "--duration", "60",
                "--json", str(tmp_path / "partial.json"),
            )  # fmt: skip
            async with asyncio.timeout(DEADLINE):
                await script.reached.wait()
            proc.send_signal(signal.SIGINT)
            result = await finish(proc)
        assert result.code == 130
        s = result.summary
        assert s["interrupted"] is True
        assert s["complete"] is True
        assert s["messages"] >= 2000
        scripts.assert_counts_add_up(s)
        assert s["accepted"] >= 2000
        assert "INTERRUPTED" in result.stdout
        assert json.loads((tmp_path / "partial.json").read_text())["summary"] == s

    run1(main())
