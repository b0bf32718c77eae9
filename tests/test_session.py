"""The SMPP session core (smppcore.session) as two in-memory peers see it.

Section numbers are those of SMPP v3.4 Issue 1.2. No test sleeps: time is the ``now``
argument, and timers run when a test calls ``handle_timer(now)``.
"""

from __future__ import annotations

import struct

import msgspec
import pytest
from sessions import BIND_FOR, Pair, reach, sample, wire

from smppcore.codec import encode
from smppcore.constants import MAX_SEQUENCE, RESPONSE_BIT, CommandId, CommandStatus, EsmClass
from smppcore.errors import LocalProtocolError
from smppcore.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
)
from smppcore.session import (
    Event,
    LateResponse,
    ProtocolViolation,
    RequestExpired,
    RequestReceived,
    ResponseReceived,
    Role,
    Session,
    SessionClosed,
    SessionConfig,
    State,
    WindowFull,
)
from smppcore.tlv import Tag, Tlv, tlv

S = CommandStatus
HEADER = struct.Struct(">IIII")
QUIET = SessionConfig(
    enquire_link_interval=None, inactivity_timeout=None, session_init_timeout=None
)


def submit(n: int = 0) -> SubmitSm:
    return SubmitSm(source_addr="Shop", destination_addr=f"4477009{n:05d}", short_message=b"hi")


def receipt(message_id: str = "m-1") -> DeliverSm:
    text = (
        f"id:{message_id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
        "stat:DELIVRD err:000 text:hello"
    )
    return DeliverSm(
        source_addr="447700900001",
        destination_addr="Shop",
        esm_class=EsmClass.DELIVERY_RECEIPT,
        short_message=text.encode(),
        tlvs=(tlv(Tag.RECEIPTED_MESSAGE_ID, message_id), tlv(Tag.MESSAGE_STATE, 2)),
    )


def raw(
    command_id: int, sequence_number: int, body: bytes = b"", length: int | None = None
) -> bytes:
    """A PDU built by hand, so that it can break the rules the encoder enforces."""
    size = 16 + len(body) if length is None else length
    return HEADER.pack(size, command_id, 0, sequence_number) + body


def requests(events: list[Event]) -> list[Pdu]:
    """The requests the application was handed."""
    return [e.pdu for e in events if isinstance(e, RequestReceived)]


def answered(events: list[Event]) -> list[Pdu]:
    """Our requests that got their response."""
    return [e.request for e in events if isinstance(e, ResponseReceived)]


def violations(events: list[Event]) -> list[tuple[int, int, int]]:
    """(command_id, sequence_number, status) of what the core refused on its own."""
    return [
        (e.command_id, e.sequence_number, e.status)
        for e in events
        if isinstance(e, ProtocolViolation)
    ]


# --- bind (§4.1, §2.2) ---------------------------------------------------------------------


@pytest.mark.parametrize("state", list(BIND_FOR), ids=lambda s: s.value)
def test_each_bind_type_puts_both_sides_in_its_bound_state(state: State) -> None:
    """§4.1.1–4.1.6: bind_transmitter/receiver/transceiver and their _resp."""
    pair = Pair()
    (event,) = pair.bind(state)
    assert isinstance(event, ResponseReceived)
    assert event.response.command_id == event.request.command_id | RESPONSE_BIT
    assert event.response.sequence_number == event.request.sequence_number == 1
    assert event.response.command_status == S.ESME_ROK
    assert pair.esme.state is state
    assert pair.mc.state is state
    assert pair.esme.can_submit == pair.mc.can_submit == (state is not State.BOUND_RX)
    assert pair.esme.can_deliver == pair.mc.can_deliver == (state is not State.BOUND_TX)


def test_a_34_bind_response_carries_sc_interface_version() -> None:
    """§5.3.2.25: the MC's bind_resp to a 3.4 bind says which version it speaks."""
    pair = Pair()
    pair.bind(State.BOUND_TRX, interface_version=0x34)
    (resp,) = (p for p in pair.to_esme if isinstance(p, BindTransceiverResp))
    assert resp.tlvs == (Tlv(Tag.SC_INTERFACE_VERSION, b"\x34"),)
    assert pair.esme.peer_interface_version == 0x34
    assert pair.mc.peer_interface_version == 0x34


def test_sc_interface_version_given_by_the_application_is_not_doubled() -> None:
    pair = Pair()
    bind = pair.esme.send_request(BindTransceiver(system_id="esme"), 0)
    pair.pump()
    sc = Tlv(Tag.SC_INTERFACE_VERSION, b"\x34")
    pair.mc.send_response(
        BindTransceiverResp(sequence_number=bind.sequence_number, system_id="smsc", tlvs=(sc,))
    )
    pair.pump()
    assert pair.to_esme[-1] == BindTransceiverResp(bind.sequence_number, 0, "smsc", (sc,))


def test_a_33_bind_gets_a_response_without_tlvs() -> None:
    """§5.3: a 3.3 ESME (interface_version 0x33) knows no TLVs, not even one the MC's
    application adds itself; the ESME then takes its peer for 3.3."""
    pair = Pair()
    bind = pair.esme.send_request(BindTransceiver(system_id="old", interface_version=0x33), 0)
    pair.pump()
    assert pair.mc.peer_interface_version == 0x33
    pair.mc.send_response(
        BindTransceiverResp(
            sequence_number=bind.sequence_number,
            system_id="smsc",
            tlvs=(Tlv(Tag.SC_INTERFACE_VERSION, b"\x34"),),
        )
    )
    raw_resp = pair.mc.data_to_send()
    assert raw_resp == raw(CommandId.BIND_TRANSCEIVER_RESP, bind.sequence_number, b"smsc\0")
    (event,) = pair.esme.receive_data(raw_resp, 0)
    assert isinstance(event, ResponseReceived)
    assert pair.esme.state is pair.mc.state is State.BOUND_TRX
    assert pair.esme.peer_interface_version == 0x33


