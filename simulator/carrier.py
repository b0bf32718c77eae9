"""The carrier simulator: an MC-role SMPP server with a behaviour profile per account.

It accepts binds (account checks from :mod:`smppcore.accounts`), answers every MC-role
request, keeps a bounded message table for query_sm / cancel_sm / replace_sm, and sends
delivery receipts (and MO) through each account's :class:`Outbox`. Decisions come from
:class:`Behaviour` (seeded), delays from the event loop's timers — nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from simulator.behaviour import Behaviour, Decision, MessageIds
from simulator.config import CarrierAccount, CarrierConfig, OutbindTarget, status_value
from simulator.messages import MessageTable, SimMessage
from simulator.metrics import CarrierMetrics
from simulator.outbox import Outbox
from simulator.timers import TimerQueue
from smppcore import aio
from smppcore.accounts import BIND_TYPE_OF_COMMAND, check_bind
from smppcore.constants import (
    CommandId,
    CommandStatus,
    EsmClass,
    MessageState,
    RegisteredDelivery,
)
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import (
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DistributionList,
    Outbind,
    Pdu,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    UnsuccessSme,
)
from smppcore.receipt import is_final, stat_word
from smppcore.receipt_pdu import message_preview, message_text, receipt_sm, receipt_sm_body
from smppcore.session import ProtocolViolation, Role
from smppcore.smpptime import (
    format_absolute,
    parse_schedule_delivery_time,
    parse_validity_period,
    resolve,
)
from smppcore.throttle import TokenBucket
from smppcore.tls import server_context
from smppcore.tlv import Tag

log = logging.getLogger(__name__)

# Plain ints on the hot path: IntFlag arithmetic runs Python code per operation.
_INTERMEDIATE = int(RegisteredDelivery.INTERMEDIATE)
_RECEIPT_MASK = int(RegisteredDelivery.RECEIPT_MASK)
_FAILURE_ONLY = int(RegisteredDelivery.FAILURE_ONLY)
_UDHI = int(EsmClass.UDHI)
_DELIVERED = int(MessageState.DELIVERED)
_STAT_WORDS: dict[int, str] = {s: stat_word(s) for s in MessageState}  # members: identity hits
_SUBMIT_SM_RESP_OK = (int(CommandId.SUBMIT_SM_RESP), 0)
_SUBMIT_SM_RESP = int(CommandId.SUBMIT_SM_RESP)

WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class AccountState:
    """What the carrier keeps per account: behaviour, ids, throttle, outbox, sessions."""

    def __init__(self, account: CarrierAccount, config: CarrierConfig, metrics: CarrierMetrics):
        self.account = account
        self.auth = account.auth()
        self.profile = config.profiles[account.profile]
        rng = random.Random(f"{self.profile.seed}:{account.system_id}")
        self.behaviour = Behaviour(self.profile, rng)
        self.ids = MessageIds(self.profile.message_id, rng)
        self.rng = rng
        loop = asyncio.get_running_loop()
        self.bucket = (
            TokenBucket(
                account.throughput, account.burst or max(1.0, account.throughput), loop.time()
            )
            if account.throughput
            else None
        )
        throttle = self.profile.throttle
        #: The profile's throttle when it is per account (one bucket for every bind).
        self.throttle = (
            TokenBucket(throttle.rate, throttle.size, loop.time())
            if throttle is not None and throttle.per == "account"
            else None
        )
        self.sessions: set[aio.Connection] = set()
        misbehave = self.profile.misbehave
        #: The profile's PDU-count faults, or None when it has none (checked per PDU).
        self.pdu_faults = (
            misbehave
            if misbehave.drop_after_pdus is not None or misbehave.black_hole_after_pdus is not None
            else None
        )

        def dropped(n: int) -> None:
            metrics.held_dropped += n

        self.outbox = Outbox(
            account.system_id,
            max_held=config.held.max,
            ttl=config.held.ttl,
            on_drop=dropped,
        )


class Carrier:
    """One simulated carrier. ``await start()``, traffic, ``await stop()``."""

    def __init__(
        self,
        config: CarrierConfig,
        *,
        registry: CollectorRegistry | None = None,
        wall_clock: WallClock = utc_now,
    ) -> None:
        self.config = config
        self.metrics = CarrierMetrics(registry)
        self.wall_clock = wall_clock
        self.messages = MessageTable(config.max_messages)
        self._accounts: dict[str, AccountState] = {}
        self._server: aio.Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: TimerQueue | None = None
        #: Final receipts due now, in order: one timer entry for the whole batch.
        self._due: list[tuple[str, int, aio.Connection]] = []
        self._wall_at = -1.0
        self._wall = wall_clock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unbound_conns: set[aio.Connection] = set()
        self._stopping = False
        self.metrics.gauge(
            "smsc_carrier_sessions",
            "Bound sessions by account",
            ("account",),
            lambda: {(a,): float(len(s.sessions)) for a, s in self._accounts.items()},
        )
        self.metrics.gauge(
            "smsc_carrier_held",
            "Receipts and MO held for an offline account",
            ("account",),
            lambda: {(a,): float(s.outbox.held) for a, s in self._accounts.items()},
        )
        self.metrics.gauge(
            "smsc_carrier_pending_messages",
            "Messages awaiting their final state",
            (),
            lambda: {(): float(self.messages.pending)},
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timers = TimerQueue(self._loop)
        for acct in self.config.accounts:
            self._accounts[acct.system_id] = AccountState(acct, self.config, self.metrics)
        self._server = await aio.start_server(
            lambda conn: CarrierHandler(self),
            self.config.host,
            self.config.port,
            config=self.config.session,
            ssl=server_context(self.config.tls) if self.config.tls is not None else None,
        )
        for target in self.config.outbind:
            self._spawn(self._outbind_loop(target))
        log.info("carrier listening on %s:%d", self.config.host, self.port)

    def wall_now(self) -> datetime:
        """The wall clock, read once per loop turn: the loop's clock stands still during a
        turn, and thousands of messages share one."""
        assert self._loop is not None, "not started"
        t = self._loop.time()
        if t != self._wall_at:
            self._wall_at = t
            self._wall = self.wall_clock()
        return self._wall

    @property
    def timers(self) -> TimerQueue:
        assert self._timers is not None, "not started"
        return self._timers

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def account(self, system_id: str) -> AccountState | None:
        return self._accounts.get(system_id)

    @property
    def accounts(self) -> dict[str, AccountState]:
        return self._accounts

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, unbind every session (bounded by ``timeout``), cancel tasks."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        conns = [c for s in self._accounts.values() for c in s.sessions]
        conns += [c for c in self._unbound_conns]
        if conns:
            async with asyncio.timeout(timeout + 1):
                await asyncio.gather(*(c.unbind(timeout) for c in conns), return_exceptions=True)
        for state in self._accounts.values():
            state.outbox.close()
        if self._timers is not None:
            self._timers.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- messages -------------------------------------------------------------------------

    def accept(
        self,
        state: AccountState,
        conn: aio.Connection,
        pdu: SubmitSm | DataSm | SubmitMulti,
        destination: tuple[int, int, str],
        decision: Decision,
        message_id: str,
        schedule: datetime | None,
        expires: datetime | None,
        key: str = "",
    ) -> None:
        """Record an accepted message and arrange its receipts."""
        loop, timers = self._loop, self._timers
        assert loop is not None
        assert timers is not None
        now = loop.time()
        if now == self._wall_at:
            wall = self._wall
        else:
            wall = self.wall_now()
        rd = pdu.registered_delivery
        short_message = getattr(pdu, "short_message", b"") or _payload(pdu)
        msg = SimMessage(  # by position: see SimMessage
            message_id,
            state.account.system_id,
            wall,
            key,
            pdu.service_type,
            pdu.source_addr_ton,
            pdu.source_addr_npi,
            pdu.source_addr,
            destination[0],
            destination[1],
            destination[2],
            pdu.data_coding,
            pdu.esm_class,
            rd,
            short_message,
            schedule,
            expires,
            MessageState.ENROUTE,
            0,
            None,
            decision.state,
            decision.error,
        )
        self.messages.add(msg)
        table_key = key or message_id
        start = decision.latency
        if schedule is not None:
            start = max(start, (schedule - wall).total_seconds())
        final_at = start + decision.receipt_delay
        if expires is not None and wall + timedelta(seconds=final_at) > expires:
            final_at = max(start, (expires - wall).total_seconds())
            msg = msgspec.structs.replace(
                msg,
                fate=MessageState.EXPIRED,
                fate_error=state.behaviour.error_for(MessageState.EXPIRED),
            )
            self.messages.put(msg)
        if rd & _INTERMEDIATE:
            # Scheduled first: at equal times the loop runs timers in order, so the
            # ENROUTE notification always precedes the final receipt.
            enroute = decision.latency + state.behaviour.draw(state.profile.enroute_delay)
            timers.call_at(now + min(enroute, final_at), self._enroute, table_key, conn)
        elif final_at <= 0:
            # No delay (a profile without latency): batched, in order, on one timer entry.
            due = self._due
            if not due:
                timers.call_at(now, self._finalize_due)
            due.append((table_key, msg.version, conn))
            return
        timers.call_at(now + final_at, self._finalize, table_key, msg.version, conn)

    def _finalize_due(self) -> None:
        due = self._due
        self._due = []
        wall = self.wall_now()
        finish = self._finish
        for key, version, conn in due:
            try:
                finish(key, version, conn, wall)
            except Exception:
                log.exception("final receipt of %s failed", key)

    def _finalize(self, key: str, version: int, conn: aio.Connection) -> None:
        self._finish(key, version, conn, self.wall_now())

    def _finish(self, key: str, version: int, conn: aio.Connection, wall: datetime) -> None:
        """Move the message to its final state now and send the receipt it asked for."""
        done = self.messages.settle(key, version, wall)
        if done is None:
            return  # replaced, cancelled or forgotten meanwhile
        kind = done.registered_delivery & _RECEIPT_MASK
        if kind == 0 or kind == 3 or (kind == _FAILURE_ONLY and done.state == _DELIVERED):
            return
        account = self._accounts.get(done.system_id)
        if account is None:
            return
        self.metrics.receipts[_STAT_WORDS[done.state]] += 1
        account.outbox.send(receipt_body(done, done.state), conn)

    def _enroute(self, key: str, conn: aio.Connection) -> None:
        msg = self.messages.get(key)
        if msg is None or is_final(msg.state):
            return
        self._receipt(msg, conn, intermediate=True)

    def _receipt(
        self, msg: SimMessage, conn: aio.Connection | None, *, intermediate: bool = False
    ) -> None:
        rd = msg.registered_delivery
        state = MessageState.ENROUTE if intermediate else msg.state
        if not intermediate:
            kind = rd & _RECEIPT_MASK
            if kind == 0 or kind == 3:
                return
            if kind == _FAILURE_ONLY and state == MessageState.DELIVERED:
                return
        account = self._accounts.get(msg.system_id)
        if account is None:
            return
        self.metrics.receipts[_STAT_WORDS[state]] += 1
        account.outbox.send(receipt_body(msg, state, intermediate=intermediate), conn)

    def cancel(self, msg: SimMessage, conn: aio.Connection | None) -> None:
        done = msgspec.structs.replace(
            msg,
            state=MessageState.DELETED,
            error=0,
            final_at=self.wall_clock(),
            version=msg.version + 1,
        )
        self.messages.put(done)
        self._receipt(done, conn)

    # --- MO -----------------------------------------------------------------------------

    def inject(self, system_id: str, pdus: list[DeliverSm]) -> None:
        """Send MO deliver_sm PDUs (templates) to an account, held while it is offline."""
        state = self._accounts.get(system_id)
        if state is None:
            raise KeyError(system_id)
        for pdu in pdus:
            self.metrics.mo_sent += 1
            state.outbox.send(pdu)

    # --- outbind ----------------------------------------------------------------------

    async def _outbind_loop(self, target: OutbindTarget) -> None:
        """Connect to an ESME, send outbind, serve its bind; reconnect when it drops."""
        while not self._stopping:
            try:
                conn = await aio.connect(
                    target.host,
                    target.port,
                    role=Role.MC,
                    config=self.config.session,
                    handler=CarrierHandler(self),
                )
                await conn.request(Outbind(system_id=target.system_id, password=target.password))
                await conn.wait_closed()
            except (OSError, TimeoutError, aio.ConnectionClosed) as exc:
                log.info("outbind to %s:%d: %s", target.host, target.port, exc)
            await asyncio.sleep(target.retry_seconds)  # reconnect pacing, not a wait for state


def _payload(pdu: Pdu) -> bytes:
    payload = pdu.tlv(Tag.MESSAGE_PAYLOAD)
    return payload if isinstance(payload, bytes) else b""


_ReceiptFields = tuple[str, int, int, datetime, datetime, int, int, str, int, int, str, str, bool]


def _receipt_fields(msg: SimMessage, state: MessageState, intermediate: bool) -> _ReceiptFields:
    """receipt_sm's arguments for a receipt of ``msg`` in ``state``."""
    return (
        msg.id,
        state,
        msg.error,
        msg.submitted_at,
        msg.final_at or msg.submitted_at,
        msg.source_ton,
        msg.source_npi,
        msg.source,
        msg.dest_ton,
        msg.dest_npi,
        msg.destination,
        message_preview(msg.short_message, msg.esm_class, msg.data_coding),
        intermediate,
    )


