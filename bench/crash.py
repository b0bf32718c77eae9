"""Acknowledged means kept, under ``kill -9``: load with receipts through ``smsc serve``
(``ack_after: store``) in front of ``smsc carrier`` processes, with SIGKILLs at seeded
random moments — of serve (restarted on the same store; the client binds again) and of
a carrier (restarted on the same port, with nothing of what it had) — then a check.

Run from the repository root:
    PYTHONPATH=$PWD .venv/bin/python bench/crash.py [--messages 20000] [--rate 800]
        [--serve-kills 5] [--carrier-kills 2] [--seed 1]

Processes: two (``--carriers``) ``python -m smsc carrier`` (no submit latency, a
DELIVRD receipt after a lognormal delay, median 100 ms), ``python -m smsc serve`` routing
over both, and this script: one transceiver client that submits ``--messages`` messages
at ``--rate`` per second (window ``--window``, a receipt asked for each; the text names
the message's index) and answers every deliver_sm at once.

Kills: ``--serve-kills`` + ``--carrier-kills`` moments, drawn (seeded) as counts of
messages submitted (the kill follows a submit at once: it is in flight), each a serve or a
carrier kill (which carrier: seeded too). A
killed process is started again at once; the client waits for the new serve (its
"listening on" line, under a deadline) and binds again.

The check, once every submit is answered (or lost with a connection) and every
acknowledged message has a final receipt, or ``--deadline`` seconds passed — then one
more message is submitted and its receipt awaited (whatever was on its way is in):

- ``missing``: acknowledged messages with no final receipt (a defect);
- ``duplicates``: final receipts beyond the first per message. One whose first copy the
  client read on the connection of a serve that was then killed — at most ``--window-s``
  seconds before the kill, or after it (serve wrote it before it died; the client reads
  its socket when it gets to it) — and whose later copy came from a later serve is in
  SMPP's window (the client answered the receipt, serve died before it committed the
  final state, the carrier sent it again: ``window_duplicates``, the longest such gap
  ``window_gap_max_ms``); any other is a defect (``other_duplicates``). Which serve sent
  a copy is known from the connection it came on, not guessed from the clock;
- ``unacked_receipts``: final receipts for ids the client was never given. One for a
  submit that was in flight when serve died (serve committed it, its answer was lost
  with the connection) is SMPP's window (``in_flight_receipts``); any other is a defect
  (``stray_receipts``);
- serve's own counts from its logs: messages sent again after a restart (``resent``),
  receipts that matched nothing (``unmatched``).

Last output line: one JSON object (``ok`` is true when there is no defect).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from smppcore.aio import Connection, Handler, connect  # noqa: E402
from smppcore.constants import CommandStatus, MessageState  # noqa: E402
from smppcore.errors import SmppError  # noqa: E402
from smppcore.pdu import (  # noqa: E402
    BindTransceiver,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    Pdu,
    SubmitSm,
)
from smppcore.receipt import is_final  # noqa: E402
from smppcore.session import SessionConfig  # noqa: E402
from smppcore.tlv import Tag  # noqa: E402

_LISTENING = re.compile(r"smsc (\S+): listening on 127\.0\.0\.1:(\d+)")
_TEXT = re.compile(rb"text:n(\d{7})")
#: Seconds a process may take to start (imports on a loaded 2-core machine).
STARTUP_DEADLINE = 60.0
STEP_DEADLINE = 30.0


@dataclass
class Params:
    messages: int = 20_000
    rate: float = 800.0
    window: int = 200
    serve_kills: int = 5
    carrier_kills: int = 2
    carriers: int = 2
    seed: int = 1
    receipt_timeout: float = 10.0
    """Seconds serve waits for a carrier's receipt (a killed carrier's never come)."""
    deadline: float = 120.0
    """Seconds to wait for the receipts after the last submit."""
    window_s: float = 1.0
    """A duplicate whose first copy came this long before a serve kill is SMPP's window."""
    workdir: Path | None = None


@dataclass
class Outcome:
    submitted: int = 0
    acked: dict[str, int] = field(default_factory=dict)  # our id → index
    refused: dict[int, int] = field(default_factory=dict)  # index → status
    lost: set[int] = field(default_factory=set)  # in flight when the connection died
    #: id → [(state, arrival time, index from the text, serve run that sent it)]
    receipts: dict[str, list[tuple[int, float, int | None, int]]] = field(default_factory=dict)
    #: When serve run ``n + 1`` (runs count from 1) was killed.
    serve_kills: list[float] = field(default_factory=list)
    carrier_kills: list[tuple[float, int]] = field(default_factory=list)


