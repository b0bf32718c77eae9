"""Receipts and MO to the owning account's binds (router.ports.ReportSink).

Sent over any receive-capable bind of the account (never another account's), round
robin. With none bound — or when a delivery fails (bind lost, no answer, a temporary
refusal) — the deliver_sm is held durably in the store and sent, in order, when a
receive-capable bind of the account appears; held items expire by the account's
``receipt_ttl``.

``settled`` (optional, on ``report``, ``mobile_originated`` and ``deliver``) is called once
with True when the client acknowledged the deliver_sm, or it is committed to the store
(held), or nothing was to be sent; False when it could be neither delivered nor stored.
The router answers a carrier's deliver_sm on it (``ack_after: store``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache, partial

from router.model import DeliveryReport, Message, StoredMessage
from router.ports import SettledCallback
from router.store import Store
from smppcore.aio import Connection
from smppcore.codec import HEADER, encode
from smppcore.constants import (
    HEADER_LENGTH,
    TEMPORARY_STATUSES,
    CommandId,
    MessageState,
    RegisteredDelivery,
)
from smppcore.errors import SmppError
from smppcore.pdu import DeliverSm, Pdu
from smppcore.receipt import is_final
from smppcore.receipt_pdu import message_preview, receipt_sm_body
from smsc.accounts import AccountState

log = logging.getLogger(__name__)

_INTERMEDIATE = int(RegisteredDelivery.INTERMEDIATE)
_RECEIPT_MASK = int(RegisteredDelivery.RECEIPT_MASK)
_FAILURE_ONLY = int(RegisteredDelivery.FAILURE_ONLY)
_DRAIN_BATCH = 500
_DELIVER_SM = int(CommandId.DELIVER_SM)
#: A deliver_sm to send: a struct (a template: sequence 0), or its encoded body (``bytes``,
#: what follows the header: receipts, and held items read back from the store).
Item = Pdu | bytes
#: Deliveries kept in memory behind a drain, per account; past it they join the store too.
_MAX_BEHIND = 10_000


def wants_receipt(registered_delivery: int, state: MessageState) -> bool:
    """Does registered_delivery (§5.2.17) ask for a receipt of ``state``?"""
    if not is_final(state):
        return bool(registered_delivery & _INTERMEDIATE)
    kind = registered_delivery & _RECEIPT_MASK
    if kind == 1:
        return True
    return kind == _FAILURE_ONLY and state != MessageState.DELIVERED


def _utc(ts: float) -> datetime:
    """The receipt's dates, which show minutes: whole seconds are enough (and cached)."""
    return _utc_second(int(ts))