def test_after_a_33_bind_neither_side_sends_tlvs() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TRX, interface_version=0x33)
    with_tlv = msgspec.structs.replace(submit(), tlvs=(tlv(Tag.USER_MESSAGE_REFERENCE, 7),))
    pair.esme.send_request(with_tlv, 1)
    pair.mc.send_request(receipt(), 1)
    esme_events, mc_events = pair.pump(1)
    (got_submit,) = (e.pdu for e in mc_events if isinstance(e, RequestReceived))
    (got_receipt,) = (e.pdu for e in esme_events if isinstance(e, RequestReceived))
    assert isinstance(got_submit, SubmitSm)
    assert isinstance(got_receipt, DeliverSm)
    assert got_submit.tlvs == ()
    assert got_receipt.tlvs == ()
    assert got_receipt.short_message == receipt().short_message


def test_a_refused_bind_leaves_both_sides_open() -> None:
    """§4.1, §5.1.3: ESME_RINVPASWD; an error response has no body (§3.2.1.3)."""
    pair = Pair()
    bind = pair.esme.send_request(BindTransceiver(system_id="esme", password="wrong"), 0)
    _, (received,) = pair.pump()
    assert isinstance(received, RequestReceived)
    pair.mc.send_response(
        BindTransceiverResp(sequence_number=bind.sequence_number, command_status=S.ESME_RINVPASWD)
    )
    raw_resp = pair.mc.data_to_send()
    assert len(raw_resp) == 16
    (event,) = pair.esme.receive_data(raw_resp, 0)
    assert event == ResponseReceived(bind, BindTransceiverResp(bind.sequence_number, 0x0E))
    assert pair.esme.state is State.OPEN
    assert pair.mc.state is State.OPEN
    assert pair.mc.inbound_pending == 0
    with pytest.raises(LocalProtocolError) as refused:
        pair.esme.send_request(submit(), 0)
    assert refused.value.status == S.ESME_RINVBNDSTS
    # The ESME may try again, and succeed.
    (again,) = pair.bind(State.BOUND_TRX)
    assert isinstance(again, ResponseReceived)
    assert pair.esme.state is pair.mc.state is State.BOUND_TRX


# --- submit and the window (§2.7, §4.4) ------------------------------------------------------


def test_a_window_of_10_sends_10_holds_15_and_frees_slots_in_order() -> None:
    pair = Pair(esme_config=SessionConfig(window=10))
    pair.bind(State.BOUND_TX)
    sent = [pair.esme.send_request(submit(i), 1) for i in range(25)]
    assert [p.sequence_number for p in sent] == list(range(2, 27))
    assert (pair.esme.in_flight, pair.esme.waiting) == (10, 15)
    _, mc_events = pair.pump(1)
    first_ten = requests(mc_events)
    assert first_ten == sent[:10]

    # Three answers free three slots: the next three waiting requests go out, in order.
    for p in first_ten[:3]:
        pair.mc.send_response(SubmitSmResp(sequence_number=p.sequence_number, message_id="x"))
    esme_events, mc_events = pair.pump(2)
    assert answered(esme_events) == sent[:3]
    assert requests(mc_events) == sent[10:13]
    assert (pair.esme.in_flight, pair.esme.waiting) == (10, 12)

    # The MC answers whatever it holds, round after round, until all 25 are done.
    received, done = sent[:13], sent[:3]
    unanswered = first_ten[3:] + requests(mc_events)
    now = 3
    while unanswered:
        for p in unanswered:
            pair.mc.send_response(SubmitSmResp(sequence_number=p.sequence_number, message_id="x"))
        esme_events, mc_events = pair.pump(now)
        done += answered(esme_events)
        unanswered = requests(mc_events)
        received += unanswered
        now += 1
    assert received == sent
    assert done == sent
    assert (pair.esme.in_flight, pair.esme.waiting) == (0, 0)


def test_responses_out_of_order_are_matched_by_sequence_number() -> None:
    """§2.7: responses may come in any order; the sequence number says which is which."""
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = [pair.esme.send_request(submit(i), 1) for i in range(3)]
    pair.pump(1)
    for p in (sent[2], sent[0], sent[1]):
        pair.mc.send_response(
            SubmitSmResp(sequence_number=p.sequence_number, message_id=f"id-{p.sequence_number}")
        )
    esme_events, _ = pair.pump(2)
    assert esme_events == [
        ResponseReceived(p, SubmitSmResp(p.sequence_number, 0, f"id-{p.sequence_number}"))
        for p in (sent[2], sent[0], sent[1])
    ]


def test_a_full_waiting_line_raises_window_full() -> None:
    config = SessionConfig(window=1, max_waiting=1)
    esme = reach(Role.ESME, State.BOUND_TX, pair=Pair(esme_config=config)).esme
    esme.send_request(submit(1), 1)
    esme.send_request(submit(2), 1)
    before = esme.data_to_send()
    with pytest.raises(WindowFull) as full:
        esme.send_request(submit(3), 1)
    assert full.value.status == S.ESME_RMSGQFUL
    assert (esme.in_flight, esme.waiting) == (1, 1)
    assert len(wire(before)) == 1


