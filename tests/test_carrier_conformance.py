"""The carrier simulator against SMPP 3.4 (Issue 1.2), check by check (layer 3: loopback,
port 0, on asyncio and uvloop).

Each test names the section it checks. Wire checks write hand-made bytes on a plain socket
and compare the exact bytes answered. Nothing sleeps: waits are on events or responses under
``asyncio.timeout``; "nothing arrived" is concluded only after a later marker arrived; and
"an hour later" moves the clock of a WarpLoop (the ``warp`` fixture) instead of waiting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from carrier_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    Esme,
    RawPeer,
    WarpLoop,
    advance,
    bind_esme,
    header,
    open_esme,
    profile,
    receipt_of,
    running_carrier,
    wait_any,
)

from simulator.carrier import Carrier
from smppcore.aio import BindError, ConnectionClosed, RequestTimeout
from smppcore.codec import encode
from smppcore.constants import CommandId, CommandStatus, EsmClass, MessageState
from smppcore.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DistributionList,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    QuerySm,
    ReplaceSm,
    ReplaceSmResp,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    UnsuccessSme,
)
from smppcore.tlv import Tag, tlv

Run = Callable[[Coroutine[Any, Any, Any]], Any]
S = CommandStatus

DEST = "447700900001"
IN_AN_HOUR = "000000010000000R"  # relative time (§7.1.2): 1 hour from now
IN_TEN_MINUTES = "000000001000000R"
RECEIPT_TEXT = re.compile(
    r"id:(?P<id>\S+) sub:001 dlvrd:00[01] submit date:\d{10} done date:\d{10}"
    r" stat:(?P<stat>[A-Z]{7}) err:(?P<err>\d{3}) text:(?P<text>.{0,20})"
)


@pytest.fixture
def warp() -> Iterator[Run]:
    """Runs a coroutine on a WarpLoop: the test may move the clock with ``advance()``."""
    with asyncio.Runner(loop_factory=WarpLoop) as runner:
        yield runner.run


# --- hand-made PDUs ---------------------------------------------------------------------


def cstr(value: bytes) -> bytes:
    return value + b"\0"


def submit_sm_bytes(
    seq: int,
    *,
    source: bytes = b"MyBrand",
    destination: bytes = DEST.encode(),
    short_message: bytes = b"hello",
    sm_length: int | None = None,
    tlvs: bytes = b"",
) -> bytes:
    """submit_sm (§4.4.1) field by field, so that any field can be wrong."""
    body = (
        cstr(b"")  # service_type
        + bytes((5, 0))  # source_addr_ton, source_addr_npi
        + cstr(source)
        + bytes((1, 1))  # dest_addr_ton, dest_addr_npi
        + cstr(destination)
        + bytes((0, 0, 0))  # esm_class, protocol_id, priority_flag
        + cstr(b"")  # schedule_delivery_time
        + cstr(b"")  # validity_period
        + bytes((1, 0, 0, 0))  # registered_delivery, replace_if_present, data_coding, default id
        + bytes((len(short_message) if sm_length is None else sm_length,))
        + short_message
        + tlvs
    )
    return header(16 + len(body), CommandId.SUBMIT_SM, 0, seq) + body


def no_body(command_id: int, status: int, seq: int) -> bytes:
    """The exact bytes of a response that carries only a header (§3.3: errors have no body)."""
    return header(16, command_id, status, seq)


async def raw_bound(carrier: Carrier, bind: type = BindTransceiver) -> RawPeer:
    peer = await RawPeer.open(carrier)
    resp = await peer.exchange(bind(sequence_number=1, system_id=SYSTEM_ID, password=PASSWORD))
    assert resp.command_status == S.ESME_ROK
    return peer


async def still_serves(esme: Esme) -> None:
    """The session answers a submit and delivers its receipt: it was not harmed."""
    message_id = await esme.submit_ok(text=b"still here")
    receipt = await esme.receipt_for(message_id)
    assert receipt_of(receipt).state == MessageState.DELIVERED


def states(pdus: list[DeliverSm]) -> list[MessageState]:
    return [MessageState(p.tlv(Tag.MESSAGE_STATE)) for p in pdus]


def test_hand_made_submit_sm_matches_the_codec() -> None:
    """The raw helper writes what the codec writes for the same fields (so the wire tests
    below differ from a valid submit_sm only in the field they break)."""
    pdu = SubmitSm(
        sequence_number=3,
        source_addr_ton=5,
        source_addr="MyBrand",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr=DEST,
        registered_delivery=1,
        short_message=b"hello",
    )
    assert submit_sm_bytes(3) == encode(pdu)


# --- §4.1 bind ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [BindTransmitter, BindReceiver, BindTransceiver])
def test_bind_accepted_resp_names_the_carrier_and_sc_interface_version_4_1(
    run: Run, kind: type
) -> None:
    """§4.1.2/§5.3.2.25: a 3.4 bind_resp carries the MC's system_id and
    sc_interface_version 0x34."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await RawPeer.open(carrier)
            try:
                resp = await peer.exchange(
                    kind(sequence_number=7, system_id=SYSTEM_ID, password=PASSWORD)
                )
                assert resp.command_id == kind.command_id | 0x80000000
                assert resp.command_status == S.ESME_ROK
                assert resp.sequence_number == 7
                assert resp.system_id == "smscsim"  # type: ignore[attr-defined]
                assert resp.tlv(Tag.SC_INTERFACE_VERSION) == 0x34
                assert len(carrier.account(SYSTEM_ID).sessions) == 1  # type: ignore[union-attr]
            finally:
                await peer.close()

    run(main())


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [
        (SYSTEM_ID, "wrong", S.ESME_RINVPASWD),
        ("nobody", PASSWORD, S.ESME_RINVSYSID),
    ],
    ids=["wrong-password", "unknown-system_id"],
)
def test_bind_refusal_is_a_bare_header_with_the_status_5_1_3(
    run: Run, system_id: str, password: str, status: int
) -> None:
    """§4.1.2, §5.1.3: wrong password → ESME_RINVPASWD, unknown system_id →
    ESME_RINVSYSID; a refused bind_resp has no body (no system_id)."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await RawPeer.open(carrier)
            try:
                peer.send(
                    BindTransmitter(sequence_number=42, system_id=system_id, password=password)
                )
                assert await peer.read_frame() == no_body(
                    CommandId.BIND_TRANSMITTER_RESP, status, 42
                )
                assert not carrier.account(SYSTEM_ID).sessions  # type: ignore[union-attr]
            finally:
                await peer.close()

    run(main())


def test_second_bind_on_a_bound_session_is_ralybnd_2_2(run: Run) -> None:
    """Table 2-1: a bind on a bound session → ESME_RALYBND; the first bind stays."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await raw_bound(carrier)
            try:
                peer.send(
                    BindTransceiver(sequence_number=2, system_id=SYSTEM_ID, password=PASSWORD)
                )
                assert await peer.read_frame() == no_body(
                    CommandId.BIND_TRANSCEIVER_RESP, S.ESME_RALYBND, 2
                )
                resp = await peer.exchange(EnquireLink(sequence_number=3))
                assert resp == EnquireLinkResp(sequence_number=3)
            finally:
                await peer.close()

    run(main())