class Proc:
    """A ``python -m smsc ...`` child, its port, its stderr file."""

    def __init__(self, args: list[str], stderr: Path) -> None:
        self.args = args
        self.stderr = stderr
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> int:
        with self.stderr.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smsc",
                *self.args,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(STARTUP_DEADLINE):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"{self.args[0]} exited: {self.stderr.read_text()[-2000:]}")
                found = _LISTENING.search(raw.decode())
                if found:
                    self.port = int(found.group(2))
                    break
        self._drain = asyncio.create_task(self._read_rest())
        return self.port

    async def _read_rest(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            async with asyncio.timeout(STEP_DEADLINE):
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None


class Client(Handler):
    """The ESME: records receipts, answers every deliver_sm at once."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.changed = asyncio.Event()
        #: The serve run each connection was made to (set by the harness as it binds).
        self.runs: dict[Connection, int] = {}

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            conn.respond(DeliverSmResp(sequence_number=pdu.sequence_number))
            state = pdu.tlv(Tag.MESSAGE_STATE)
            receipted = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
            if (
                isinstance(state, int)
                and isinstance(receipted, str)
                and is_final(MessageState(state))
            ):
                found = _TEXT.search(pdu.short_message)
                index = int(found.group(1)) if found else None
                arrival = (state, time.monotonic(), index, self.runs[conn])
                self.outcome.receipts.setdefault(receipted, []).append(arrival)
            self.changed.set()
        else:
            super().request_received(conn, pdu)

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.changed.set()


def carrier_yaml(i: int, seed: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "system_id": f"sim{i}",
        "session": {
            "window": 1000,
            "max_waiting": 100_000,
            "inbound_window": 2000,
            "enquire_link_interval": None,
            "inactivity_timeout": None,
        },
        "accounts": [{"system_id": "smsc", "password": "secret", "max_sessions": 16}],
        "profiles": {
            "default": {
                "seed": seed + i,
                "submit_latency": {"kind": "fixed", "ms": 0},
                "receipt_delay": {"kind": "lognormal", "median": 100, "p99": 800, "max": 2000},
                "enroute_delay": {"kind": "fixed", "ms": 0},
                "states": {"DELIVRD": 1.0},
                "errors": {},
                "message_id": "hex",
            }
        },
    }


def serve_yaml(params: Params, ports: list[int], store: Path) -> dict[str, Any]:
    carriers = [
        {
            "name": f"c{i}",
            "host": "127.0.0.1",
            "port": port,
            "system_id": "smsc",
            "password": "secret",
            "binds": 2,
            "window": 100,
            "response_timeout": 2.0,
            "reconnect": {"min": 0.05, "max": 0.5, "jitter": 0.2},
            "receipt_timeout": params.receipt_timeout,
        }
        for i, port in enumerate(ports)
    ]
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"port": None},
        "log_level": "info",
        "session": {
            "window": 1000,
            "max_waiting": 100_000,
            "inbound_window": 1000,
            "enquire_link_interval": None,
            "inactivity_timeout": None,
        },
        "accounts": [
            {"system_id": "test", "password": "test", "max_sessions": 8, "max_window": 1000}
        ],
        "router": {
            "ack_after": "store",
            "carriers": carriers,
            "routes": [
                {
                    "prefix": "",
                    "carriers": [
                        {"carrier": c["name"], "price": "0.001"} for c in carriers
                    ],
                }
            ],
            "store": {"path": str(store)},
        },
        "shutdown_timeout": 5.0,
    }


CLIENT_SESSION = SessionConfig(
    window=1000,
    inbound_window=2000,
    enquire_link_interval=None,
    inactivity_timeout=None,
    session_init_timeout=None,
)


class Harness:
    def __init__(self, params: Params, work: Path) -> None:
        self.p = params
        self.work = work
        self.out = Outcome()
        self.client = Client(self.out)
        self.conn: Connection | None = None
        self.bound = asyncio.Event()
        self.sent_changed = asyncio.Event()
        self.in_flight: dict[int, asyncio.Future[Pdu]] = {}
        self.slots = asyncio.Semaphore(params.window)
        self.carriers: list[Proc] = []
        self.serve: Proc | None = None
        self.serve_runs = 0

    # --- processes ----------------------------------------------------------------------

    async def start_carriers(self) -> list[int]:
        ports = []
        for i in range(self.p.carriers):
            path = self.work / f"carrier{i}.yaml"
            path.write_text(yaml.safe_dump(carrier_yaml(i, self.p.seed)), encoding="utf-8")
            proc = Proc(
                ["carrier", "--config", str(path), "--log-level", "warning"],
                self.work / f"carrier{i}.stderr",
            )
            ports.append(await proc.start())
            proc.args += ["--port", str(proc.port)]  # a restart keeps the port
            self.carriers.append(proc)
        return ports

    async def start_serve(self, config: Path) -> None:
        self.serve_runs += 1
        self.serve = Proc(["serve", "--config", str(config)], self.work / "serve.stderr")
        port = await self.serve.start()
        conn = await connect("127.0.0.1", port, config=CLIENT_SESSION, handler=self.client)
        self.client.runs[conn] = self.serve_runs  # before the bind: nothing comes before it
        async with asyncio.timeout(STEP_DEADLINE):
            await conn.bind(BindTransceiver(system_id="test", password="test"))
        self.conn = conn
        self.bound.set()

    async def kill_serve(self, config: Path) -> None:
        assert self.serve is not None
        self.bound.clear()
        self.out.serve_kills.append(time.monotonic())
        await self.serve.kill()
        if self.conn is not None:
            async with asyncio.timeout(STEP_DEADLINE):
                await self.conn.wait_closed(STEP_DEADLINE)
        await self.start_serve(config)

    async def kill_carrier(self, i: int) -> None:
        self.out.carrier_kills.append((time.monotonic(), i))
        await self.carriers[i].kill()
        await self.carriers[i].start()

    # --- load ---------------------------------------------------------------------------

    async def send_all(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = first = 0
        while n < self.p.messages:
            due = start + (n - first) / self.p.rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # pacing, not waiting for an event
            async with asyncio.timeout(STARTUP_DEADLINE + STEP_DEADLINE):
                await self.slots.acquire()
                if not self.bound.is_set():
                    await self.bound.wait()
                    # bound again: the rate from now on, not a burst to catch up
                    start, first = loop.time(), n
            conn = self.conn
            assert conn is not None
            try:
                fut = conn.send_request(
                    SubmitSm(
                        source_addr="Crash",
                        destination_addr=f"4477009{n % 100000:05d}",
                        registered_delivery=1,
                        short_message=f"n{n:07d}".encode(),
                    )
                )
            except SmppError:
                self.slots.release()
                if conn.closed:
                    self.bound.clear()
                continue
            self.in_flight[n] = fut
            fut.add_done_callback(partial(self._answered, n))
            n += 1
            self.out.submitted = n
            self.sent_changed.set()

    def _answered(self, n: int, fut: asyncio.Future[Pdu]) -> None:
        self.slots.release()
        self.in_flight.pop(n, None)
        if fut.cancelled() or fut.exception() is not None:
            self.out.lost.add(n)
        else:
            resp = fut.result()
            if resp.command_status == CommandStatus.ESME_ROK:
                self.out.acked[resp.message_id] = n  # type: ignore[attr-defined]
            else:
                self.out.refused[n] = resp.command_status
        self.client.changed.set()

    async def kills(self, config: Path) -> None:
        rng = random.Random(self.p.seed)
        total = self.p.serve_kills + self.p.carrier_kills
        points = sorted(
            rng.randrange(self.p.messages // 10, self.p.messages * 9 // 10) for _ in range(total)
        )
        kinds = ["serve"] * self.p.serve_kills + ["carrier"] * self.p.carrier_kills
        rng.shuffle(kinds)
        for point, kind in zip(points, kinds, strict=True):
            async with asyncio.timeout(self.p.messages / self.p.rate + STEP_DEADLINE * 4):
                while self.out.submitted < point:
                    self.sent_changed.clear()
                    await self.sent_changed.wait()
            if kind == "serve":
                await self.kill_serve(config)
            else:
                await self.kill_carrier(rng.randrange(self.p.carriers))

    async def wait_receipts(self) -> None:
        """Every submit answered (or lost), every acknowledged id with a final receipt."""

        def done() -> bool:
            if len(self.out.acked) + len(self.out.refused) + len(self.out.lost) < (
                self.out.submitted
            ):
                return False
            return all(i in self.out.receipts for i in self.out.acked)

        try:
            async with asyncio.timeout(self.p.deadline):
                while not done():
                    self.client.changed.clear()
                    await self.client.changed.wait()
        except TimeoutError:
            pass

    async def sentinel(self) -> None:
        """One more message and its receipt; then an enquire_link round trip."""
        async with asyncio.timeout(self.p.receipt_timeout + STEP_DEADLINE):
            await self.bound.wait()
            assert self.conn is not None
            resp = await self.conn.request(
                SubmitSm(
                    source_addr="Crash",
                    destination_addr="447700999999",
                    registered_delivery=1,
                    short_message=b"sentinel",
                )
            )
            our_id = resp.message_id  # type: ignore[attr-defined]
            while our_id not in self.out.receipts:
                self.client.changed.clear()
                await self.client.changed.wait()
            self.out.receipts.pop(our_id)
            await self.conn.request(EnquireLink())

    async def stop(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        if self.serve is not None:
            await self.serve.kill(signal.SIGTERM)
        for proc in self.carriers:
            await proc.kill(signal.SIGTERM)


def summarize(h: Harness) -> dict[str, Any]:
    out = h.out
    p = h.p
    missing = [i for i in out.acked if i not in out.receipts]
    window_dups = 0
    other_dups = 0
    gaps: list[float] = []  # first copy of a window duplicate → the kill after it
    others: list[str] = []
    for our_id, got in out.receipts.items():
        if our_id not in out.acked:
            continue
        _, first, _, run = got[0]
        # The serve run that sent the first copy, killed (not stopped at the end) at most
        # window_s after the client read it — or before the client got to read it from its
        # socket (in CI once: the read 0.4 ms after the kill was recorded; on a starved
        # machine any later): serve wrote it before it died, whatever the clock says.
        killed_at = out.serve_kills[run - 1] if run <= len(out.serve_kills) else None
        for copy in got[1:]:
            later_run = copy[3] > run
            if killed_at is not None and later_run and killed_at - first <= p.window_s:
                window_dups += 1
                gaps.append(max(0.0, killed_at - first))
            else:
                other_dups += 1
                others.append(our_id)
    in_flight = stray = 0
    for our_id, got in out.receipts.items():
        if our_id in out.acked:
            continue
        index = got[0][2]
        if index is not None and index in out.lost:
            in_flight += 1
        else:
            stray += 1
    states: dict[str, int] = {}
    for got in out.receipts.values():
        name = MessageState(got[0][0]).name
        states[name] = states.get(name, 0) + 1
    log = h.work.joinpath("serve.stderr").read_text(errors="replace")
    resent = sum(int(m) for m in re.findall(r"recovered (\d+) messages handed to", log))
    unmatched = len(re.findall(r"for unknown id", log))
    ok = not missing and other_dups == 0 and stray == 0
    return {
        "bench": "crash",
        "ok": ok,
        "messages": p.messages,
        "rate": p.rate,
        "submitted": out.submitted,
        "acked": len(out.acked),
        "refused": len(out.refused),
        "lost_in_flight": len(out.lost),
        "serve_kills": len(out.serve_kills),
        "carrier_kills": len(out.carrier_kills),
        "missing": len(missing),
        "missing_ids": missing[:20],
        "duplicates": window_dups + other_dups,
        "window_duplicates": window_dups,
        "other_duplicates": other_dups,
        # Each: our id, then (state, arrival) of every copy and the serve kills, in seconds
        # from the first copy, so an unexplained duplicate can be told apart.
        "other_duplicate_details": [
            [
                our_id,
                [(c[0], round(c[1] - out.receipts[our_id][0][1], 3)) for c in out.receipts[our_id]],
                [round(k - out.receipts[our_id][0][1], 3) for k in out.serve_kills],
            ]
            for our_id in others[:5]
        ],
        "window_gap_max_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "unacked_receipts": in_flight + stray,
        "in_flight_receipts": in_flight,
        "stray_receipts": stray,
        "final_states": states,
        "resent": resent,
        "unmatched": unmatched,
        "seed": p.seed,
    }


async def run(params: Params) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smsc-crash-") as tmp:
        work = params.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        h = Harness(params, work)
        started = time.monotonic()
        try:
            ports = await h.start_carriers()
            config = work / "serve.yaml"
            config.write_text(
                yaml.safe_dump(serve_yaml(params, ports, work / "smsc.db")), encoding="utf-8"
            )
            await h.start_serve(config)
            load = asyncio.create_task(h.send_all())
            try:
                await h.kills(config)
                async with asyncio.timeout(params.messages / params.rate + STEP_DEADLINE * 4):
                    await load
            finally:
                load.cancel()
            await h.wait_receipts()
            await h.sentinel()
            result = summarize(h)
        finally:
            await h.stop()
        result["seconds"] = round(time.monotonic() - started, 1)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Params()
    parser.add_argument("--messages", type=int, default=d.messages)
    parser.add_argument("--rate", type=float, default=d.rate)
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--serve-kills", type=int, default=d.serve_kills)
    parser.add_argument("--carrier-kills", type=int, default=d.carrier_kills)
    parser.add_argument("--carriers", type=int, default=d.carriers)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--receipt-timeout", type=float, default=d.receipt_timeout)
    parser.add_argument("--deadline", type=float, default=d.deadline)
    parser.add_argument("--window-s", type=float, default=d.window_s)
    parser.add_argument("--workdir", type=Path, help="keep configs, store and logs here")
    args = parser.parse_args()
    params = Params(
        messages=args.messages,
        rate=args.rate,
        window=args.window,
        serve_kills=args.serve_kills,
        carrier_kills=args.carrier_kills,
        carriers=args.carriers,
        seed=args.seed,
        receipt_timeout=args.receipt_timeout,
        deadline=args.deadline,
        window_s=args.window_s,
        workdir=args.workdir,
    )
    result = asyncio.run(run(params))
    print(json.dumps(result, separators=(",", ":")))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
