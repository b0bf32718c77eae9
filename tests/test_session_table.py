"""THE table of the session core: which (role, state, direction, command_id) is legal.

For every role and every state (reached through the public API), every command id is fed
to a real session: what TABLE allows is accepted (an event, or the core's own answer), and
what it does not is refused on the wire with exactly :func:`refusal_status` (§2.2 Table 2-1,
§5.1.3). The send side refuses with LocalProtocolError carrying the same status. Then
hypothesis throws random bytes and random (valid and broken) PDUs at sessions in every
state: ``receive_data`` never raises, and everything queued for the wire decodes.
"""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from profiles import examples
from sessions import BIND_FOR, Pair, reach, sample, wire

from smppcore.codec import encode
from smppcore.constants import RESPONSE_BIT, CommandId, CommandStatus, command_name
from smppcore.errors import LocalProtocolError
from smppcore.pdu import (
    PDU_CLASSES,
    BindTransceiver,
    BindTransceiverResp,
    DeliverSm,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    UnbindResp,
)
from smppcore.session import (
    TABLE,
    Direction,
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
    refusal_status,
)

S = CommandStatus
C = CommandId
HEADER = struct.Struct(">IIII")
SEQ = 77
NOW = 1.0
EVENT_TYPES = (
    RequestReceived,
    ResponseReceived,
    RequestExpired,
    LateResponse,  # the answer to a request that had expired
    ProtocolViolation,
    SessionClosed,
)

REQUESTS = sorted(cid for cid in PDU_CLASSES if not cid & RESPONSE_BIT)
RESPONSES = sorted(cid for cid in PDU_CLASSES if cid & RESPONSE_BIT)
ROLE_STATES = [(role, state) for role in Role for state in State]
IDS = [f"{role.value}-{state.value}" for role, state in ROLE_STATES]

BOUND = {State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX}
TX = {State.BOUND_TX, State.BOUND_TRX}
RX = {State.BOUND_RX, State.BOUND_TRX}
BINDS = {C.BIND_TRANSMITTER, C.BIND_RECEIVER, C.BIND_TRANSCEIVER}


def peer(role: Role) -> Role:
    return Role.MC if role is Role.ESME else Role.ESME


def spec_allows(receiver: Role, state: State, cid: int) -> bool:
    """Table 2-1 written out independently of smppcore: may ``receiver`` get request ``cid``
    in ``state``? (enquire_link leniently in every live state, as SMPP-NOTES asks)."""
    if state is State.CLOSED:
        return False
    if cid == C.ENQUIRE_LINK:
        return True
    if cid == C.UNBIND:
        return state in BOUND
    if receiver is Role.MC:
        if cid in BINDS:
            return state in (State.OPEN, State.OUTBOUND)
        esme_to_mc = {C.SUBMIT_SM, C.SUBMIT_MULTI, C.DATA_SM, C.QUERY_SM, C.CANCEL_SM, C.REPLACE_SM}
        return cid in esme_to_mc and state in TX
    if cid == C.OUTBIND:
        return state is State.OPEN
    return cid in {C.DELIVER_SM, C.DATA_SM, C.ALERT_NOTIFICATION} and state in RX


def spec_refusal(receiver: Role, state: State, cid: int) -> int:
    """§5.1.3 / SMPP-NOTES: the status that refuses a request outside Table 2-1."""
    if cid in BINDS and state in BOUND | {State.UNBINDING}:
        return S.ESME_RALYBND
    never = (
        {C.DELIVER_SM, C.ALERT_NOTIFICATION, C.OUTBIND}
        if receiver is Role.MC
        else BINDS | {C.SUBMIT_SM, C.SUBMIT_MULTI, C.QUERY_SM, C.CANCEL_SM, C.REPLACE_SM}
    )
    return S.ESME_RINVCMDID if cid in never else S.ESME_RINVBNDSTS


def refusal_pdu(role: Role, state: State, cid: int, seq: int = SEQ) -> Pdu:
    """What goes on the wire to refuse request ``cid``: its own response carrying the
    status, or a generic_nack for an unknown command or one without a response."""
    status = refusal_status(role, state, cid)
    cls = PDU_CLASSES[cid].response_class
    if cls is None or status == S.ESME_RINVCMDID:
        cls = GenericNack
    return cls(sequence_number=seq, command_status=status)


# --- the table against the spec ------------------------------------------------------------


