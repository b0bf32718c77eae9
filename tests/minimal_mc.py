"""A minimal message centre for tests, built only from :mod:`smppcore.aio`.

It answers binds from a table of accounts, answers submit_sm with increasing message ids,
pushes delivery receipts (on request, or by itself when a submit asks for one), and
records everything it sees. Waiting is done on events: :meth:`MinimalMC.wait_for` wakes up
whenever the MC records something and checks a predicate, under a deadline.

Also here: the two event loops every asyncio test runs on, and small wire helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from smppcore.aio import Connection, Handler, Listener, start_server
from smppcore.codec import FrameBuffer, decode, encode
from smppcore.constants import CommandStatus, EsmClass, MessageState
from smppcore.pdu import (
    BIND_CLASSES,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DeliverSm,
    Pdu,
    SubmitSm,
    SubmitSmResp,
)
from smppcore.receipt import Receipt, format_receipt
from smppcore.session import ProtocolViolation, SessionConfig
from smppcore.text import decode_text, encode_text
from smppcore.tlv import Tag, tlv

#: The deadline of every wait in these tests (seconds); nothing should come near it.
DEADLINE = 5.0

BIND_MODES: dict[type[Pdu], str] = {
    BindTransmitter: "tx",
    BindReceiver: "rx",
    BindTransceiver: "trx",
}


def wire(*pdus: Pdu) -> bytes:
    """The bytes of ``pdus``, back to back."""
    return b"".join(encode(p) for p in pdus)


def frames(data: bytes) -> list[Pdu]:
    """Every PDU in ``data`` (which must hold whole PDUs only)."""
    buf = FrameBuffer()
    out = [decode(f) for f in buf.feed(data)]
    assert buf.error is None, buf.error
    assert buf.buffered == 0, f"{buf.buffered} octets of an incomplete PDU"
    return out


class MinimalMC:
    """A tiny SMSC on loopback port 0. Use as ``async with MinimalMC(...) as mc``."""

    def __init__(
        self,
        accounts: Mapping[str, str] | None = None,
        *,
        config: SessionConfig | None = None,
        auto_receipt: bool = True,
        system_id: str = "minimal-mc",
    ) -> None:
        self.accounts = dict(accounts if accounts is not None else {"esme": "secret"})
        self.config = config or SessionConfig(
            enquire_link_interval=None, inactivity_timeout=None, session_init_timeout=None
        )
        self.auto_receipt = auto_receipt
        self.system_id = system_id
        #: While True, submit_sm is recorded but not answered until :meth:`release`.
        self.hold = False
        self.host = "127.0.0.1"
        self.port = 0
        self.connections: list[Connection] = []
        self.binds: list[Pdu] = []  # every bind request, accepted or not
        self.submits: list[SubmitSm] = []
        self.message_ids: list[str] = []  # answered to submits, in order
        self.receipt_acks: list[Pdu] = []  # deliver_sm_resp (or generic_nack) to our receipts
        self.receipt_errors: list[BaseException] = []
        self.violations: list[ProtocolViolation] = []
        self.closed_reasons: list[str] = []
        self._held: list[tuple[Connection, SubmitSm]] = []
        self._pending_receipts: dict[str, list[DeliverSm]] = {}
        self._next_id = 1
        self._server: Listener | None = None
        self._changed: asyncio.Event | None = None

    # --- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> MinimalMC:
        self._changed = asyncio.Event()
        self._server = await start_server(
            lambda conn: _MCHandler(self), "127.0.0.1", 0, config=self.config
        )
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and close every connection (no unbind)."""
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.close()
        async with asyncio.timeout(DEADLINE):
            for conn in self.connections:
                await conn.wait_closed()
            if self._server is not None:
                await self._server.wait_closed()

    # --- what tests look at -------------------------------------------------------------

    def bound(self, system_id: str | None = None) -> list[Connection]:
        """The connections bound now (of ``system_id`` when given)."""
        return [
            c
            for c in self.connections
            if c.bound and (system_id is None or c.context["system_id"] == system_id)
        ]

    def texts(self) -> list[str]:
        """The short messages received, decoded by their data_coding."""
        return [decode_text(s.short_message, s.data_coding) for s in self.submits]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Wait until ``predicate()`` holds; it is checked whenever the MC records something."""
        assert self._changed is not None
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # --- what tests make it do ----------------------------------------------------------

    def release(self) -> int:
        """Answer the submits held while :attr:`hold` was True; returns how many."""
        held, self._held = self._held, []
        for conn, pdu in held:
            self._answer_submit(conn, pdu)
        return len(held)

    def push_receipt(
        self,
        conn: Connection,
        message_id: str,
        *,
        state: MessageState = MessageState.DELIVERED,
        source_addr: str = "",
        destination_addr: str = "",
        text: str = "",
    ) -> asyncio.Future[Pdu]:
        """Send a delivery receipt for ``message_id`` over ``conn``; the future gets the
        ESME's answer (it is also recorded in :attr:`receipt_acks`)."""
        pdu = receipt_pdu(
            message_id,
            state=state,
            source_addr=source_addr,
            destination_addr=destination_addr,
            text=text,
        )
        fut = conn.send_request(pdu)
        fut.add_done_callback(self._receipt_done)
        return fut

    # --- internals ----------------------------------------------------------------------

    def _receipt_done(self, fut: asyncio.Future[Pdu]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.receipt_errors.append(exc)
        else:
            self.receipt_acks.append(fut.result())
        self.notify()

    def _answer_submit(self, conn: Connection, pdu: SubmitSm) -> None:
        message_id = str(self._next_id)
        self._next_id += 1
        self.message_ids.append(message_id)
        conn.respond(SubmitSmResp(sequence_number=pdu.sequence_number, message_id=message_id))
        if self.auto_receipt and pdu.registered_delivery & 0x01:
            text = decode_text(pdu.short_message, pdu.data_coding)
            receipt = receipt_pdu(
                message_id,
                source_addr=pdu.destination_addr,
                destination_addr=pdu.source_addr,
                text=text,
            )
            self._deliver(conn.context["system_id"], receipt, prefer=conn)
        self.notify()

    def _deliver(self, system_id: str, pdu: DeliverSm, *, prefer: Connection) -> None:
        """Send over ``prefer`` when it may receive, else any receiving bind of the account,
        else keep it until one binds."""
        targets = [prefer] if prefer.session.can_deliver else []
        targets += [c for c in self.bound(system_id) if c.session.can_deliver]
        if not targets:
            self._pending_receipts.setdefault(system_id, []).append(pdu)
            return
        targets[0].send_request(pdu).add_done_callback(self._receipt_done)

    def _bound(self, conn: Connection) -> None:
        system_id = conn.context["system_id"]
        if conn.session.can_deliver:
            for pdu in self._pending_receipts.pop(system_id, []):
                conn.send_request(pdu).add_done_callback(self._receipt_done)


def receipt_pdu(
    message_id: str,
    *,
    state: MessageState = MessageState.DELIVERED,
    source_addr: str = "",
    destination_addr: str = "",
    text: str = "",
) -> DeliverSm:
    """A deliver_sm receipt in the Appendix B form, with receipted_message_id and
    message_state TLVs."""
    now = datetime.now(UTC)
    body = format_receipt(
        Receipt(
            message_id=message_id,
            state=state,
            sub=1,
            dlvrd=1 if state == MessageState.DELIVERED else 0,
            submit_date=now,
            done_date=now,
            text=text,
        )
    )
    return DeliverSm(
        source_addr=source_addr,
        destination_addr=destination_addr,
        esm_class=EsmClass.DELIVERY_RECEIPT,
        short_message=encode_text(body, 0, errors="replace"),
        tlvs=(
            tlv(Tag.RECEIPTED_MESSAGE_ID, message_id),
            tlv(Tag.MESSAGE_STATE, int(state)),
        ),
    )


class _MCHandler(Handler):
    """One per connection: the MC's side of it."""

    def __init__(self, mc: MinimalMC) -> None:
        self.mc = mc

    def connection_made(self, conn: Connection) -> None:
        conn.context = {"system_id": None, "mode": None}
        self.mc.connections.append(conn)
        self.mc.notify()

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        mc = self.mc
        if isinstance(pdu, BIND_CLASSES):
            mc.binds.append(pdu)
            system_id: str = pdu.system_id  # type: ignore[attr-defined]
            password: str = pdu.password  # type: ignore[attr-defined]
            assert pdu.response_class is not None
            if system_id not in mc.accounts:
                status = CommandStatus.ESME_RINVSYSID
            elif mc.accounts[system_id] != password:
                status = CommandStatus.ESME_RINVPASWD
            else:
                status = CommandStatus.ESME_ROK
            if status:
                conn.respond(
                    pdu.response_class(sequence_number=pdu.sequence_number, command_status=status)
                )
            else:
                conn.context = {"system_id": system_id, "mode": BIND_MODES[type(pdu)]}
                conn.respond(
                    pdu.response_class(  # type: ignore[call-arg]
                        sequence_number=pdu.sequence_number, system_id=mc.system_id
                    )
                )
                mc._bound(conn)
            mc.notify()
        elif isinstance(pdu, SubmitSm):
            mc.submits.append(pdu)
            if mc.hold:
                mc._held.append((conn, pdu))
                mc.notify()
            else:
                mc._answer_submit(conn, pdu)
        else:
            super().request_received(conn, pdu)

    def protocol_violation(self, conn: Connection, event: ProtocolViolation) -> None:
        self.mc.violations.append(event)
        self.mc.notify()

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.mc.closed_reasons.append(reason)
        self.mc.notify()