@lru_cache(maxsize=1024)
def _utc_second(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Delivery:
    """Implements ReportSink for smsc."""

    def __init__(
        self,
        accounts: dict[str, AccountState],
        store: Store,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.wall = wall
        self._draining: set[str] = set()
        self._holds: dict[str, int] = {}  # items held so far, per account (see _drain)
        #: Deliveries that came while the account's held items were being sent: they go
        #: right after them, in order, without a trip through the store.
        self._behind: dict[str, list[tuple[Item, float, SettledCallback | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.held = 0
        self.expired = 0
        #: Deliveries neither sent nor held (the store refused them) with nobody to answer
        #: a temporary error to, per account (metrics; each logged).
        self.dropped: dict[str, int] = {}

    @property
    def held_by_account(self) -> dict[str, int]:
        """Deliveries held so far (since start), per account (metrics)."""
        return self._holds

    # --- ReportSink -----------------------------------------------------------------------

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        msg = stored.message
        if not wants_receipt(msg.registered_delivery, report.state):
            if settled is not None:
                settled(True)
            return
        done = report.done_at or self.wall()
        source, destination = msg.source, msg.destination
        body = receipt_sm_body(
            msg.reported_id,
            report.state,
            report.error,
            _utc(msg.submitted_at or done),
            _utc(done),
            source.ton,
            source.npi,
            source.addr,
            destination.ton,
            destination.npi,
            destination.addr,
            message_preview(msg.short_message, msg.esm_class, msg.data_coding),
            not is_final(report.state),
        )
        if not self.deliver(msg.account, body, settled):
            if settled is not None:
                settled(False)  # the carrier is answered a temporary error and resends it
            else:
                self._dropped(msg.account, msg.reported_id)

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool:
        pdu = DeliverSm(
            source_addr_ton=message.source.ton,
            source_addr_npi=message.source.npi,
            source_addr=message.source.addr,
            dest_addr_ton=message.destination.ton,
            dest_addr_npi=message.destination.npi,
            destination_addr=message.destination.addr,
            esm_class=message.esm_class & 0x40,  # keep UDHI only
            protocol_id=message.protocol_id,
            data_coding=message.data_coding,
            short_message=message.short_message,
        )
        return self.deliver(account, pdu, settled)

    # --- sending ------------------------------------------------------------------------

    def deliver(self, account: str, pdu: Item, settled: SettledCallback | None = None) -> bool:
        """Send ``pdu`` (a struct or an encoded body) to ``account`` now, or hold it;
        ``settled(ok)`` once it is delivered or durably held. False when it could be
        neither (the store refused to hold it: its queue is full or it cannot write):
        ``settled`` is not called, and the sender should be answered a temporary error."""
        state = self.accounts.get(account)
        if state is None:
            log.warning("deliver_sm for unknown account %s dropped", account)
            if settled is not None:
                settled(True)  # nowhere to go, now or later
            return True
        expires = self.wall() + state.account.receipt_ttl
        if account in self._draining:
            return self._wait_behind(account, pdu, expires, settled)
        return self._send_now(state, account, pdu, expires, settled)

    def _send_now(
        self,
        state: AccountState,
        account: str,
        pdu: Item,
        expires: float,
        settled: SettledCallback | None = None,
    ) -> bool:
        # A receiver whose window is full still takes it: its session queues the request
        # for a slot (bounded by max_waiting). Held instead, it would wait for a new bind.
        conn = state.receiver() or state.receiver(full_ok=True)
        if conn is None:
            return self._hold(account, pdu, expires, settled)
        self._send(conn, account, pdu, expires, None, settled)
        return True

    def _send(
        self,
        conn: Connection,
        account: str,
        pdu: Item,
        expires: float,
        done: Callable[[bool], None] | None,
        settled: SettledCallback | None = None,
    ) -> None:
        """``done``: a held item's delivery (the caller keeps it on failure); otherwise
        it is held on failure, and ``settled`` told once delivered or held."""
        answered = partial(self._answered, account, pdu, expires, done, settled)
        try:
            if isinstance(pdu, bytes):
                conn.send_request_encoded_callback(_DELIVER_SM, pdu, answered)
            else:
                conn.send_request_callback(pdu, answered)
        except SmppError:
            if done is None:
                self._hold_or_drop(account, pdu, expires, settled)
            else:
                done(False)

    def _answered(
        self,
        account: str,
        pdu: Item,
        expires: float,
        done: Callable[[bool], None] | None,
        settled: SettledCallback | None,
        result: Pdu | SmppError,
    ) -> None:
        ok = not isinstance(result, SmppError) and result.command_status not in TEMPORARY_STATUSES
        if ok:
            self.sent += 1
        if done is not None:
            done(ok)
        elif not ok:
            self._hold_or_drop(account, pdu, expires, settled)
        elif settled is not None:
            settled(True)

    def _wait_behind(
        self, account: str, pdu: Item, expires: float, settled: SettledCallback | None
    ) -> bool:
        """Keep ``pdu`` for when the running drain ends: the order stays that of arrival."""
        behind = self._behind.setdefault(account, [])
        if len(behind) >= _MAX_BEHIND:  # a long drain: the store keeps the rest, in order
            for early, early_expires, early_settled in behind:
                self._hold_or_drop(account, early, early_expires, early_settled)
            behind.clear()
            return self._hold(account, pdu, expires, settled)
        behind.append((pdu, expires, settled))
        return True

    def _hold(
        self, account: str, pdu: Item, expires: float, settled: SettledCallback | None = None
    ) -> bool:
        """Hold ``pdu`` in the store, ``settled(ok)`` once committed; False when the store
        refuses it (counted there; ``settled`` is not called)."""
        if isinstance(pdu, bytes):
            frame = HEADER.pack(HEADER_LENGTH + len(pdu), _DELIVER_SM, 0, 0) + pdu
        else:
            frame = encode(pdu)
        if not self.store.hold(account, frame, expires, settled):
            return False
        self.held += 1
        self._holds[account] = self._holds.get(account, 0) + 1
        return True

    def _hold_or_drop(
        self, account: str, pdu: Item, expires: float, settled: SettledCallback | None = None
    ) -> None:
        """Hold ``pdu``, which its sender already handed over. When the store refuses it,
        the sender learns it through ``settled(False)`` (``ack_after: store``: the carrier
        is answered a temporary error and resends it); with nobody to tell, it is dropped,
        logged and counted."""
        if not self._hold(account, pdu, expires, settled):
            self._refused(account, settled)

    def _refused(self, account: str, settled: SettledCallback | None) -> None:
        """The store refused to hold an item its sender already handed over."""
        if settled is not None:
            settled(False)
        else:
            self._dropped(account, "")

    def _dropped(self, account: str, message_id: str) -> None:
        n = self.dropped[account] = self.dropped.get(account, 0) + 1
        if n == 1 or n % 1000 == 0:  # the store says why, once; this says what it costs
            log.warning(
                "deliver_sm for %s%s dropped: no receiver, and the store refuses to hold it"
                " (%d so far)",
                account,
                f" (receipt of {message_id})" if message_id else "",
                n,
            )

    # --- held items ---------------------------------------------------------------------

    def bound(self, account: str) -> None:
        """A receive-capable bind of ``account`` is up: send what is held, in order."""
        if account in self._draining:
            return
        self._draining.add(account)
        task = asyncio.create_task(self._drain(account), name=f"drain-{account}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, account: str) -> None:
        """Send the held items of ``account`` in order, batch by batch, until none is left
        — including those held while this ran (``deliver`` holds while a drain is on, to
        keep the order; a hold that lands after a read that came back empty is caught by
        the account's hold count). What arrives meanwhile waits in memory (``_behind``)
        and follows once the store has nothing left of the account."""
        emptied = False
        try:
            state = self.accounts[account]
            loop = asyncio.get_running_loop()
            while True:
                holds = self._holds.get(account, 0)
                items = await self.store.held(account, _DRAIN_BATCH)
                if not items:
                    if self._holds.get(account, 0) == holds:
                        emptied = True
                        return
                    continue  # something was held meanwhile
                sent: list[int] = []
                failed = False
                pending: list[asyncio.Future[bool]] = []
                for item_id, raw in items:
                    # Any bound receiver, even one with a full window: the session queues
                    # beyond the window (bounded by max_waiting) and we drain the transport.
                    conn = state.receiver() or state.receiver(full_ok=True)
                    if conn is None:
                        failed = True
                        break
                    fut: asyncio.Future[bool] = loop.create_future()
                    pending.append(fut)

                    def finish(ok: bool, fut: asyncio.Future[bool] = fut) -> None:
                        if not fut.done():
                            fut.set_result(ok)

                    body = _body(raw)
                    if body is None:  # not a deliver_sm: nothing we would have held
                        log.warning(
                            "held item %d of %s is not a deliver_sm: dropped", item_id, account
                        )
                        sent.append(item_id)
                        fut.set_result(True)
                        continue
                    self._send(conn, account, body, 0.0, finish)
                    sent.append(item_id)
                    try:
                        await conn.drain()
                    except (TimeoutError, SmppError):  # stuck or gone: stop this batch here,
                        failed = True  # but release what was delivered (no resend at rebind)
                        break
                results = await asyncio.gather(*pending)
                delivered = [i for i, ok in zip(sent, results, strict=True) if ok]
                self.store.release(delivered)
                await self.store.flush()
                if failed or len(delivered) < len(sent):
                    return  # retried at the next bind
        except Exception:
            log.exception("draining held deliveries of %s failed", account)
        finally:
            self._draining.discard(account)
            behind = self._behind.pop(account, [])
            account_state = self.accounts.get(account)
            for pdu, expires, settled in behind:
                if emptied and account_state is not None:
                    if not self._send_now(account_state, account, pdu, expires, settled):
                        self._refused(account, settled)
                else:  # held items remain (no receiver, refused): behind them, in order
                    self._hold_or_drop(account, pdu, expires, settled)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _body(frame: bytes) -> bytes | None:
    """The body of a held deliver_sm (the store keeps whole PDUs, sequence 0)."""
    if len(frame) < HEADER_LENGTH or HEADER.unpack_from(frame)[1] != _DELIVER_SM:
        return None
    return frame[HEADER_LENGTH:]