@pytest.mark.parametrize(("role", "state"), ROLE_STATES, ids=IDS)
def test_table_2_1_decides_which_requests_a_role_may_receive(role: Role, state: State) -> None:
    wrong = [
        command_name(cid)
        for cid in REQUESTS
        if ((role, state, Direction.RECEIVE, cid) in TABLE) != spec_allows(role, state, cid)
    ]
    assert wrong == []


@pytest.mark.parametrize(("role", "state"), ROLE_STATES, ids=IDS)
def test_refusal_status_is_the_spec_status(role: Role, state: State) -> None:
    wrong = [
        (command_name(cid), refusal_status(role, state, cid), spec_refusal(role, state, cid))
        for cid in REQUESTS
        if (role, state, Direction.RECEIVE, cid) not in TABLE
        and refusal_status(role, state, cid) != spec_refusal(role, state, cid)
    ]
    assert wrong == []


def test_what_one_side_may_send_the_other_may_receive() -> None:
    for role, state, direction, cid in TABLE:
        mirror = Direction.RECEIVE if direction is Direction.SEND else Direction.SEND
        assert (peer(role), state, mirror, cid) in TABLE


# --- the receive side, state by state ------------------------------------------------------


@pytest.mark.parametrize(("role", "state"), ROLE_STATES, ids=IDS)
def test_every_request_is_accepted_or_refused_as_the_table_says(role: Role, state: State) -> None:
    problems: list[str] = []

    def expect(ok: bool, cid: int, what: str) -> None:
        if not ok:
            problems.append(f"{command_name(cid)}: {what}")

    for cid in REQUESTS:
        me = reach(role, state).of(role)
        request = sample(cid, SEQ)
        events = me.receive_data(encode(request), NOW)
        out = wire(me.data_to_send())
        key = (role, state, Direction.RECEIVE, cid)
        if state is State.CLOSED:
            expect(events == [] and out == [], cid, f"a closed session said {events} {out}")
        elif key not in TABLE:
            refusal = refusal_pdu(role, state, cid)
            expect(out == [refusal], cid, f"wire {out}, expected {refusal}")
            got = [(e.command_id, e.sequence_number, e.status) for e in events]
            expect(got == [(cid, SEQ, refusal.command_status)], cid, f"events {events}")
            expect(me.state is state, cid, f"moved to {me.state}")
        elif cid == C.ENQUIRE_LINK:
            expect(out == [EnquireLinkResp(SEQ)] and events == [], cid, f"{out} {events}")
            expect(me.state is state, cid, f"moved to {me.state}")
        elif cid == C.UNBIND:
            expect(out == [UnbindResp(SEQ)], cid, f"wire {out}")
            expect(events == [SessionClosed("unbound by peer")], cid, f"events {events}")
            expect(me.closed, cid, "still open")
        else:
            expect(events == [RequestReceived(request)], cid, f"events {events}")
            expect(out == [], cid, f"the core answered {out} itself")
            after = TABLE[key] or state
            expect(me.state is after, cid, f"in {me.state}, expected {after}")
            resp_cls = PDU_CLASSES[cid].response_class
            if resp_cls is not None:
                expect(me.inbound_pending == 1, cid, "not held for an answer")
                me.send_response(resp_cls(sequence_number=SEQ))
                (answer,) = wire(me.data_to_send())
                expect(answer.command_id == cid | RESPONSE_BIT, cid, f"answered {answer}")
                expect(answer.sequence_number == SEQ, cid, f"answered {answer}")
                expect(me.inbound_pending == 0, cid, "answer did not free its slot")
                sent_after = TABLE[(role, after, Direction.SEND, resp_cls.command_id)] or after
                expect(me.state is sent_after, cid, f"in {me.state} after answering")
    assert problems == []


def with_request_in_flight(role: Role, state: State, request_cid: int) -> tuple[Session, Pdu]:
    """A session of ``role`` in ``state`` with a request ``request_cid`` of its own in flight."""
    if (role, state, Direction.SEND, request_cid) in TABLE:
        me = reach(role, state).of(role)
        request = me.send_request(sample(request_cid), NOW)
        me.data_to_send()
        return me, request
    assert state is State.UNBINDING
    pair = Pair()
    pair.bind(State.BOUND_TRX)
    me = pair.of(role)
    request = me.send_request(sample(request_cid), NOW)
    me.unbind(NOW)
    me.data_to_send()
    assert me.state is State.UNBINDING
    return me, request