# --- requests and answers given as encoded bodies (hot paths) ------------------------------


def body_of(pdu: Pdu) -> bytes:
    return encode(pdu)[16:]


def test_an_encoded_receipt_goes_out_as_the_struct_would_and_is_answered() -> None:
    """The MC's hot path writes a receipt's body itself: on the wire it is the PDU the
    struct path would send, with the next sequence number; the answer settles it and the
    events name a bare request of its class with that sequence number."""
    pair = Pair()
    pair.bind(State.BOUND_TRX)
    seq = pair.mc.send_request_encoded(CommandId.DELIVER_SM, body_of(receipt("m-7")), 5)
    esme_events, _ = pair.pump(5)
    expected = msgspec.structs.replace(receipt("m-7"), sequence_number=seq)
    assert esme_events == [RequestReceived(expected)]
    assert pair.mc.in_flight == 1
    pair.esme.send_response(DeliverSmResp(sequence_number=seq))
    _, mc_events = pair.pump(6)
    assert mc_events == [ResponseReceived(DeliverSm(sequence_number=seq), DeliverSmResp(seq))]
    assert pair.mc.in_flight == 0


def test_encoded_requests_share_the_window_and_wait_for_a_slot_in_order() -> None:
    pair = Pair(mc_config=SessionConfig(window=2, slot_timeout=3))
    pair.bind(State.BOUND_RX)
    seqs = [
        pair.mc.send_request_encoded(CommandId.DELIVER_SM, body_of(receipt(f"m-{i}")), 1)
        for i in range(3)
    ]
    seqs.append(pair.mc.send_request(receipt("m-3"), 1).sequence_number)
    assert (pair.mc.in_flight, pair.mc.waiting) == (2, 2)
    esme_events, _ = pair.pump(1)
    assert [p.sequence_number for p in requests(esme_events)] == seqs[:2]
    for seq in seqs[:2]:
        pair.esme.send_response(DeliverSmResp(sequence_number=seq))
    esme_events, _ = pair.pump(2)  # two slots freed: the waiting two go out, in order
    waited = requests(esme_events)
    assert [p.sequence_number for p in waited] == seqs[2:]
    assert [p.tlv(Tag.RECEIPTED_MESSAGE_ID) for p in waited] == ["m-2", "m-3"]


def test_an_encoded_request_with_no_slot_in_time_expires() -> None:
    pair = Pair(mc_config=SessionConfig(window=1, slot_timeout=3))
    pair.bind(State.BOUND_RX)
    pair.mc.send_request(receipt("m-0"), 1)
    seq = pair.mc.send_request_encoded(CommandId.DELIVER_SM, body_of(receipt("m-1")), 1)
    events = pair.mc.handle_timer(4)
    assert RequestExpired(DeliverSm(sequence_number=seq), "window") in events


def test_encoded_requests_follow_the_state_rules() -> None:
    """Table 2-1 holds for encoded bodies too; and requests that change the session's
    state (binds, unbind, outbind) and responses are never sent encoded."""
    pair = Pair()
    pair.bind(State.BOUND_TX)
    with pytest.raises(LocalProtocolError) as refused:
        pair.mc.send_request_encoded(CommandId.DELIVER_SM, body_of(receipt()), 1)
    assert refused.value.status == S.ESME_RINVBNDSTS
    for cid in (CommandId.UNBIND, CommandId.BIND_TRANSMITTER, CommandId.SUBMIT_SM_RESP):
        with pytest.raises(LocalProtocolError):
            pair.esme.send_request_encoded(cid, b"", 1)
    assert pair.mc.data_to_send() == b""
    assert pair.mc.in_flight == 0


def test_an_encoded_submit_sm_resp_is_the_struct_path_on_the_wire() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(1), 1)
    pair.pump(1)
    pair.mc.send_response_encoded(
        CommandId.SUBMIT_SM_RESP, sent.sequence_number, 0, b"abc-123\0"
    )
    esme_events, _ = pair.pump(2)
    assert esme_events == [ResponseReceived(sent, SubmitSmResp(sent.sequence_number, 0, "abc-123"))]
    with pytest.raises(LocalProtocolError):  # answered already
        pair.mc.send_response_encoded(CommandId.SUBMIT_SM_RESP, sent.sequence_number, 0, b"\0")


def test_encoded_answers_must_answer_what_was_asked() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(1), 1)
    pair.pump(1)
    with pytest.raises(LocalProtocolError):
        pair.mc.send_response_encoded(CommandId.DELIVER_SM_RESP, sent.sequence_number, 0, b"\0")
    bind = Session(Role.MC, 0, QUIET)
    bind.receive_data(encode(BindTransceiver(sequence_number=1, system_id="a")), 0)
    with pytest.raises(LocalProtocolError):  # a bind_resp takes sc_interface_version
        bind.send_response_encoded(CommandId.BIND_TRANSCEIVER_RESP, 1, 0, b"smsc\0")


def test_a_33_peer_does_not_take_tlvs() -> None:
    pair = Pair()
    assert pair.mc.takes_tlvs
    pair.esme.send_request(BindTransceiver(system_id="esme", interface_version=0x33), 0)
    pair.pump(0)
    assert not pair.mc.takes_tlvs


