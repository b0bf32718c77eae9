"""The parent side of a run: start the workers, coordinate the phases, merge, report.

Workers are processes (multiprocessing, spawn), each on its own event loop (uvloop when
installed) with a share of the binds and of the rate; one worker runs in the parent's own
loop instead (no process to start). Either way the parent talks to a worker through a
:class:`Link` carrying msgpack frames (messages.py), and the run goes through the same
phases — see the docstring of :mod:`simulator.load.messages`.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as MpConnection
from typing import Any, Protocol

from simulator.load.config import LoadConfig
from simulator.load.engine import Engine
from simulator.load.messages import (
    Closed,
    Drained,
    Fatal,
    Final,
    Finish,
    Go,
    Plan,
    Ready,
    Relay,
    Report,
    Snapshot,
    Status,
    Stop,
    ToParent,
    ToWorker,
    encoder,
    to_parent,
    to_worker,
)
from simulator.load.report import Aggregator

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
#: Longest a worker process may take to start and bind, beyond connect_timeout.
_START_SLACK = 30.0
#: Longest the unbind and the final report of the workers may take.
_END_TIMEOUT = 15.0


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plans(config: LoadConfig) -> list[Plan]:
    """Split binds, rate and message count over the workers (by binds)."""
    binds = config.binds.count
    workers = min(config.load.workers or default_workers(), binds)
    out = []
    given_messages = 0
    for w in range(workers):
        share = binds // workers + (1 if w < binds % workers else 0)
        rate = config.load.rate * share / binds if config.load.rate else None
        messages = None
        if config.load.messages is not None:
            messages = (
                config.load.messages
                * sum(binds // workers + (1 if i < binds % workers else 0) for i in range(w + 1))
                // binds
                - given_messages
            )
            given_messages += messages
        out.append(Plan(w, workers, config, share, rate, messages))
    return out


# --- links ------------------------------------------------------------------------------


class Link(Protocol):
    def send(self, msg: ToWorker) -> None: ...

    async def close(self, timeout: float) -> None: ...


OnMessage = Callable[[ToParent], None]


class _Framed(asyncio.Protocol):
    """Length-prefixed msgpack frames over a stream socket; writes never block."""

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            self._on_frame(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LEN.pack(len(data)) + data)


class ProcessLink:
    """A worker process, reached over a socketpair."""

    def __init__(self, plan: Plan, on_message: OnMessage) -> None:
        self.plan = plan
        self._on_message = on_message
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = ctx.Pipe(duplex=True)  # a socketpair on Unix
        self.process = ctx.Process(
            target=worker_main, args=(theirs,), name=f"smsc-load-{plan.worker}", daemon=True
        )
        self.process.start()
        theirs.close()
        self._sock = socket.socket(fileno=os.dup(mine.fileno()))
        mine.close()
        self._framed: _Framed | None = None
        self.lost = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, framed = await loop.create_unix_connection(
            lambda: _Framed(self._frame, self._lost), sock=self._sock
        )
        self._framed = framed
        self.send(self.plan)

    def _frame(self, data: bytes) -> None:
        self._on_message(to_parent.decode(data))

    def _lost(self) -> None:
        if not self.lost:
            self.lost = True
            self._on_message(Fatal(self.plan.worker, "worker process ended unexpectedly"))

    def send(self, msg: ToWorker) -> None:
        assert self._framed is not None
        self._framed.send(encoder.encode(msg))

    def forward(self, data: bytes) -> None:
        assert self._framed is not None
        self._framed.send(data)

    async def close(self, timeout: float) -> None:
        self.lost = True  # from here on an ending connection is expected
        if self._framed is not None and self._framed.transport is not None:
            self._framed.transport.close()
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while self.process.is_alive() and time.monotonic() < deadline:
            # The process has its Final out; joining it is a matter of milliseconds.
            await loop.run_in_executor(None, self.process.join, 0.2)
        if self.process.is_alive():
            self.process.terminate()
            await loop.run_in_executor(None, self.process.join, 2.0)


class LocalLink:
    """A worker on the parent's own event loop (frames still go through msgpack)."""

    def __init__(self, plan: Plan, on_message: OnMessage) -> None:
        self.plan = plan
        self._on_message = on_message
        self.engine = Engine(plan, self._emit)
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.ensure_future(self.engine.start())

    def _emit(self, msg: ToParent) -> None:
        data = encoder.encode(msg)
        asyncio.get_running_loop().call_soon(self._on_message, to_parent.decode(data))

    def send(self, msg: ToWorker) -> None:
        data = encoder.encode(msg)
        asyncio.get_running_loop().call_soon(self.engine.handle, to_worker.decode(data))

    def forward(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.engine.handle, to_worker.decode(data))

    async def close(self, timeout: float) -> None:
        if self.engine.done is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self.engine.done
            except TimeoutError:
                pass
        if self._task is not None and not self._task.done():
            self._task.cancel()