def test_bind_type_not_allowed_is_rbindfail_4_1(run: Run) -> None:
    """An account limited to transmitter binds: receiver/transceiver → ESME_RBINDFAIL."""

    async def main() -> None:
        accounts = [{"system_id": SYSTEM_ID, "password": PASSWORD, "bind_types": ["transmitter"]}]
        async with running_carrier(accounts=accounts) as carrier:
            for kind in ("rx", "trx"):
                with pytest.raises(BindError) as err:
                    await bind_esme(carrier, kind)
                assert err.value.status == S.ESME_RBINDFAIL
            tx = await bind_esme(carrier, "tx")
            assert (await tx.submit()).command_status == S.ESME_ROK

    run(main())


def test_too_many_sessions_is_rbindfail_and_a_freed_slot_binds_again_4_1(run: Run) -> None:
    """max_sessions 1: a second bind → ESME_RBINDFAIL; after unbind the slot is free."""

    async def main() -> None:
        accounts = [{"system_id": SYSTEM_ID, "password": PASSWORD, "max_sessions": 1}]
        async with running_carrier(accounts=accounts) as carrier:
            first = await bind_esme(carrier, "tx")
            with pytest.raises(BindError) as err:
                await bind_esme(carrier, "rx")
            assert err.value.status == S.ESME_RBINDFAIL
            async with asyncio.timeout(DEADLINE):
                await first.c.unbind(DEADLINE)
            again = await bind_esme(carrier, "rx")
            assert again.c.bound

    run(main())


def test_peer_outside_allow_cidrs_is_rbindfail_4_1(run: Run) -> None:
    """allow_cidrs: 127.0.0.1 is outside 10.0.0.0/8 (refused) and inside 127.0.0.0/8."""

    async def main() -> None:
        accounts = [
            {"system_id": "far", "password": "pw", "allow_cidrs": ["10.0.0.0/8"]},
            {"system_id": "near", "password": "pw", "allow_cidrs": ["127.0.0.0/8"]},
        ]
        async with running_carrier(accounts=accounts) as carrier:
            with pytest.raises(BindError) as err:
                await bind_esme(carrier, "trx", "far", "pw")
            assert err.value.status == S.ESME_RBINDFAIL
            near = await bind_esme(carrier, "trx", "near", "pw")
            assert near.c.bound

    run(main())


# --- Table 2-1: session states -------------------------------------------------------


def test_submit_and_query_on_a_receiver_are_rinvbndsts_2_3(run: Run) -> None:
    """Table 2-1: submit_sm/query_sm need TX or TRX; on RX → ESME_RINVBNDSTS, bare header."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await raw_bound(carrier, BindReceiver)
            try:
                peer.send(submit_sm_bytes(2))
                assert await peer.read_frame() == no_body(
                    CommandId.SUBMIT_SM_RESP, S.ESME_RINVBNDSTS, 2
                )
                peer.send(QuerySm(sequence_number=3, message_id="1"))
                assert await peer.read_frame() == no_body(
                    CommandId.QUERY_SM_RESP, S.ESME_RINVBNDSTS, 3
                )
                assert carrier.messages.pending == 0
                assert len(carrier.messages) == 0
            finally:
                await peer.close()

    run(main())


def test_submit_before_bind_is_rinvbndsts_and_enquire_link_is_answered_2_3(run: Run) -> None:
    """An open (unbound) session: submit_sm → ESME_RINVBNDSTS; enquire_link answered."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await RawPeer.open(carrier)
            try:
                peer.send(submit_sm_bytes(5))
                assert await peer.read_frame() == no_body(
                    CommandId.SUBMIT_SM_RESP, S.ESME_RINVBNDSTS, 5
                )
                peer.send(EnquireLink(sequence_number=6))
                assert await peer.read_frame() == no_body(CommandId.ENQUIRE_LINK_RESP, 0, 6)
                assert len(carrier.messages) == 0
            finally:
                await peer.close()

    run(main())


# --- §3.3 generic_nack --------------------------------------------------------------------


