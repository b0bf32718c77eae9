"""What a valid message is: the one place that admits a submit for an account and builds
the router's :class:`~router.model.Message`, whichever door it came in by (SMPP in
smsc/server.py, HTTP in smsc/http_api.py).

Admission spends the account's one token bucket (shared by its SMPP binds and its HTTP
requests) and refuses a submit that asks for a receipt while the account's held receipts
are at ``max_held``. Building applies the account's default priority, the default
validity, and refuses a priority over 3, an empty destination and a validity already
past — each refusal a :class:`InvalidMessage` carrying the SMPP status and the field it
is about (the HTTP API names the field, the SMPP server answers the status).
"""

from __future__ import annotations

from collections.abc import Sequence

from router.model import Address, Concat, Message
from smppcore.constants import CommandStatus, EsmClass
from smppcore.errors import RemoteProtocolError
from smppcore.segment import parse_udh
from smppcore.tlv import Tag, Tlv, find_tlv
from smsc.accounts import AccountState
from smsc.delivery import Delivery

_S = CommandStatus
_UDHI = int(EsmClass.UDHI)


class InvalidMessage(RemoteProtocolError):
    """A submit that is not a valid message: ``status`` to answer over SMPP, ``field``
    (the HTTP API's name for what is wrong) and the reason."""

    def __init__(self, reason: str, *, status: int, field: str) -> None:
        super().__init__(reason, status=status)
        self.field = field
        self.reason = reason


def admit(
    state: AccountState, delivery: Delivery, registered_delivery: int, now: float, n: int = 1
) -> int:
    """ESME_ROK when the account may submit ``n`` messages now (its bucket's tokens are
    then spent), else the refusal: ESME_RMSGQFUL (its held receipts are at max_held and
    these ask for one) or ESME_RTHROTTLED (over its throughput). ``now``: monotonic."""
    if delivery.asks_receipt(registered_delivery) and delivery.refuses_receipts(state.system_id):
        return _S.ESME_RMSGQFUL
    bucket = state.bucket
    if bucket is not None and not bucket.take(now, n):
        return _S.ESME_RTHROTTLED
    return _S.ESME_ROK


def retry_after(state: AccountState, now: float, n: int = 1) -> float:
    """Seconds until the account's bucket has ``n`` tokens (0: no limit, or now)."""
    bucket = state.bucket
    return 0.0 if bucket is None else bucket.delay(now, min(float(n), bucket.burst))


def build_message(
    state: AccountState,
    *,
    msg_id: str,
    source: Address,
    destination: Address,
    short_message: bytes,
    data_coding: int,
    now: float,
    default_validity: float,
    esm_class: int = 0,
    protocol_id: int = 0,
    service_type: str = "",
    priority: int = 0,
    registered_delivery: int = 0,
    tlvs: Sequence[Tlv] = (),
    schedule_at: float | None = None,
    expires_at: float | None = None,
    payload_tlv: bool = False,
    client_id: str = "",
    concat: Concat | None = None,
    via: str = "",
) -> Message:
    """The router's Message for one submit (``now``: wall clock, Unix seconds). The
    long message it belongs to is read from its UDH or SAR TLVs unless ``concat`` is
    given. InvalidMessage when it is not a valid message."""
    if not destination.addr:
        raise InvalidMessage("no destination", status=_S.ESME_RINVDSTADR, field="to")
    if priority > 3 or priority < 0:
        raise InvalidMessage("priority over 3", status=_S.ESME_RINVPRTFLG, field="priority")
    if expires_at is not None and expires_at <= now:
        raise InvalidMessage("validity already past", status=_S.ESME_RINVEXPIRY, field="validity")
    if expires_at is None:
        expires_at = now + default_validity
    if concat is None and (tlvs or esm_class & _UDHI):
        concat = concat_of(
            state.system_id, source.addr, destination.addr, esm_class, short_message, tlvs
        )
    passthrough = tuple(t for t in tlvs if t.tag != Tag.MESSAGE_PAYLOAD) if tlvs else ()
    return Message(
        id=msg_id,
        client_id=client_id,
        account=state.system_id,
        source=source,
        destination=destination,
        short_message=short_message,
        data_coding=data_coding,
        esm_class=esm_class,
        protocol_id=protocol_id,
        service_type=service_type,
        priority=min(3, priority + state.account.default_priority),
        registered_delivery=registered_delivery,
        tlvs=passthrough,
        concat=concat,
        submitted_at=now,
        schedule_at=schedule_at,
        expires_at=expires_at,
        payload_tlv=payload_tlv,
        via=via,
    )


_SAR_TAGS = (Tag.SAR_MSG_REF_NUM, Tag.SAR_TOTAL_SEGMENTS, Tag.SAR_SEGMENT_SEQNUM)


def _typed(tlvs: Sequence[Tlv], tag: int) -> object:
    item = find_tlv(tuple(tlvs), tag)
    return None if item is None else item.typed()


def concat_of(
    account: str,
    source: str,
    destination: str,
    esm_class: int,
    short_message: bytes,
    tlvs: Sequence[Tlv],
) -> Concat | None:
    """The long message a part belongs to (UDH or SAR), for same-carrier routing."""
    if esm_class & _UDHI:
        info = parse_udh(short_message)[0]
        if info is not None and info.total > 1:
            return Concat(f"{account}:{source}:{destination}:u{info.ref}", info.total, info.seq)
        return None
    if not tlvs:
        return None
    ref, total, seq = (_typed(tlvs, tag) for tag in _SAR_TAGS)
    if isinstance(ref, int) and isinstance(total, int) and isinstance(seq, int) and total > 1:
        return Concat(f"{account}:{source}:{destination}:s{ref}", total, seq)
    return None
