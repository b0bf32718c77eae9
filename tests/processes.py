"""``python -m smsc <command>`` as a child process, for the CLI tests: run to its end
(:func:`smsc_run`, :func:`assert_config_error`) or kept running (:func:`smsc_process`);
and which keys an example config file documents (:func:`documented_keys`).

Each command prints where it listens once ready (``smsc serve: listening on HOST:PORT``,
and the HTTP port on a line of its own); :func:`smsc_process` reads those lines under a
deadline — never a sleep — and kills the child afterwards if it still runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: A child imports everything before it listens; CI runs with PYTHONDONTWRITEBYTECODE=1
#: (no .pyc), on a loaded 2-core machine.
STARTUP_DEADLINE = 60.0
EXIT_DEADLINE = 10.0

_HTTP = re.compile(r"smsc \S+: .*on http://127\.0\.0\.1:(\d+)")
_LISTENING = re.compile(r"smsc (\S+): listening on 127\.0\.0\.1:(\d+)")


class SmscProcess:
    """A running ``smsc`` child: its SMPP port, its HTTP port (if any) and its stderr."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.lines: list[str] = []
        self.port = 0
        self.http_port: int | None = None

    async def wait_ready(self) -> None:
        """Read stdout, under the deadline, up to the "listening on" line."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(STARTUP_DEADLINE):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"exited before listening: {self.stderr.read_text()}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                http = _HTTP.match(line)
                if http:
                    self.http_port = int(http.group(1))
                listening = _LISTENING.fullmatch(line)
                if listening:
                    self.port = int(listening.group(2))
                    return

    async def exit_code(self, timeout: float = EXIT_DEADLINE) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def smsc_process(
    command: str, cwd: Path, *args: str, name: str | None = None
) -> AsyncIterator[SmscProcess]:
    """Start ``python -m smsc COMMAND ARGS`` in ``cwd`` and wait until it listens; kill it
    afterwards if still running, and fail if it printed a traceback. Its stderr goes to
    ``cwd/<name or command>.stderr``."""
    stderr = cwd / f"{name or command}.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smsc",
            command,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    process = SmscProcess(proc, stderr)
    try:
        await process.wait_ready()
        yield process
    finally:
        await process.kill()
        if proc.stdout is not None:
            await proc.stdout.read()  # what is left, so the pipe closes cleanly
        assert "Traceback" not in stderr.read_text(), stderr.read_text()


def smsc_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m smsc ARGS`` to its end (at most 30 s), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "smsc", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
    )


def assert_config_error(
    result: subprocess.CompletedProcess[str], path: Path, where: str, reason: str
) -> None:
    """A refused config: exit 2, nothing on stdout, one stderr line naming the file, the
    key path and the reason — never a traceback."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"smsc: {path}: {where}: "), line
    assert reason in line


def yaml_keys(node: Any) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    keys: set[str] = set()
    if isinstance(node, dict):
        keys.update(node)
        for value in node.values():
            keys |= yaml_keys(value)
    elif isinstance(node, list):
        for item in node:
            keys |= yaml_keys(item)
    return keys


def documented_keys(example: Path) -> set[str]:
    """Every key an example config file sets, and those it shows in commented-out blocks
    (``#   key: value``: keys whose values need files to exist, such as TLS certificates)."""
    text = example.read_text(encoding="utf-8")
    keys = yaml_keys(yaml.safe_load(text))
    keys.update(re.findall(r"^\s*#\s+([a-z_]+):", text, re.M))
    return keys