def receipt_body(msg: SimMessage, state: MessageState, *, intermediate: bool = False) -> bytes:
    """The body of the deliver_sm carrying a receipt for ``msg`` (what the outbox sends)."""
    return receipt_sm_body(*_receipt_fields(msg, state, intermediate))


def receipt_pdu(msg: SimMessage, state: MessageState, *, intermediate: bool = False) -> DeliverSm:
    """The deliver_sm carrying a receipt for ``msg`` (Appendix B text and the TLVs)."""
    return receipt_sm(*_receipt_fields(msg, state, intermediate))


class CarrierHandler(aio.Handler):
    """One connection to the carrier."""

    __slots__ = ("carrier", "conn", "pdus", "state", "throttle")

    def __init__(self, carrier: Carrier) -> None:
        self.carrier = carrier
        self.state: AccountState | None = None
        #: The profile's throttle bucket for this bind (its own, or the account's).
        self.throttle: TokenBucket | None = None
        self.pdus = 0
        self.conn: aio.Connection | None = None

    def connection_made(self, conn: aio.Connection) -> None:
        self.conn = conn
        self.carrier._unbound_conns.add(conn)

    def protocol_violation(self, conn: aio.Connection, event: ProtocolViolation) -> None:
        self.carrier.metrics.pdus_in[(event.command_id, event.status)] += 1

    def session_closed(self, conn: aio.Connection, reason: str) -> None:
        self.carrier._unbound_conns.discard(conn)
        if self.state is not None:
            self.state.sessions.discard(conn)
            self.state.outbox.remove(conn)

    def request_received(self, conn: aio.Connection, pdu: Pdu) -> None:
        carrier = self.carrier
        carrier.metrics.pdus_in[(pdu.command_id, 0)] += 1
        self.pdus += 1
        state = self.state
        misbehave = state.pdu_faults if state is not None else None
        if misbehave is not None:
            if misbehave.drop_after_pdus is not None and self.pdus > misbehave.drop_after_pdus:
                # After this batch's answers are flushed: the first N PDUs are served.
                asyncio.get_running_loop().call_soon(conn.abort)
                return
            if (
                misbehave.black_hole_after_pdus is not None
                and self.pdus > misbehave.black_hole_after_pdus
            ):
                conn.stall()
                return
        handler = _HANDLERS.get(pdu.command_id)
        if handler is None:  # outbind reply path etc.: nothing to do
            return
        try:
            handler(self, conn, pdu)
        except RemoteProtocolError as err:
            self._respond(conn, pdu, err.status)

    # --- answers ------------------------------------------------------------------------

    def _respond(self, conn: aio.Connection, pdu: Pdu, status: int, latency: float = 0.0) -> None:
        assert pdu.response_class is not None
        self._send_resp(conn, pdu.response_class(pdu.sequence_number, status), latency)

    def _send_resp(self, conn: aio.Connection, resp: Pdu, latency: float) -> None:
        self.carrier.metrics.pdus_out[(resp.command_id, resp.command_status)] += 1
        if latency <= 0:
            conn.respond(resp)
        else:
            self.carrier.timers.call_later(latency, _late_respond, conn, resp)

    # --- binds --------------------------------------------------------------------------

    def on_bind(self, conn: aio.Connection, pdu: Pdu) -> None:
        carrier = self.carrier
        system_id: str = pdu.system_id  # type: ignore[attr-defined]
        state = carrier.account(system_id)
        peer = conn.peer[0] if conn.peer else None
        status = check_bind(
            state.auth if state else None,
            command_id=pdu.command_id,
            password=pdu.password,  # type: ignore[attr-defined]
            peer_host=peer,
            sessions_in_use=len(state.sessions) if state else 0,
        )
        if status == CommandStatus.ESME_ROK and state is not None:
            refuse = state.profile.misbehave.refuse_binds
            if refuse is not None:
                status = status_value(refuse)
        kind = BIND_TYPE_OF_COMMAND[pdu.command_id].value
        carrier.metrics.binds[(system_id if state else "unknown", kind, status)] += 1
        if status != CommandStatus.ESME_ROK or state is None or carrier._stopping:
            self._respond(conn, pdu, status or CommandStatus.ESME_RBINDFAIL)
            log.info("bind %s as %s from %s refused: %s", system_id, kind, peer, status)
            return
        assert pdu.response_class is not None
        conn.respond(
            pdu.response_class(pdu.sequence_number, 0, carrier.config.system_id)  # type: ignore[call-arg]
        )
        self.state = state
        throttle = state.profile.throttle
        if throttle is not None:
            self.throttle = state.throttle or TokenBucket(
                throttle.rate, throttle.size, asyncio.get_running_loop().time()
            )
        conn.context = state
        state.sessions.add(conn)
        carrier._unbound_conns.discard(conn)
        if conn.session.can_deliver:
            state.outbox.add_receiver(conn)
        log.info("bound %s as %s from %s", system_id, kind, peer)

    # --- submits ------------------------------------------------------------------------

    def _admit(self, conn: aio.Connection, pdu: Pdu, state: AccountState) -> bool:
        """Throttles and queue bound; answers and returns False when the PDU is refused."""
        account, throttle = state.bucket, self.throttle
        if account is not None or throttle is not None:
            now = asyncio.get_running_loop().time()
            if (account is not None and account.delay(now) > 0) or (
                throttle is not None and throttle.delay(now) > 0
            ):
                self._respond(conn, pdu, CommandStatus.ESME_RTHROTTLED)
                return False
            if account is not None:
                account.take(now)
            if throttle is not None:
                throttle.take(now)
        if self.carrier.messages.pending_by.get(state.account.system_id, 0) >= (
            state.profile.max_pending
        ):
            self._respond(conn, pdu, CommandStatus.ESME_RMSGQFUL)
            return False
        return True

    def _times(
        self, pdu: SubmitSm | SubmitMulti | DataSm
    ) -> tuple[datetime | None, datetime | None]:
        wall = self.carrier.wall_now()
        schedule = expires = None
        if isinstance(pdu, (SubmitSm, SubmitMulti)):
            if pdu.schedule_delivery_time:
                schedule = resolve(parse_schedule_delivery_time(pdu.schedule_delivery_time), wall)
            if pdu.validity_period:
                expires = resolve(parse_validity_period(pdu.validity_period), wall)
        return schedule, expires

    def on_submit_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, (SubmitSm, DataSm))
        state = self.state
        assert state is not None
        carrier = self.carrier
        if (
            state.bucket is not None
            or self.throttle is not None
            or carrier.messages.pending_by.get(state.account.system_id, 0)
            >= state.profile.max_pending
        ) and not self._admit(conn, pdu, state):
            return
        if not pdu.destination_addr:
            self._respond(conn, pdu, CommandStatus.ESME_RINVDSTADR)
            return
        behaviour = state.behaviour
        text = ""
        if behaviour.needs_text:
            raw = getattr(pdu, "short_message", b"") or _payload(pdu)
            text = message_text(raw, pdu.esm_class, pdu.data_coding)
        decision = behaviour.decide(pdu.source_addr, pdu.destination_addr, text)
        if decision.status:
            self._respond(conn, pdu, decision.status, decision.latency)
            return
        if type(pdu) is SubmitSm:
            if pdu.schedule_delivery_time or pdu.validity_period:
                schedule, expires = self._times(pdu)
            else:
                schedule = expires = None
            message_id = state.ids.next()
            carrier.accept(
                state,
                conn,
                pdu,
                (pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr),
                decision,
                message_id,
                schedule,
                expires,
            )
            latency = decision.latency
            if latency <= 0:
                carrier.metrics.pdus_out[_SUBMIT_SM_RESP_OK] += 1
                # The id is ours (ASCII, no NUL): its C-octet string is the whole body.
                conn.respond_encoded(
                    _SUBMIT_SM_RESP, pdu.sequence_number, 0, message_id.encode() + b"\0"
                )
            else:
                self._send_resp(conn, SubmitSmResp(pdu.sequence_number, 0, message_id), latency)
            return
        schedule, expires = self._times(pdu)
        message_id = state.ids.next()
        dest = (pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr)
        carrier.accept(state, conn, pdu, dest, decision, message_id, schedule, expires)
        self._send_resp(conn, DataSmResp(pdu.sequence_number, 0, message_id), decision.latency)

    def on_submit_multi(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, SubmitMulti)
        state = self.state
        assert state is not None
        if not self._admit(conn, pdu, state):
            return
        schedule, expires = self._times(pdu)
        text = ""
        behaviour = state.behaviour
        if behaviour.needs_text:
            raw = pdu.short_message or _payload(pdu)
            text = message_text(raw, pdu.esm_class, pdu.data_coding)
        message_id = state.ids.next()
        failed: list[UnsuccessSme] = []
        latency = 0.0
        accepted = 0
        for dest in pdu.dest_addresses:
            if isinstance(dest, DistributionList):
                # The simulator keeps no distribution lists (§4.5.1: dest_flag 2).
                failed.append(UnsuccessSme(0, 0, dest.name, CommandStatus.ESME_RINVDLNAME))
                continue
            if not dest.address:
                failed.append(
                    UnsuccessSme(dest.ton, dest.npi, dest.address, CommandStatus.ESME_RINVDSTADR)
                )
                continue
            decision = behaviour.decide(pdu.source_addr, dest.address, text)
            latency = max(latency, decision.latency)
            if decision.status:
                failed.append(UnsuccessSme(dest.ton, dest.npi, dest.address, decision.status))
                continue
            accepted += 1
            self.carrier.accept(
                state,
                conn,
                pdu,
                (dest.ton, dest.npi, dest.address),
                decision,
                message_id,
                schedule,
                expires,
                key="" if accepted == 1 else f"{message_id}/{accepted}",
            )
        if accepted == 0:
            # Nothing accepted: the whole submit failed, with the per-destination list.
            resp = SubmitMultiResp(pdu.sequence_number, 0, "", tuple(failed))
        else:
            resp = SubmitMultiResp(pdu.sequence_number, 0, message_id, tuple(failed))
        self._send_resp(conn, resp, latency)

    # --- message management -------------------------------------------------------------

    def _owned(self, message_id: str) -> SimMessage | None:
        msg = self.carrier.messages.get(message_id)
        if msg is None or self.state is None or msg.system_id != self.state.account.system_id:
            return None
        return msg

    def _owned_group(self, message_id: str) -> list[SimMessage]:
        """All messages of ``message_id`` (each destination of a submit_multi)."""
        return [m for m in self.carrier.messages.group(message_id) if self._owned(m.id)]

    def on_query_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, QuerySm)
        msg = self._owned(pdu.message_id)
        if msg is None:
            self._respond(conn, pdu, CommandStatus.ESME_RQUERYFAIL)
            return
        if pdu.source_addr and pdu.source_addr != msg.source:
            self._respond(conn, pdu, CommandStatus.ESME_RQUERYFAIL)
            return
        final_date = format_absolute(msg.final_at) if msg.final_at else ""
        self._send_resp(
            conn,
            QuerySmResp(pdu.sequence_number, 0, msg.id, final_date, int(msg.state), msg.error),
            0.0,
        )

    def on_cancel_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, CancelSm)
        carrier = self.carrier
        if pdu.message_id:
            group = [
                m
                for m in self._owned_group(pdu.message_id)
                if not is_final(m.state) and (not pdu.source_addr or pdu.source_addr == m.source)
            ]
            if not group:
                self._respond(conn, pdu, CommandStatus.ESME_RCANCELFAIL)
                return
            for msg in group:
                carrier.cancel(msg, conn)
        else:
            # §4.9: no id — cancel every pending message from source_addr to destination_addr
            # (and service_type when given) of this account.
            assert self.state is not None
            found = carrier.messages.pending_matching(
                self.state.account.system_id,
                pdu.source_addr,
                pdu.destination_addr,
                pdu.service_type,
            )
            if not found:
                self._respond(conn, pdu, CommandStatus.ESME_RCANCELFAIL)
                return
            for msg in found:
                carrier.cancel(msg, conn)
        self._send_resp(conn, CancelSmResp(pdu.sequence_number), 0.0)

    def on_replace_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, ReplaceSm)
        msg = self._owned(pdu.message_id)
        if (
            msg is None
            or is_final(msg.state)
            or (pdu.source_addr and pdu.source_addr != msg.source)
        ):
            self._respond(conn, pdu, CommandStatus.ESME_RREPLACEFAIL)
            return
        wall = self.carrier.wall_clock()
        schedule = msg.scheduled_at
        if pdu.schedule_delivery_time:
            schedule = resolve(parse_schedule_delivery_time(pdu.schedule_delivery_time), wall)
        expires = msg.expires_at
        if pdu.validity_period:
            expires = resolve(parse_validity_period(pdu.validity_period), wall)
        new = msgspec.structs.replace(
            msg,
            short_message=pdu.short_message or _payload(pdu),
            registered_delivery=pdu.registered_delivery,
            scheduled_at=schedule,
            expires_at=expires,
            version=msg.version + 1,
        )
        self.carrier.messages.put(new)
        assert self.state is not None
        delay = self.state.behaviour.draw(self.state.profile.receipt_delay)
        start = 0.0 if schedule is None else max(0.0, (schedule - wall).total_seconds())
        self.carrier.timers.call_later(
            start + delay, self.carrier._finalize, new.table_key, new.version, conn
        )
        self._send_resp(conn, ReplaceSmResp(pdu.sequence_number), 0.0)

    def on_outbind(self, conn: aio.Connection, pdu: Pdu) -> None:
        return None


def _late_respond(conn: aio.Connection, resp: Pdu) -> None:
    if not conn.closed and not conn.session.closed:
        conn.respond(resp)


_HANDLERS: dict[int, Callable[[CarrierHandler, aio.Connection, Pdu], None]] = {
    CommandId.BIND_TRANSMITTER: CarrierHandler.on_bind,
    CommandId.BIND_RECEIVER: CarrierHandler.on_bind,
    CommandId.BIND_TRANSCEIVER: CarrierHandler.on_bind,
    CommandId.SUBMIT_SM: CarrierHandler.on_submit_sm,
    CommandId.DATA_SM: CarrierHandler.on_submit_sm,
    CommandId.SUBMIT_MULTI: CarrierHandler.on_submit_multi,
    CommandId.QUERY_SM: CarrierHandler.on_query_sm,
    CommandId.CANCEL_SM: CarrierHandler.on_cancel_sm,
    CommandId.REPLACE_SM: CarrierHandler.on_replace_sm,
}
