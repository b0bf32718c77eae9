"""The values that flow through the router: frozen structs, never mutated (ARCHITECTURE.md).

Times that outlive the process (submitted, scheduled, expiry, done) are Unix seconds
(wall clock) so that the store can persist them; in-memory deadlines use the loop's
monotonic clock and never leave the process.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from smppcore.constants import MessageState
from smppcore.tlv import Tlv


class Address(msgspec.Struct, frozen=True, gc=False, array_like=True):
    ton: int
    npi: int
    addr: str


class Concat(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """This message is part ``seq`` of ``total`` of one long message (UDH or SAR).

    ``group`` names the long message (account, source, destination and reference), so the
    router can send every part over the same carrier.
    """

    group: str
    total: int
    seq: int


class Message(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One short message accepted from an ESME (one part of a long one), by our id."""

    id: str
    account: str
    source: Address
    destination: Address
    short_message: bytes = b""
    """The octets to send: UDH included when ``esm_class`` has UDHI. Longer than 254
    octets only when the client used message_payload (forwarded the same way)."""
    data_coding: int = 0
    esm_class: int = 0
    protocol_id: int = 0
    service_type: str = ""
    priority: int = 0
    """0 (lowest) .. 3, from priority_flag and the account's default."""
    registered_delivery: int = 0
    tlvs: tuple[Tlv, ...] = ()
    """Optional parameters forwarded upstream as they came (SAR, ports, references...)."""
    concat: Concat | None = None
    submitted_at: float = 0.0
    schedule_at: float | None = None
    expires_at: float | None = None
    attempts: int = 0
    """Upstream submits tried so far (the retry budget counts these)."""
    tried: tuple[str, ...] = ()
    """Carriers that refused or failed this message, in order."""
    payload_tlv: bool = False
    """The client sent the text in message_payload: forward it that way."""
    client_id: str = ""
    """The id the client was given, when it differs from ``id`` (each destination of a
    submit_multi is its own message; the client knows them all by one id)."""
    via: str = ""
    """Where it came in: "" over SMPP (or the admin API), "http" through the application
    HTTP API (its JSON, Kannel and Jasmin endpoints): only those may carry a callback
    target (in a cluster, only their reports look for one in the shared records)."""

    @property
    def reported_id(self) -> str:
        return self.client_id or self.id


class RouteDecision(msgspec.Struct, frozen=True, gc=False):
    """Send over ``carrier`` at ``price``; ``fallbacks`` in order if it fails."""

    carrier: str
    price: Decimal
    fallbacks: tuple[str, ...] = ()


class NoRoute(msgspec.Struct, frozen=True, gc=False):
    reason: str


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """The carrier took the message and gave its own id."""

    carrier: str
    carrier_message_id: str


class Rejected(msgspec.Struct, frozen=True, gc=False):
    """The carrier refused the message; ``retryable`` for temporary statuses."""

    carrier: str
    status: int
    retryable: bool


class Failed(msgspec.Struct, frozen=True, gc=False):
    """No answer: the bind dropped or the response timed out (retryable elsewhere)."""

    carrier: str
    reason: str


SubmitOutcome = Accepted | Rejected | Failed


class Refusal(msgspec.Struct, frozen=True, gc=False):
    """Why a message ends before any carrier took it (refused by one for good, no route,
    its retries or its validity used up): what Kannel calls the SMSC's NACK (dlr-mask 16)
    and Jasmin a level-1 receipt with an error."""

    state: MessageState
    """Its final state (REJECTED, UNDELIVERABLE, EXPIRED)."""
    carrier: str
    """The carrier that refused it last ("" when none answered)."""
    status: int
    """That carrier's command_status; 0 when no carrier refused it (``reason`` says why)."""
    reason: str
    """rejected, retries exhausted, expired, no route, long message failed."""


class DeliveryReport(msgspec.Struct, frozen=True, gc=False):
    """The fate of one of our messages, as reported by a carrier (or by us)."""

    message_id: str
    """Our id."""
    state: MessageState
    error: int = 0
    done_at: float = 0.0
    carrier: str = ""
    carrier_message_id: str = ""


class StoredMessage(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A message as the store keeps it: the message, where it went and what became of it."""

    message: Message
    state: MessageState = MessageState.ENROUTE
    error: int = 0
    carrier: str = ""
    carrier_message_id: str = ""
    done_at: float | None = None
    owner: str = ""
    """The node that holds it (accepted it, or took it over); "" when the store has one
    owner only (SQLite)."""
