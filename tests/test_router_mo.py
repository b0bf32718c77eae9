"""Mobile-originated messages from carriers (router.mo): to the carrier's ``mo_account``
through the sink; answered at once (``enqueue``) or once delivered or held (``store``);
refused with a temporary error when it can be neither; counted when no account takes it.
"""

from __future__ import annotations

import pytest
from loops import Run
from router_parts import RETRY_LATER, ROK, T0, Answers, Sink, carrier

from router.metrics import RouterMetrics
from router.mo import MobileOriginated, mo_message
from router.model import Address
from smppcore.constants import EsmClass
from smppcore.pdu import DeliverSm
from smppcore.tlv import Tag, tlv

MO = DeliverSm(
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr="447700900123",
    dest_addr_ton=0,
    dest_addr_npi=1,
    destination_addr="1234",
    esm_class=int(EsmClass.DEFAULT),
    data_coding=8,
    protocol_id=0,
    short_message="héllo".encode("utf-16-be"),
)


def mo(sink: Sink, mo_account: str | None = "acme") -> MobileOriginated:
    carriers = {"uk": carrier("uk", mo_account=mo_account)}
    return MobileOriginated(
        carriers=carriers, sink=sink, metrics=RouterMetrics(["uk"]), wall=lambda: T0
    )


def test_an_mo_pdu_becomes_a_message_for_the_account() -> None:
    msg = mo_message(MO, "acme", T0)
    assert msg.account == "acme"
    assert msg.id == ""
    assert msg.source == Address(1, 1, "447700900123")
    assert msg.destination == Address(0, 1, "1234")
    assert (msg.short_message, msg.data_coding, msg.submitted_at) == (
        MO.short_message,
        8,
        T0,
    )


def test_text_in_message_payload_is_carried() -> None:
    pdu = DeliverSm(
        source_addr="447700900123",
        destination_addr="1234",
        tlvs=(tlv(Tag.MESSAGE_PAYLOAD, b"a long text"),),
    )
    assert mo_message(pdu, "acme", T0).short_message == b"a long text"


def test_enqueue_mode_answers_at_once() -> None:
    sink = Sink()
    m = mo(sink)
    assert m.deliver("uk", MO, None) == ROK
    [(account, msg)] = sink.mo
    assert account == "acme"
    assert msg.short_message == MO.short_message
    assert m.metrics.events[("mo", "uk")] == 1


@pytest.mark.parametrize(("held", "status"), [(True, ROK), (False, RETRY_LATER)])
def test_store_mode_answers_once_delivered_or_held(run: Run, held: bool, status: int) -> None:
    async def main() -> None:
        sink = Sink(settle=None)
        m = mo(sink)
        answers = Answers()
        assert m.deliver("uk", MO, answers) is None
        assert answers.statuses == []
        sink.pending.pop()(held)
        assert answers.statuses == [status]

    run(main())


def test_an_mo_that_can_be_neither_sent_nor_held_is_refused_for_now() -> None:
    m = mo(Sink(mo_accepts=False))
    assert m.deliver("uk", MO, None) == RETRY_LATER
    assert m.metrics.events[("mo_refused", "uk")] == 1


def test_an_mo_from_a_carrier_with_no_account_is_counted_and_answered() -> None:
    sink = Sink()
    m = mo(sink, mo_account=None)
    assert m.deliver("uk", MO, Answers()) == ROK
    assert sink.mo == []
    assert m.metrics.events[("mo_unrouted", "uk")] == 1
