"""A real ``redis-server`` (the Debian package ``make`` installs) for the tests: started on a
free loopback port in a temporary directory, ready when it says so on stdout (read under a
deadline, never a sleep), stopped at the end.

Fixtures (import them in a test module or conftest):

- ``redis_server``: one server per test session (:class:`RedisServer`);
- ``redis_url``: a URL to it, the server emptied (``FLUSHALL``) before each test.

A test that restarts or kills Redis starts its own :class:`RedisServer` (``aof=True`` for
the append-only file, ``appendfsync always`` or ``everysec``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: redis-server starts in milliseconds; a loaded CI machine may take seconds.
START_DEADLINE = 30.0
_READY = b"Ready to accept connections"


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:  # `make test` installs it; a bare `pytest` on a new machine may not
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child on 127.0.0.1, its data in ``workdir``."""

    def __init__(
        self, workdir: Path, *, aof: bool = False, appendfsync: str = "everysec"
    ) -> None:
        self.workdir = workdir
        self.aof = aof
        self.appendfsync = appendfsync
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port and data after a stop or kill)."""
        for _attempt in range(5):  # another process may take the free port first
            port = self.port or _free_port()
            if self._spawn(port):
                self.port = port
                return
            if self.port:
                break
        raise RuntimeError(f"redis-server did not start: {self._log().decode(errors='replace')}")

    def _spawn(self, port: int) -> bool:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        self._out = bytearray()
        deadline = time.monotonic() + START_DEADLINE
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                break
            chunk = os.read(fd, 65536)
            if not chunk:  # exited: the port was taken, or a bad setting
                self.proc.wait()
                return False
            self._out += chunk
            if _READY in self._out:
                # Keep reading what it logs, so that a full pipe never blocks it.
                self._drainer = threading.Thread(target=self._drain, args=(fd,), daemon=True)
                self._drainer.start()
                return True
        self.stop()
        return False

    def _drain(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                self._out += chunk[-4096:]
                del self._out[:-65536]

    def _log(self) -> bytes:
        return bytes(getattr(self, "_out", b""))

    def stop(self) -> None:
        """SIGTERM: Redis writes what it must and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._close_pipe()

    def kill(self) -> None:
        """SIGKILL: what the append-only file has is all that survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        # The process is gone: the drain thread reads to EOF and ends.
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(timeout=10)
            self._drainer = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def flushall(self) -> None:
        """Empty every database, over a plain socket (RESP inline command)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"FLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="smsc-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(name="backend", params=["sqlite", "redis"])
def sqlite_or_redis(request: pytest.FixtureRequest) -> str | None:
    """A contract suite's backend, as the fixture ``backend``: None for SQLite, else the
    URL of an emptied Redis."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("redis_url"))
