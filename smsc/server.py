"""The ESME-facing SMPP server: binds, submits, and message management.

Each accepted submit becomes a :class:`router.model.Message` handed to the router's
Intake; submit_sm_resp goes out when the router says the message is accepted (queued, or
durably stored in ``ack_after: store`` mode). query_sm, cancel_sm and replace_sm are
answered from the store; a message can be cancelled or replaced while it has not left
for a carrier (it is scheduled, or still queued).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import msgspec

from router.metrics import SUBMIT_BUCKETS, Histogram
from router.model import Address, Message, StoredMessage
from router.ports import ClusterUnavailable, Coordinator, Intake, Store, StoreError
from smppcore import aio
from smppcore.accounts import BIND_TYPE_OF_COMMAND, check_bind
from smppcore.constants import CommandId, CommandStatus, EsmClass, MessageState
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import (
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DistributionList,
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
from smppcore.receipt import is_final
from smppcore.session import ProtocolViolation
from smppcore.smpptime import (
    format_absolute,
    parse_schedule_delivery_time,
    parse_validity_period,
    resolve,
)
from smppcore.tlv import Tag
from smsc.accounts import AccountState
from smsc.config import SecurityConfig
from smsc.delivery import Delivery
from smsc.ids import IdAllocator
from smsc.messages import admit, build_message
from smsc.peers import Peers
from smsc.security import Admission, BindGuard

log = logging.getLogger(__name__)
#: One line per bind attempt: account, bind type, peer, result — never the password.
audit = logging.getLogger("smsc.audit")
#: Refusals that count toward a peer's bind cool-down (a guessed password or account).
_GUESSES = frozenset({CommandStatus.ESME_RINVPASWD, CommandStatus.ESME_RINVSYSID})

#: Seconds a bind waits at most behind its address's binds being checked (a password check
#: takes tens of milliseconds); past that it is refused ESME_RBINDFAIL.
BIND_WAIT = 10.0

_UDHI = int(EsmClass.UDHI)
_S = CommandStatus


class BoundSession(msgspec.Struct, frozen=True):
    """One bound ESME session as the admin API lists it."""

    id: str
    account: str
    bind_type: str
    peer: str
    since: float
    """Unix seconds of the bind."""


class ServerMetrics:
    """Plain counters read by the metrics collector at scrape time."""

    def __init__(self) -> None:
        self.pdus: dict[tuple[int, int], int] = {}
        self.binds: dict[tuple[str, str, int], int] = {}
        #: submit_sm / data_sm received → its response sent, seconds.
        self.submit_latency = Histogram(SUBMIT_BUCKETS)
        #: Connections closed by the listener's max_connections (refused or evicted).
        self.connections_dropped = 0

    def pdu(self, command_id: int, status: int) -> None:
        key = (command_id, status)
        self.pdus[key] = self.pdus.get(key, 0) + 1


class Server:
    """Everything the ESME-facing handlers share."""

    def __init__(
        self,
        *,
        system_id: str,
        accounts: dict[str, AccountState],
        intake: Intake,
        store: Store,
        delivery: Delivery,
        ids: IdAllocator,
        default_validity: float,
        max_connections: int = 1000,
        guard: BindGuard | None = None,
        wall: Callable[[], float] = time.time,
        sessions: Coordinator | None = None,
        peers: Peers | None = None,
    ) -> None:
        """``sessions``: where an account's session slots are counted across the nodes of
        a cluster (max_sessions holds for all of them); None: this node alone. ``peers``:
        the other nodes of a cluster, asked to cancel or replace a message they queue."""
        self.system_id = system_id
        self.accounts = accounts
        self.intake = intake
        self.store = store
        self.delivery = delivery
        self.ids = ids
        self.default_validity = default_validity
        self.max_connections = max_connections
        #: Failed binds per peer address and their cool-downs.
        self.guard = guard if guard is not None else BindGuard(SecurityConfig())
        self.wall = wall
        self.sessions = sessions
        self.peers = peers
        self.metrics = ServerMetrics()
        self.connections: set[aio.Connection] = set()
        #: Bound sessions by bind id (admin API: list, kick).
        self.binds: dict[str, tuple[BoundSession, aio.Connection]] = {}
        self._bind_seq = 0
        self.accepting = True
        #: Binds waiting for their turn behind their address's attempts in progress.
        self._bind_waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: Connections in arrival order that had not bound when last looked at.
        self._unbound: dict[aio.Connection, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handler(self, conn: aio.Connection) -> EsmeHandler:
        return EsmeHandler(self)

    def admit(self, conn: aio.Connection) -> bool:
        """Take ``conn`` within max_connections: at the limit, close the oldest connection
        that has not bound (a flood of idle connections cannot keep real clients out);
        False (and ``conn`` is to be closed) when every connection is bound."""
        connections = self.connections
        unbound = self._unbound
        while len(connections) >= self.max_connections and unbound:
            oldest = next(iter(unbound))
            del unbound[oldest]
            if oldest.bound or oldest not in connections:
                continue
            connections.discard(oldest)
            self.metrics.connections_dropped += 1
            oldest.abort()
        if len(connections) >= self.max_connections:
            self.metrics.connections_dropped += 1
            return False
        connections.add(conn)
        unbound[conn] = None
        return True

    async def bind_turn(self, peer: str | None) -> Admission:
        """Wait (at most BIND_WAIT seconds) until the guard lets a bind from ``peer`` be
        checked (GO: it is pending) or refuses it (COOLDOWN); WAIT when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BIND_WAIT
        while True:
            admission = self.guard.begin(peer, time.monotonic())
            if admission is not Admission.WAIT or peer is None:
                return admission
            turn = loop.create_future()
            waiting = self._bind_waiters.setdefault(peer, [])
            waiting.append(turn)
            try:
                async with asyncio.timeout_at(deadline):
                    await turn
            except TimeoutError:
                return Admission.WAIT
            finally:
                if turn in waiting:
                    waiting.remove(turn)
                if not waiting and self._bind_waiters.get(peer) is waiting:
                    del self._bind_waiters[peer]

    def bind_ended(self, peer: str | None, *, failed: bool) -> bool:
        """A bind attempt the guard let through ended (``failed``: a guess, counted);
        the binds waiting behind it ask again. True when a cool-down starts."""
        guard = self.guard
        started = guard.failed(peer, time.monotonic()) if failed else False
        if not failed:
            guard.release(peer)
        if started:
            cfg = guard.config
            log.warning(
                "%s: %d failed binds within %gs: refusing its binds for %gs",
                peer,
                cfg.failed_binds,
                cfg.failed_bind_window,
                cfg.bind_cooldown,
            )
        for turn in self._bind_waiters.get(peer, ()) if peer is not None else ():
            if not turn.done():
                turn.set_result(None)
        return started

    def forget(self, conn: aio.Connection) -> None:
        self.connections.discard(conn)
        self._unbound.pop(conn, None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def new_id(self) -> str:
        msg_id = self.ids.next()
        if self.ids.low:
            self.spawn(self.ids.refill())
        return msg_id

    def track_bind(self, conn: aio.Connection, account: str, bind_type: str) -> str:
        self._bind_seq += 1
        bind_id = str(self._bind_seq)
        peer = conn.peer
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        self.binds[bind_id] = (BoundSession(bind_id, account, bind_type, where, self.wall()), conn)
        return bind_id

    async def kick(self, bind_id: str, timeout: float) -> bool:
        """Unbind (then close) one session; False when no such bind."""
        entry = self.binds.get(bind_id)
        if entry is None:
            return False
        await entry[1].unbind(timeout)
        return True

    async def unbind_account(self, account: str, timeout: float) -> None:
        conns = [conn for info, conn in self.binds.values() if info.account == account]
        if conns:
            await asyncio.gather(*(c.unbind(timeout) for c in conns), return_exceptions=True)

    async def unbind_all(self, timeout: float) -> None:
        conns = list(self.connections)
        if conns:
            await asyncio.gather(*(c.unbind(timeout) for c in conns), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _where(peer: tuple[Any, ...] | None) -> str:
    """``host:port`` (``[v6]:port``) of a peer address, for logs (never metric labels)."""
    if not peer:
        return "?"
    host, port = str(peer[0]), peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _payload(pdu: Pdu) -> bytes:
    value = pdu.tlv(Tag.MESSAGE_PAYLOAD)
    return value if isinstance(value, bytes) else b""


class EsmeHandler(aio.Handler):
    """One ESME connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.state: AccountState | None = None
        self.bind_id = ""
        #: (account, token) of the cluster session slot this session holds.
        self.slot: tuple[str, str] | None = None
        #: A bind is waiting for its cluster session slot.
        self._binding = False

    def connection_made(self, conn: aio.Connection) -> None:
        if not self.server.admit(conn):
            conn.abort()

    def session_closed(self, conn: aio.Connection, reason: str) -> None:
        self.server.forget(conn)
        if self.bind_id:
            self.server.binds.pop(self.bind_id, None)
        if self.slot is not None:
            self.server.spawn(self._release_slot(*self.slot))
            self.slot = None
        if self.state is not None:
            self.state.remove(conn)
            log.info("session of %s closed: %s", self.state.system_id, reason)

    def handshake_failed(self, conn: aio.Connection, reason: str) -> None:
        # A TLS connection that never got as far as a bind: one audit line (session_closed,
        # which follows, forgets it).
        audit.info("tls handshake failed peer=%s reason=%s", _where(conn.peer), reason)

    def protocol_violation(self, conn: aio.Connection, event: ProtocolViolation) -> None:
        self.server.metrics.pdu(event.command_id, event.status)

    def late_response(self, conn: aio.Connection, request: Pdu, response: Pdu) -> None:
        if request.command_id == CommandId.DELIVER_SM:
            self.server.delivery.late_answer(conn, request.sequence_number, response.command_status)

    def request_received(self, conn: aio.Connection, pdu: Pdu) -> None:
        handler = _HANDLERS.get(pdu.command_id)
        if handler is None:
            super().request_received(conn, pdu)
            return
        try:
            handler(self, conn, pdu)
        except RemoteProtocolError as err:
            self._refuse(conn, pdu, err.status)

    def _refuse(self, conn: aio.Connection, pdu: Pdu, status: int) -> None:
        assert pdu.response_class is not None
        self.server.metrics.pdu(pdu.command_id, status)
        conn.respond(pdu.response_class(pdu.sequence_number, status))

    # --- bind ---------------------------------------------------------------------------

    def on_bind(self, conn: aio.Connection, pdu: Pdu) -> None:
        server = self.server
        state = server.accounts.get(pdu.system_id)  # type: ignore[attr-defined]
        peer = conn.peer[0] if conn.peer else None
        # Counted before the password is checked: see smsc/security.py.
        admission = server.guard.begin(peer, time.monotonic())
        if admission is Admission.GO:
            self._check(conn, pdu, state, peer)
        elif admission is Admission.COOLDOWN:
            self._bound(conn, pdu, state, _S.ESME_RBINDFAIL, " (peer in bind cool-down)")
        else:
            server.spawn(self._bind_later(conn, pdu, state, peer))

    async def _bind_later(
        self, conn: aio.Connection, pdu: Pdu, state: AccountState | None, peer: str | None
    ) -> None:
        """A bind that waits behind its address's attempts in progress."""
        admission = await self.server.bind_turn(peer)
        if conn.closed:
            if admission is Admission.GO:
                self.server.bind_ended(peer, failed=False)
        elif admission is Admission.GO:
            self._check(conn, pdu, state, peer)
        elif admission is Admission.COOLDOWN:
            self._bound(conn, pdu, state, _S.ESME_RBINDFAIL, " (peer in bind cool-down)")
        else:
            self._bound(conn, pdu, state, _S.ESME_RBINDFAIL, " (too many binds in progress)")

    def _check(
        self, conn: aio.Connection, pdu: Pdu, state: AccountState | None, peer: str | None
    ) -> None:
        """Check a bind the guard let through (it ends its attempt, once)."""
        if state is not None and state.auth.password_hashed:
            # scrypt takes tens of milliseconds on purpose: not on the event loop.
            self.server.spawn(self._bind_hashed(conn, pdu, state, peer))
        else:
            self._bind(conn, pdu, state, None, peer)

    async def _bind_hashed(
        self, conn: aio.Connection, pdu: Pdu, state: AccountState, peer: str | None
    ) -> None:
        offered: str = pdu.password  # type: ignore[attr-defined]
        try:
            ok = await asyncio.to_thread(state.auth.password_matches, offered)
        except BaseException:  # cancelled (shutdown): the attempt ends uncounted
            self.server.bind_ended(peer, failed=False)
            raise
        if conn.closed:
            self.server.bind_ended(peer, failed=not ok)  # checked all the same
            return
        self._bind(conn, pdu, state, ok, peer)

    def _bind(
        self,
        conn: aio.Connection,
        pdu: Pdu,
        state: AccountState | None,
        password_ok: bool | None,
        peer: str | None,
    ) -> None:
        server = self.server
        status = check_bind(
            state.auth if state else None,
            command_id=pdu.command_id,
            password=pdu.password,  # type: ignore[attr-defined]
            peer_host=peer,
            sessions_in_use=len(state.sessions) if state else 0,
            password_ok=password_ok,
        )
        guess = status in _GUESSES  # counted whatever the answer says
        if self.state is not None or self._binding:  # a second bind, pipelined
            status = _S.ESME_RALYBND
        elif not server.accepting:
            status = _S.ESME_RBINDFAIL
        note = " (cool-down starts)" if server.bind_ended(peer, failed=guess) else ""
        if status == _S.ESME_ROK and state is not None and server.sessions is not None:
            self._binding = True
            server.spawn(self._bind_in_cluster(conn, pdu, state, note, server.sessions))
            return
        self._bound(conn, pdu, state, status, note)

    async def _bind_in_cluster(
        self, conn: aio.Connection, pdu: Pdu, state: AccountState, note: str, sessions: Coordinator
    ) -> None:
        """A bind that passed every local check takes one of the account's session slots
        across the cluster (max_sessions counts every node's sessions): ESME_RBINDFAIL when
        all are taken, or when the cluster cannot be asked."""
        account = state.system_id
        try:
            slot = await sessions.acquire_session(
                account, state.account.max_sessions, self.server.wall()
            )
        except ClusterUnavailable:
            self._binding = False
            self._bound(conn, pdu, state, _S.ESME_RBINDFAIL, f"{note} (cluster unreachable)")
            return
        self._binding = False
        if slot is None:
            self._bound(
                conn, pdu, state, _S.ESME_RBINDFAIL, f"{note} (max_sessions across the cluster)"
            )
            return
        if conn.closed:
            await self._release_slot(account, slot)
            return
        self.slot = (account, slot)
        self._bound(conn, pdu, state, _S.ESME_ROK, note)

    async def _release_slot(self, account: str, slot: str) -> None:
        sessions = self.server.sessions
        if sessions is None:
            return
        try:
            await sessions.release_session(account, slot)
        except ClusterUnavailable as exc:  # it lapses with this node's lease instead
            log.warning("session slot of %s not released: %s", account, exc)

    def _bound(
        self, conn: aio.Connection, pdu: Pdu, state: AccountState | None, status: int, note: str
    ) -> None:
        """Count, audit and answer a bind whose status is decided; on success, bind."""
        server = self.server
        system_id: str = pdu.system_id  # type: ignore[attr-defined]
        kind = BIND_TYPE_OF_COMMAND[pdu.command_id].value
        key = (system_id if state else "unknown", kind, status)
        server.metrics.binds[key] = server.metrics.binds.get(key, 0) + 1
        audit.info(
            "bind system_id=%r type=%s peer=%s tls=%s result=%s%s",
            system_id,
            kind,
            _where(conn.peer),
            "yes" if conn.transport and conn.transport.get_extra_info("ssl_object") else "no",
            _S(status).name,
            note,
        )
        if status != _S.ESME_ROK or state is None:
            self._refuse(conn, pdu, status or _S.ESME_RBINDFAIL)
            return
        assert pdu.response_class is not None
        conn.respond(pdu.response_class(pdu.sequence_number, 0, server.system_id))  # type: ignore[call-arg]
        self.state = state
        conn.context = state
        # The account's window bounds what one session may leave unanswered.
        conn.session.limit_inbound_window(state.account.max_window)
        state.add(conn)
        self.bind_id = server.track_bind(conn, state.system_id, kind)
        if conn.session.can_deliver:
            server.delivery.bound(state.system_id)

    # --- submits ------------------------------------------------------------------------

    def _admit(self, conn: aio.Connection, pdu: Pdu) -> AccountState | None:
        state = self.state
        assert state is not None
        status = admit(
            state, self.server.delivery, getattr(pdu, "registered_delivery", 0), time.monotonic()
        )
        if status:
            self._refuse(conn, pdu, status)
            return None
        return state

    def _message(
        self,
        state: AccountState,
        pdu: SubmitSm | DataSm | SubmitMulti,
        dest: Address,
        msg_id: str,
        client_id: str = "",
    ) -> Message:
        server = self.server
        now = server.wall()
        short_message = getattr(pdu, "short_message", b"")
        payload_tlv = False
        if not short_message:
            short_message = _payload(pdu)
            payload_tlv = bool(short_message) or isinstance(pdu, DataSm)
        schedule_at: float | None = None
        expires_at: float | None = None
        if not isinstance(pdu, DataSm) and (pdu.schedule_delivery_time or pdu.validity_period):
            wall = datetime.fromtimestamp(now, UTC)
            if pdu.schedule_delivery_time:
                when = resolve(parse_schedule_delivery_time(pdu.schedule_delivery_time), wall)
                schedule_at = when.timestamp() if when else None
            if pdu.validity_period:
                until = resolve(parse_validity_period(pdu.validity_period), wall)
                expires_at = until.timestamp() if until else None
        return build_message(
            state,
            msg_id=msg_id,
            client_id=client_id,
            source=Address(pdu.source_addr_ton, pdu.source_addr_npi, pdu.source_addr),
            destination=dest,
            short_message=short_message,
            data_coding=pdu.data_coding,
            esm_class=pdu.esm_class,
            protocol_id=getattr(pdu, "protocol_id", 0),
            service_type=pdu.service_type,
            priority=getattr(pdu, "priority_flag", 0),
            registered_delivery=pdu.registered_delivery,
            tlvs=pdu.tlvs,
            now=now,
            default_validity=server.default_validity,
            schedule_at=schedule_at,
            expires_at=expires_at,
            payload_tlv=payload_tlv,
        )

    def on_submit_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, (SubmitSm, DataSm))
        state = self._admit(conn, pdu)
        if state is None:
            return
        if not pdu.destination_addr:
            self._refuse(conn, pdu, _S.ESME_RINVDSTADR)
            return
        server = self.server
        try:
            msg_id = server.new_id()
        except RuntimeError:
            self._refuse(conn, pdu, _S.ESME_RSYSERR)
            return
        dest = Address(pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr)
        message = self._message(state, pdu, dest, msg_id)
        seq = pdu.sequence_number
        resp_cls = SubmitSmResp if isinstance(pdu, SubmitSm) else DataSmResp
        metrics = server.metrics
        cid = pdu.command_id
        started = time.monotonic()

        def done(status: int) -> None:
            metrics.pdu(cid, status)
            metrics.submit_latency.observe(time.monotonic() - started)
            if conn.closed:
                return
            if status:
                conn.respond(resp_cls(seq, status))
            else:  # the body is our id (ASCII) as a C-octet string
                conn.respond_encoded(resp_cls.command_id, seq, 0, msg_id.encode() + b"\0")

        server.intake.submit(message, done)

    def on_submit_multi(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, SubmitMulti)
        state = self._admit(conn, pdu)
        if state is None:
            return
        server = self.server
        try:
            base = server.new_id()
        except RuntimeError:
            self._refuse(conn, pdu, _S.ESME_RSYSERR)
            return
        failed: list[UnsuccessSme] = []
        messages: list[Message] = []
        for dest in pdu.dest_addresses:
            if isinstance(dest, DistributionList):
                failed.append(UnsuccessSme(0, 0, dest.name, _S.ESME_RINVDLNAME))
                continue
            if not dest.address:
                failed.append(UnsuccessSme(dest.ton, dest.npi, "", _S.ESME_RINVDSTADR))
                continue
            n = len(messages)
            msg_id = base if n == 0 else f"{base}-{n + 1}"
            addr = Address(dest.ton, dest.npi, dest.address)
            messages.append(self._message(state, pdu, addr, msg_id, client_id=base))
        seq = pdu.sequence_number
        if not messages:
            server.metrics.pdu(pdu.command_id, _S.ESME_RINVNUMDESTS)
            conn.respond(SubmitMultiResp(seq, 0, "", tuple(failed)))
            return
        remaining = len(messages)
        dests = [m.destination for m in messages]

        def one_done(index: int, status: int) -> None:
            nonlocal remaining
            if status:
                d = dests[index]
                failed.append(UnsuccessSme(d.ton, d.npi, d.addr, status))
            remaining -= 1
            if remaining == 0 and not conn.closed:
                ok = len(failed) < len(pdu.dest_addresses)
                server.metrics.pdu(pdu.command_id, 0)
                conn.respond(SubmitMultiResp(seq, 0, base if ok else "", tuple(failed)))

        for i, message in enumerate(messages):
            server.intake.submit(message, functools.partial(one_done, i))

    # --- message management -------------------------------------------------------------

    def on_query_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, QuerySm)
        self.server.spawn(self._reading_store(conn, pdu, self._query(conn, pdu)))

    async def _reading_store(
        self, conn: aio.Connection, pdu: Pdu, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run ``work``, a handler that reads the store. A store that does not answer
        within its ``read_timeout`` (or is closed) fails the request with ESME_RSYSERR,
        a temporary error: the client asks again later (the store logs why, once)."""
        try:
            await work
        except StoreError as exc:
            log.debug("command %#x answered ESME_RSYSERR: %s", pdu.command_id, exc)
            if not conn.closed:
                self._refuse(conn, pdu, _S.ESME_RSYSERR)

    async def _owned(self, message_id: str, source_addr: str) -> StoredMessage | None:
        """The stored message ``message_id`` if it is this client's (its account's; and
        from ``source_addr`` when the request names one, §4.8-4.10), else None."""
        stored = await self.server.store.get(message_id) if message_id else None
        if (
            stored is None
            or self.state is None
            or stored.message.account != self.state.system_id
            or (source_addr and source_addr != stored.message.source.addr)
        ):
            return None
        return stored

    async def _elsewhere(self, stored: StoredMessage, new: Message | None) -> bool:
        """In a cluster, cancel (``new`` None) or replace a message that another node
        holds, not final yet: that node is asked (it alone knows whether the message is
        still in its queue). StoreError when it does not answer in time."""
        peers = self.server.peers
        owner = stored.owner
        if peers is None or not owner or owner == peers.node_id or stored.done_at is not None:
            return False
        if new is None:
            return await peers.cancel(owner, stored.message.id)
        return await peers.replace(owner, new)

    async def _query(self, conn: aio.Connection, pdu: QuerySm) -> None:
        stored = await self._owned(pdu.message_id, pdu.source_addr)
        if stored is None:
            self._refuse(conn, pdu, _S.ESME_RQUERYFAIL)
            return
        final_date = ""
        if stored.done_at is not None and is_final(stored.state):
            final_date = format_absolute(datetime.fromtimestamp(stored.done_at, UTC))
        state = stored.state
        if state == MessageState.ENROUTE and stored.message.schedule_at:
            state = MessageState.ENROUTE
        self.server.metrics.pdu(pdu.command_id, 0)
        if not conn.closed:
            conn.respond(
                QuerySmResp(
                    pdu.sequence_number,
                    0,
                    pdu.message_id,
                    final_date,
                    int(state),
                    min(stored.error, 255),
                )
            )

    def on_cancel_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, CancelSm)
        self.server.spawn(self._reading_store(conn, pdu, self._cancel(conn, pdu)))

    async def _cancel(self, conn: aio.Connection, pdu: CancelSm) -> None:
        server = self.server
        stored = await self._owned(pdu.message_id, pdu.source_addr)
        if stored is None or not (
            server.intake.cancel(pdu.message_id) or await self._elsewhere(stored, None)
        ):
            # §4.9.1: no id-less bulk cancel here; only a message not yet sent upstream.
            self._refuse(conn, pdu, _S.ESME_RCANCELFAIL)
            return
        # The router finished it (DELETED: stored, reported, its summary line logged).
        server.metrics.pdu(pdu.command_id, 0)
        if not conn.closed:
            conn.respond(CancelSmResp(pdu.sequence_number))

    def on_replace_sm(self, conn: aio.Connection, pdu: Pdu) -> None:
        assert isinstance(pdu, ReplaceSm)
        self.server.spawn(self._reading_store(conn, pdu, self._replace(conn, pdu)))

    async def _replace(self, conn: aio.Connection, pdu: ReplaceSm) -> None:
        server = self.server
        stored = await self._owned(pdu.message_id, pdu.source_addr)
        if stored is None:
            self._refuse(conn, pdu, _S.ESME_RREPLACEFAIL)
            return
        old = stored.message
        wall = datetime.fromtimestamp(server.wall(), UTC)
        try:
            schedule_at = old.schedule_at
            if pdu.schedule_delivery_time:
                when = resolve(parse_schedule_delivery_time(pdu.schedule_delivery_time), wall)
                schedule_at = when.timestamp() if when else None
            expires_at = old.expires_at
            if pdu.validity_period:
                until = resolve(parse_validity_period(pdu.validity_period), wall)
                expires_at = until.timestamp() if until else None
        except RemoteProtocolError as err:
            self._refuse(conn, pdu, err.status)
            return
        new = msgspec.structs.replace(
            old,
            short_message=pdu.short_message or _payload(pdu),
            registered_delivery=pdu.registered_delivery,
            schedule_at=schedule_at,
            expires_at=expires_at,
        )
        if not (server.intake.replace(new) or await self._elsewhere(stored, new)):
            self._refuse(conn, pdu, _S.ESME_RREPLACEFAIL)
            return
        server.metrics.pdu(pdu.command_id, 0)
        if not conn.closed:
            conn.respond(ReplaceSmResp(pdu.sequence_number))


_HANDLERS: dict[int, Callable[[EsmeHandler, aio.Connection, Pdu], None]] = {
    CommandId.BIND_TRANSMITTER: EsmeHandler.on_bind,
    CommandId.BIND_RECEIVER: EsmeHandler.on_bind,
    CommandId.BIND_TRANSCEIVER: EsmeHandler.on_bind,
    CommandId.SUBMIT_SM: EsmeHandler.on_submit_sm,
    CommandId.DATA_SM: EsmeHandler.on_submit_sm,
    CommandId.SUBMIT_MULTI: EsmeHandler.on_submit_multi,
    CommandId.QUERY_SM: EsmeHandler.on_query_sm,
    CommandId.CANCEL_SM: EsmeHandler.on_cancel_sm,
    CommandId.REPLACE_SM: EsmeHandler.on_replace_sm,
}
