"""The small interfaces between the router and the rest (ARCHITECTURE.md: smsc implements
what the router needs; the router implements Intake). A multi-node deployment adds
backends for these (Redis), not a rewrite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from router.model import DeliveryReport, Message, StoredMessage

#: Called with ESME_ROK once a message is accepted (queued, or durably stored in
#: ``ack_after: store`` mode), or with the status refusing it (ESME_RMSGQFUL...).
AcceptCallback = Callable[[int], None]


class Intake(Protocol):
    """Where the ESME-facing server hands accepted messages to the router."""

    def submit(self, message: Message, done: AcceptCallback) -> None:
        """Take ``message``; call ``done(status)`` exactly once."""
        ...

    def cancel(self, message_id: str) -> bool:
        """Drop a message not yet sent upstream (scheduled or queued) and finish it as
        DELETED (stored, reported to the sink); True if it was."""
        ...

    def replace(self, message: Message) -> bool:
        """Swap a message not yet sent upstream for a new version; True if it was."""
        ...


#: Called once a delivery to a client is settled: True when the client acknowledged it,
#: or it is durably held for the account, or nothing was to be sent; False when it could
#: be neither delivered nor stored.
SettledCallback = Callable[[bool], None]


class ReportSink(Protocol):
    """Where the router sends final outcomes and MO: to the owning account's binds."""

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        """Deliver a receipt for ``stored`` (when its registered_delivery asks for one);
        ``settled(ok)`` once it is delivered, durably held, or not wanted."""
        ...

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        """Deliver an MO message that a carrier routed to ``account``: sent, or held for
        the account; ``settled(ok)`` once it is delivered or durably held. False: neither
        could be done now (the store refuses to hold more); the carrier's deliver_sm is
        then answered ESME_RX_T_APPN, to be sent again."""
        ...
