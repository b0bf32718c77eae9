"""The benches' child processes: starting ``smsc serve`` / ``smsc carrier`` (and peers),
reading the port from their "listening on" line, stopping them, and their CPU and memory
as Linux /proc reports them.

bench/ is not a package (bench/queue.py would shadow the standard library's ``queue``),
so bench/carrier.py loads this file by path and the other benches reach it as
``cb.procs``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SMSC_CONF = ROOT / "bench" / "conf" / "smsc-bench.yaml"
CARRIER_CONF = ROOT / "bench" / "conf" / "carrier-bench.yaml"
TICK = os.sysconf("SC_CLK_TCK")
#: ``smsc carrier`` on the bench profile, on a free port.
CARRIER_ARGS = ["carrier", "--config", str(CARRIER_CONF), "--port", "0", "--log-level", "warning"]
#: Longest a child may take to print its "listening" line.
START_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- starting and stopping ---------------------------------------------------------------


def start_server(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[subprocess.Popen[str], int]:
    """Start ``cmd`` and wait for its "listening ... :PORT" line; the process and PORT."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening" in line:
            return proc, int(line.strip().rsplit(":", 1)[-1].rsplit(" ", 1)[-1])
    proc.kill()
    raise SystemExit(f"bench: {cmd[0]} did not start")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def start_carrier() -> tuple[subprocess.Popen[str], int]:
    """``smsc carrier`` on the bench profile."""
    return start_server([sys.executable, "-m", "smsc", *CARRIER_ARGS])


def serve_config(carrier_port: int, store: Path) -> dict[str, Any]:
    """bench/conf/smsc-bench.yaml with its carriers on ``carrier_port`` and its store at
    ``store``, for the caller to adjust before :func:`start_serve`."""
    data: dict[str, Any] = yaml.safe_load(SMSC_CONF.read_text())
    for carrier in data["router"]["carriers"]:
        carrier["port"] = carrier_port
    data["router"]["store"]["path"] = str(store)
    return data


def start_serve(
    data: dict[str, Any], where: Path, pre: tuple[str, ...] = (), entry: str | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Write ``data`` to ``where``/smsc.yaml and start ``smsc serve`` on it; ``pre``: options
    to the interpreter (``-m cProfile ...``), ``entry``: a script instead of ``-m smsc``."""
    conf = where / "smsc.yaml"
    conf.write_text(yaml.safe_dump(data, sort_keys=False))
    run = [entry] if entry else ["-m", "smsc"]
    return start_server([sys.executable, *pre, *run, "serve", "--config", str(conf)])


# --- /proc readings ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux /proc); 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat, not idle/iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_share(pid: int, wait: Any, seconds: float) -> float:
    """Cores ``pid`` used (1.0 = one) over ``wait(seconds)``, the caller's way to pass the
    time (``time.sleep``, an Event's ``wait``)."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    wait(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)
