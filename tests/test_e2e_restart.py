"""``ack_after: store`` survives ``kill -9``: every submit_sm that was answered ESME_ROK is
forwarded after a restart, and its receipt reaches the account's next receiver.

``smsc serve`` runs as a child process (``python -m smsc serve --config <tmp yaml>``); its
one carrier is a simulator in the test process, so it outlives the kill and keeps what it
was given. A client submits continuously (pipelined) and records every id acknowledged;
once enough are, the server gets SIGKILL mid-load. A second server on the same store then
takes a receiver bind, and the test waits for a receipt for each acknowledged id.

The carrier reports 2 s after each submit, so no receipt exists yet when the first server
dies: what is tested is the durability of accepted messages and of the carrier
correlation. Receipts in flight at a kill, and kills of carriers, are tested by
tests/test_crash.py (bench/crash.py).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import yaml
from carrier_fixtures import QUIET_SESSION, Esme
from loops import LOOP_FACTORIES
from smsc_fixtures import (
    DEADLINE,
    FAST,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    final_receipts,
    serve_process,
    wait_final_receipts,
)

from simulator.carrier import Carrier
from simulator.config import CarrierConfig
from smppcore.aio import Connection, connect
from smppcore.config import load_config
from smppcore.constants import CommandStatus
from smppcore.errors import SmppError
from smppcore.pdu import BindReceiver, BindTransmitter, Pdu, SubmitSm

RECEIPT_DELAY_MS = 2000
ACKED_BEFORE_KILL = 300
WINDOW = 64


def carrier_config() -> CarrierConfig:
    profile = {**FAST, "receipt_delay": {"kind": "fixed", "ms": RECEIPT_DELAY_MS}}
    return load_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "session": QUIET_SESSION,
            "accounts": [
                {"system_id": UPSTREAM_ID, "password": UPSTREAM_PASSWORD, "max_sessions": 16}
            ],
            "profiles": {"default": profile},
        },
        CarrierConfig,
    )


def smsc_yaml(tmp_path: Path, carrier_port: int) -> Path:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"port": None},
        "log_level": "info",
        "accounts": [{"system_id": "test", "password": "test"}],
        "router": {
            "ack_after": "store",
            "carriers": [
                {
                    "name": "sim",
                    "host": "127.0.0.1",
                    "port": carrier_port,
                    "system_id": UPSTREAM_ID,
                    "password": UPSTREAM_PASSWORD,
                    "binds": 1,
                    "window": 100,
                    "reconnect": {"min": 0.05, "max": 0.2},
                }
            ],
            "routes": [{"prefix": "", "carriers": [{"carrier": "sim", "price": "0.001"}]}],
            "store": {"path": str(tmp_path / "smsc.db")},
        },
    }
    path = tmp_path / "smsc.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def submit_until_closed(conn: Connection, acked: list[str], enough: asyncio.Event) -> int:
    """Submit with up to WINDOW in flight until the connection dies; record each id
    answered ESME_ROK (in ``acked``) and set ``enough`` at ACKED_BEFORE_KILL. Returns how
    many submits were sent."""
    slots = asyncio.Semaphore(WINDOW)
    sent = 0

    def answered(fut: asyncio.Future[Pdu]) -> None:
        slots.release()
        if fut.cancelled() or fut.exception() is not None:
            return  # lost with the connection: never acknowledged
        resp = fut.result()
        if resp.command_status == CommandStatus.ESME_ROK:
            acked.append(resp.message_id)  # type: ignore[attr-defined]
            if len(acked) >= ACKED_BEFORE_KILL:
                enough.set()

    while True:
        await slots.acquire()
        try:
            fut = conn.send_request(
                SubmitSm(
                    source_addr="MyBrand",
                    destination_addr=f"4477009{sent:05d}",
                    registered_delivery=1,
                    short_message=f"load {sent}".encode(),
                )
            )
        except SmppError:
            return sent
        sent += 1
        fut.add_done_callback(answered)


def test_acknowledged_messages_survive_kill_9_and_are_reported(tmp_path: Path) -> None:
    async def main() -> None:
        carrier = Carrier(carrier_config())
        await carrier.start()
        try:
            config = smsc_yaml(tmp_path, carrier.port)
            acked: list[str] = []
            async with serve_process(tmp_path, "--config", str(config), name="first") as first:
                esme = Esme()
                esme.conn = await connect("127.0.0.1", first.port, handler=esme)
                async with asyncio.timeout(DEADLINE):
                    await esme.c.bind(BindTransmitter(system_id="test", password="test"))
                enough = asyncio.Event()
                load = asyncio.create_task(submit_until_closed(esme.c, acked, enough))
                try:
                    async with asyncio.timeout(DEADLINE):
                        await enough.wait()
                    first.proc.send_signal(signal.SIGKILL)
                    assert await first.exit_code() == -signal.SIGKILL
                    async with asyncio.timeout(DEADLINE):
                        sent = await load
                finally:
                    load.cancel()
                    await esme.close()
            # The precondition of this test: nothing was reported before the kill.
            assert sum(carrier.metrics.receipts.values()) == 0
            assert len(acked) >= ACKED_BEFORE_KILL
            assert sent > len(acked)  # some were in flight when the server died
            assert len(set(acked)) == len(acked)

            async with serve_process(tmp_path, "--config", str(config), name="second") as second:
                rx = Esme()
                rx.conn = await connect("127.0.0.1", second.port, handler=rx)
                async with asyncio.timeout(DEADLINE):
                    await rx.c.bind(BindReceiver(system_id="test", password="test"))
                await wait_final_receipts(rx, acked, timeout=DEADLINE + RECEIPT_DELAY_MS / 1000)
                receipts = final_receipts(rx)
                duplicated = {i: len(receipts[i]) for i in acked if len(receipts[i]) != 1}
                assert duplicated == {}
                second.proc.send_signal(signal.SIGTERM)
                assert await second.exit_code() == 0
                await rx.close()
        finally:
            await carrier.stop(timeout=1.0)

    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        runner.run(main())