@pytest.mark.parametrize(("role", "state"), ROLE_STATES, ids=IDS)
def test_every_response_is_matched_or_dropped(role: Role, state: State) -> None:
    """§2.7: a response answers the request with its sequence number; one that answers
    nothing is dropped and counted, never answered on the wire."""
    problems: list[str] = []
    for cid in RESPONSES:
        name = command_name(cid)
        me = reach(role, state).of(role)
        events = me.receive_data(encode(sample(cid, 0x7FFF0000)), NOW)
        out = me.data_to_send()
        if events or out or (me.unmatched_responses != (0 if me.closed else 1)):
            problems.append(f"{name} nobody asked for: {events} {out!r}")
        if me.state is not state:
            problems.append(f"{name} nobody asked for moved the session to {me.state}")

        key = (role, state, Direction.RECEIVE, cid)
        if key not in TABLE:
            continue
        asked = C.ENQUIRE_LINK if cid == C.GENERIC_NACK else cid & ~RESPONSE_BIT
        if cid == C.UNBIND_RESP and state is State.UNBINDING:
            continue  # our own unbind: test_session covers its answer
        if (role, state, Direction.SEND, asked) not in TABLE and (
            state is not State.UNBINDING
            or (role, State.BOUND_TRX, Direction.SEND, asked) not in TABLE
        ):
            # Legal but no request of ours could be waiting for it here: a bind_resp while
            # UNBINDING (a bind is never in flight once bound).
            assert asked in BINDS, name
            assert state is State.UNBINDING, name
            continue
        me, request = with_request_in_flight(role, state, asked)
        response = sample(cid, request.sequence_number)
        events = me.receive_data(encode(response), NOW)
        if not events or events[0] != ResponseReceived(request, response):
            problems.append(f"{name} to our {request}: {events}")
        after = TABLE[key] or state
        if me.state is not after:
            problems.append(f"{name}: in {me.state}, expected {after}")
        if me.data_to_send():
            problems.append(f"{name}: the core answered a response")
    assert problems == []


# --- the send side --------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "state"), ROLE_STATES, ids=IDS)
def test_send_request_refuses_what_the_table_does_not_allow(role: Role, state: State) -> None:
    problems: list[str] = []
    for cid in REQUESTS:
        name = command_name(cid)
        me = reach(role, state).of(role)
        if (role, state, Direction.SEND, cid) in TABLE:
            sent = me.send_request(sample(cid), NOW)
            if wire(me.data_to_send()) != [sent] or not 1 <= sent.sequence_number <= 0x7FFFFFFF:
                problems.append(f"{name}: sent {sent} but the wire differs")
            continue
        try:
            me.send_request(sample(cid), NOW)
        except LocalProtocolError as err:
            expected = refusal_status(peer(role), state, cid)
            if err.status != expected:
                problems.append(f"{name}: status {err.status:#x}, expected {expected:#x}")
        else:
            problems.append(f"{name}: sent, though TABLE does not allow it")
        if me.data_to_send():
            problems.append(f"{name}: refused, yet bytes were queued")
    for cid in RESPONSES:
        me = reach(role, state).of(role)
        with pytest.raises(LocalProtocolError):
            me.send_request(sample(cid), NOW)
    assert problems == []


# --- the statuses that matter most, spelled out ----------------------------------------------


@pytest.mark.parametrize("state", list(BIND_FOR), ids=lambda s: s.value)
@pytest.mark.parametrize("bind", sorted(BINDS), ids=command_name)
def test_a_bind_on_a_bound_session_is_answered_ralybnd(state: State, bind: int) -> None:
    mc = reach(Role.MC, state).mc
    mc.receive_data(encode(sample(bind, 9)), NOW)
    resp_cls = PDU_CLASSES[bind].response_class
    assert resp_cls is not None
    assert wire(mc.data_to_send()) == [resp_cls(9, S.ESME_RALYBND)]
    assert mc.state is state


def test_a_submit_sm_on_a_receiver_is_answered_rinvbndsts_in_a_submit_sm_resp() -> None:
    mc = reach(Role.MC, State.BOUND_RX).mc
    events = mc.receive_data(encode(SubmitSm(sequence_number=9, destination_addr="1")), NOW)
    assert wire(mc.data_to_send()) == [SubmitSmResp(9, S.ESME_RINVBNDSTS)]
    assert [type(e) for e in events] == [ProtocolViolation]


