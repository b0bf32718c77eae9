"""Layer 4: the carrier simulator against SMPP clients nobody here wrote.

Python ``smpplib`` (blocking, run in a thread), ``aiosmpplib`` (its own ESME, broker, hook
and correlator) and the npm ``smpp`` package (``tests/interop/node/client.js``, a child
process printing JSON lines) bind as transmitter, receiver and transceiver, submit GSM,
UCS-2 and long (UDH) messages, and receive receipts and MO injected by the test.

The carrier runs in-process on port 0 with a profile of fixed 0 ms latency and receipt
delay, every message DELIVRD. Nothing sleeps: every wait is a read or a queue get under a
deadline, and every client (thread, task, process) is closed or killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from aiosmpplib import ESME, AbstractHook, PhoneNumber, SmppMessage
from aiosmpplib import DeliverSm as AioDeliverSm
from aiosmpplib import SubmitSm as AioSubmitSm
from aiosmpplib import SubmitSmResp as AioSubmitSmResp
from prometheus_client import CollectorRegistry

from simulator.carrier import Carrier
from simulator.config import CarrierConfig
from smppcore.config import load_config
from smppcore.pdu import DeliverSm
from smppcore.segment import parse_udh
from smppcore.text import decode_text, encode_text

pytestmark = pytest.mark.interop

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


# --- the carrier --------------------------------------------------------------------------


def carrier_config() -> CarrierConfig:
    return load_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD, "profile": "instant"}],
            "profiles": {
                "instant": {
                    "submit_latency": {"kind": "fixed", "ms": 0},
                    "receipt_delay": {"kind": "fixed", "ms": 0},
                    "states": {"DELIVRD": 1},
                }
            },
        },
        CarrierConfig,
        source="test",
    )


@pytest_asyncio.fixture
async def carrier() -> AsyncIterator[Carrier]:
    sim = Carrier(carrier_config(), registry=CollectorRegistry())
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop(timeout=2.0)


def assert_stored(carrier: Carrier, message_id: str, text: str, data_coding: int) -> None:
    """The carrier read what the foreign client meant: coding and text (UDH stripped)."""
    msg = carrier.messages.get(message_id)
    assert msg is not None, f"carrier has no message {message_id!r}"
    assert msg.data_coding == data_coding
    assert decode_text(msg.short_message, msg.data_coding) == text


def mo_pdus() -> list[DeliverSm]:
    """Two MO deliver_sm (esm_class 0): one GSM, one UCS-2."""
    return [
        DeliverSm(
            source_addr=MSISDN,
            destination_addr=SHORT_CODE,
            esm_class=0,
            data_coding=0,
            short_message=encode_text("STOP please", 0),
        ),
        DeliverSm(
            source_addr=MSISDN,
            destination_addr=SHORT_CODE,
            esm_class=0,
            data_coding=8,
            short_message=encode_text("Ναι, ευχαριστώ", 8),
        ),
    ]


MO_TEXTS = ["STOP please", "Ναι, ευχαριστώ"]


# --- smpplib (blocking: each conversation runs in a worker thread) ------------------------


class SmpplibPeer:
    """One smpplib client with the default handlers replaced by collectors."""

    def __init__(self, port: int) -> None:
        self.client = smpplib.client.Client(
            "127.0.0.1", port, timeout=1.0, allow_unknown_opt_params=True
        )
        self.resps: list[Any] = []
        self.delivers: list[Any] = []
        self.client.set_message_sent_handler(lambda pdu, **kw: self.resps.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **kw: self.delivers.append(pdu))

    def read_until(self, done: Callable[[], bool], deadline: float) -> None:
        # read_once sends an enquire_link when the 1 s socket timeout passes idle.
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"smpplib: {len(self.resps)} responses, {len(self.delivers)} deliver_sm"
                )
            self.client.read_once()

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
            client.disconnect()


def smpplib_submit(peer: SmpplibPeer, text: str, encoding: int) -> int:
    """Submit ``text`` split by smpplib.gsm.make_parts; returns the number of parts."""
    parts, data_coding, esm_class = smpplib.gsm.make_parts(text, encoding)
    for part in parts:
        peer.client.send_message(
            source_addr=SHORT_CODE,
            destination_addr=MSISDN,
            short_message=part,
            data_coding=data_coding,
            esm_class=esm_class,
            registered_delivery=True,
        )
    return len(parts)


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


@pytest.mark.asyncio
async def test_smpplib_transmitter_and_receiver_binds(carrier: Carrier) -> None:
    """TX submits; the receipt arrives on a separate RX bind of the same account."""

    def conversation() -> tuple[list[Any], list[Any], list[Any]]:
        deadline = time.monotonic() + DEADLINE
        rx, tx = SmpplibPeer(carrier.port), SmpplibPeer(carrier.port)
        try:
            rx.client.connect()
            rx_resp = rx.client.bind_receiver(system_id=SYSTEM_ID, password=PASSWORD)
            tx.client.connect()
            tx_resp = tx.client.bind_transmitter(system_id=SYSTEM_ID, password=PASSWORD)
            assert rx_resp.system_id == tx_resp.system_id == b"smscsim"
            parts = smpplib_submit(tx, GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT)
            tx.read_until(lambda: len(tx.resps) == parts, deadline)
            rx.read_until(lambda: len(rx.delivers) == parts, deadline)
            return tx.resps, rx.delivers, tx.delivers
        finally:
            tx.close()
            rx.close()

    async with asyncio.timeout(DEADLINE + 5):
        resps, receipts, on_tx = await asyncio.to_thread(conversation)
    assert on_tx == []
    (message_id,) = check_smpplib_receipts(resps, receipts)
    assert_stored(carrier, message_id, GSM_TEXT, 0)


@pytest.mark.asyncio
async def test_smpplib_transceiver_gsm_ucs2_and_long(carrier: Carrier) -> None:
    """TRX: GSM, UCS-2 (data_coding 8) and a make_parts long message, a receipt per part."""
    texts = [
        (GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT),
        (UCS2_TEXT, smpplib.consts.SMPP_ENCODING_ISO10646),
        (LONG_GSM_TEXT, smpplib.consts.SMPP_ENCODING_DEFAULT),
    ]

    def conversation() -> tuple[list[Any], list[Any], int]:
        deadline = time.monotonic() + DEADLINE
        trx = SmpplibPeer(carrier.port)
        try:
            trx.client.connect()
            trx.client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
            parts = sum(smpplib_submit(trx, text, enc) for text, enc in texts)
            trx.read_until(lambda: len(trx.resps) == len(trx.delivers) == parts, deadline)
            return trx.resps, trx.delivers, parts
        finally:
            trx.close()

    async with asyncio.timeout(DEADLINE + 5):
        resps, receipts, parts = await asyncio.to_thread(conversation)
    assert parts == 1 + 1 + 3
    ids = check_smpplib_receipts(resps, receipts)
    # Responses come back in submit order (no latency): GSM, UCS-2, then the three parts.
    assert_stored(carrier, ids[0], GSM_TEXT, 0)
    assert_stored(carrier, ids[1], UCS2_TEXT, 8)
    rebuilt = ""
    for seq, message_id in enumerate(ids[2:], start=1):
        msg = carrier.messages.get(message_id)
        assert msg is not None
        concat, body, _ = parse_udh(msg.short_message)
        assert concat is not None
        assert (concat.total, concat.seq) == (3, seq)
        rebuilt += decode_text(body, msg.data_coding)
    assert rebuilt == LONG_GSM_TEXT


# --- aiosmpplib ---------------------------------------------------------------------------


class QueueHook(AbstractHook):
    """aiosmpplib hook: every parsed PDU received, and every send error, into a queue."""

    def __init__(self) -> None:
        self.received_q: asyncio.Queue[SmppMessage] = asyncio.Queue()
        self.errors: list[Exception] = []

    async def sending(self, smpp_message: SmppMessage, pdu: bytes, client_id: str) -> None:
        return None

    async def received(self, smpp_message: SmppMessage | None, pdu: bytes, client_id: str) -> None:
        if smpp_message is not None:
            self.received_q.put_nowait(smpp_message)

    async def send_error(self, smpp_message: SmppMessage, error: Exception, client_id: str) -> None:
        self.errors.append(error)

    async def take(self, kind: type[SmppMessage], count: int) -> list[Any]:
        got: list[Any] = []
        async with asyncio.timeout(DEADLINE):
            while len(got) < count:
                msg = await self.received_q.get()
                assert not self.errors, self.errors
                if type(msg) is kind:
                    got.append(msg)
        return got


@pytest.mark.asyncio
async def test_aiosmpplib_transceiver_receipts_and_mo(carrier: Carrier) -> None:
    """aiosmpplib correlates each receipt to its submit by itself; MO arrives as DeliverSm."""
    hook = QueueHook()
    esme = ESME(
        "127.0.0.1",
        carrier.port,
        SYSTEM_ID,
        PASSWORD,
        hook=hook,
        log_level="ERROR",
        socket_timeout=5.0,
    )
    task = asyncio.create_task(esme.start())
    writer = None
    try:
        submits = [
            AioSubmitSm(
                short_message=GSM_TEXT,
                source=PhoneNumber(SHORT_CODE),
                destination=PhoneNumber(MSISDN),
                log_id="gsm-1",
                extra_data="first",
            ),
            AioSubmitSm(
                short_message=UCS2_TEXT,
                source=PhoneNumber(SHORT_CODE),
                destination=PhoneNumber(MSISDN),
                encoding="ucs2",
                log_id="ucs2-1",
                extra_data="second",
            ),
        ]
        for submit in submits:
            await esme.broker.enqueue(submit)
        resps = await hook.take(AioSubmitSmResp, 2)
        writer = esme._writer  # aiosmpplib's stop() never closes it: we do, below
        assert {(r.log_id, int(r.command_status)) for r in resps} == {
            ("gsm-1", 0),
            ("ucs2-1", 0),
        }
        id_of = {r.log_id: r.message_id for r in resps}
        assert_stored(carrier, id_of["gsm-1"], GSM_TEXT, 0)
        assert_stored(carrier, id_of["ucs2-1"], UCS2_TEXT, 8)

        receipts = await hook.take(AioDeliverSm, 2)
        for receipt in receipts:
            assert receipt.is_receipt()
            fields = receipt.parse_receipt()
            # log_id/extra_data are set only when aiosmpplib's correlator matched the
            # receipt's id: to the message_id of a submit_sm_resp.
            assert fields["id"] == id_of[receipt.log_id]
            assert receipt.extra_data == {"gsm-1": "first", "ucs2-1": "second"}[receipt.log_id]
            assert fields["stat"] == "DELIVRD"
            assert fields["err"] == 0
            tlvs = {p.tag: p.value for p in receipt.optional_params}
            assert tlvs[0x001E] == fields["id"]  # receipted_message_id
            assert tlvs[0x0427] == 2  # message_state DELIVERED
        assert sorted(r.log_id for r in receipts) == ["gsm-1", "ucs2-1"]

        carrier.inject(SYSTEM_ID, mo_pdus())
        mos = await hook.take(AioDeliverSm, 2)
        assert [m.is_receipt() for m in mos] == [False, False]
        assert [m.short_message for m in mos] == MO_TEXTS
        assert [(m.source.number, m.destination.number) for m in mos] == [(MSISDN, SHORT_CODE)] * 2
    finally:
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


@needs_node
@pytest.mark.asyncio
async def test_node_transceiver_gsm_ucs2_and_long(carrier: Carrier) -> None:
    messages = [
        node_message(GSM_TEXT),
        node_message(UCS2_TEXT, "ucs2"),
        node_message(LONG_GSM_TEXT),
        node_message(LONG_UCS2_TEXT, "ucs2"),
    ]
    node = await NodeClient.start(carrier.port, "trx", messages=messages)
    try:
        bound = await node.wait_for("bound")
        assert bound["system_id"] == "smscsim"
        await node.finish()
    finally:
        await node.kill()
    resps, receipts = node.of("submit_sm_resp"), node.of("deliver_sm", "receipt")
    assert [(r["index"], r["part"], r["parts"]) for r in resps] == [
        (0, 1, 1),
        (1, 1, 1),
        (2, 1, 3),
        (2, 2, 3),
        (2, 3, 3),
        (3, 1, 2),
        (3, 2, 2),
    ]
    check_node_receipts(resps, receipts)
    id_of = {(r["index"], r["part"]): r["message_id"] for r in resps}
    assert_stored(carrier, id_of[0, 1], GSM_TEXT, 0)
    assert_stored(carrier, id_of[1, 1], UCS2_TEXT, 8)
    for index, text, total in ((2, LONG_GSM_TEXT, 3), (3, LONG_UCS2_TEXT, 2)):
        rebuilt = ""
        for seq in range(1, total + 1):
            msg = carrier.messages.get(id_of[index, seq])
            assert msg is not None
            concat, body, _ = parse_udh(msg.short_message)
            assert concat is not None
            assert (concat.ref, concat.total, concat.seq) == (
                index + 1,
                total,
                seq,
            )
            rebuilt += decode_text(body, msg.data_coding)
        assert rebuilt == text


@needs_node
@pytest.mark.asyncio
async def test_node_receiver_gets_injected_mo(carrier: Carrier) -> None:
    node = await NodeClient.start(carrier.port, "rx", expect_mo=2)
    try:
        await node.wait_for("bound")
        carrier.inject(SYSTEM_ID, mo_pdus())
        await node.finish()
    finally:
        await node.kill()
    mos = node.of("deliver_sm", "mo")
    assert [(m["esm_class"], m["data_coding"]) for m in mos] == [(0, 0), (0, 8)]
    assert [m["text"] for m in mos] == MO_TEXTS
    assert [(m["source_addr"], m["destination_addr"]) for m in mos] == [(MSISDN, SHORT_CODE)] * 2
    assert [m["receipted_message_id"] for m in mos] == [None, None]


@needs_node
@pytest.mark.asyncio
async def test_node_transmitter_receipts_reach_node_receiver(carrier: Carrier) -> None:
    """A node TX submits; the receipts go to a node RX bound to the same account."""
    rx = await NodeClient.start(carrier.port, "rx", expect_receipts=3)
    tx: NodeClient | None = None
    try:
        await rx.wait_for("bound")
        tx = await NodeClient.start(
            carrier.port,
            "tx",
            messages=[node_message(GSM_TEXT), node_message(LONG_UCS2_TEXT, "ucs2")],
        )
        await tx.finish()
        await rx.finish()
    finally:
        await rx.kill()
        if tx is not None:
            await tx.kill()
    assert tx.of("deliver_sm") == []
    check_node_receipts(tx.of("submit_sm_resp"), rx.of("deliver_sm", "receipt"))


# --- receipt text as foreign clients read it ----------------------------------------------


@needs_node
@pytest.mark.asyncio
async def test_node_receipt_text_of_a_udh_part_is_the_part_text(carrier: Carrier) -> None:
    """The receipt's ``text:`` starts the message text, not the UDH read as characters."""
    node = await NodeClient.start(carrier.port, "trx", messages=[node_message(LONG_GSM_TEXT)])
    try:
        await node.finish()
    finally:
        await node.kill()
    resps = node.of("submit_sm_resp")
    by_id = {r["message_id"]: r["part"] for r in resps}
    part_texts = [LONG_GSM_TEXT[i : i + 153] for i in range(0, len(LONG_GSM_TEXT), 153)]
    for receipt in node.of("deliver_sm", "receipt"):
        rid, _, preview = receipt_fields(receipt["text"])
        assert preview == part_texts[by_id[rid] - 1][:20]


@needs_node
@pytest.mark.asyncio
async def test_node_receipt_text_shows_no_character_the_sender_did_not_write(
    carrier: Carrier,
) -> None:
    """A data_coding 0 receipt is read as GSM 03.38 (node smpp, aiosmpplib): its preview
    may mask characters (``?``) but must not turn ``$`` into ``¤`` or ``_`` into ``§``."""
    text = "Pay $5 to a_b now"
    node = await NodeClient.start(carrier.port, "trx", messages=[node_message(text)])
    try:
        await node.finish()
    finally:
        await node.kill()
    (receipt,) = node.of("deliver_sm", "receipt")
    _, _, preview = receipt_fields(receipt["text"])
    assert len(preview) == len(text)
    wrong = [(sent, got) for sent, got in zip(text, preview, strict=True) if got not in (sent, "?")]
    assert wrong == [], f"receipt preview {preview!r} for {text!r}"
