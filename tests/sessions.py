"""Helpers for the session tests: two in-memory sessions wired back to back, valid sample
PDUs, and a way to put a session into any :class:`State` through the public API only.

Nothing here reaches into a Session: bytes go through ``receive_data``/``data_to_send``,
requests through ``send_request``/``send_response``/``unbind``, time through ``now``.
"""

from __future__ import annotations

import msgspec

from smppcore.codec import FrameBuffer, decode, encode
from smppcore.constants import CommandId
from smppcore.pdu import (
    PDU_CLASSES,
    AlertNotification,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    Outbind,
    Pdu,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
)
from smppcore.session import (
    Event,
    RequestReceived,
    Role,
    Session,
    SessionConfig,
    State,
)

BIND_FOR: dict[State, type[Pdu]] = {
    State.BOUND_TX: BindTransmitter,
    State.BOUND_RX: BindReceiver,
    State.BOUND_TRX: BindTransceiver,
}

#: One valid value of every PDU type (sequence_number 0: the session allocates one).
SAMPLES: dict[int, Pdu] = {cid: cls() for cid, cls in PDU_CLASSES.items()}
SAMPLES.update(
    {
        CommandId.BIND_TRANSMITTER: BindTransmitter(system_id="esme", password="secret"),
        CommandId.BIND_RECEIVER: BindReceiver(system_id="esme", password="secret"),
        CommandId.BIND_TRANSCEIVER: BindTransceiver(system_id="esme", password="secret"),
        CommandId.OUTBIND: Outbind(system_id="smsc", password="secret"),
        CommandId.SUBMIT_SM: SubmitSm(
            source_addr="Shop", destination_addr="447700900001", short_message=b"hello"
        ),
        CommandId.SUBMIT_SM_RESP: SubmitSmResp(message_id="m-1"),
        CommandId.DELIVER_SM: DeliverSm(
            source_addr="447700900001", destination_addr="Shop", short_message=b"hi"
        ),
        CommandId.DELIVER_SM_RESP: DeliverSmResp(),
        CommandId.DATA_SM: DataSm(source_addr="Shop", destination_addr="447700900001"),
        CommandId.DATA_SM_RESP: DataSmResp(message_id="m-2"),
        CommandId.SUBMIT_MULTI: SubmitMulti(
            source_addr="Shop",
            dest_addresses=(SmeAddress(1, 1, "447700900001"), SmeAddress(1, 1, "447700900002")),
            short_message=b"hello all",
        ),
        CommandId.SUBMIT_MULTI_RESP: SubmitMultiResp(message_id="m-3"),
        CommandId.QUERY_SM: QuerySm(message_id="m-1", source_addr="Shop"),
        CommandId.QUERY_SM_RESP: QuerySmResp(message_id="m-1", message_state=2),
        CommandId.CANCEL_SM: CancelSm(message_id="m-1", source_addr="Shop"),
        CommandId.REPLACE_SM: ReplaceSm(message_id="m-1", source_addr="Shop", short_message=b"x"),
        CommandId.ALERT_NOTIFICATION: AlertNotification(
            source_addr="447700900001", esme_addr="Shop"
        ),
    }
)
for _pdu in SAMPLES.values():
    encode(_pdu)  # every sample must be valid on the wire


def sample(command_id: int, sequence_number: int = 0, command_status: int = 0) -> Pdu:
    """A valid PDU of ``command_id`` with the given header values."""
    return msgspec.structs.replace(
        SAMPLES[command_id], sequence_number=sequence_number, command_status=command_status
    )


def wire(data: bytes) -> list[Pdu]:
    """The PDUs in ``data``, which must hold whole, valid PDUs and nothing else."""
    frames = FrameBuffer()
    out = [decode(frame) for frame in frames.feed(data)]
    assert frames.error is None, frames.error
    assert frames.buffered == 0, f"{frames.buffered} octets of an incomplete PDU"
    return out


def side(role: Role) -> str:
    return "esme" if role is Role.ESME else "mc"


class Pair:
    """An ESME session and an MC session talking over an in-memory wire.

    ``to_mc`` and ``to_esme`` record every PDU that crossed the wire, decoded.
    """

    def __init__(
        self,
        now: float = 0.0,
        esme_config: SessionConfig | None = None,
        mc_config: SessionConfig | None = None,
    ) -> None:
        self.esme = Session(Role.ESME, now, esme_config)
        self.mc = Session(Role.MC, now, mc_config)
        self.to_mc: list[Pdu] = []
        self.to_esme: list[Pdu] = []

    def of(self, role: Role) -> Session:
        return self.esme if role is Role.ESME else self.mc

    def peer_of(self, role: Role) -> Session:
        return self.mc if role is Role.ESME else self.esme

    def pump(self, now: float = 0.0) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until both sides are quiet: (ESME events, MC events)."""
        esme_events: list[Event] = []
        mc_events: list[Event] = []
        while True:
            a = self.esme.data_to_send()
            b = self.mc.data_to_send()
            if not a and not b:
                return esme_events, mc_events
            if a:
                self.to_mc += wire(a)
                mc_events += self.mc.receive_data(a, now)
            if b:
                self.to_esme += wire(b)
                esme_events += self.esme.receive_data(b, now)

    def bind(
        self,
        state: State = State.BOUND_TRX,
        now: float = 0.0,
        *,
        status: int = 0,
        interface_version: int = 0x34,
    ) -> list[Event]:
        """The ESME binds as ``state`` needs; the MC's application answers with ``status``.
        Returns the ESME's events (its ResponseReceived)."""
        request = msgspec.structs.replace(
            SAMPLES[BIND_FOR[state].command_id], interface_version=interface_version
        )
        self.esme.send_request(request, now)
        _, mc_events = self.pump(now)
        (received,) = mc_events
        assert isinstance(received, RequestReceived)
        resp_cls = received.pdu.response_class
        assert resp_cls is not None
        self.mc.send_response(
            resp_cls(
                sequence_number=received.pdu.sequence_number,
                command_status=status,
                system_id="" if status else "smsc",
            )
        )
        esme_events, _ = self.pump(now)
        return esme_events


def reach(
    role: Role,
    state: State,
    now: float = 0.0,
    pair: Pair | None = None,
    *,
    check: bool = True,
) -> Pair:
    """A pair whose ``role`` side is in ``state``, reached through the public API only.

    Its output is flushed (nothing the peer has not seen is left queued), except that
    UNBINDING leaves the unbind on the wire undelivered (delivering it would end the
    session at once). ``check=False`` takes the same steps without insisting on the result.
    """
    pair = pair or Pair(now)
    me = pair.of(role)
    if state is State.OUTBOUND:
        # §4.1.7: the MC sends outbind; the ESME answers with a bind later.
        pair.mc.send_request(SAMPLES[CommandId.OUTBIND], now)
        pair.pump(now)
    elif state in BIND_FOR:
        pair.bind(state, now)
    elif state is State.UNBINDING:
        pair.bind(State.BOUND_TRX, now)
        me.unbind(now)
        me.data_to_send()
    elif state is State.CLOSED:
        pair.bind(State.BOUND_TRX, now)
        me.unbind(now)
        pair.pump(now)
    assert not check or me.state is state, (
        f"{role.value} reached {me.state.value}, not {state.value}"
    )
    return pair