# --- deliver_sm receipts (§4.6, Appendix B) ------------------------------------------------


@pytest.mark.parametrize("state", [State.BOUND_RX, State.BOUND_TRX], ids=lambda s: s.value)
def test_the_mc_delivers_a_receipt_on_rx_and_trx(state: State) -> None:
    pair = Pair()
    pair.bind(state)
    sent = pair.mc.send_request(receipt("m-42"), 5)
    esme_events, _ = pair.pump(5)
    assert esme_events == [RequestReceived(sent)]
    got = esme_events[0]
    assert isinstance(got, RequestReceived)
    assert got.pdu.tlv(Tag.RECEIPTED_MESSAGE_ID) == "m-42"
    pair.esme.send_response(DeliverSmResp(sequence_number=sent.sequence_number))
    _, mc_events = pair.pump(6)
    assert mc_events == [ResponseReceived(sent, DeliverSmResp(sent.sequence_number))]
    assert pair.esme.inbound_pending == 0
    assert pair.mc.in_flight == 0


def test_the_mc_may_not_deliver_to_a_transmitter() -> None:
    """Table 2-1: deliver_sm goes only to RX or TRX."""
    pair = Pair()
    pair.bind(State.BOUND_TX)
    with pytest.raises(LocalProtocolError) as refused:
        pair.mc.send_request(receipt(), 1)
    assert refused.value.status == S.ESME_RINVBNDSTS
    assert pair.mc.data_to_send() == b""
    assert pair.mc.in_flight == 0


def test_a_deliver_sm_arriving_at_a_transmitter_is_answered_rinvbndsts() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    events = pair.esme.receive_data(
        encode(msgspec.structs.replace(receipt(), sequence_number=9)), 1
    )
    assert wire(pair.esme.data_to_send()) == [DeliverSmResp(9, S.ESME_RINVBNDSTS)]
    assert violations(events) == [(CommandId.DELIVER_SM, 9, S.ESME_RINVBNDSTS)]
    assert len(events) == 1
    assert pair.esme.state is State.BOUND_TX


# --- unbind (§4.2) -------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_unbind_from_either_side_closes_both(role: Role) -> None:
    pair = Pair()
    pair.bind(State.BOUND_TRX)
    me, peer = pair.of(role), pair.peer_of(role)
    me.unbind(3)
    assert me.state is State.UNBINDING
    esme_events, mc_events = pair.pump(3)
    mine, theirs = (esme_events, mc_events) if role is Role.ESME else (mc_events, esme_events)
    assert mine == [SessionClosed("unbound")]
    assert theirs == [SessionClosed("unbound by peer")]
    assert me.closed
    assert peer.closed
    to_peer, to_me = (pair.to_mc, pair.to_esme) if role is Role.ESME else (pair.to_esme, pair.to_mc)
    unbind_pdu, unbind_resp = to_peer[-1], to_me[-1]
    assert isinstance(unbind_pdu, Unbind)
    assert unbind_resp == UnbindResp(unbind_pdu.sequence_number, S.ESME_ROK)
    assert me.get_timer() is None
    assert peer.get_timer() is None


def test_an_unbind_from_the_peer_fails_our_unanswered_requests() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = [pair.esme.send_request(submit(i), 1) for i in range(2)]
    pair.pump(1)
    pair.mc.unbind(2)
    esme_events, _ = pair.pump(2)
    assert esme_events == [
        RequestExpired(sent[0], "closed"),
        RequestExpired(sent[1], "closed"),
        SessionClosed("unbound by peer"),
    ]


def test_no_new_request_may_follow_our_unbind() -> None:
    esme = reach(Role.ESME, State.UNBINDING).esme
    with pytest.raises(LocalProtocolError) as refused:
        esme.send_request(submit(), 1)
    assert refused.value.status == S.ESME_RINVBNDSTS
    assert esme.data_to_send() == b""


# --- enquire_link (§4.11) ------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize(
    "state",
    [State.OPEN, State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX],
    ids=lambda s: s.value,
)
def test_the_core_answers_enquire_link_itself(role: Role, state: State) -> None:
    me = reach(role, state).of(role)
    events = me.receive_data(encode(EnquireLink(sequence_number=42)), 1)
    assert events == []
    assert wire(me.data_to_send()) == [EnquireLinkResp(42)]
    assert me.state is state
    assert me.inbound_pending == 0


def test_our_own_enquire_link_comes_back_as_a_response() -> None:
    pair = Pair()
    pair.bind(State.BOUND_RX)
    probe = pair.esme.send_request(EnquireLink(), 1)
    esme_events, mc_events = pair.pump(1)
    assert esme_events == [ResponseReceived(probe, EnquireLinkResp(probe.sequence_number))]
    assert mc_events == []


# --- sequence numbers (§3.2.1.4, §2.7) -----------------------------------------------------


def test_sequence_numbers_start_at_1_and_count_up() -> None:
    esme = Session(Role.ESME, 0)
    sent = [esme.send_request(EnquireLink(), 0) for _ in range(3)]
    assert [p.sequence_number for p in sent] == [1, 2, 3]
    assert [p.sequence_number for p in wire(esme.data_to_send())] == [1, 2, 3]


def test_sequence_numbers_are_allocated_per_side() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TRX)
    first_delivery = pair.mc.send_request(receipt(), 1)
    assert first_delivery.sequence_number == 1  # the ESME's bind was 1 too