def test_a_deliver_sm_to_an_mc_is_answered_generic_nack_rinvcmdid() -> None:
    mc = reach(Role.MC, State.BOUND_TRX).mc
    mc.receive_data(encode(DeliverSm(sequence_number=9)), NOW)
    assert wire(mc.data_to_send()) == [GenericNack(9, S.ESME_RINVCMDID)]


def test_an_esme_may_not_send_deliver_sm_nor_submit_on_a_receiver() -> None:
    esme = reach(Role.ESME, State.BOUND_RX).esme
    with pytest.raises(LocalProtocolError) as never:
        esme.send_request(DeliverSm(), NOW)
    assert never.value.status == S.ESME_RINVCMDID
    with pytest.raises(LocalProtocolError) as not_now:
        esme.send_request(SubmitSm(destination_addr="1"), NOW)
    assert not_now.value.status == S.ESME_RINVBNDSTS
    with pytest.raises(LocalProtocolError) as again:
        esme.send_request(BindTransceiver(), NOW)
    assert again.value.status == S.ESME_RALYBND


def test_an_mc_may_not_answer_a_request_it_never_received() -> None:
    mc = reach(Role.MC, State.OPEN).mc
    with pytest.raises(LocalProtocolError):
        mc.send_response(BindTransceiverResp(sequence_number=5, system_id="smsc"))
    assert mc.data_to_send() == b""


# --- hypothesis: nothing the peer sends makes the core raise ---------------------------------

SETTINGS = settings(max_examples=examples(200))
LIVE_STARTS = [(role, state) for role in Role for state in State if state is not State.CLOSED]

seqs = st.one_of(st.integers(0, 12), st.integers(0, 0xFFFFFFFF))
statuses = st.one_of(st.just(0), st.sampled_from(list(S)), st.integers(0, 0xFFFFFFFF))


