"""Drivers for SMPP clients nobody here wrote, shared by the interop tests of the carrier
simulator (test_carrier_interop.py) and of smsc end to end (test_e2e_interop.py).

Python ``smpplib`` (blocking: each conversation runs in a worker thread), ``aiosmpplib``
(its own ESME, broker, hook and correlator) and the npm ``smpp`` package
(``tests/interop/node/client.js``, a child process printing JSON lines). The conversations
below run the same traffic against any SMPP server on loopback and check what every server
must get right (each submit accepted, one DELIVRD receipt per part naming the id given);
each test then checks what its server stored. Every wait has a deadline; every client
(thread, task, process) is closed or killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from aiosmpplib import ESME, AbstractHook, SmppMessage

from simulator.messages import SimMessage
from smppcore.segment import parse_udh
from smppcore.text import decode_text

DEADLINE = 10.0
"""Seconds any one client conversation may take (they take milliseconds)."""
SYSTEM_ID = "interop"
PASSWORD = "secret"
SHORT_CODE = "1234"
MSISDN = "447700900001"

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parent / "interop" / "node"
NODE_CLIENT = NODE_DIR / "client.js"

GSM_TEXT = "Hello from an interop client, 100% GSM"
UCS2_TEXT = "Καλημέρα κόσμε — привет"
LONG_GSM_TEXT = " ".join(f"part{i:03d}" for i in range(40))  # 319 septets: 3 parts
LONG_UCS2_TEXT = "Ελληνικά " * 10  # 90 UCS-2 units: 2 parts

_RECEIPT_ID = re.compile(r"\bid:(\S+)")
_RECEIPT_STAT = re.compile(r"\bstat:(\w+)")
_RECEIPT_TEXT = re.compile(r"\btext:(.*)\Z", re.DOTALL)


def receipt_fields(text: str) -> tuple[str, str, str]:
    """(id, stat, text) of an Appendix B receipt, read independently of smppcore.receipt."""
    rid, stat, preview = (
        _RECEIPT_ID.search(text),
        _RECEIPT_STAT.search(text),
        _RECEIPT_TEXT.search(text),
    )
    assert rid, f"no id: in receipt text {text!r}"
    assert stat, f"no stat: in receipt text {text!r}"
    assert preview, f"no text: in receipt text {text!r}"
    return rid.group(1), stat.group(1), preview.group(1)


# --- smpplib ------------------------------------------------------------------------------


SMPPLIB_LOGGER = "smsc.tests.smpplib"
logging.getLogger(SMPPLIB_LOGGER).setLevel(logging.CRITICAL)  # its normal chatter, not ours


#: Seconds smpplib waits on its socket: for a bind's or an unbind's answer, and between
#: two checks of read_until's deadline while idle.
SOCKET_TIMEOUT = 5.0


class SmpplibPeer:
    """One smpplib client with the default handlers replaced by collectors."""

    def __init__(self, port: int) -> None:
        self.client = smpplib.client.Client(
            "127.0.0.1",
            port,
            # smpplib's socket timeout is also how long bind and unbind wait for their
            # answer (then ConnectionError): 1 s is too little for a server on a loaded
            # machine. Waits for receipts go through read_until's own deadline.
            timeout=SOCKET_TIMEOUT,
            logger_name=SMPPLIB_LOGGER,
            allow_unknown_opt_params=True,
        )
        self.resps: list[Any] = []
        self.delivers: list[Any] = []
        self.client.set_message_sent_handler(lambda pdu, **kw: self.resps.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **kw: self.delivers.append(pdu))

    def submit(self, text: str, encoding: int, *, receipt: bool = True) -> int:
        """Submit ``text`` split by smpplib.gsm.make_parts; returns the number of parts."""
        parts, data_coding, esm_class = smpplib.gsm.make_parts(text, encoding)
        for part in parts:
            self.client.send_message(
                source_addr=SHORT_CODE,
                destination_addr=MSISDN,
                short_message=part,
                data_coding=data_coding,
                esm_class=esm_class,
                registered_delivery=receipt,
            )
        return len(parts)

    def read_until(self, done: Callable[[], bool], deadline: float) -> None:
        # read_once sends an enquire_link when the socket timeout passes idle.
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"smpplib: {len(self.resps)} responses, {len(self.delivers)} deliver_sm"
                )
            self.client.read_once()

    def unbind(self) -> Any:
        """Unbind (the server's unbind_resp is returned) and disconnect."""
        resp = self.client.unbind()
        self.client.disconnect()
        return resp

    def close(self) -> None:
        client = self.client
        try:
            if client.state in (
                smpplib.consts.SMPP_CLIENT_STATE_BOUND_TX,
                smpplib.consts.SMPP_CLIENT_STATE_BOUND_RX,
                smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX,
            ):
                client.unbind()
        except (smpplib.exceptions.PDUError, smpplib.exceptions.ConnectionError, OSError):
            pass
        finally:
            if client.state != smpplib.consts.SMPP_CLIENT_STATE_CLOSED:
                client.disconnect()


def check_smpplib_receipts(resps: list[Any], receipts: list[Any]) -> list[str]:
    """Every submit accepted; one DELIVRD receipt per part, ids matching both ways."""
    assert all(r.status == 0 for r in resps)
    ids = [r.message_id.decode("ascii") for r in resps]
    assert len(set(ids)) == len(ids)
    seen = []
    for pdu in receipts:
        assert pdu.esm_class & 0x3C == 0x04
        rid, stat, _ = receipt_fields(pdu.short_message.decode("latin-1"))
        tlv_id = pdu.receipted_message_id
        tlv_id = tlv_id.decode("ascii") if isinstance(tlv_id, bytes) else tlv_id
        assert rid == tlv_id.rstrip("\0")
        assert stat == "DELIVRD"
        assert pdu.message_state == 2  # DELIVERED
        assert pdu.source_addr == MSISDN.encode()
        assert pdu.destination_addr == SHORT_CODE.encode()
        seen.append(rid)
    assert sorted(seen) == sorted(ids)
    return ids


# --- aiosmpplib ---------------------------------------------------------------------------


class QueueHook(AbstractHook):
    """aiosmpplib's hook: every parsed PDU it receives, and every send error, kept in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SmppMessage] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.seen: list[SmppMessage] = []

    async def sending(self, smpp_message: SmppMessage, pdu: bytes, client_id: str) -> None:
        return None

    async def received(self, smpp_message: SmppMessage | None, pdu: bytes, client_id: str) -> None:
        if smpp_message is not None:
            self.queue.put_nowait(smpp_message)

    async def send_error(self, smpp_message: SmppMessage, error: Exception, client_id: str) -> None:
        self.errors.append(error)

    async def take(self, kind: type[SmppMessage], count: int) -> list[Any]:
        """The next ``count`` messages of type ``kind``; others stay for a later take."""
        async with asyncio.timeout(DEADLINE):
            while sum(type(m) is kind for m in self.seen) < count:
                self.seen.append(await self.queue.get())
                assert not self.errors, self.errors
        got = [m for m in self.seen if type(m) is kind][:count]
        self.seen = [m for m in self.seen if not any(m is g for g in got)]
        return got


def check_aio_receipts(receipts: list[Any], id_of: dict[str, str]) -> None:
    """One DELIVRD receipt per submit (``id_of``: log_id → message_id), each matched by
    aiosmpplib's own correlator: it sets log_id and extra_data (``extra-<log_id>``) only
    when the receipt's id is the message_id of one of its submit_sm_resp."""
    for receipt in receipts:
        assert receipt.is_receipt()
        fields = receipt.parse_receipt()
        assert fields["id"] == id_of[receipt.log_id]
        assert receipt.extra_data == f"extra-{receipt.log_id}"
        assert fields["stat"] == "DELIVRD"
        assert fields["err"] == 0
        tlvs = {p.tag: p.value for p in receipt.optional_params}
        assert tlvs[0x001E] == fields["id"]  # receipted_message_id
        assert tlvs[0x0427] == 2  # message_state DELIVERED
    assert sorted(r.log_id for r in receipts) == sorted(id_of)


# --- node smpp ----------------------------------------------------------------------------

needs_node = pytest.mark.skipif(NODE is None, reason="node is not on PATH")


class NodeClient:
    """``node client.js`` as a child process; its stdout read as JSON events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.noise: list[str] = []  # non-JSON output (stack traces), for failure messages

    @classmethod
    async def start(cls, port: int, mode: str, **options: Any) -> NodeClient:
        assert (NODE_DIR / "node_modules" / "smpp").is_dir(), (
            f"npm smpp is not installed: run `cd {NODE_DIR} && npm ci` (make test does)"
        )
        args = ["--port", str(port), "--mode", mode, "--system-id", SYSTEM_ID]
        args += ["--password", PASSWORD, "--deadline-ms", str(int(DEADLINE * 1000))]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag, json.dumps(value) if isinstance(value, list) else str(value)]
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(NODE_CLIENT),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def next_event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            async with asyncio.timeout(DEADLINE + 2):
                line = await self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"node client ended early: {self.events} {self.noise}")
            text = line.decode("utf-8", "replace").strip()
            try:
                event: dict[str, Any] = json.loads(text)
            except ValueError:
                self.noise.append(text)
                continue
            self.events.append(event)
            if event["event"] in ("error", "deadline"):
                raise AssertionError(f"node client: {event}; output: {self.noise}")
            return event

    async def wait_for(self, name: str) -> dict[str, Any]:
        while True:
            event = await self.next_event()
            if event["event"] == name:
                return event

    async def finish(self) -> list[dict[str, Any]]:
        """Read up to the client's 'done' and its exit; returns every event."""
        await self.wait_for("done")
        async with asyncio.timeout(5):
            code = await self.proc.wait()
        assert code == 0, (code, self.noise)
        return self.events

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def of(self, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["event"] == name and (kind is None or e.get("kind") == kind)
        ]


def check_node_receipts(resps: list[dict[str, Any]], receipts: list[dict[str, Any]]) -> None:
    assert resps
    assert all(r["status"] == 0 for r in resps)
    ids = [r["message_id"] for r in resps]
    assert len(set(ids)) == len(ids)
    seen = []
    for receipt in receipts:
        assert receipt["esm_class"] & 0x3C == 0x04
        rid, stat, _ = receipt_fields(receipt["text"])
        assert rid == receipt["receipted_message_id"]
        assert stat == "DELIVRD"
        assert receipt["message_state"] == 2
        assert (receipt["source_addr"], receipt["destination_addr"]) == (MSISDN, SHORT_CODE)
        seen.append(rid)
    assert sorted(seen) == sorted(ids)


def node_message(text: str, coding: str = "gsm") -> dict[str, str]:
    return {"text": text, "coding": coding, "src": SHORT_CODE, "dst": MSISDN}


# --- conversations: the same traffic against any server ---------------------------------

GSM = smpplib.consts.SMPP_ENCODING_DEFAULT
UCS2 = smpplib.consts.SMPP_ENCODING_ISO10646


async def smpplib_tx_rx(port: int, texts: list[tuple[str, int]]) -> tuple[list[str], bytes]:
    """smpplib TX submits ``texts``; every receipt arrives on a separate RX bind of the same
    account, none on the TX. Returns the ids given (checked) and the server's system_id."""

    def conversation() -> tuple[list[Any], list[Any], list[Any], bytes]:
        deadline = time.monotonic() + DEADLINE
        rx, tx = SmpplibPeer(port), SmpplibPeer(port)
        try:
            rx.client.connect()
            rx_resp = rx.client.bind_receiver(system_id=SYSTEM_ID, password=PASSWORD)
            tx.client.connect()
            tx_resp = tx.client.bind_transmitter(system_id=SYSTEM_ID, password=PASSWORD)
            assert rx_resp.system_id == tx_resp.system_id
            parts = sum(tx.submit(text, enc) for text, enc in texts)
            tx.read_until(lambda: len(tx.resps) == parts, deadline)
            rx.read_until(lambda: len(rx.delivers) == parts, deadline)
            return tx.resps, rx.delivers, tx.delivers, tx_resp.system_id
        finally:
            tx.close()
            rx.close()

    async with asyncio.timeout(DEADLINE + 5):
        resps, receipts, on_tx, system_id = await asyncio.to_thread(conversation)
    assert on_tx == []
    return check_smpplib_receipts(resps, receipts), system_id


async def smpplib_trx(port: int, texts: list[tuple[str, int]]) -> list[str]:
    """smpplib TRX submits ``texts`` (long ones split by smpplib.gsm.make_parts) and gets a
    receipt per part on the same bind. Returns the ids given, in submit order (checked)."""

    def conversation() -> tuple[list[Any], list[Any]]:
        deadline = time.monotonic() + DEADLINE
        trx = SmpplibPeer(port)
        try:
            trx.client.connect()
            trx.client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
            parts = sum(trx.submit(text, enc) for text, enc in texts)
            trx.read_until(lambda: len(trx.resps) == len(trx.delivers) == parts, deadline)
            return trx.resps, trx.delivers
        finally:
            trx.close()

    async with asyncio.timeout(DEADLINE + 5):
        resps, receipts = await asyncio.to_thread(conversation)
    return check_smpplib_receipts(resps, receipts)


@asynccontextmanager
async def aiosmpplib_esme(port: int) -> AsyncIterator[tuple[ESME, QueueHook]]:
    """A started aiosmpplib ESME (TRX) and its hook; stopped, and its socket closed, after."""
    hook = QueueHook()
    esme = ESME(
        "127.0.0.1", port, SYSTEM_ID, PASSWORD, hook=hook, log_level="ERROR", socket_timeout=5.0
    )
    task = asyncio.create_task(esme.start())
    try:
        yield esme, hook
    finally:
        writer = esme._writer  # aiosmpplib's stop() never closes it: we do
        try:
            async with asyncio.timeout(5):
                await esme.stop()
        except TimeoutError:
            pass
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


#: GSM, UCS-2, a 3-part GSM and a 2-part UCS-2 message, and the (index, part, parts) of
#: the submit_sm_resp each gets, in order.
NODE_MIX = [
    node_message(GSM_TEXT),
    node_message(UCS2_TEXT, "ucs2"),
    node_message(LONG_GSM_TEXT),
    node_message(LONG_UCS2_TEXT, "ucs2"),
]
NODE_MIX_PARTS = [(0, 1, 1), (1, 1, 1), (2, 1, 3), (2, 2, 3), (2, 3, 3), (3, 1, 2), (3, 2, 2)]


async def node_trx_mix(port: int) -> tuple[str, dict[tuple[int, int], str]]:
    """A node TRX sends NODE_MIX and gets a receipt per part. Returns the server's
    system_id and the id given to each (message index, part) (checked)."""
    node = await NodeClient.start(port, "trx", messages=NODE_MIX)
    try:
        bound = await node.wait_for("bound")
        await node.finish()
    finally:
        await node.kill()
    resps = node.of("submit_sm_resp")
    assert [(r["index"], r["part"], r["parts"]) for r in resps] == NODE_MIX_PARTS
    check_node_receipts(resps, node.of("deliver_sm", "receipt"))
    return bound["system_id"], {(r["index"], r["part"]): r["message_id"] for r in resps}


async def node_tx_to_rx(port: int) -> list[str]:
    """A node TX submits a GSM and a 2-part UCS-2 message; the 3 receipts reach a node RX
    bound to the same account, none the TX. Returns the ids given (checked)."""
    rx = await NodeClient.start(port, "rx", expect_receipts=3)
    tx: NodeClient | None = None
    try:
        await rx.wait_for("bound")
        tx = await NodeClient.start(
            port, "tx", messages=[node_message(GSM_TEXT), node_message(LONG_UCS2_TEXT, "ucs2")]
        )
        await tx.finish()
        await rx.finish()
    finally:
        await rx.kill()
        if tx is not None:
            await tx.kill()
    assert tx.of("deliver_sm") == []
    resps = tx.of("submit_sm_resp")
    check_node_receipts(resps, rx.of("deliver_sm", "receipt"))
    return [r["message_id"] for r in resps]


def rebuilt_text(parts: list[SimMessage | None]) -> str:
    """The text of a long message from the parts a carrier stored, checking that each is
    there, carries a concatenation UDH and sits at its place (seq k of len(parts))."""
    text = ""
    for seq, msg in enumerate(parts, start=1):
        assert msg is not None, f"part {seq} not stored"
        concat, body, _ = parse_udh(msg.short_message)
        assert concat is not None
        assert (concat.total, concat.seq) == (len(parts), seq)
        text += decode_text(body, msg.data_coding)
    return text