def test_sequence_numbers_wrap_from_0x7fffffff_to_1() -> None:
    esme = Session(Role.ESME, 0, SessionConfig(window=100))
    # No public seam starts the counter elsewhere; 2**31 requests would take too long.
    esme._next_seq = MAX_SEQUENCE - 1
    sent = [esme.send_request(EnquireLink(), 0).sequence_number for _ in range(4)]
    assert sent == [MAX_SEQUENCE - 1, MAX_SEQUENCE, 1, 2]
    assert [p.sequence_number for p in wire(esme.data_to_send())] == sent


def test_sequence_allocation_skips_numbers_still_in_flight() -> None:
    esme = Session(Role.ESME, 0, SessionConfig(window=100))
    one = esme.send_request(EnquireLink(), 0)
    assert one.sequence_number == 1
    esme._next_seq = MAX_SEQUENCE  # as above: no public seam
    after_wrap = [esme.send_request(EnquireLink(), 0).sequence_number for _ in range(2)]
    assert after_wrap == [MAX_SEQUENCE, 2]  # 1 is still in flight


def test_an_explicit_sequence_number_is_kept_and_then_skipped() -> None:
    esme = Session(Role.ESME, 0)
    mine = esme.send_request(EnquireLink(sequence_number=2), 0)
    allocated = [esme.send_request(EnquireLink(), 0).sequence_number for _ in range(2)]
    assert mine.sequence_number == 2
    assert allocated == [1, 3]


# --- timers (§7.2) ---------------------------------------------------------------------------


def test_no_response_in_time_expires_the_request() -> None:
    pair = Pair(esme_config=msgspec.structs.replace(QUIET, response_timeout=5.0))
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(), 10)
    assert pair.esme.get_timer() == 15
    assert pair.esme.handle_timer(14.999) == []
    assert pair.esme.handle_timer(15) == [RequestExpired(sent, "response")]
    assert pair.esme.in_flight == 0
    assert pair.esme.state is State.BOUND_TX


def test_a_late_answer_to_an_expired_request_is_reported_once() -> None:
    """A response after the response timeout is not dropped as unmatched: it is reported
    (LateResponse) once, so the application can undo what it did about the expiry (a
    receipt about to be sent again). A sequence number used again forgets the old one."""
    config = msgspec.structs.replace(QUIET, window=1, max_waiting=1, response_timeout=5.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TX)
    first = pair.esme.send_request(submit(1), 10)
    pair.esme.data_to_send()
    assert pair.esme.handle_timer(15) == [RequestExpired(first, "response")]
    late = SubmitSmResp(first.sequence_number, 0, "x")
    assert pair.esme.receive_data(encode(late), 16) == [LateResponse(first, late)]
    assert pair.esme.receive_data(encode(late), 16) == []  # twice: unmatched
    assert (pair.esme.late_responses, pair.esme.unmatched_responses) == (1, 1)
    # The remembered ones are bounded (window + max_waiting = 2): the oldest go first.
    sent = []
    for i in range(3):
        sent.append(pair.esme.send_request(submit(i), 20 + 10 * i))
        pair.esme.data_to_send()
        assert pair.esme.handle_timer(25 + 10 * i) == [RequestExpired(sent[i], "response")]
    oldest = SubmitSmResp(sent[0].sequence_number, 0, "a")
    assert pair.esme.receive_data(encode(oldest), 60) == []
    newest = SubmitSmResp(sent[2].sequence_number, 0, "c")
    assert pair.esme.receive_data(encode(newest), 60) == [LateResponse(sent[2], newest)]


def test_an_expired_request_frees_its_slot_for_the_next() -> None:
    pair = Pair(esme_config=msgspec.structs.replace(QUIET, window=1, response_timeout=5.0))
    pair.bind(State.BOUND_TX)
    first = pair.esme.send_request(submit(1), 10)
    second = pair.esme.send_request(submit(2), 11)
    assert wire(pair.esme.data_to_send()) == [first]
    assert pair.esme.handle_timer(15) == [RequestExpired(first, "response")]
    assert wire(pair.esme.data_to_send()) == [second]
    assert pair.esme.get_timer() == 20  # its own response deadline starts when it is sent


def test_no_slot_in_time_expires_a_waiting_request() -> None:
    config = msgspec.structs.replace(QUIET, window=1, slot_timeout=2.0, response_timeout=30.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TX)
    first = pair.esme.send_request(submit(1), 10)
    second = pair.esme.send_request(submit(2), 10)
    assert pair.esme.get_timer() == 12
    assert pair.esme.handle_timer(11.9) == []
    assert pair.esme.handle_timer(12) == [RequestExpired(second, "window")]
    assert (pair.esme.in_flight, pair.esme.waiting) == (1, 0)
    assert wire(pair.esme.data_to_send()) == [first]  # the second never went out


def test_enquire_link_goes_out_after_the_interval_of_silence() -> None:
    config = msgspec.structs.replace(QUIET, enquire_link_interval=30.0, response_timeout=5.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TRX)  # the ESME last heard from the MC at t=0
    assert pair.esme.get_timer() == 30
    assert pair.esme.handle_timer(29.9) == []
    assert pair.esme.data_to_send() == b""
    assert pair.esme.handle_timer(30) == []
    assert pair.esme.in_flight == 0  # our keep-alive takes no window slot
    assert pair.esme.get_timer() == 35  # now it waits for the answer
    esme_events, mc_events = pair.pump(31)
    assert esme_events == mc_events == []
    assert [type(p) for p in pair.to_mc[-1:]] == [EnquireLink]
    assert pair.to_esme[-1] == EnquireLinkResp(pair.to_mc[-1].sequence_number)
    assert pair.esme.get_timer() == 61  # 30 s of silence after the answer at t=31
    # Anything received is a sign of life and restarts the interval.
    pair.mc.send_request(receipt(), 50)
    pair.pump(50)
    assert pair.esme.get_timer() == 80