# --- the worker process -----------------------------------------------------------------


def worker_main(conn: MpConnection) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker(sock))
    else:
        uvloop.run(_worker(sock))


async def _worker(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[Plan] = loop.create_future()
    gone: asyncio.Future[None] = loop.create_future()
    engine: Engine | None = None

    def on_frame(data: bytes) -> None:
        msg = to_worker.decode(data)
        if engine is not None:
            engine.handle(msg)
        elif isinstance(msg, Plan) and not first.done():
            first.set_result(msg)

    def on_lost() -> None:
        if not gone.done():
            gone.set_result(None)
        if not first.done():
            first.cancel()

    _, framed = await loop.create_unix_connection(lambda: _Framed(on_frame, on_lost), sock=sock)

    def emit(msg: ToParent) -> None:
        framed.send(encoder.encode(msg))

    plan = await first
    engine = Engine(plan, emit)
    await engine.start()
    assert engine.done is not None
    # Until the Final is out, or the parent went away (then there is nobody to report to).
    await asyncio.wait([engine.done, gone], return_when=asyncio.FIRST_COMPLETED)
    if framed.transport is not None:
        framed.transport.close()


# --- the coordinator --------------------------------------------------------------------


class Progress:
    """The live line on stderr (only when asked or on a terminal)."""

    def __init__(self, enabled: bool, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._shown = False

    def show(self, line: str) -> None:
        if self.enabled:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._shown = True

    def done(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


class Coordinator:
    """Runs one load test: phases, relays, progress, stop requests; returns the report."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        progress: Progress | None = None,
        launcher: Callable[[Plan, OnMessage], Any] | None = None,
    ) -> None:
        self.config = config
        self.plans = plans(config)
        self.workers = len(self.plans)
        self.progress = progress or Progress(False)
        if launcher is None:
            launcher = LocalLink if self.workers == 1 else ProcessLink
        self._launcher = launcher
        self.links: list[Any] = []
        self.agg = Aggregator(self.workers)
        self._changed = asyncio.Event()
        self.ready: set[int] = set()
        self.drained: set[int] = set()
        self.closed: set[int] = set()
        self.fatal: str | None = None
        self.awaiting = [0] * self.workers
        self.relays_acked = [0] * self.workers
        self.forwarded = [0] * self.workers
        self.stop_requested = False
        self.interrupted = False
        self.started = 0.0
        self.t0 = 0.0
        self._shown = 0.0
        self._receipts_until = 0.0
        self.phase = "starting"

    # --- messages ----------------------------------------------------------------------

    def on_message(self, msg: ToParent) -> None:
        if isinstance(msg, Relay):
            self.forwarded[msg.to] += 1
            self.links[msg.to].send(msg)
            return
        if isinstance(msg, Snapshot):
            self.agg.add(msg)
            self.awaiting[msg.worker] = msg.awaiting
            self.relays_acked[msg.worker] = msg.relays_received
        elif isinstance(msg, Ready):
            self.ready.add(msg.worker)
        elif isinstance(msg, Drained | Status):
            if isinstance(msg, Drained):
                self.drained.add(msg.worker)
            self.awaiting[msg.worker] = msg.awaiting
            self.relays_acked[msg.worker] = msg.relays_received
        elif isinstance(msg, Closed):
            self.closed.add(msg.worker)
        elif isinstance(msg, Final):
            self.agg.add_final(msg)
        elif isinstance(msg, Fatal) and self.fatal is None and msg.worker not in self.agg.finals:
            self.fatal = msg.message
        self._changed.set()

    def request_stop(self) -> None:
        """Ctrl-C: stop sending, report what there is."""
        self.stop_requested = True
        self.interrupted = True
        self._changed.set()

    async def _until(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``predicate()`` (True) or ``deadline`` (monotonic; False)."""
        while not predicate():
            self._changed.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return False
            try:
                async with asyncio.timeout(min(timeout, 0.25) if timeout else 0.25):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._tick()
        return True

    def _broadcast(self, msg: ToWorker) -> None:
        for link in self.links:
            link.send(msg)

    # --- the run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        self.started = time.monotonic()
        error: str | None = None
        try:
            for plan in self.plans:
                link = self._launcher(plan, self.on_message)
                self.links.append(link)
            for link in self.links:
                await link.open()
            start_by = time.monotonic() + cfg.binds.connect_timeout + _START_SLACK
            ok = await self._until(
                lambda: len(self.ready) == self.workers or bool(self.fatal) or self.stop_requested,
                start_by,
            )
            if self.fatal or not ok:
                error = self.fatal or "workers did not start in time"
            elif not self.stop_requested:
                self.t0 = time.monotonic() + 0.01
                self.phase = "sending"
                self._broadcast(Go(self.t0))
                await self._sending()
                if not self.interrupted and not self.fatal:
                    await self._receipts()
            if self.fatal and error is None:
                error = self.fatal
            self.phase = "closing"
            self._broadcast(Finish())
            await self._until(
                lambda: len(self.closed | self._gone()) == self.workers,
                time.monotonic() + _END_TIMEOUT,
            )
            self._broadcast(Report())
            await self._until(
                lambda: len(set(self.agg.finals) | self._gone()) == self.workers,
                time.monotonic() + _END_TIMEOUT,
            )
        finally:
            for link in self.links:
                await link.close(5.0)
            self.progress.done()
        return self.agg.report(
            cfg,
            workers=self.workers,
            elapsed=time.monotonic() - (self.t0 or self.started),
            interrupted=self.interrupted,
            error=error,
        )

    def _gone(self) -> set[int]:
        return {i for i, link in enumerate(self.links) if getattr(link, "lost", False)} - set(
            self.agg.finals
        )

    async def _sending(self) -> None:
        cfg = self.config
        deadline = None
        if cfg.load.duration is not None:
            deadline = self.t0 + cfg.load.duration + cfg.binds.response_timeout + 10
        done = await self._until(
            lambda: len(self.drained) == self.workers or bool(self.fatal) or self.stop_requested,
            deadline,
        )
        if len(self.drained) == self.workers or self.fatal:
            return
        # Ctrl-C, or the run overran its time: stop sending and drain.
        if not done:
            log.warning("workers overran the run's time: stopping them")
            self.interrupted = True
        self._broadcast(Stop(interrupted=True))
        await self._until(
            lambda: len(self.drained) == self.workers or bool(self.fatal),
            time.monotonic() + 5.0,
        )

    async def _receipts(self) -> None:
        cfg = self.config
        if not cfg.traffic.registered_delivery or cfg.receipts.grace <= 0:
            return
        self.phase = "receipts"
        self._receipts_until = time.monotonic() + cfg.receipts.grace
        await self._until(
            lambda: (
                self.stop_requested
                or bool(self.fatal)
                or (
                    sum(self.awaiting) == 0
                    and all(a >= f for a, f in zip(self.relays_acked, self.forwarded, strict=True))
                )
            ),
            self._receipts_until,
        )

    def _tick(self) -> None:
        if not self.progress.enabled or not self.t0:
            return
        now = time.monotonic()
        if now - self._shown < 0.25:
            return
        self._shown = now
        c = self.agg.totals()
        elapsed = time.monotonic() - self.t0
        cfg = self.config
        rate = self.agg.last_rate()
        errors = sum(c.rejected.values()) + c.timeouts + c.lost
        eta = ""
        if self.phase == "sending":
            if cfg.load.duration is not None:
                eta = f"ETA {max(0.0, cfg.load.duration - elapsed):.0f}s"
            if cfg.load.messages is not None and rate > 0:
                by_count = (cfg.load.messages - c.messages) / rate
                if cfg.load.duration is None or by_count < cfg.load.duration - elapsed:
                    eta = f"ETA {max(0.0, by_count):.0f}s"
        elif self.phase == "receipts":
            left = max(0.0, self._receipts_until - time.monotonic())
            eta = f"waiting for receipts (at most {left:.0f}s)"
        else:
            eta = self.phase
        self.progress.show(
            f"{elapsed:6.1f}s  {_fmt(rate)}/s  sent {_fmt(c.submitted)}  ok {_fmt(c.accepted)}"
            f"  in flight {_fmt(c.in_flight)}  err {_fmt(errors)}"
            f"  throttled {_fmt(c.throttled + c.queue_full)}  receipts {_fmt(c.receipts)}"
            f"  {eta}"
        )


async def run_load(
    config: LoadConfig,
    *,
    progress: Progress | None = None,
    launcher: Callable[[Plan, OnMessage], Any] | None = None,
    install_signals: bool = False,
) -> dict[str, Any]:
    """Run the load test described by ``config``; returns the report (see report.py).

    With ``install_signals``, SIGINT/SIGTERM stop the run and still produce a (partial)
    report; a second one exits at once."""
    coordinator = Coordinator(config, progress=progress, launcher=launcher)
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if install_signals:
        count = [0]

        def on_signal(signum: int) -> None:
            count[0] += 1
            if count[0] == 1:
                coordinator.request_stop()
            else:
                print("\nsmsc load: second signal, exiting at once", file=sys.stderr, flush=True)
                for link in coordinator.links:
                    proc = getattr(link, "process", None)
                    if proc is not None and proc.is_alive():
                        proc.kill()
                os._exit(128 + signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):
                pass
    try:
        return await coordinator.run()
    finally:
        for installed_signal in installed:
            loop.remove_signal_handler(installed_signal)