def test_unknown_command_id_gets_generic_nack_rinvcmdid_and_the_session_goes_on_3_3(
    run: Run,
) -> None:
    """§3.3: an unknown command_id → generic_nack ESME_RINVCMDID with the request's
    sequence number; the stream is still trusted."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await raw_bound(carrier)
            try:
                peer.send(header(16, 0x00000099, 0, 77))
                assert await peer.read_frame() == no_body(
                    CommandId.GENERIC_NACK, S.ESME_RINVCMDID, 77
                )
                peer.send(submit_sm_bytes(78))
                resp = await peer.read()
                assert isinstance(resp, SubmitSmResp)
                assert resp.sequence_number == 78
                assert resp.command_status == S.ESME_ROK
                assert resp.message_id
            finally:
                await peer.close()

    run(main())


@pytest.mark.parametrize(
    ("data", "seq"),
    [
        (header(8, CommandId.ENQUIRE_LINK, 0, 9), 9),  # under 16, header readable
        (b"\x00\x00\x00\x05", 0),  # under 16, no sequence number to echo
        (header(0x7FFFFFFF, CommandId.SUBMIT_SM, 0, 11), 11),  # over our maximum
    ],
    ids=["under-16", "under-16-no-seq", "over-max"],
)
def test_bad_command_length_gets_generic_nack_rinvcmdlen_then_close_others_unharmed_3_3(
    run: Run, data: bytes, seq: int
) -> None:
    """§3.3/§4.3: command_length under 16 or over the maximum → generic_nack
    ESME_RINVCMDLEN (sequence number echoed when readable, else 0), then the connection is
    closed; another session of the same account keeps working."""

    async def main() -> None:
        async with running_carrier() as carrier:
            other = await bind_esme(carrier, "trx")
            peer = await raw_bound(carrier)
            try:
                peer.send(data)
                assert await peer.read_frame() == no_body(
                    CommandId.GENERIC_NACK, S.ESME_RINVCMDLEN, seq
                )
                assert await peer.at_eof()
            finally:
                await peer.close()
            await still_serves(other)

    run(main())


# --- §2.5-2.6 windowing -----------------------------------------------------------------


def test_windowed_submits_are_answered_by_sequence_number_with_distinct_ids_2_6(
    run: Run,
) -> None:
    """§2.6: 100 pipelined submit_sm, answered out of order (uniform 0-20 ms latency),
    each response echoes its request's sequence number, ids are distinct, and every id
    gets exactly one receipt naming it."""

    async def main() -> None:
        prof = profile(submit_latency={"kind": "uniform", "low": 0, "high": 20})
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            order: list[int] = []
            futs = []
            for i in range(100):
                fut = esme.c.send_request(
                    SubmitSm(
                        sequence_number=1000 + i,
                        source_addr="MyBrand",
                        destination_addr=DEST,
                        registered_delivery=1,
                        short_message=b"msg %d" % i,
                    )
                )
                fut.add_done_callback(lambda f: order.append(f.result().sequence_number))
                futs.append(fut)
            async with asyncio.timeout(DEADLINE):
                resps = await asyncio.gather(*futs)
            assert [r.sequence_number for r in resps] == [1000 + i for i in range(100)]
            assert all(isinstance(r, SubmitSmResp) and r.command_status == 0 for r in resps)
            assert order != sorted(order), "latencies should reorder the answers"
            ids = [r.message_id for r in resps]  # type: ignore[attr-defined]
            assert len(set(ids)) == 100
            receipts = await esme.receipts(100)
            assert sorted(str(p.tlv(Tag.RECEIPTED_MESSAGE_ID)) for p in receipts) == sorted(ids)

    run(main())


# --- Appendix B, §5.3.2: receipts --------------------------------------------------------


def test_receipt_matches_the_submit_sm_resp_id_appendix_b(run: Run) -> None:
    """Appendix B/§5.3.2.12/§5.3.2.35: the receipt is a deliver_sm with esm_class 0x04 from
    the destination to the source, receipted_message_id and ``id:`` are exactly the
    submit_sm_resp id, message_state 2 (DELIVERED), the strict text form, no
    network_error_code on success."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok(text=b"Your code is 123456, valid 5 min")
            pdu = await esme.receipt_for(message_id)
            assert pdu.esm_class == EsmClass.DELIVERY_RECEIPT
            assert (pdu.source_addr, pdu.destination_addr) == (DEST, "MyBrand")
            assert (pdu.source_addr_ton, pdu.dest_addr_ton) == (0, 0)
            assert pdu.tlv(Tag.RECEIPTED_MESSAGE_ID) == message_id
            assert pdu.tlv(Tag.MESSAGE_STATE) == MessageState.DELIVERED
            assert pdu.tlv(Tag.NETWORK_ERROR_CODE) is None
            text = pdu.short_message.decode("ascii")
            m = RECEIPT_TEXT.fullmatch(text)
            assert m is not None, text
            assert m["id"] == message_id
            assert m["stat"] == "DELIVRD"
            assert m["err"] == "000"
            assert m["text"] == "Your code is 123456,"
            assert "dlvrd:001" in text

    run(main())


def test_a_33_esme_gets_its_receipt_without_tlvs_5_3(run: Run) -> None:
    """An ESME that binds with interface_version 0x33 speaks SMPP 3.3, which has no TLVs:
    its receipt carries the Appendix B text alone (the id in ``id:``)."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await open_esme(carrier)
            async with asyncio.timeout(DEADLINE):
                await esme.c.bind(
                    BindTransceiver(system_id=SYSTEM_ID, password=PASSWORD, interface_version=0x33)
                )
            message_id = await esme.submit_ok(text=b"old school")
            (pdu,) = await esme.receipts(1)
            assert pdu.tlvs == ()
            m = RECEIPT_TEXT.fullmatch(pdu.short_message.decode("ascii"))
            assert m is not None
            assert (m["id"], m["stat"], m["text"]) == (message_id, "DELIVRD", "old school")
            await esme.close()

    run(main())


def test_failed_receipt_carries_state_err_and_network_error_code_5_3_2_31(run: Run) -> None:
    """A failure (rule: destination 999… → UNDELIV err 1): stat UNDELIV, err:001,
    message_state 5, network_error_code (GSM type 3, code 1)."""

    async def main() -> None:
        prof = profile(
            rules=[{"match": {"destination_prefix": "999"}, "state": "UNDELIV", "error": 1}]
        )
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok("999000111")
            pdu = await esme.receipt_for(message_id)
            r = receipt_of(pdu)
            assert (r.message_id, r.state, r.error, r.dlvrd) == (
                message_id,
                MessageState.UNDELIVERABLE,
                1,
                0,
            )
            assert pdu.tlv(Tag.MESSAGE_STATE) == MessageState.UNDELIVERABLE
            assert pdu.tlv(Tag.NETWORK_ERROR_CODE) == b"\x03\x00\x01"

    run(main())


def test_registered_delivery_0_none_1_final_2_failure_only_5_2_17(run: Run) -> None:
    """§5.2.17 bits 1-0: 0 → no receipt, 1 → every final outcome, 2 → failures only.
    The last submit (rd 1) is the marker: nothing else may have arrived before it."""

    async def main() -> None:
        prof = profile(rules=[{"match": {"destination_prefix": "999"}, "state": "UNDELIV"}])
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            none_ok = await esme.submit_ok(DEST, registered_delivery=0)
            none_fail = await esme.submit_ok("999", registered_delivery=0)
            fail_only_ok = await esme.submit_ok(DEST, registered_delivery=2)
            fail_only_fail = await esme.submit_ok("999", registered_delivery=2)
            final_fail = await esme.submit_ok("999", registered_delivery=1)
            marker = await esme.submit_ok(DEST, registered_delivery=1)
            await esme.receipt_for(marker)
            got = [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in esme.delivered]
            assert got == [fail_only_fail, final_fail, marker]
            assert none_ok not in got
            assert none_fail not in got
            assert fail_only_ok not in got

    run(main())


@pytest.mark.parametrize(
    ("enroute_ms", "receipt_ms"),
    [(0, 30), (0, 0), (50, 20)],
    ids=["enroute-before-final", "both-at-once", "enroute-later-than-final"],
)
def test_intermediate_notification_enroute_comes_before_the_final_5_2_17(
    run: Run, enroute_ms: int, receipt_ms: int
) -> None:
    """§5.2.17 bit 4 (0x10): an intermediate notification — esm_class 0x20, message_state
    ENROUTE, stat ENROUTE — precedes the final receipt (esm_class 0x04), whatever the
    profile's enroute_delay and receipt_delay are."""

    async def main() -> None:
        prof = profile(
            enroute_delay={"kind": "fixed", "ms": enroute_ms},
            receipt_delay={"kind": "fixed", "ms": receipt_ms},
        )
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok(registered_delivery=0x11)
            await esme.receipt_for(message_id)
            marker = await esme.submit_ok(registered_delivery=1)
            await esme.receipt_for(marker)
            pdus = esme.receipts_of(message_id)
            assert [p.esm_class for p in pdus] == [
                EsmClass.INTERMEDIATE_NOTIFICATION,
                EsmClass.DELIVERY_RECEIPT,
            ]
            assert states(pdus) == [MessageState.ENROUTE, MessageState.DELIVERED]
            assert receipt_of(pdus[0]).state == MessageState.ENROUTE
            assert pdus[0].tlv(Tag.NETWORK_ERROR_CODE) is None

    run(main())