def test_an_unanswered_enquire_link_closes_the_session() -> None:
    config = msgspec.structs.replace(QUIET, enquire_link_interval=30.0, response_timeout=5.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TRX)
    pair.esme.handle_timer(30)
    assert pair.esme.handle_timer(34.9) == []
    assert pair.esme.handle_timer(35) == [SessionClosed("enquire_link unanswered")]
    assert pair.esme.closed
    assert pair.esme.get_timer() is None


def test_inactivity_closes_a_bound_session() -> None:
    pair = Pair(esme_config=msgspec.structs.replace(QUIET, inactivity_timeout=60.0))
    pair.bind(State.BOUND_TRX)
    assert pair.esme.get_timer() == 60
    assert pair.esme.handle_timer(59.9) == []
    assert pair.esme.handle_timer(60) == [SessionClosed("inactivity timeout")]
    assert pair.esme.closed
    assert [type(p) for p in wire(pair.esme.data_to_send())] == [Unbind]  # a courtesy unbind


def test_session_init_timeout_closes_a_session_that_never_binds() -> None:
    mc = Session(Role.MC, 100, msgspec.structs.replace(QUIET, session_init_timeout=30.0))
    assert mc.get_timer() == 130
    assert mc.handle_timer(129.9) == []
    assert mc.handle_timer(130) == [SessionClosed("no bind within session_init_timeout")]
    assert mc.closed
    assert mc.data_to_send() == b""


def test_session_init_timeout_spares_a_bound_session() -> None:
    pair = Pair(mc_config=msgspec.structs.replace(QUIET, session_init_timeout=30.0))
    pair.bind(State.BOUND_TRX, now=5)
    assert pair.mc.get_timer() is None
    assert pair.mc.handle_timer(30) == []
    assert pair.mc.handle_timer(1000) == []
    assert pair.mc.state is State.BOUND_TRX


def test_get_timer_is_the_earliest_deadline_and_none_when_closed() -> None:
    config = SessionConfig(
        window=1,
        response_timeout=7.0,
        slot_timeout=3.0,
        enquire_link_interval=20.0,
        inactivity_timeout=50.0,
        session_init_timeout=10.0,
    )
    pair = Pair(esme_config=config)
    esme = pair.esme
    assert esme.get_timer() == 10  # session init (inactivity would be 50)
    esme.send_request(BindTransceiver(system_id="esme"), 1)
    assert esme.get_timer() == 8  # the bind's response deadline
    _, (bind,) = pair.pump(1)
    assert isinstance(bind, RequestReceived)
    pair.mc.send_response(BindTransceiverResp(sequence_number=1, system_id="smsc"))
    pair.pump(2)
    assert esme.state is State.BOUND_TRX
    assert esme.get_timer() == 22  # enquire_link, 20 s after hearing from the MC at t=2
    esme.send_request(submit(1), 4)
    assert esme.get_timer() == 11  # the submit's response deadline
    esme.send_request(submit(2), 5)
    assert esme.get_timer() == 8  # the second submit's slot deadline
    esme.connection_lost()
    assert esme.get_timer() is None


def test_get_timer_is_none_when_every_timer_is_off_and_nothing_is_pending() -> None:
    assert Session(Role.MC, 0, QUIET).get_timer() is None


# --- the inbound window ------------------------------------------------------------------


def test_requests_beyond_the_inbound_window_are_throttled() -> None:
    pair = Pair(mc_config=SessionConfig(inbound_window=3))
    pair.bind(State.BOUND_TX)
    sent = [pair.esme.send_request(submit(i), 1) for i in range(5)]
    esme_events, mc_events = pair.pump(1)
    assert [e.pdu for e in mc_events if isinstance(e, RequestReceived)] == sent[:3]
    assert [
        (e.sequence_number, e.status) for e in mc_events if isinstance(e, ProtocolViolation)
    ] == [(p.sequence_number, S.ESME_RTHROTTLED) for p in sent[3:]]
    assert esme_events == [
        ResponseReceived(p, SubmitSmResp(p.sequence_number, S.ESME_RTHROTTLED)) for p in sent[3:]
    ]
    assert pair.mc.inbound_full
    assert pair.mc.inbound_pending == 3

    # enquire_link takes no slot: it is still answered while the window is full.
    probe = pair.esme.send_request(EnquireLink(), 2)
    esme_events, _ = pair.pump(2)
    assert esme_events == [ResponseReceived(probe, EnquireLinkResp(probe.sequence_number))]

    pair.mc.send_response(SubmitSmResp(sequence_number=sent[0].sequence_number, message_id="a"))
    assert not pair.mc.inbound_full
    assert pair.mc.inbound_pending == 2
    again = pair.esme.send_request(submit(9), 3)
    _, mc_events = pair.pump(3)
    assert mc_events == [RequestReceived(again)]
    assert pair.mc.inbound_full


