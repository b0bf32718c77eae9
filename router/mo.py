"""Mobile-originated messages: a carrier's deliver_sm that is not a receipt goes to the
account the carrier names (``mo_account``), through the :class:`router.ports.ReportSink`.

``ack_after: store`` (``respond`` given): the carrier is answered once the message reached
the account or is held in the store; ``enqueue``: at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial

from router.config import CarrierConfig
from router.finals import RETRY_LATER, ROK, answer_ok
from router.metrics import RouterMetrics
from router.model import Address, Message
from router.ports import ReportSink
from router.upstream import Respond
from smppcore.pdu import DeliverSm
from smppcore.tlv import Tag


def mo_message(pdu: DeliverSm, account: str, now: float) -> Message:
    """The :class:`Message` a carrier's MO ``pdu`` is, for ``account`` (no id: the sink
    gives it one), received at ``now`` (wall time)."""
    payload = pdu.tlv(Tag.MESSAGE_PAYLOAD)
    return Message(
        id="",
        account=account,
        source=Address(pdu.source_addr_ton, pdu.source_addr_npi, pdu.source_addr),
        destination=Address(pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr),
        short_message=pdu.short_message or (payload if isinstance(payload, bytes) else b""),
        data_coding=pdu.data_coding,
        esm_class=pdu.esm_class,
        protocol_id=pdu.protocol_id,
        submitted_at=now,
    )


class MobileOriginated:
    """Routes MO to the carrier's ``mo_account``. ``carriers`` is the live map of carrier
    configs (a reload changes it in place)."""

    def __init__(
        self,
        *,
        carriers: Mapping[str, CarrierConfig],
        sink: ReportSink,
        metrics: RouterMetrics,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.carriers = carriers
        self.sink = sink
        self.metrics = metrics
        self.wall = wall

    def deliver(self, carrier: str, pdu: DeliverSm, respond: Respond | None) -> int | None:
        """An MO message from ``carrier``: the status to answer it with now, or None when
        ``respond`` will be called (once delivered to the account or held in the store)."""
        account = self.carriers[carrier].mo_account
        if account is None:
            self.metrics.event("mo_unrouted", carrier)
            return ROK
        msg = mo_message(pdu, account, self.wall())
        self.metrics.event("mo", carrier)
        settled = None if respond is None else partial(answer_ok, respond)
        if self.sink.mobile_originated(account, msg, settled) is False:
            # Neither sent nor held (the store is full or cannot write): the carrier
            # keeps it and sends it again later, rather than our memory.
            self.metrics.event("mo_refused", carrier)
            return RETRY_LATER
        return ROK if respond is None else None