def test_receipts_go_to_the_submitting_transceiver_or_a_receiver_of_the_account(
    run: Run,
) -> None:
    """SMPP-NOTES: a receipt goes over the submitting TRX while it is bound, else over any
    receive-capable bind of the same system_id, never to another account."""

    async def main() -> None:
        accounts = [
            {"system_id": SYSTEM_ID, "password": PASSWORD},
            {"system_id": "other", "password": "pw"},
        ]
        async with running_carrier(accounts=accounts) as carrier:
            rx = await bind_esme(carrier, "rx")
            trx = await bind_esme(carrier, "trx")
            tx = await bind_esme(carrier, "tx")
            other_rx = await bind_esme(carrier, "rx", "other", "pw")
            other_tx = await bind_esme(carrier, "tx", "other", "pw")

            via_trx = await trx.submit_ok(text=b"from trx")
            await trx.receipt_for(via_trx)
            via_tx = await tx.submit_ok(text=b"from tx")

            def ids(esme: Esme) -> list[object]:
                return [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in esme.delivered]

            # The transmitter cannot receive: any receive-capable bind of the account may.
            await wait_any(lambda: via_tx in ids(rx) + ids(trx), rx, trx)
            marker = await other_tx.submit_ok(text=b"other's")
            await other_rx.receipt_for(marker)

            assert ids(trx) + ids(rx) in ([via_trx, via_tx], [via_trx])
            assert sorted(map(str, ids(trx) + ids(rx))) == sorted([via_trx, via_tx])
            assert ids(other_rx) == [marker]
            assert tx.delivered == []

    run(main())


def test_receipts_are_spread_over_every_receiver_of_the_account(run: Run) -> None:
    """Receipts of a transmitter's submits go over any receiver of the account: with two
    receivers bound, both get some, and together they get each exactly once."""

    async def main() -> None:
        async with running_carrier() as carrier:
            rx1 = await bind_esme(carrier, "rx")
            rx2 = await bind_esme(carrier, "rx")
            tx = await bind_esme(carrier, "tx")
            ids = [await tx.submit_ok(text=b"m%d" % i) for i in range(10)]

            def all_in() -> bool:
                return len(rx1.delivered) + len(rx2.delivered) >= 10

            await wait_any(all_in, rx1, rx2)
            got = [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in rx1.delivered + rx2.delivered]
            assert sorted(got) == sorted(ids)  # type: ignore[type-var]
            assert rx1.delivered
            assert rx2.delivered

    run(main())


def test_receipts_are_held_while_no_receiver_is_bound_and_sent_when_one_binds(
    run: Run,
) -> None:
    """SMPP-NOTES: with no receive-capable bind the receipts are held, then delivered (in
    order) over the first receiver that binds."""

    async def main() -> None:
        async with running_carrier() as carrier:
            tx = await bind_esme(carrier, "tx")
            ids = [await tx.submit_ok(text=b"held %d" % i) for i in range(3)]
            for message_id in ids:
                assert (await tx.until_final(message_id)).message_state == MessageState.DELIVERED
            state = carrier.account(SYSTEM_ID)
            assert state is not None
            assert state.outbox.held == 3
            rx = await bind_esme(carrier, "rx")
            await rx.receipts(3)
            assert [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in rx.delivered] == ids
            assert state.outbox.held == 0

    run(main())


def test_held_receipts_are_bounded_oldest_dropped_first(run: Run) -> None:
    """held.max 2: a third held receipt drops the oldest (counted in the metrics)."""

    async def main() -> None:
        async with running_carrier(held={"max": 2, "ttl": 3600}) as carrier:
            tx = await bind_esme(carrier, "tx")
            ids = [await tx.submit_ok(text=b"held %d" % i) for i in range(3)]
            for message_id in ids:
                await tx.until_final(message_id)
            trx = await bind_esme(carrier, "trx")
            await trx.receipts(2)
            marker = await trx.submit_ok(text=b"marker")
            await trx.receipt_for(marker)
            got = [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in trx.delivered]
            assert got == [ids[1], ids[2], marker]
            assert carrier.metrics.held_dropped == 1

    run(main())


