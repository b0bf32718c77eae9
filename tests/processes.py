"""``python -m smsc <command>`` as a child process, for the CLI tests.

Each command prints where it listens once ready (``smsc serve: listening on HOST:PORT``,
and the HTTP port on a line of its own); :func:`smsc_process` reads those lines under a
deadline — never a sleep — and kills the child afterwards if it still runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
