"""The SMPP session state machine, without I/O (like h11's Connection).

Bytes in: ``receive_data(data, now)`` returns events. Bytes out: ``data_to_send()``.
Requests go out through ``send_request`` (windowed), answers through ``send_response``.
Time is always a parameter: ``get_timer()`` says when ``handle_timer(now)`` is next due,
and that drives enquire_link, response and window expiry, inactivity and session init.

Which PDU may travel in which state is written once, in :data:`TABLE`, keyed by
``(role, state, direction, command_id)``. Anything a peer sends outside it is answered in
one place (:func:`refusal_status`): ESME_RALYBND for a bind on a bound session,
ESME_RINVBNDSTS for a command the state does not allow, a generic_nack with
ESME_RINVCMDID for a command this role never accepts. The core answers enquire_link,
unbind and malformed PDUs itself; the application sees only the requests it must answer.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from smppcore.codec import DEFAULT_MAX_PDU_LENGTH, HEADER, FrameBuffer, decode, encode
from smppcore.constants import (
    HEADER_LENGTH,
    MAX_SEQUENCE,
    RESPONSE_BIT,
    SMPP_VERSION_34,
    CommandId,
    CommandStatus,
)
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.pdu import (
    PDU_CLASSES,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    Unbind,
    UnbindResp,
)
from smppcore.tlv import Tag, Tlv, find_tlv


class Role(Enum):
    """Which side of SMPP a session plays."""

    ESME = "esme"  # binds, submits; receives deliver_sm
    MC = "mc"  # accepts binds and submits; delivers


class State(Enum):
    """Session states (§2.2, Table 2-1), plus the two ends of an unbind."""

    OPEN = "open"  # connected, not bound
    OUTBOUND = "outbound"  # outbind sent / received, waiting for the ESME's bind
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"  # we sent unbind, waiting for unbind_resp
    CLOSED = "closed"


class Direction(Enum):
    SEND = "send"
    RECEIVE = "receive"


_C = CommandId
_TX: Final = frozenset({State.BOUND_TX, State.BOUND_TRX})
_RX: Final = frozenset({State.BOUND_RX, State.BOUND_TRX})
_BOUND: Final = _TX | _RX
_UNBOUND: Final = frozenset({State.OPEN, State.OUTBOUND})
_LIVE: Final = frozenset(State) - {State.CLOSED}

#: (sender, command, states in which the sender may send it, state after success or None).
#: A response's states are those of its request plus UNBINDING (answers still in flight).
_RULES: Final[tuple[tuple[Role, int, frozenset[State], State | None], ...]] = (
    (Role.ESME, _C.BIND_TRANSMITTER, _UNBOUND, None),
    (Role.ESME, _C.BIND_RECEIVER, _UNBOUND, None),
    (Role.ESME, _C.BIND_TRANSCEIVER, _UNBOUND, None),
    (Role.MC, _C.BIND_TRANSMITTER_RESP, _UNBOUND, State.BOUND_TX),
    (Role.MC, _C.BIND_RECEIVER_RESP, _UNBOUND, State.BOUND_RX),
    (Role.MC, _C.BIND_TRANSCEIVER_RESP, _UNBOUND, State.BOUND_TRX),
    (Role.MC, _C.OUTBIND, frozenset({State.OPEN}), State.OUTBOUND),
    (Role.ESME, _C.SUBMIT_SM, _TX, None),
    (Role.ESME, _C.SUBMIT_MULTI, _TX, None),
    (Role.ESME, _C.DATA_SM, _TX, None),
    (Role.ESME, _C.QUERY_SM, _TX, None),
    (Role.ESME, _C.CANCEL_SM, _TX, None),
    (Role.ESME, _C.REPLACE_SM, _TX, None),
    (Role.MC, _C.SUBMIT_SM_RESP, _TX, None),
    (Role.MC, _C.SUBMIT_MULTI_RESP, _TX, None),
    (Role.MC, _C.QUERY_SM_RESP, _TX, None),
    (Role.MC, _C.CANCEL_SM_RESP, _TX, None),
    (Role.MC, _C.REPLACE_SM_RESP, _TX, None),
    (Role.MC, _C.DATA_SM, _RX, None),
    (Role.MC, _C.DELIVER_SM, _RX, None),
    (Role.MC, _C.ALERT_NOTIFICATION, _RX, None),
    (Role.ESME, _C.DELIVER_SM_RESP, _RX, None),
    (Role.ESME, _C.DATA_SM_RESP, _RX, None),
)


def _build_table() -> dict[tuple[Role, State, Direction, int], State | None]:
    table: dict[tuple[Role, State, Direction, int], State | None] = {}

    def allow(sender: Role, cid: int, states: frozenset[State], after: State | None) -> None:
        receiver = Role.MC if sender is Role.ESME else Role.ESME
        for state in states:
            table[(sender, state, Direction.SEND, cid)] = after
            table[(receiver, state, Direction.RECEIVE, cid)] = after

    for sender, cid, states, after in _RULES:
        allow(sender, cid, states, after)
        if cid & RESPONSE_BIT:
            allow(sender, cid, frozenset({State.UNBINDING}), None)
    # data_sm_resp answers a data_sm from either side.
    allow(Role.MC, _C.DATA_SM_RESP, _TX | {State.UNBINDING}, None)
    for role in Role:
        # Either side may probe the link and report a broken PDU in any live state
        # (v3.4 lists only bound states for enquire_link; v5 allows open: we are lenient).
        allow(role, _C.ENQUIRE_LINK, _LIVE, None)
        allow(role, _C.ENQUIRE_LINK_RESP, _LIVE, None)
        allow(role, _C.GENERIC_NACK, _LIVE, None)
        allow(role, _C.UNBIND, _BOUND, State.UNBINDING)
        allow(role, _C.UNBIND_RESP, _BOUND | {State.UNBINDING}, State.CLOSED)
    return table


#: THE table: every legal (role, state, direction, command_id), with the state after success.
TABLE: Final = _build_table()


def _by_state() -> dict[tuple[Role, State, Direction], dict[int, State | None]]:
    """TABLE regrouped for the hot path: one int-keyed dict per (role, state, direction)."""
    out: dict[tuple[Role, State, Direction], dict[int, State | None]] = {
        (r, s, d): {} for r in Role for s in State for d in Direction
    }
    for (role, state, direction, cid), after in TABLE.items():
        out[(role, state, direction)][cid] = after
    return out


_TABLE_BY_STATE: Final = _by_state()

_BIND_REQUESTS: Final = frozenset({_C.BIND_TRANSMITTER, _C.BIND_RECEIVER, _C.BIND_TRANSCEIVER})
_ACCEPTED_BY: Final = {
    role: frozenset(cid for (r, _, d, cid) in TABLE if r is role and d is Direction.RECEIVE)
    for role in Role
}


def refusal_status(role: Role, state: State, command_id: int) -> int:
    """The status to refuse a request that TABLE does not allow ``role`` to receive now."""
    if command_id in _BIND_REQUESTS and state in _BOUND | {State.UNBINDING}:
        return CommandStatus.ESME_RALYBND
    if command_id not in _ACCEPTED_BY[role]:
        return CommandStatus.ESME_RINVCMDID
    return CommandStatus.ESME_RINVBNDSTS


# --- events -------------------------------------------------------------------------------


class RequestReceived(msgspec.Struct, frozen=True, gc=False):
    """The peer sent a request the application must answer with ``send_response``
    (outbind and alert_notification have no response)."""

    pdu: Pdu


class ResponseReceived(msgspec.Struct, frozen=True, gc=False):
    """The answer to one of our requests (a GenericNack when the peer refused it so)."""

    request: Pdu
    response: Pdu


class RequestExpired(msgspec.Struct, frozen=True, gc=False):
    """One of our requests got no answer: ``reason`` is ``window`` (no slot in time),
    ``response`` (no response in time) or ``closed`` (the session ended first)."""

    request: Pdu
    reason: str


class LateResponse(msgspec.Struct, frozen=True, gc=False):
    """The answer to one of our requests that had already expired (``RequestExpired``
    with reason ``response``): the peer did take it, late. What the application did about
    the expiry (send it again, say) it may now undo. Remembered for the last
    ``window + max_waiting`` requests that expired so, until their sequence number is
    used again."""

    request: Pdu
    response: Pdu


class ProtocolViolation(msgspec.Struct, frozen=True, gc=False):
    """The peer broke the protocol and the core answered it with ``status`` itself."""

    command_id: int
    sequence_number: int
    status: int
    detail: str


class SessionClosed(msgspec.Struct, frozen=True, gc=False):
    """The session is over; flush ``data_to_send()`` and close the transport."""

    reason: str


Event = (
    RequestReceived
    | ResponseReceived
    | RequestExpired
    | LateResponse
    | ProtocolViolation
    | SessionClosed
)

PositiveFloat = Annotated[float, Meta(gt=0)]


class SessionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits and §7.2 timers of one session. Times are seconds; None switches a timer off."""

    window: Annotated[int, Meta(ge=1, le=65535)] = 10
    """Our requests in flight at most; more wait for a slot."""
    max_waiting: Annotated[int, Meta(ge=0)] = 10000
    """Requests waiting for a window slot at most; one more is refused at once."""
    inbound_window: Annotated[int, Meta(ge=1, le=65535)] = 100
    """The peer's requests we hold unanswered at most; more are answered ESME_RTHROTTLED."""
    response_timeout: PositiveFloat = 30.0
    slot_timeout: PositiveFloat = 10.0
    enquire_link_interval: PositiveFloat | None = 30.0
    inactivity_timeout: PositiveFloat | None = 120.0
    session_init_timeout: PositiveFloat | None = 30.0
    max_pdu_length: Annotated[int, Meta(ge=64, le=16 * 1024 * 1024)] = DEFAULT_MAX_PDU_LENGTH
    coalesce: Annotated[float, Meta(ge=0, le=0.1)] = 0.0
    """Seconds our requests (not our answers) may wait to share one write with those that
    follow: fewer, fuller writes and reads on both sides at moderate rates, for that much
    latency. 0: written at the end of the loop turn. Every connection of a loop waits on
    one timer (smppcore.aio), so a request may also go sooner, with another's."""