@st.composite
def pdu_bytes(draw: st.DrawFn) -> bytes:
    """A PDU of any type, valid or broken in one of the ways peers break them."""
    cid = draw(st.one_of(st.sampled_from(REQUESTS), st.sampled_from(RESPONSES)))
    status = draw(statuses) if cid & RESPONSE_BIT else 0
    data = encode(sample(cid, draw(seqs), status))
    how = draw(
        st.sampled_from(["valid"] * 4 + ["truncated", "padded", "flipped", "unknown", "header"])
    )
    if how == "truncated" and len(data) > 16:
        data = data[: draw(st.integers(16, len(data) - 1))]
    elif how == "padded":
        data += draw(st.binary(min_size=1, max_size=12))
    elif how == "flipped" and len(data) > 16:
        at = draw(st.integers(8, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif how == "unknown":
        data = HEADER.pack(16, draw(st.integers(0, 0xFFFFFFFF)), 0, draw(seqs)) + data[16:]
    elif how == "header":
        return HEADER.pack(draw(st.integers(0, 0x2000)), cid, status, draw(seqs))
    return HEADER.pack(len(data), *HEADER.unpack_from(data)[1:]) + data[16:]


def check_invariants(me: Session, events: list[object]) -> list[Pdu]:
    """Assert what must always hold; return the PDUs that were queued for the wire."""
    assert isinstance(me.state, State)
    assert all(isinstance(e, EVENT_TYPES) for e in events), events
    out = wire(me.data_to_send())  # whole, valid PDUs and nothing else
    assert me.in_flight >= 0
    assert me.waiting >= 0
    assert 0 <= me.inbound_pending <= me.config.inbound_window
    timer = me.get_timer()
    assert timer is None if me.closed else timer is None or isinstance(timer, float | int)
    return out


def reply_to(request: Pdu, how: str) -> bytes:
    """The peer's answer to one of our requests: right, refused, nacked, or unreadable."""
    seq = request.sequence_number
    resp_cls = request.response_class
    if how == "nack" or resp_cls is None:
        return encode(GenericNack(seq, S.ESME_RSYSERR))
    if how == "unknown":
        return HEADER.pack(16, 0x800000AA, 0, seq)
    if how == "unreadable":
        return HEADER.pack(16 + 71, resp_cls.command_id, 0, seq) + b"X" * 70 + b"\0"
    status = S.ESME_RTHROTTLED if how == "refused" else S.ESME_ROK
    return encode(sample(resp_cls.command_id, seq, status))


def answer(me: Session, events: list[object]) -> None:
    """A well-behaved application: answer what it is handed, as the table lets it."""
    for ev in events:
        if not isinstance(ev, RequestReceived) or ev.pdu.response_class is None:
            continue
        resp_cls = ev.pdu.response_class
        if (me.role, me.state, Direction.SEND, resp_cls.command_id) not in TABLE:
            resp_cls = GenericNack
        me.send_response(resp_cls(sequence_number=ev.pdu.sequence_number))


@SETTINGS
@given(
    start=st.sampled_from(LIVE_STARTS),
    chunks=st.lists(st.binary(min_size=1, max_size=64), max_size=12),
)
def test_random_bytes_never_make_receive_data_raise(
    start: tuple[Role, State], chunks: list[bytes]
) -> None:
    role, state = start
    me = reach(role, state, check=False).of(role)
    for i, chunk in enumerate(chunks):
        events: list[object] = list(me.receive_data(chunk, NOW + i))
        check_invariants(me, events)


@SETTINGS
@given(
    start=st.sampled_from(LIVE_STARTS),
    window=st.integers(1, 3),
    inbound_window=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("feed"), st.lists(pdu_bytes(), min_size=1, max_size=4)),
            st.tuples(st.just("timer"), st.floats(0, 40)),
            st.tuples(st.just("send"), st.sampled_from(REQUESTS)),
            st.tuples(st.just("unbind"), st.none()),
            st.tuples(
                st.just("reply"),
                st.tuples(
                    st.integers(0, 20),
                    st.sampled_from(["ok", "ok", "refused", "nack", "unknown", "unreadable"]),
                ),
            ),
        ),
        max_size=16,
    ),
)
def test_random_pdus_timers_and_sends_keep_the_session_sound(
    start: tuple[Role, State], window: int, inbound_window: int, ops: list[tuple[str, object]]
) -> None:
    role, state = start
    config = SessionConfig(
        window=window,
        inbound_window=inbound_window,
        max_waiting=2,
        response_timeout=10.0,
        slot_timeout=5.0,
        enquire_link_interval=15.0,
        inactivity_timeout=60.0,
        session_init_timeout=30.0,
    )
    pair = Pair(0.0, esme_config=config, mc_config=config)
    me = reach(role, state, pair=pair, check=False).of(role)
    now = 0.0
    ours: list[Pdu] = []  # the requests this side put on the wire, for the peer to answer
    for op, arg in ops:
        events: list[object] = []
        if op == "reply":
            assert isinstance(arg, tuple)
            if ours:
                index, how = arg
                events += me.receive_data(reply_to(ours.pop(index % len(ours)), how), now)
        elif op == "feed":
            assert isinstance(arg, list)
            events += me.receive_data(b"".join(arg), now)
            answer(me, events)
        elif op == "timer":
            assert isinstance(arg, float)
            now += arg
            events += me.handle_timer(now)
        elif op == "send":
            assert isinstance(arg, int)
            allowed = (me.role, me.state, Direction.SEND, arg) in TABLE
            refused: LocalProtocolError | None = None
            try:
                me.send_request(sample(arg), now)
            except LocalProtocolError as err:
                refused = err
            # Refused only when the table says no, or when the waiting line is full.
            assert (refused is None) == allowed or (
                refused is not None and refused.status == S.ESME_RMSGQFUL
            ), refused
        else:
            me.unbind(now)
        ours += [p for p in check_invariants(me, events) if not p.is_response]
        for e in events:
            event(type(e).__name__)  # --hypothesis-show-statistics shows what was exercised


@SETTINGS
@given(cuts=st.lists(st.integers(1, 40), max_size=30))
def test_where_the_bytes_are_cut_changes_nothing(cuts: list[int]) -> None:
    """Framing (§3.2.1.1): a stream split anywhere reads exactly like the whole of it."""
    stream = b"".join(
        encode(p)
        for p in (
            sample(C.BIND_TRANSCEIVER, 1),
            msgspec.structs.replace(sample(C.ENQUIRE_LINK), sequence_number=2),
            sample(C.SUBMIT_SM, 3),
            sample(C.SUBMIT_MULTI, 4),
            sample(C.UNBIND, 5),
        )
    )
    whole, pieces = Session(Role.MC, 0), Session(Role.MC, 0)
    expected = whole.receive_data(stream, 0)
    got, pos = [], 0
    for cut in [*cuts, len(stream)]:
        got += pieces.receive_data(stream[pos : pos + cut], 0)
        pos += cut
    got += pieces.receive_data(stream[pos:], 0)
    assert got == expected
    assert pieces.data_to_send() == whole.data_to_send()