def test_held_receipts_expire_after_their_ttl(warp: Run) -> None:
    """held.ttl 60 s: a receipt held longer than that is dropped, not delivered late."""

    async def main() -> None:
        async with running_carrier(held={"max": 10, "ttl": 60}) as carrier:
            tx = await bind_esme(carrier, "tx")
            old = await tx.submit_ok(text=b"old")
            await tx.until_final(old)
            advance(61)
            fresh = await tx.submit_ok(text=b"fresh")
            await tx.until_final(fresh)
            trx = await bind_esme(carrier, "trx")
            await trx.receipt_for(fresh)
            marker = await trx.submit_ok(text=b"marker")
            await trx.receipt_for(marker)
            got = [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in trx.delivered]
            assert got == [fresh, marker]
            assert carrier.metrics.held_dropped == 1

    warp(main())


def test_throughput_over_the_burst_is_rthrottled_and_refills_with_time(warp: Run) -> None:
    """throughput 1/s, burst 3: of 5 pipelined submits 3 pass and 2 get ESME_RTHROTTLED
    (a token bucket, not min-spacing); one second later one more passes."""

    async def main() -> None:
        accounts = [{"system_id": SYSTEM_ID, "password": PASSWORD, "throughput": 1, "burst": 3}]
        async with running_carrier(accounts=accounts) as carrier:
            esme = await bind_esme(carrier, "tx")
            futs = [
                esme.c.send_request(SubmitSm(destination_addr=DEST, short_message=b"x"))
                for _ in range(5)
            ]
            async with asyncio.timeout(DEADLINE):
                resps = await asyncio.gather(*futs)
            throttled = S.ESME_RTHROTTLED
            assert [r.command_status for r in resps] == [0, 0, 0, throttled, throttled]
            assert all(r.message_id == "" for r in resps[3:])  # type: ignore[attr-defined]
            advance(1.01)
            assert (await esme.submit()).command_status == S.ESME_ROK
            assert (await esme.submit()).command_status == S.ESME_RTHROTTLED

    warp(main())


@pytest.mark.parametrize("per", ["bind", "account"])
def test_profile_throttle_refuses_above_its_rate_per_bind_or_per_account(
    warp: Run, per: str
) -> None:
    """profile throttle 2/s, burst 2: per bind, each of two binds passes 2 of 3 submits; per
    account the two share the 2. Half a second later one more token has come."""

    async def main() -> None:
        prof = profile(throttle={"rate": 2.0, "burst": 2, "per": per})
        async with running_carrier(profiles={"default": prof}) as carrier:
            first = await bind_esme(carrier, "tx")
            second = await bind_esme(carrier, "trx")
            statuses = []
            for esme in (first, second):
                for _ in range(3):
                    statuses.append((await esme.submit()).command_status)
            throttled = S.ESME_RTHROTTLED
            if per == "bind":
                assert statuses == [0, 0, throttled] * 2
            else:
                assert statuses == [0, 0, throttled, throttled, throttled, throttled]
            advance(0.51)
            assert (await second.submit()).command_status == S.ESME_ROK
            assert (await second.submit()).command_status == throttled

    warp(main())


def test_max_pending_bounds_the_queue_with_rmsgqful_and_frees_on_final(warp: Run) -> None:
    """max_pending 2 with receipts an hour away: the third submit → ESME_RMSGQFUL; once a
    message is final (cancelled) there is room again."""

    async def main() -> None:
        prof = profile(max_pending=2, receipt_delay={"kind": "fixed", "ms": 3_600_000})
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            first = await esme.submit_ok()
            await esme.submit_ok()
            full = await esme.submit()
            assert full.command_status == S.ESME_RMSGQFUL
            assert full.message_id == ""
            resp = await esme.request(CancelSm(message_id=first))
            assert resp == CancelSmResp(sequence_number=resp.sequence_number)
            await esme.submit_ok()

    warp(main())


def test_max_pending_of_one_accounts_profile_is_not_used_up_by_another_account(
    warp: Run,
) -> None:
    """max_pending is a profile setting, and a profile says how the carrier treats ONE
    account: another account's pending messages do not fill this account's queue."""

    async def main() -> None:
        slow = {"kind": "fixed", "ms": 3_600_000}
        accounts = [
            {"system_id": "busy", "password": "pw", "profile": "roomy"},
            {"system_id": "small", "password": "pw", "profile": "tiny"},
        ]
        profiles = {
            "default": profile(),
            "roomy": profile(receipt_delay=slow),
            "tiny": profile(receipt_delay=slow, max_pending=1),
        }
        async with running_carrier(accounts=accounts, profiles=profiles) as carrier:
            busy = await bind_esme(carrier, "trx", "busy", "pw")
            small = await bind_esme(carrier, "trx", "small", "pw")
            for _ in range(3):
                await busy.submit_ok()
            assert (await small.submit()).command_status == S.ESME_ROK
            assert (await small.submit()).command_status == S.ESME_RMSGQFUL

    warp(main())


# --- field validation (§5.2) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (submit_sm_bytes(21, source=b"1" * 21), S.ESME_RINVSRCADR),
        (submit_sm_bytes(21, destination=b"4" * 21), S.ESME_RINVDSTADR),
        (submit_sm_bytes(21, destination=b""), S.ESME_RINVDSTADR),
        (submit_sm_bytes(21, short_message=b"hi", sm_length=200), S.ESME_RINVMSGLEN),
        (submit_sm_bytes(21, short_message=b"x" * 255, sm_length=255), S.ESME_RINVMSGLEN),
        (
            submit_sm_bytes(21, short_message=b"hi", tlvs=b"\x04\x24\x00\x02hi"),
            S.ESME_RINVMSGLEN,
        ),
    ],
    ids=[
        "source-21-octets",
        "destination-21-octets",
        "destination-empty",
        "sm_length-past-the-pdu",
        "sm_length-255",
        "short_message-and-message_payload",
    ],
)
def test_bad_submit_field_gets_its_status_as_a_bare_header_5_2(
    run: Run, data: bytes, status: int
) -> None:
    """§5.2.8-9 addresses are at most 20 octets + NULL (ESME_RINVSRCADR/RINVDSTADR), an
    empty destination is no address (ESME_RINVDSTADR); §5.2.21 sm_length must fit the PDU
    and 0-254, never with message_payload (ESME_RINVMSGLEN). The answer is a bare
    submit_sm_resp with the request's sequence number; nothing is stored; the session goes on."""

    async def main() -> None:
        async with running_carrier() as carrier:
            peer = await raw_bound(carrier)
            try:
                peer.send(data)
                assert await peer.read_frame() == no_body(CommandId.SUBMIT_SM_RESP, status, 21)
                assert len(carrier.messages) == 0
                assert await peer.exchange(EnquireLink(sequence_number=22)) == EnquireLinkResp(
                    sequence_number=22
                )
            finally:
                await peer.close()

    run(main())


