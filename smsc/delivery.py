"""Receipts and MO to the owning account's binds (router.ports.ReportSink).

Sent over any receive-capable bind of the account (never another account's), round
robin. With none bound — or when a delivery fails (bind lost, no slot or no answer in
time, a temporary refusal) — the deliver_sm is held durably in the store; held items
expire by the account's ``receipt_ttl``.

Held items are sent, in order, by one drain per account at a time: started when a
receive-capable bind of the account appears, and when an item is held while one is
bound (a slow or stalled session, or a refusal). The drain hands an item to a bind with
a free window slot — preferring binds whose last deliver_sm was answered over one that
let its last one time out — and waits (re-checking every ``_ROOM_CHECK`` seconds) for a
slot to free when none has one; it ends once the store has nothing left of the account,
or no receive-capable bind is left. New deliveries wait behind a running drain that has
held items to send — ones this node held and has not delivered, or ones the drain found
— (in memory up to ``_MAX_BEHIND``, then in the store) so that they do not overtake
them. A drain that is only looking (started by a bind, a sweep or another node's
signal, with nothing known held) holds nothing up: live deliveries go straight to the
bound session, as they would without it. (Made to wait, what arrived while a busy
shared store answered the look would spill into the store past ``_MAX_BEHIND`` and
from then on every delivery would take the trip through it: a drain that never
catches up.)

In a cluster (the store is the nodes' shared Redis) an item held for an account that has
no receive-capable bind on this node is announced, once committed, to the other nodes
(``held_elsewhere``: smsc/peers.py); a node with such a bind drains it (``woken``), and
every node sweeps its bound accounts now and then (``sweep``) for a signal it missed. The
store's claims (``held`` claims what it returns for this node) keep two nodes from sending
one item; the order holds per node, not between two nodes draining one account at once.

A deliver_sm_resp that comes after ``response_timeout`` is not wasted: the session
reports it (smppcore LateResponse), and the held copy, not yet sent again, is released
instead of sent twice.

Each account holds at most ``max_held`` items (counted here: those held since start and
not yet delivered; a drain that finds the store empty sets the count to zero). While it
is over that, :meth:`Delivery.refuses_receipts` tells the server to refuse submits that
ask for a receipt (ESME_RMSGQFUL) — the receipts already promised are all kept.

``settled`` (optional, on ``report``, ``mobile_originated`` and ``deliver``) is called once
with True when the client acknowledged the deliver_sm, or it is committed to the store
(held), or nothing was to be sent; False when it could be neither delivered nor stored.
The router answers a carrier's deliver_sm on it (``ack_after: store``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache, partial

from router.model import DeliveryReport, Message, StoredMessage
from router.ports import SettledCallback, Store, StoreError
from smppcore.aio import Connection, RequestTimeout
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
from smsc.tasks import wait_event

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
#: Seconds a drain waits for a window slot before it looks at the account's binds again
#: (a slot freeing wakes it at once).
_ROOM_CHECK = 1.0
#: Seconds a drain pauses after a batch the client refused or left unanswered in part.
_RETRY_PAUSE = 1.0
#: Deliveries that timed out unanswered remembered (for a late answer), at most.
_MAX_UNANSWERED = 10_000
#: Late answers remembered per account (until the drain meets the held copy), at most.
_MAX_LATE = 10_000
#: Seconds a late answer keeps its held copy from being sent again (see _taken_late).
_LATE_TTL = 60.0
#: registered_delivery bits that ask for a receipt of some kind (§5.2.17).
_ASKS_RECEIPT = _RECEIPT_MASK | _INTERMEDIATE


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
        senders_wait: bool = False,
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.wall = wall
        #: Do senders wait for ``settled`` before they are answered (``ack_after: store``)?
        #: Then, while held items are being drained, a new delivery that has a ``settled``
        #: is held in the store at once rather than kept waiting in memory behind them.
        self.senders_wait = senders_wait
        #: In a cluster: told (after the hold is committed) when an item is held for an
        #: account with no receive-capable bind here, so that the nodes with one drain it
        #: (smsc.peers.Peers.held). None alone.
        self.held_elsewhere: Callable[[str], None] | None = None
        #: Signals from other nodes that they held items, per account (a drain that
        #: finds the store empty ends only when none came during its read).
        self._wakes: dict[str, int] = {}
        self._draining: set[str] = set()
        self._holds: dict[str, int] = {}  # items held so far, per account (see _drain)
        self._held_now: dict[str, int] = {}  # held and not delivered yet, per account
        #: Accounts whose drain found held items to send (not just an empty store).
        self._backlog: set[str] = set()
        self._full: set[str] = set()  # accounts at their max_held (refusing receipts)
        #: Set when a deliver_sm of the account is answered (a slot frees) or it binds.
        self._room: dict[str, asyncio.Event] = {}
        #: Binds whose last deliver_sm went unanswered: a drain uses them last.
        self._suspect: weakref.WeakSet[Connection] = weakref.WeakSet()
        #: (connection, sequence) of a deliver_sm that timed out → (account, its body).
        self._unanswered: dict[tuple[Connection, int], tuple[str, bytes]] = {}
        #: Bodies answered late, per account: their held copies are released, not sent.
        #: account → body of a deliver_sm answered after its response timeout → (how
        #: many, until when it counts)
        self._late: dict[str, dict[bytes, tuple[int, float]]] = {}
        self._stopping = False
        #: Deliveries that came while the account's held items were being sent: they go
        #: right after them, in order, without a trip through the store.
        self._behind: dict[str, list[tuple[Item, float, SettledCallback | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.held = 0
        self.expired = 0
        self.late = 0
        """Deliveries whose answer came after response_timeout, and were not sent again."""
        #: Deliveries neither sent nor held (the store refused them) with nobody to answer
        #: a temporary error to, per account (metrics; each logged).
        self.dropped: dict[str, int] = {}

    @property
    def waiting_by_account(self) -> dict[str, int]:
        """Deliveries held and not delivered yet, per account (counted since start; what
        ``max_held`` bounds)."""
        return self._held_now

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
        if account in self._draining and self._held_first(account):
            if self.senders_wait and settled is not None and account in self._backlog:
                # ack_after: store — its carrier waits for this answer: held in the store at
                # once (behind the rest, in order), not in memory until a drain of maybe
                # thousands ends, which would fill the carrier's window meanwhile. (In
                # ack_after: enqueue nobody waits — ``settled`` may still come, to settle
                # a cluster's claim on a final receipt: it waits in memory like the rest;
                # sent through the store, every delivery would take the trip through it
                # and the drain would never catch up.)
                return self._hold(account, pdu, expires, settled)
            return self._wait_behind(account, pdu, expires, settled)
        return self._send_now(state, account, pdu, expires, settled)

    def _held_first(self, account: str) -> bool:
        """Must a new delivery of ``account`` wait for its held items? Only while this
        node knows of some: ones it held and has not delivered yet, or ones its drain
        found. A drain that is only looking (at a bind, a sweep, another node's signal:
        the store is most likely empty) does not hold up live deliveries; its reading
        the store may take a while, and what piled up meanwhile would spill into it."""
        return account in self._backlog or self._held_now.get(account, 0) > 0

    def refuses_receipts(self, account: str) -> bool:
        """Is ``account`` at its ``max_held``? Then a submit that asks for a receipt is
        refused (ESME_RMSGQFUL) until held items are delivered. (The limit as it is now:
        a reload that raises it takes effect at once.)"""
        state = self.accounts.get(account)
        return state is not None and self._held_now.get(account, 0) >= state.account.max_held

    @staticmethod
    def asks_receipt(registered_delivery: int) -> bool:
        """Does a submit with this registered_delivery ask for a receipt of any kind?"""
        return bool(registered_delivery & _ASKS_RECEIPT)

    def _send_now(
        self,
        state: AccountState,
        account: str,
        pdu: Item,
        expires: float,
        settled: SettledCallback | None = None,
    ) -> bool:
        # A receiver whose window is full still takes it: its session queues the request
        # for a slot (bounded by max_waiting). Held instead, it would wait for a drain.
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
        answered = partial(self._answered, conn, account, pdu, expires, done, settled)
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
        conn: Connection,
        account: str,
        pdu: Item,
        expires: float,
        done: Callable[[bool], None] | None,
        settled: SettledCallback | None,
        result: Pdu | SmppError,
    ) -> None:
        ok = not isinstance(result, SmppError) and result.command_status not in TEMPORARY_STATUSES
        room = self._room.get(account)
        if room is not None:
            room.set()  # a slot is free again
        if ok:
            self.sent += 1
            if self._suspect:
                self._suspect.discard(conn)
        if done is not None:
            done(ok)
        elif not ok:
            self._hold_or_drop(account, pdu, expires, settled)
        elif settled is not None:
            settled(True)
        if isinstance(result, RequestTimeout) and result.reason == "response":
            # It may yet be answered: then its held copy is not sent again (late_answer).
            self._suspect.add(conn)
            unanswered = self._unanswered
            if len(unanswered) >= _MAX_UNANSWERED:
                del unanswered[next(iter(unanswered))]
            body = pdu if isinstance(pdu, bytes) else encode(pdu)[HEADER_LENGTH:]
            unanswered[(conn, result.sequence_number)] = (account, body)

    def late_answer(self, conn: Connection, sequence_number: int, status: int) -> None:
        """``conn``'s client answered deliver_sm ``sequence_number`` after it timed out.
        Taken (a status that is not temporary): its held copy is released when a drain
        comes to it, not sent again."""
        entry = self._unanswered.pop((conn, sequence_number), None)
        if entry is None or status in TEMPORARY_STATUSES:
            return
        account, body = entry
        self._suspect.discard(conn)
        late = self._late.setdefault(account, {})
        if len(late) >= _MAX_LATE:
            del late[next(iter(late))]
        n, _ = late.pop(body, (0, 0.0))
        late[body] = (n + 1, self.wall() + _LATE_TTL)
        self.late += 1
        self.sent += 1
        room = self._room.get(account)
        if room is not None:
            room.set()

    def _taken_late(self, account: str, body: bytes) -> bool:
        """Was ``body`` answered late (and so is not to be sent again)? Consumes it. A
        late answer counts for ``_LATE_TTL`` seconds: its held copy comes to a drain well
        within that, and an older one (its copy sent again meanwhile) must not swallow a
        later MO of the same text."""
        late = self._late.get(account)
        if not late:
            return False
        n, until = late.get(body, (0, 0.0))
        if not n:
            return False
        if n == 1 or until < self.wall():
            del late[body]
        else:
            late[body] = (n - 1, until)
        return until >= self.wall()

    def _wait_behind(
        self, account: str, pdu: Item, expires: float, settled: SettledCallback | None
    ) -> bool:
        """Keep ``pdu`` for when the running drain ends: the order stays that of arrival.
        Past ``_MAX_BEHIND`` the store takes those waiting, in order, as many as it will;
        what it refuses (its writer's queue full, or it cannot write) was taken already
        and stays here, and ``pdu`` is refused instead (False: its sender is answered a
        temporary error and sends it again) — never one that was taken dropped."""
        behind = self._behind.setdefault(account, [])
        if len(behind) >= _MAX_BEHIND:  # a long drain: the store keeps the rest, in order
            kept = 0
            for early, early_expires, early_settled in behind:
                if not self._hold(account, early, early_expires, early_settled):
                    break
                kept += 1
            del behind[:kept]
            if behind:
                return False
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
        on_durable = settled
        if self.held_elsewhere is not None and not self._receives_here(account):
            on_durable = partial(self._held_durably, account, settled)
        if not self.store.hold(account, frame, expires, on_durable):
            return False
        self.held += 1
        self._holds[account] = self._holds.get(account, 0) + 1
        self._count_held(account, 1)
        self._start_drain(account)  # a receiver bound (slow, or another one) takes it
        return True

    def _receives_here(self, account: str) -> bool:
        state = self.accounts.get(account)
        return state is not None and any(_live(c) for c in state.receivers)

    def _held_durably(self, account: str, settled: SettledCallback | None, ok: bool) -> None:
        """An item held for ``account`` (no receiver here) is committed: the nodes that
        have one are told."""
        if ok and self.held_elsewhere is not None:
            self.held_elsewhere(account)
        if settled is not None:
            settled(ok)

    def woken(self, account: str) -> None:
        """Another node held items for ``account``: drain them if it has a
        receive-capable bind here."""
        if account not in self.accounts:
            return
        self._wakes[account] = self._wakes.get(account, 0) + 1
        room = self._room.get(account)
        if room is not None:
            room.set()
        self._start_drain(account)

    def sweep(self) -> None:
        """Start a drain for every account with a receive-capable bind here (in a cluster,
        now and then: items held by a node whose signal was missed, or claimed by a node
        that died and whose claims lapsed)."""
        for account in self.accounts:
            self._start_drain(account)

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

    def found_held(self, account: str, n: int) -> None:
        """``n`` items of ``account`` were found held in the store at start (a restart)."""
        self._count_held(account, n)

    def _count_held(self, account: str, change: int) -> None:
        """Follow the items ``account`` has held; log when it reaches and leaves max_held."""
        held = max(0, self._held_now.get(account, 0) + change)
        self._held_now[account] = held
        state = self.accounts.get(account)
        if state is None:
            return
        limit = state.account.max_held
        if held >= limit and account not in self._full:
            self._full.add(account)
            log.warning(
                "%s: %d receipts/MO held (max_held %d): its submits asking for a receipt are"
                " refused (ESME_RMSGQFUL) until a receiver takes them",
                account,
                held,
                limit,
            )
        elif held < limit and account in self._full:
            self._full.discard(account)
            log.warning("%s: held receipts/MO under max_held again: submits accepted", account)

    # --- held items ---------------------------------------------------------------------

    def bound(self, account: str) -> None:
        """A receive-capable bind of ``account`` is up: send what is held, in order."""
        room = self._room.get(account)
        if room is not None:
            room.set()
        self._start_drain(account)

    def _start_drain(self, account: str) -> None:
        if account in self._draining or self._stopping:
            return
        state = self.accounts.get(account)
        if state is None or not any(_live(c) for c in state.receivers):
            return
        self._draining.add(account)
        task = asyncio.create_task(self._drain(account), name=f"drain-{account}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, account: str) -> None:
        """Send the held items of ``account`` in order until none is left — including
        those held while this ran (a hold that lands after a read that came back empty is
        caught by the account's hold count). What arrives meanwhile waits in memory
        (``_behind``) and follows once the store has nothing left of the account.

        Pipelined: each item goes out as soon as a bind has a free slot and is released
        as soon as it is answered; the store is read again for more while some are in
        flight (those are never read twice), so one slow answer holds nothing else up.
        Items refused or left unanswered stay held and are read again after
        ``_RETRY_PAUSE``, while a receive-capable bind is there."""
        emptied = False
        try:
            state = self.accounts[account]
            room = self._room.setdefault(account, asyncio.Event())
            drain = _DrainState()
            while True:
                if drain.failed:
                    drain.failed = False
                    await asyncio.sleep(_RETRY_PAUSE)  # then read what failed again, in order
                    if not any(_live(c) for c in state.receivers):
                        return
                holds = self._holds.get(account, 0) + self._wakes.get(account, 0)
                room.clear()  # before the read: an answer during it is not missed
                drain.answered = set()  # answered during the read (their release is queued)
                try:
                    items = await self.store.held(account, _DRAIN_BATCH + len(drain.inflight))
                except StoreError as exc:  # the store did not answer in time: try again
                    log.warning("draining held deliveries of %s: %s; again soon", account, exc)
                    drain.failed = True
                    continue
                skip = drain.inflight.keys() | drain.answered
                fresh = [(i, raw) for i, raw in items if i not in skip]
                if drain.failed:
                    continue
                if not fresh:
                    if drain.inflight:
                        await wait_event(room, _ROOM_CHECK)  # an answer, then read again
                        continue
                    if self._holds.get(account, 0) + self._wakes.get(account, 0) == holds:
                        emptied = True
                        self._late.pop(account, None)  # nothing held is left to match
                        self._count_held(account, -self._held_now.get(account, 0))
                        return
                    continue  # something was held meanwhile
                self._backlog.add(account)
                if await self._send_items(state, account, fresh, room, drain):
                    # No receive-capable bind left. Those in flight are settled first (a
                    # bind that unbinds may still answer): not sent again by a later drain.
                    while drain.inflight:
                        room.clear()
                        if drain.inflight:
                            await wait_event(room, _ROOM_CHECK)
                    if not any(_live(c) for c in state.receivers):
                        return  # the next bind starts a drain
        except Exception:
            log.exception("draining held deliveries of %s failed", account)
        finally:
            behind = self._behind.pop(account, [])
            account_state = self.accounts.get(account)
            for pdu, expires, settled in behind:  # still draining: no drain starts here
                if emptied and account_state is not None:
                    if not self._send_now(account_state, account, pdu, expires, settled):
                        self._refused(account, settled)
                else:  # held items remain (no receiver, refused): behind them, in order
                    self._hold_or_drop(account, pdu, expires, settled)
            self._draining.discard(account)
            self._backlog.discard(account)

    async def _send_items(
        self,
        state: AccountState,
        account: str,
        items: list[tuple[int, bytes]],
        room: asyncio.Event,
        drain: _DrainState,
    ) -> bool:
        """Send ``items`` (or release them: answered late, unreadable) over binds with a
        free slot; stop early when one is refused. True when no receive-capable bind is
        left (the rest stay held)."""
        for item_id, raw in items:
            body = _body(raw)
            if body is None:  # not a deliver_sm: nothing we would have held
                log.warning("held item %d of %s is not a deliver_sm: dropped", item_id, account)
                self._release(account, item_id, drain)
                continue
            if self._taken_late(account, body):
                self._release(account, item_id, drain)
                continue
            conn = await self._slot(state, room)
            if conn is None:
                return True
            if drain.failed:
                return False  # refused meanwhile: pause, then again from the oldest
            if self._taken_late(account, body):  # answered while we waited for the slot
                self._release(account, item_id, drain)
                continue
            drain.inflight[item_id] = None
            self._send(conn, account, body, 0.0, partial(self._drained, account, item_id, drain))
            try:
                await conn.drain()
            except (TimeoutError, SmppError):  # stuck or gone: read again what is left
                return False
        return False

    def _drained(self, account: str, item_id: int, drain: _DrainState, ok: bool) -> None:
        """The client answered held item ``item_id`` (``ok``: took it)."""
        if item_id not in drain.inflight:
            return
        del drain.inflight[item_id]
        if ok:
            self._release(account, item_id, drain)
        else:
            drain.failed = True

    def _release(self, account: str, item_id: int, drain: _DrainState) -> None:
        self.store.release((item_id,))
        drain.answered.add(item_id)
        self._count_held(account, -1)

    async def _slot(self, state: AccountState, room: asyncio.Event) -> Connection | None:
        """A receive-capable bind of the account with a free window slot — one whose last
        deliver_sm was answered, if there is one — waiting for a slot to free; None when
        the account has no receive-capable bind left."""
        while True:
            room.clear()
            conn = state.receiver(avoid=self._suspect)
            if conn is not None:
                return conn
            if not any(_live(c) for c in state.receivers):
                return None
            await wait_event(room, _ROOM_CHECK)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _live(conn: Connection) -> bool:
    return conn.session.can_deliver and not conn.closed


class _DrainState:
    """What one drain has in flight, and what happened since its last read."""

    __slots__ = ("answered", "failed", "inflight")

    def __init__(self) -> None:
        #: Held ids sent and not answered yet (never read and sent twice).
        self.inflight: dict[int, None] = {}
        #: Held ids released since the current read began (its rows may still show them).
        self.answered: set[int] = set()
        #: An item was refused or left unanswered: pause, then read again.
        self.failed = False



def _body(frame: bytes) -> bytes | None:
    """The body of a held deliver_sm (the store keeps whole PDUs, sequence 0)."""
    if len(frame) < HEADER_LENGTH or HEADER.unpack_from(frame)[1] != _DELIVER_SM:
        return None
    return frame[HEADER_LENGTH:]