def test_answering_a_request_twice_is_refused_locally() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(), 1)
    pair.pump(1)
    pair.mc.send_response(SubmitSmResp(sequence_number=sent.sequence_number))
    with pytest.raises(LocalProtocolError):
        pair.mc.send_response(SubmitSmResp(sequence_number=sent.sequence_number))


# --- connection loss -----------------------------------------------------------------------


def test_connection_lost_fails_every_pending_and_waiting_request() -> None:
    config = msgspec.structs.replace(QUIET, window=2, enquire_link_interval=1.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TX)
    pair.esme.handle_timer(1)  # our own enquire_link is in flight too: not the app's business
    sent = [pair.esme.send_request(submit(i), 2) for i in range(5)]
    assert (pair.esme.in_flight, pair.esme.waiting) == (2, 3)
    events = pair.esme.connection_lost()
    assert events == [
        *(RequestExpired(p, "closed") for p in sent),
        SessionClosed("connection lost"),
    ]
    assert (pair.esme.in_flight, pair.esme.waiting) == (0, 0)
    assert pair.esme.closed
    assert pair.esme.get_timer() is None
    assert pair.esme.connection_lost() == []
    assert pair.esme.receive_data(encode(EnquireLink(sequence_number=1)), 3) == []


# --- malformed input (§2.8, §3.3, §4.3) -------------------------------------------------------


def test_an_unknown_command_id_gets_generic_nack_and_the_session_goes_on() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    events = pair.mc.receive_data(raw(0x00000099, 7, b"\x01\x02\x03\x04"), 1)
    assert violations(events) == [(0x99, 7, S.ESME_RINVCMDID)]
    assert len(events) == 1
    assert wire(pair.mc.data_to_send()) == [GenericNack(7, S.ESME_RINVCMDID)]
    assert pair.mc.state is State.BOUND_TX
    sent = pair.esme.send_request(submit(), 2)
    _, mc_events = pair.pump(2)
    assert mc_events == [RequestReceived(sent)]


@pytest.mark.parametrize("length", [0, 15, 1025, 0xFFFFFFFF])
def test_a_bad_command_length_gets_generic_nack_and_closes(length: int) -> None:
    """§3.3: the stream cannot be trusted after a bad command_length: answer and close."""
    pair = Pair(mc_config=SessionConfig(max_pdu_length=1024))
    pair.bind(State.BOUND_TX)
    data = raw(CommandId.SUBMIT_SM, 5, length=length) + encode(EnquireLink(sequence_number=6))
    events = pair.mc.receive_data(data, 1)
    assert [type(e) for e in events] == [ProtocolViolation, SessionClosed]
    assert events[-1] == SessionClosed("invalid command_length")
    violation = events[0]
    assert isinstance(violation, ProtocolViolation)
    assert violation.status == S.ESME_RINVCMDLEN
    assert wire(pair.mc.data_to_send()) == [
        GenericNack(5, S.ESME_RINVCMDLEN)
    ]  # no enquire_link_resp
    assert pair.mc.closed


def test_a_bad_command_length_before_the_header_is_complete_is_nacked_with_sequence_0() -> None:
    mc = Session(Role.MC, 0)
    events = mc.receive_data(b"\x00\x00\x00\x05", 0)
    assert wire(mc.data_to_send()) == [GenericNack(0, S.ESME_RINVCMDLEN)]
    assert events[-1] == SessionClosed("invalid command_length")


def test_a_too_long_source_addr_gets_submit_sm_resp_rinvsrcadr() -> None:
    """§4.4.1: source_addr is at most 21 octets; the answer is submit_sm_resp, not a nack."""
    pair = Pair()
    pair.bind(State.BOUND_TX)
    valid = encode(SubmitSm(sequence_number=8, source_addr="X" * 20, destination_addr="4477"))
    body = valid[16:].replace(b"X" * 20, b"X" * 25)
    events = pair.mc.receive_data(raw(CommandId.SUBMIT_SM, 8, body), 1)
    out = pair.mc.data_to_send()
    assert len(out) == 16  # an error response has no body
    assert wire(out) == [SubmitSmResp(8, S.ESME_RINVSRCADR)]
    assert violations(events) == [(CommandId.SUBMIT_SM, 8, S.ESME_RINVSRCADR)]
    assert len(events) == 1
    assert pair.mc.state is State.BOUND_TX
    assert pair.mc.inbound_pending == 0


def test_a_response_nobody_asked_for_is_dropped_and_counted() -> None:
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(), 1)
    pair.esme.data_to_send()
    assert pair.esme.receive_data(encode(SubmitSmResp(sequence_number=999)), 2) == []
    # the right sequence number with the wrong command is not an answer either
    assert (
        pair.esme.receive_data(encode(EnquireLinkResp(sequence_number=sent.sequence_number)), 2)
        == []
    )
    assert pair.esme.unmatched_responses == 2
    assert pair.esme.data_to_send() == b""
    assert pair.esme.in_flight == 1
    assert pair.esme.receive_data(encode(SubmitSmResp(sent.sequence_number, 0, "ok")), 3) == [
        ResponseReceived(sent, SubmitSmResp(sent.sequence_number, 0, "ok"))
    ]


def test_a_generic_nack_answers_any_request() -> None:
    """§4.3: the peer may refuse any of our requests with a generic_nack."""
    pair = Pair()
    pair.bind(State.BOUND_TX)
    sent = pair.esme.send_request(submit(), 1)
    pair.esme.data_to_send()
    nack = GenericNack(sent.sequence_number, S.ESME_RSYSERR)
    assert pair.esme.receive_data(encode(nack), 2) == [ResponseReceived(sent, nack)]
    assert pair.esme.in_flight == 0