def test_message_payload_is_accepted_and_its_start_is_the_receipt_text_5_3_2_32(
    run: Run,
) -> None:
    """§5.3.2.32: sm_length 0 with message_payload (here 400 octets) is a valid submit."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            payload = b"Long message payload. " * 18 + b"end"
            resp = await esme.submit(
                text=b"", tlvs=(tlv(Tag.MESSAGE_PAYLOAD, payload),), registered_delivery=1
            )
            assert resp.command_status == S.ESME_ROK
            r = receipt_of(await esme.receipt_for(resp.message_id))
            assert r.text == payload[:20].decode()

    run(main())


def test_udh_segments_each_get_an_id_and_one_receipt_5_2_12(run: Run) -> None:
    """A concatenated message (esm_class 0x40, 8-bit-ref UDH) is three submit_sm: three
    distinct ids, one receipt per segment naming its own id, and the receipt text is the
    segment's text (not its UDH)."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            parts = [b"Part one of three. ", b"Part two of three. ", b"Part three."]
            ids = []
            for seq, text in enumerate(parts, 1):
                udh = bytes((5, 0, 3, 0x42, len(parts), seq))
                ids.append(await esme.submit_ok(text=udh + text, esm_class=EsmClass.UDHI))
            assert len(set(ids)) == 3
            receipts = [await esme.receipt_for(i) for i in ids]
            assert [len(esme.receipts_of(i)) for i in ids] == [1, 1, 1]
            assert [receipt_of(p).text for p in receipts] == [t[:20].decode() for t in parts]

    run(main())


def test_data_sm_is_answered_with_an_id_and_a_receipt_4_7(run: Run) -> None:
    """§4.7: data_sm (payload in message_payload) → data_sm_resp with a message_id, and
    registered_delivery 1 → a receipt naming that id."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            resp = await esme.request(
                DataSm(
                    source_addr="MyBrand",
                    destination_addr=DEST,
                    registered_delivery=1,
                    tlvs=(tlv(Tag.MESSAGE_PAYLOAD, b"data sm text"),),
                )
            )
            assert isinstance(resp, DataSmResp)
            assert resp.command_status == S.ESME_ROK
            assert resp.message_id
            r = receipt_of(await esme.receipt_for(resp.message_id))
            assert (r.message_id, r.state, r.text) == (
                resp.message_id,
                MessageState.DELIVERED,
                "data sm text",
            )

    run(main())


# --- §4.8-4.10 query / cancel / replace; §7.1 times -------------------------------------


def test_scheduled_delivery_is_held_until_due_4_4_1(warp: Run) -> None:
    """§4.4.1 schedule_delivery_time (relative, 1 h): the message is ENROUTE and has no
    receipt until the hour passes, then DELIVRD arrives."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            start = asyncio.get_running_loop().time()
            later = await esme.submit_ok(schedule_delivery_time=IN_AN_HOUR)
            marker = await esme.submit_ok()
            await esme.receipt_for(marker)
            q = await esme.query(later)
            assert (q.message_id, q.message_state, q.final_date) == (
                later,
                MessageState.ENROUTE,
                "",
            )
            assert esme.receipts_of(later) == []
            advance(3600)
            pdu = await esme.receipt_for(later)
            assert receipt_of(pdu).state == MessageState.DELIVERED
            assert esme.delivered_at[esme.delivered.index(pdu)] >= start + 3600
            q = await esme.query(later)
            assert q.message_state == MessageState.DELIVERED
            assert len(q.final_date) == 16

    warp(main())


def test_scheduled_message_can_be_cancelled_until_due_4_9(warp: Run) -> None:
    """§4.9: cancel_sm of a pending message → cancel_sm_resp OK, state DELETED, a DELETED
    receipt, and no delivery when the schedule comes; a second cancel → ESME_RCANCELFAIL."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok(schedule_delivery_time=IN_AN_HOUR)
            resp = await esme.request(CancelSm(message_id=message_id, source_addr="MyBrand"))
            assert isinstance(resp, CancelSmResp)
            assert resp.command_status == S.ESME_ROK
            assert (await esme.query(message_id)).message_state == MessageState.DELETED
            pdu = await esme.receipt_for(message_id)
            assert receipt_of(pdu).state == MessageState.DELETED
            again = await esme.request(CancelSm(message_id=message_id))
            assert again.command_status == S.ESME_RCANCELFAIL
            advance(3601)
            marker = await esme.submit_ok()
            await esme.receipt_for(marker)
            assert states(esme.receipts_of(message_id)) == [MessageState.DELETED]

    warp(main())


def test_cancel_without_id_cancels_pending_messages_to_that_destination_4_9(
    warp: Run,
) -> None:
    """§4.9: message_id empty → every pending message from source_addr to
    destination_addr is cancelled; others stay pending."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            a = await esme.submit_ok("111", schedule_delivery_time=IN_AN_HOUR)
            b = await esme.submit_ok("111", schedule_delivery_time=IN_AN_HOUR)
            c = await esme.submit_ok("222", schedule_delivery_time=IN_AN_HOUR)
            resp = await esme.request(CancelSm(source_addr="MyBrand", destination_addr="111"))
            assert resp.command_status == S.ESME_ROK
            assert [(await esme.query(i)).message_state for i in (a, b, c)] == [
                MessageState.DELETED,
                MessageState.DELETED,
                MessageState.ENROUTE,
            ]
            none_left = await esme.request(CancelSm(source_addr="MyBrand", destination_addr="111"))
            assert none_left.command_status == S.ESME_RCANCELFAIL

    warp(main())