class WindowFull(LocalProtocolError):
    """No window slot and the waiting line is full: answer or retry later."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=CommandStatus.ESME_RMSGQFUL)


_INTERNAL_ENQUIRE = 1
_INTERNAL_UNBIND = 2


class Session:
    """One SMPP session of either role. Not thread-safe; no I/O; no clock."""

    def __init__(self, role: Role, now: float, config: SessionConfig | None = None) -> None:
        self.role = role
        self.config = config or SessionConfig()
        self._set_state(State.OPEN)
        #: The peer's interface_version once known (bind request, or bind_resp TLV).
        self.peer_interface_version = SMPP_VERSION_34
        #: Does the peer speak SMPP 3.4 (TLVs may go out)? A 3.3 peer gets none (§5.3).
        self.takes_tlvs = True
        #: Responses whose sequence number matched none of our requests (dropped).
        self.unmatched_responses = 0
        #: Responses to requests that had expired (reported as LateResponse).
        self.late_responses = 0
        self.close_reason = ""
        self._frames = FrameBuffer(self.config.max_pdu_length)
        self._out: list[bytes] = []
        self._next_seq = 1
        self._in_flight: dict[int, tuple[Pdu, float]] = {}
        #: Our requests that expired unanswered, oldest first (bounded: see LateResponse).
        self._expired: dict[int, Pdu] = {}
        self._internal: dict[int, int] = {}
        #: Requests waiting for a window slot: (request, deadline, its body when it came
        #: encoded, else None).
        self._waiting: deque[tuple[Pdu, float, bytes | None]] = deque()
        self._inbound: dict[int, int] = {}  # sequence_number -> command_id awaiting our answer
        self._created = now
        self._last_received = now
        self._enquire_outstanding = False

    def _peer_speaks(self, interface_version: int) -> None:
        self.peer_interface_version = interface_version
        self.takes_tlvs = interface_version >= SMPP_VERSION_34

    def _set_state(self, state: State) -> None:
        self.state = state
        # Read on every PDU: plain attributes, not properties testing an Enum in a set.
        #: The session is over.
        self.closed = state is State.CLOSED
        #: Bound in any way.
        self.is_bound = state in _BOUND
        #: May this side send submit_sm now (ESME) / receive it (MC)?
        self.can_submit = state in _TX
        #: May deliver_sm flow MC → ESME now?
        self.can_deliver = state in _RX
        self._unbound = state in _UNBOUND
        self._may_send = _TABLE_BY_STATE[(self.role, state, Direction.SEND)]
        self._may_receive = _TABLE_BY_STATE[(self.role, state, Direction.RECEIVE)]

    # --- queries ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Our requests sent and not yet answered."""
        return len(self._in_flight) - len(self._internal)

    @property
    def waiting(self) -> int:
        """Our requests waiting for a window slot."""
        return len(self._waiting)

    @property
    def inbound_pending(self) -> int:
        """The peer's requests we have not answered yet."""
        return len(self._inbound)

    @property
    def awaiting_responses(self) -> bool:
        """True while any request of ours (enquire_link and unbind too) is unanswered."""
        return bool(self._in_flight)

    def awaits_answer(self, sequence_number: int) -> bool:
        """True while the peer's request ``sequence_number`` waits for our response."""
        return sequence_number in self._inbound

    def limit_inbound_window(self, window: int) -> None:
        """Narrow the inbound window (an MC applies the bound account's limit at bind)."""
        if window < 1:
            raise ValueError("window must be >= 1")
        self.config = msgspec.structs.replace(self.config, inbound_window=window)

    @property
    def inbound_full(self) -> bool:
        """True when reading should pause: the inbound window is used up."""
        return len(self._inbound) >= self.config.inbound_window

    # --- bytes --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, in order."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns what happened, in order. Never raises for
        anything the peer sends: violations are answered on the wire and reported."""
        if self.state is State.CLOSED:
            return []
        self._last_received = now
        events: list[Event] = []
        for frame in self._frames.feed(data):
            self._handle_frame(frame, now, events)
            if self.closed:
                return events
        err = self._frames.error
        if err is not None:
            self._queue(GenericNack(sequence_number=err.sequence_number, command_status=err.status))
            events.append(
                ProtocolViolation(err.command_id, err.sequence_number, err.status, str(err))
            )
            self._close("invalid command_length", events)
        return events

    # --- requests we send ---------------------------------------------------------------

    def send_request(self, pdu: Pdu, now: float) -> Pdu:
        """Queue one of our requests and return it with its sequence number.

        It goes out now when the window has a slot, else it waits (at most
        ``slot_timeout``) in a line bounded by ``max_waiting``; WindowFull past that.
        Raises LocalProtocolError when the state does not allow the command.
        """
        cid = pdu.command_id
        if cid & RESPONSE_BIT:
            raise LocalProtocolError(f"{type(pdu).__name__} is a response: use send_response")
        self._check_send(cid)
        if pdu.sequence_number == 0:
            pdu = msgspec.structs.replace(pdu, sequence_number=self._allocate())
        if not self.takes_tlvs:
            pdu = _without_tlvs(pdu)
        if cid not in _UNWINDOWED and len(self._in_flight) - len(self._internal) >= (
            self.config.window
        ):
            if len(self._waiting) >= self.config.max_waiting:
                raise WindowFull(
                    f"window of {self.config.window} full and {len(self._waiting)} requests waiting"
                )
            encode(pdu)  # refuse a bad PDU now, not when its slot comes
            self._waiting.append((pdu, now + self.config.slot_timeout, None))
            return pdu
        self._transmit(pdu, now)
        after = self._may_send[cid]
        if after is not None:  # outbind → OUTBOUND, unbind → UNBINDING
            self._set_state(after)
        return pdu

    def send_request_encoded(self, command_id: int, body: bytes, now: float) -> int:
        """Queue one of our requests given as its encoded body (everything after the
        header), for hot paths that build bytes directly; returns its sequence number.

        The same rules as :meth:`send_request` (state, window, waiting line); the events
        about it carry a bare request of its class holding only the sequence number. The
        body goes out as given: the caller must not use this toward a peer that does not
        :attr:`takes_tlvs` when the body holds TLVs, nor for requests that change the
        session's state (bind, unbind, outbind)."""
        if command_id & RESPONSE_BIT or command_id in _NOT_ENCODED:
            raise LocalProtocolError(f"command_id 0x{command_id:08x} cannot be sent encoded")
        if command_id not in self._may_send:
            self._check_send(command_id)  # raises
        seq = self._allocate()
        request = PDU_CLASSES[command_id](seq)  # by position: twice as fast as by name
        if len(self._in_flight) - len(self._internal) >= self.config.window:
            if len(self._waiting) >= self.config.max_waiting:
                raise WindowFull(
                    f"window of {self.config.window} full and {len(self._waiting)} requests waiting"
                )
            self._waiting.append((request, now + self.config.slot_timeout, body))
            return seq
        self._transmit_encoded(request, body, now)
        return seq

    def _transmit_encoded(self, request: Pdu, body: bytes, now: float) -> None:
        seq = request.sequence_number
        self._in_flight[seq] = (request, now + self.config.response_timeout)
        self._out.append(_pack_header(HEADER_LENGTH + len(body), request.command_id, 0, seq) + body)

    def unbind(self, now: float) -> list[Event]:
        """Start a clean end: send unbind; SessionClosed follows its response or timeout.
        Before a bind there is nothing to unbind: the session closes at once (the events
        returned fail whatever was pending)."""
        events: list[Event] = []
        if self.state in _BOUND:
            self._send_internal(Unbind(), _INTERNAL_UNBIND, now)
            self._set_state(State.UNBINDING)
        elif self.state is not State.CLOSED and self.state is not State.UNBINDING:
            self._close("closed before bind", events)
        return events

    def _transmit(self, pdu: Pdu, now: float) -> None:
        data = encode(pdu)
        if pdu.command_id not in _NO_RESPONSE:
            self._in_flight[pdu.sequence_number] = (pdu, now + self.config.response_timeout)
        self._out.append(data)

    def _send_internal(self, pdu: Pdu, kind: int, now: float) -> None:
        self._check_send(pdu.command_id)
        pdu = msgspec.structs.replace(pdu, sequence_number=self._allocate())
        self._internal[pdu.sequence_number] = kind
        self._transmit(pdu, now)

    def _check_send(self, cid: int) -> None:
        if cid not in self._may_send:
            status = refusal_status(
                Role.MC if self.role is Role.ESME else Role.ESME, self.state, cid
            )
            raise LocalProtocolError(
                f"{self.role.value} may not send {PDU_CLASSES[cid].__name__} "
                f"in state {self.state.value}",
                status=status,
            )

    def _allocate(self) -> int:
        seq = self._next_seq
        while seq in self._in_flight:
            seq = seq + 1 if seq < MAX_SEQUENCE else 1
        self._next_seq = seq + 1 if seq < MAX_SEQUENCE else 1
        if self._expired:
            self._expired.pop(seq, None)  # a late answer to it can no longer be told apart
        return seq

    def _promote(self, now: float) -> None:
        window = self.config.window
        waiting = self._waiting
        while waiting and len(self._in_flight) - len(self._internal) < window:
            if waiting[0][0].command_id not in self._may_send:
                break  # the state moved on (unbind): they fail as closed at the end
            pdu, _, body = waiting.popleft()
            if body is None:
                self._transmit(pdu, now)
            else:
                self._transmit_encoded(pdu, body, now)

    # --- responses we send --------------------------------------------------------------

    def send_response(self, pdu: Pdu) -> None:
        """Answer a request the peer sent. After the session closed this does nothing."""
        if self.state is State.CLOSED:
            return
        seq = pdu.sequence_number
        cid = pdu.command_id
        asked = self._inbound.get(seq)
        if asked is None:
            raise LocalProtocolError(f"no request with sequence_number {seq} awaits an answer")
        if cid != asked | RESPONSE_BIT and cid != CommandId.GENERIC_NACK:
            raise LocalProtocolError(
                f"{type(pdu).__name__} does not answer {PDU_CLASSES[asked].__name__}"
            )
        may_send = self._may_send
        if cid in may_send:
            after = may_send[cid]
        elif pdu.command_status:
            # A refusal may always be sent, e.g. ESME_RALYBND to a second pipelined bind
            # that the first one's success has overtaken.
            after = None
        else:
            self._check_send(cid)
        del self._inbound[seq]
        if after is not None and not pdu.command_status:
            if asked in _BIND_REQUESTS and self.takes_tlvs:
                tlvs = _tlvs_of(pdu)
                if find_tlv(tlvs, Tag.SC_INTERFACE_VERSION) is None:
                    sc = Tlv(Tag.SC_INTERFACE_VERSION, bytes((SMPP_VERSION_34,)))
                    pdu = msgspec.structs.replace(pdu, tlvs=(*tlvs, sc))
            self._set_state(after)
        if not self.takes_tlvs:
            pdu = _without_tlvs(pdu)
        self._out.append(encode(pdu))

    def send_response_encoded(
        self, command_id: int, sequence_number: int, status: int, body: bytes
    ) -> None:
        """Answer the peer's request ``sequence_number`` with an encoded body (everything
        after the header), for hot paths (submit_sm_resp). The same checks as
        :meth:`send_response`; not for bind responses (they take a TLV) nor answers that
        change the session's state. The body goes out as given (no TLVs toward a peer
        that does not :attr:`takes_tlvs`)."""
        if self.state is State.CLOSED:
            return
        asked = self._inbound.get(sequence_number)
        if asked is None:
            raise LocalProtocolError(
                f"no request with sequence_number {sequence_number} awaits an answer"
            )
        if command_id != asked | RESPONSE_BIT and command_id != CommandId.GENERIC_NACK:
            raise LocalProtocolError(
                f"command_id 0x{command_id:08x} does not answer {PDU_CLASSES[asked].__name__}"
            )
        may_send = self._may_send
        if command_id in may_send:
            if may_send[command_id] is not None or asked in _BIND_REQUESTS:
                raise LocalProtocolError(
                    f"{PDU_CLASSES[asked].__name__}'s answer cannot be sent encoded"
                )
        elif not status:
            self._check_send(command_id)  # raises
        del self._inbound[sequence_number]
        self._out.append(
            _pack_header(HEADER_LENGTH + len(body), command_id, status, sequence_number) + body
        )

    # --- what the peer sends ------------------------------------------------------------

    def _handle_frame(self, frame: bytes, now: float, events: list[Event]) -> None:
        try:
            pdu = decode(frame)
        except RemoteProtocolError as err:
            self._refuse_broken(err, now, events)
            return
        if pdu.command_id & RESPONSE_BIT:
            self._handle_response(pdu, now, events)
        else:
            self._handle_request(pdu, events)

    def _handle_request(self, pdu: Pdu, events: list[Event]) -> None:
        cid = pdu.command_id
        seq = pdu.sequence_number
        may_receive = self._may_receive
        if cid not in may_receive:
            status = refusal_status(self.role, self.state, cid)
            self._answer(cid, seq, status)
            events.append(ProtocolViolation(cid, seq, status, f"not allowed in {self.state.value}"))
            return
        after = may_receive[cid]
        if cid == CommandId.ENQUIRE_LINK:
            self._queue(EnquireLinkResp(sequence_number=seq))
            return
        if cid == CommandId.UNBIND:
            self._queue(UnbindResp(sequence_number=seq))
            self._close("unbound by peer", events)
            return
        if cid in _NO_RESPONSE:  # outbind, alert_notification
            if after is not None:
                self._set_state(after)
            events.append(RequestReceived(pdu))
            return
        if seq in self._inbound or len(self._inbound) >= self.config.inbound_window:
            status = (
                CommandStatus.ESME_RTHROTTLED
                if seq not in self._inbound
                else CommandStatus.ESME_RSYSERR
            )
            self._answer(cid, seq, status)
            events.append(ProtocolViolation(cid, seq, status, "inbound window exceeded"))
            return
        if cid in _BIND_REQUESTS:
            self._peer_speaks(pdu.interface_version)  # type: ignore[attr-defined]
        self._inbound[seq] = cid
        events.append(RequestReceived(pdu))

    def _handle_response(self, pdu: Pdu, now: float, events: list[Event]) -> None:
        seq = pdu.sequence_number
        entry = self._in_flight.get(seq)
        cid = pdu.command_id
        if entry is None and self._expired:
            late = self._expired.get(seq)
            if late is not None and (
                cid == late.command_id | RESPONSE_BIT or cid == CommandId.GENERIC_NACK
            ):
                del self._expired[seq]
                self.late_responses += 1
                events.append(LateResponse(late, pdu))
                return
        if entry is None or (
            cid != entry[0].command_id | RESPONSE_BIT and cid != CommandId.GENERIC_NACK
        ):
            self.unmatched_responses += 1
            return
        del self._in_flight[seq]
        request = entry[0]
        kind = self._internal.pop(seq, 0)
        if kind == _INTERNAL_ENQUIRE:
            self._enquire_outstanding = False
            return
        if kind == _INTERNAL_UNBIND:
            self._close("unbound", events)
            return
        after = self._may_receive.get(cid)
        if after is not None and not pdu.command_status and cid != CommandId.GENERIC_NACK:
            if request.command_id in _BIND_REQUESTS:
                sc = pdu.tlv(Tag.SC_INTERFACE_VERSION)
                # §5.3.2.25: no sc_interface_version means the MC speaks 3.3 or earlier.
                self._peer_speaks(sc if isinstance(sc, int) else 0x33)
            self._set_state(after)
        events.append(ResponseReceived(request, pdu))
        if self.closed:  # the answer to an unbind sent with send_request
            self._close("unbound", events)
            return
        if self._waiting:
            self._promote(now)

    def _refuse_broken(self, err: RemoteProtocolError, now: float, events: list[Event]) -> None:
        cid, seq = err.command_id, err.sequence_number
        status = err.status
        if cid & RESPONSE_BIT or cid not in PDU_CLASSES:
            if cid not in PDU_CLASSES:
                # An unknown command_id: generic_nack (§3.3). A response we merely cannot
                # read is not answered: a response is never answered.
                self._queue(GenericNack(sequence_number=seq, command_status=status))
            if cid & RESPONSE_BIT:
                # Whatever answered our request, it failed: settle it as a generic_nack.
                nack = GenericNack(sequence_number=seq, command_status=status)
                self._handle_response(nack, now, events)
        else:
            if cid not in self._may_receive:
                status = refusal_status(self.role, self.state, cid)
            self._answer(cid, seq, status)
        events.append(ProtocolViolation(cid, seq, status, str(err)))
        if err.fatal:
            self._close("unreadable PDU", events)

    def _answer(self, cid: int, seq: int, status: int) -> None:
        """Refuse request ``cid`` with ``status``: its own response, else a generic_nack."""
        cls = PDU_CLASSES.get(cid)
        resp_cls = cls.response_class if cls is not None else None
        if resp_cls is None or status == CommandStatus.ESME_RINVCMDID:
            resp_cls = GenericNack
        self._queue(resp_cls(sequence_number=seq, command_status=status))

    def _queue(self, pdu: Pdu) -> None:
        self._out.append(encode(pdu))

    # --- time ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None when nothing is pending."""
        if self.closed:
            return None
        # Asked after every read: the earliest deadline without building a list.
        cfg = self.config
        best: float | None = None
        if self._in_flight:
            best = self._in_flight[next(iter(self._in_flight))][1]
        if self._waiting:
            at = self._waiting[0][1]
            if best is None or at < best:
                best = at
        if self._unbound and cfg.session_init_timeout is not None:
            at = self._created + cfg.session_init_timeout
            if best is None or at < best:
                best = at
        if cfg.inactivity_timeout is not None:
            at = self._last_received + cfg.inactivity_timeout
            if best is None or at < best:
                best = at
        if (
            cfg.enquire_link_interval is not None
            and self.is_bound
            and not self._enquire_outstanding
        ):
            at = self._last_received + cfg.enquire_link_interval
            if best is None or at < best:
                best = at
        return best

    def handle_timer(self, now: float) -> list[Event]:
        """Run every timer due at ``now``; returns what happened."""
        events: list[Event] = []
        if self.state is State.CLOSED:
            return events
        cfg = self.config
        in_flight = self._in_flight
        while in_flight:
            seq = next(iter(in_flight))
            request, deadline = in_flight[seq]
            if deadline > now:
                break
            del in_flight[seq]
            kind = self._internal.pop(seq, 0)
            if kind == _INTERNAL_ENQUIRE:
                self._close("enquire_link unanswered", events)
                return events
            if kind == _INTERNAL_UNBIND:
                self._close("unbind unanswered", events)
                return events
            expired = self._expired
            expired[seq] = request
            if len(expired) > cfg.window + cfg.max_waiting:
                del expired[next(iter(expired))]
            events.append(RequestExpired(request, "response"))
        while self._waiting and self._waiting[0][1] <= now:
            events.append(RequestExpired(self._waiting.popleft()[0], "window"))
        if self._waiting:
            self._promote(now)
        if (
            self.state in _UNBOUND
            and cfg.session_init_timeout is not None
            and now >= self._created + cfg.session_init_timeout
        ):
            self._close("no bind within session_init_timeout", events)
            return events
        if (
            cfg.inactivity_timeout is not None
            and now >= self._last_received + cfg.inactivity_timeout
        ):
            if self.state in _BOUND:
                self._send_internal(Unbind(), _INTERNAL_UNBIND, now)
            self._close("inactivity timeout", events)
            return events
        if (
            cfg.enquire_link_interval is not None
            and self.state in _BOUND
            and not self._enquire_outstanding
            and now >= self._last_received + cfg.enquire_link_interval
        ):
            self._send_internal(EnquireLink(), _INTERNAL_ENQUIRE, now)
            self._enquire_outstanding = True
        return events

    # --- the end ------------------------------------------------------------------------

    def connection_lost(self) -> list[Event]:
        """The transport went away: fail everything pending. Returns the events."""
        events: list[Event] = []
        if self.state is not State.CLOSED:
            self._close("connection lost", events)
        return events

    def _close(self, reason: str, events: list[Event]) -> None:
        self._set_state(State.CLOSED)
        self.close_reason = reason
        for seq, (request, _) in self._in_flight.items():
            if seq not in self._internal:
                events.append(RequestExpired(request, "closed"))
        for request, _, _ in self._waiting:
            events.append(RequestExpired(request, "closed"))
        self._in_flight.clear()
        self._expired.clear()
        self._internal.clear()
        self._waiting.clear()
        self._inbound.clear()
        events.append(SessionClosed(reason))


def _tlvs_of(pdu: Pdu) -> tuple[Tlv, ...]:
    tlvs: tuple[Tlv, ...] = getattr(pdu, "tlvs", ())
    return tlvs


def _without_tlvs(pdu: Pdu) -> Pdu:
    """``pdu`` as a 3.3 peer may receive it: no TLVs (§5.3)."""
    return msgspec.structs.replace(pdu, tlvs=()) if _tlvs_of(pdu) else pdu


_NO_RESPONSE: Final = frozenset({CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION})
#: Requests that never wait for a window slot: they change the session's state.
_UNWINDOWED: Final = _NO_RESPONSE | {CommandId.UNBIND}
#: Requests never sent as encoded bodies: they change the session's state.
_NOT_ENCODED: Final = frozenset(int(c) for c in _UNWINDOWED | _BIND_REQUESTS)
_pack_header = HEADER.pack
