"""The browser of the console tests: Debian's ``chromium``, headless, driven by Playwright's
sync API with ``executable_path`` (Playwright never downloads a browser here), and the
``smsc`` child processes the pages talk to (run in a plain thread of their own: Playwright's
sync API wants no event loop in the test's thread).

Every wait has a deadline: Playwright's default timeouts are set to :data:`DEADLINE` (its
``expect`` and ``wait_for_*`` poll until then), a child's start-up line is awaited under
:data:`STARTUP_DEADLINE`. Screenshots go to ``tests/artifacts/console/`` (ignored by git;
CI may keep the folder as the test artifact).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Milliseconds: Playwright's timeouts for actions, navigation and expect.
DEADLINE = 15_000
STARTUP_DEADLINE = 60.0
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}


class Child:
    """A ``python -m smsc ...`` child whose stdout lines are read by a thread into a queue;
    :meth:`line` waits (under a deadline) for a line matching a pattern."""

    def __init__(self, cwd: Path, *args: str, name: str) -> None:
        self.stderr_path = cwd / f"{name}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smsc", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, pattern: str, timeout: float = STARTUP_DEADLINE) -> re.Match[str]:
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line matching {pattern!r} in {self.seen}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"exited: {self.seen} {self.stderr_path.read_text()}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._reader.join(timeout=15)  # it ends at the pipe's end, with the child
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        assert "Traceback" not in self.stderr_path.read_text(), self.stderr_path.read_text()


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, timeout=DEADLINE, args=["--no-sandbox"]
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookie), 1280×800."""
    context = browser.new_context(viewport=WIDE)  # type: ignore[arg-type]
    context.set_default_timeout(DEADLINE)
    context.set_default_navigation_timeout(DEADLINE)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, errors  # no script error on any page a test opened


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