def test_scheduled_message_can_be_replaced_until_due_4_10(warp: Run) -> None:
    """§4.10: replace_sm of a pending message → replace_sm_resp OK; it stays scheduled and
    is then delivered once, with the new text."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok(text=b"old text", schedule_delivery_time=IN_AN_HOUR)
            resp = await esme.request(
                ReplaceSm(
                    message_id=message_id,
                    source_addr="MyBrand",
                    registered_delivery=1,
                    short_message=b"new text",
                )
            )
            assert resp == ReplaceSmResp(sequence_number=resp.sequence_number)
            assert (await esme.query(message_id)).message_state == MessageState.ENROUTE
            advance(3601)
            pdu = await esme.receipt_for(message_id)
            assert receipt_of(pdu).text == "new text"
            marker = await esme.submit_ok()
            await esme.receipt_for(marker)
            assert len(esme.receipts_of(message_id)) == 1

    warp(main())


def test_final_messages_cannot_be_cancelled_or_replaced_4_9_4_10(run: Run) -> None:
    """§4.9/§4.10: a message already in a final state → ESME_RCANCELFAIL /
    ESME_RREPLACEFAIL, and its state does not change."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok()
            assert (await esme.until_final(message_id)).message_state == MessageState.DELIVERED
            cancel = await esme.request(CancelSm(message_id=message_id))
            assert cancel.command_status == S.ESME_RCANCELFAIL
            replace = await esme.request(ReplaceSm(message_id=message_id, short_message=b"x"))
            assert replace.command_status == S.ESME_RREPLACEFAIL
            assert (await esme.query(message_id)).message_state == MessageState.DELIVERED

    run(main())


def test_query_of_an_unknown_or_foreign_id_is_rqueryfail_4_8(run: Run) -> None:
    """§4.8: query_sm of an id the MC does not know → ESME_RQUERYFAIL (bare header); an
    account cannot see, cancel or replace another account's message."""

    async def main() -> None:
        accounts = [
            {"system_id": SYSTEM_ID, "password": PASSWORD},
            {"system_id": "other", "password": "pw"},
        ]
        async with running_carrier(accounts=accounts) as carrier:
            peer = await raw_bound(carrier)
            other = await bind_esme(carrier, "trx", "other", "pw")
            try:
                peer.send(QuerySm(sequence_number=31, message_id="NO-SUCH-ID"))
                assert await peer.read_frame() == no_body(
                    CommandId.QUERY_SM_RESP, S.ESME_RQUERYFAIL, 31
                )
                theirs = await other.submit_ok(schedule_delivery_time=IN_AN_HOUR)
                peer.send(QuerySm(sequence_number=32, message_id=theirs))
                assert await peer.read_frame() == no_body(
                    CommandId.QUERY_SM_RESP, S.ESME_RQUERYFAIL, 32
                )
                peer.send(CancelSm(sequence_number=33, message_id=theirs))
                assert (await peer.read()).command_status == S.ESME_RCANCELFAIL
                peer.send(ReplaceSm(sequence_number=34, message_id=theirs, short_message=b"x"))
                assert (await peer.read()).command_status == S.ESME_RREPLACEFAIL
                assert (await other.query(theirs)).message_state == MessageState.ENROUTE
            finally:
                await peer.close()

    run(main())


def test_validity_period_shorter_than_the_receipt_delay_expires_7_1(warp: Run) -> None:
    """§4.4.1 validity_period (10 min) shorter than the receipt delay (1 h): the message
    ends EXPIRED when its validity runs out, not DELIVRD an hour later."""

    async def main() -> None:
        prof = profile(receipt_delay={"kind": "fixed", "ms": 3_600_000})
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            start = asyncio.get_running_loop().time()
            message_id = await esme.submit_ok(validity_period=IN_TEN_MINUTES)
            assert (await esme.query(message_id)).message_state == MessageState.ENROUTE
            advance(601)
            pdu = await esme.receipt_for(message_id)
            assert pdu.tlv(Tag.MESSAGE_STATE) == MessageState.EXPIRED
            assert receipt_of(pdu).state == MessageState.EXPIRED
            assert esme.delivered_at[0] < start + 3600
            assert (await esme.query(message_id)).message_state == MessageState.EXPIRED

    warp(main())


def test_expired_receipt_reports_the_profiles_expired_error_code(warp: Run) -> None:
    """Profile.errors: "err: code reported with each final state" (default EXPIRED → 27);
    an EXPIRED receipt caused by validity_period is a failure like any other: err:027 and a
    network_error_code."""

    async def main() -> None:
        prof = profile(receipt_delay={"kind": "fixed", "ms": 3_600_000})
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            message_id = await esme.submit_ok(validity_period=IN_TEN_MINUTES)
            advance(601)
            pdu = await esme.receipt_for(message_id)
            assert receipt_of(pdu).state == MessageState.EXPIRED
            assert receipt_of(pdu).error == 27
            assert pdu.tlv(Tag.NETWORK_ERROR_CODE) == b"\x03\x00\x1b"

    warp(main())


# --- §4.5 submit_multi --------------------------------------------------------------------


def test_submit_multi_reports_each_failed_destination_in_unsuccess_sme_4_5(run: Run) -> None:
    """§4.5: submit_multi_resp has the message_id and an unsuccess_sme per refused
    destination (empty address → ESME_RINVDSTADR, a distribution list the MC does not
    know → ESME_RINVDLNAME, a profile refusal → its status); each accepted destination gets
    its own receipt naming the message_id."""

    async def main() -> None:
        prof = profile(
            rules=[{"match": {"destination_prefix": "666"}, "submit_status": "ESME_RX_P_APPN"}]
        )
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            resp = await esme.request(
                SubmitMulti(
                    source_addr="MyBrand",
                    dest_addresses=(
                        SmeAddress(1, 1, "447700900001"),
                        SmeAddress(1, 1, ""),
                        DistributionList("friends"),
                        SmeAddress(1, 1, "666000"),
                        SmeAddress(1, 1, "447700900002"),
                    ),
                    registered_delivery=1,
                    short_message=b"to many",
                )
            )
            assert isinstance(resp, SubmitMultiResp)
            assert resp.command_status == S.ESME_ROK
            assert resp.message_id
            assert resp.unsuccess_smes == (
                UnsuccessSme(1, 1, "", S.ESME_RINVDSTADR),
                UnsuccessSme(0, 0, "friends", S.ESME_RINVDLNAME),
                UnsuccessSme(1, 1, "666000", S.ESME_RX_P_APPN),
            )
            await esme.wait_for(lambda: len(esme.receipts_of(resp.message_id)) >= 2)
            pdus = esme.receipts_of(resp.message_id)
            assert sorted(p.source_addr for p in pdus) == ["447700900001", "447700900002"]
            assert all(receipt_of(p).message_id == resp.message_id for p in pdus)
            q = await esme.query(resp.message_id)
            assert q.command_status == S.ESME_ROK
            assert q.message_id == resp.message_id

    run(main())