def test_pdus_split_anywhere_or_batched_give_the_same_events() -> None:
    stream = (
        encode(EnquireLink(sequence_number=1))
        + encode(sample(CommandId.BIND_TRANSMITTER, 2))
        + raw(0x99, 3)
        + encode(EnquireLink(sequence_number=4))
    )
    whole = Session(Role.MC, 0)
    trickle = Session(Role.MC, 0)
    expected = whole.receive_data(stream, 0)
    got = [e for i in range(len(stream)) for e in trickle.receive_data(stream[i : i + 1], 0)]
    assert got == expected
    assert [type(e) for e in expected] == [RequestReceived, ProtocolViolation]
    assert trickle.data_to_send() == whole.data_to_send()
    assert wire(whole.data_to_send()) == []


# --- bugs found while writing this suite (left failing on purpose) -------------------------


def test_sending_outbind_moves_the_mc_to_outbound() -> None:
    """§4.1.7, TABLE: (MC, OPEN, SEND, outbind) leads to OUTBOUND; a second outbind is not
    allowed there."""
    mc = Session(Role.MC, 0)
    mc.send_request(Outbind(system_id="smsc", password="secret"), 0)
    assert mc.state is State.OUTBOUND
    with pytest.raises(LocalProtocolError):
        mc.send_request(Outbind(system_id="smsc", password="secret"), 0)


def test_an_unbind_sent_with_send_request_ends_the_session_cleanly() -> None:
    """§4.2: the unbind_resp ends the session: SessionClosed, and the requests still in
    flight fail as closed (never a CLOSED session that said nothing)."""
    pair = Pair(esme_config=QUIET)
    pair.bind(State.BOUND_TRX)
    pending = pair.esme.send_request(submit(), 1)
    unbind = pair.esme.send_request(Unbind(), 1)
    pair.esme.data_to_send()
    events = pair.esme.receive_data(encode(UnbindResp(sequence_number=unbind.sequence_number)), 2)
    assert pair.esme.closed
    assert RequestExpired(pending, "closed") in events
    assert isinstance(events[-1], SessionClosed)
    assert pair.esme.in_flight == 0


def test_requests_waiting_when_our_unbind_starts_fail_as_closed() -> None:
    """A request waiting for a slot when unbind starts can no longer be sent; it must still
    end with an event (not vanish) when a slot frees up."""
    pair = Pair(esme_config=msgspec.structs.replace(QUIET, window=1))
    pair.bind(State.BOUND_TX)
    first = pair.esme.send_request(submit(1), 1)
    second = pair.esme.send_request(submit(2), 1)
    pair.esme.unbind(1)
    (_, unbind) = wire(pair.esme.data_to_send())
    events = pair.esme.receive_data(encode(SubmitSmResp(first.sequence_number, 0, "m")), 2)
    events += pair.esme.receive_data(encode(UnbindResp(sequence_number=unbind.sequence_number)), 2)
    assert [e for e in events if isinstance(e, RequestExpired)] == [
        RequestExpired(second, "closed")
    ]
    assert isinstance(events[-1], SessionClosed)


def test_a_slot_freed_by_an_unreadable_response_goes_to_the_next_waiting_request() -> None:
    """§4.3: an unreadable submit_sm_resp answers the request as a generic_nack; its slot
    is free, so the next waiting request goes out at once, in order."""
    pair = Pair(esme_config=msgspec.structs.replace(QUIET, window=1))
    pair.bind(State.BOUND_TX)
    first = pair.esme.send_request(submit(1), 1)
    second = pair.esme.send_request(submit(2), 1)
    pair.esme.data_to_send()
    too_long_id = b"X" * 70 + b"\0"
    events = pair.esme.receive_data(
        raw(CommandId.SUBMIT_SM_RESP, first.sequence_number, too_long_id), 2
    )
    assert ResponseReceived(first, GenericNack(first.sequence_number, S.ESME_RINVMSGID)) in events
    assert (pair.esme.in_flight, pair.esme.waiting) == (1, 0)
    assert second in wire(pair.esme.data_to_send())


def test_an_unknown_response_to_our_enquire_link_leaves_the_window_sound() -> None:
    """A response with an unknown command_id carrying the sequence number of our own
    enquire_link must not corrupt the in-flight count nor stop the keep-alive."""
    config = msgspec.structs.replace(QUIET, enquire_link_interval=30.0, response_timeout=5.0)
    pair = Pair(esme_config=config)
    pair.bind(State.BOUND_TRX)
    pair.esme.handle_timer(30)
    (probe,) = wire(pair.esme.data_to_send())
    pair.esme.receive_data(raw(0x80000099, probe.sequence_number), 31)
    assert pair.esme.in_flight == 0
    assert pair.esme.get_timer() is not None  # keeps probing, or expires the probe


def test_an_unknown_response_to_our_unbind_does_not_leave_it_hanging() -> None:
    pair = Pair(esme_config=QUIET)
    pair.bind(State.BOUND_TRX)
    pair.esme.unbind(1)
    (unbind,) = wire(pair.esme.data_to_send())
    pair.esme.receive_data(raw(0x800000FF, unbind.sequence_number), 2)
    assert pair.esme.closed or pair.esme.get_timer() is not None