def test_cancel_of_a_submit_multi_id_cancels_every_destination_4_9(warp: Run) -> None:
    """§4.5.2/§4.9: submit_multi_resp gives ONE message_id for the message to all its
    destinations; cancel_sm with that id cancels the message, i.e. every destination still
    pending (each gets its DELETED receipt; none is delivered later)."""

    async def main() -> None:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            resp = await esme.request(
                SubmitMulti(
                    source_addr="MyBrand",
                    dest_addresses=(
                        SmeAddress(1, 1, "447700900001"),
                        SmeAddress(1, 1, "447700900002"),
                    ),
                    schedule_delivery_time=IN_AN_HOUR,
                    registered_delivery=1,
                    short_message=b"to both",
                )
            )
            assert isinstance(resp, SubmitMultiResp)
            assert resp.unsuccess_smes == ()
            cancel = await esme.request(CancelSm(message_id=resp.message_id))
            assert cancel.command_status == S.ESME_ROK
            advance(3601)
            marker = await esme.submit_ok()
            await esme.receipt_for(marker)
            pdus = esme.receipts_of(resp.message_id)
            assert sorted((p.source_addr, receipt_of(p).state) for p in pdus) == [
                ("447700900001", MessageState.DELETED),
                ("447700900002", MessageState.DELETED),
            ]

    warp(main())


# --- §4.2 unbind ---------------------------------------------------------------------------


def test_unbind_is_answered_and_frees_the_session_4_2(run: Run) -> None:
    """§4.2: unbind → unbind_resp (same sequence number), then the MC closes; the
    account's session is gone. Stopping the carrier unbinds the sessions it still has."""

    async def main() -> None:
        async with running_carrier() as carrier:
            state = carrier.account(SYSTEM_ID)
            assert state is not None
            peer = await raw_bound(carrier)
            try:
                peer.send(header(16, CommandId.UNBIND, 0, 8))
                assert await peer.read_frame() == no_body(CommandId.UNBIND_RESP, 0, 8)
                assert await peer.at_eof()
            finally:
                await peer.close()
            assert not state.sessions
            stays = await bind_esme(carrier)
        assert stays.c.closed
        assert stays.closed_reason == "unbound by peer"

    run(main())


# --- misbehaviours -------------------------------------------------------------------


def test_drop_after_n_pdus_closes_the_connection(run: Run) -> None:
    """misbehave.drop_after_pdus 2: the bind and one submit are answered; the next PDU makes
    the carrier drop the TCP connection (the request fails with ConnectionClosed)."""

    async def main() -> None:
        prof = profile(misbehave={"drop_after_pdus": 2})
        async with running_carrier(profiles={"default": prof}) as carrier:
            esme = await bind_esme(carrier)
            assert (await esme.submit()).command_status == S.ESME_ROK
            with pytest.raises(ConnectionClosed):
                await esme.submit()
            async with asyncio.timeout(DEADLINE):
                await esme.c.wait_closed()
            assert not carrier.account(SYSTEM_ID).sessions  # type: ignore[union-attr]

    run(main())


def test_black_hole_stops_answering_even_enquire_link_but_keeps_tcp_open(warp: Run) -> None:
    """misbehave.black_hole_after_pdus 2: after the bind and one submit nothing is answered
    — not a submit, not enquire_link — for as long as the ESME waits (here its 30 s
    response_timeout, on a moved clock), and the TCP connection stays open. Another
    connection is served as before."""

    async def main() -> None:
        prof = profile(misbehave={"black_hole_after_pdus": 2})
        async with running_carrier(profiles={"default": prof}, stop_timeout=0.1) as carrier:
            esme = await bind_esme(carrier)
            assert (await esme.submit()).command_status == S.ESME_ROK
            submit = esme.c.send_request(SubmitSm(destination_addr=DEST))
            probe = esme.c.send_request(EnquireLink())
            advance(31)
            for fut in (submit, probe):
                with pytest.raises(RequestTimeout) as err:
                    async with asyncio.timeout(DEADLINE):
                        await fut
                assert err.value.reason == "response"
            assert not esme.c.closed
            assert esme.closed_reason is None
            assert esme.c.transport is not None
            assert not esme.c.transport.is_closing()
            fresh = await bind_esme(carrier)
            assert (await fresh.submit()).command_status == S.ESME_ROK
            await esme.close()

    warp(main())


def test_refuse_binds_answers_every_good_bind_with_the_configured_status(run: Run) -> None:
    """misbehave.refuse_binds: a bind that passes the account checks gets the configured
    status; one that fails them keeps its own reason (wrong password)."""

    async def main() -> None:
        prof = profile(misbehave={"refuse_binds": "ESME_RSYSERR"})
        async with running_carrier(profiles={"default": prof}) as carrier:
            for kind in ("tx", "rx", "trx"):
                with pytest.raises(BindError) as err:
                    await bind_esme(carrier, kind)
                assert err.value.status == S.ESME_RSYSERR
            with pytest.raises(BindError) as err:
                await bind_esme(carrier, "trx", password="wrong")
            assert err.value.status == S.ESME_RINVPASWD
            assert not carrier.account(SYSTEM_ID).sessions  # type: ignore[union-attr]

    run(main())


# --- small things the checks above rely on ---------------------------------------------


def test_generic_nack_and_bind_resp_classes_are_what_the_wire_says() -> None:
    """The bare-header helper agrees with the codec for the PDUs compared above."""
    assert no_body(CommandId.GENERIC_NACK, 3, 7) == encode(
        GenericNack(sequence_number=7, command_status=3)
    )
    assert no_body(CommandId.BIND_TRANSMITTER_RESP, 14, 42) == encode(
        BindTransmitterResp(sequence_number=42, command_status=14, system_id="ignored")
    )
    assert no_body(CommandId.BIND_TRANSCEIVER_RESP, 5, 2) == encode(
        BindTransceiverResp(sequence_number=2, command_status=5)
    )
