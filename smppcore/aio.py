"""The one asyncio adapter: a Session on a transport, for both roles.

:class:`Connection` is an ``asyncio.Protocol`` wrapping one :class:`Session`. It feeds
received bytes to the session, hands requests to a :class:`Handler`, resolves the futures of
our own requests, drives the session's timers with ``loop.call_at``, and writes what the
session queues in one ``transport.write`` per batch. Flow control both ways: reading
pauses while the peer's unanswered requests fill the inbound window, and ``drain()`` waits
(on an event, with a deadline) while the transport's write buffer is over its high mark.

:func:`start_server` and :func:`connect` are the two ways in. Only this module of
smppcore touches asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, cast

from smppcore.codec import HEADER, decode
from smppcore.constants import HEADER_LENGTH, CommandStatus, status_name
from smppcore.errors import SmppError
from smppcore.pdu import Pdu
from smppcore.session import (
    Event,
    LateResponse,
    ProtocolViolation,
    RequestExpired,
    RequestReceived,
    ResponseReceived,
    Role,
    Session,
    SessionClosed,
    SessionConfig,
    State,
)

log = logging.getLogger(__name__)

READ_BUDGET = 16_384
"""Octets fed to the session per loop turn; the rest of a large read waits a turn."""

Callback = Callable[["Pdu | SmppError"], None]
"""What :meth:`Connection.send_request_callback` calls: the response or the error."""

_TCP_QUICKACK: Any = getattr(socket, "TCP_QUICKACK", None)


class _WriteTick:
    """The coalescing timer of every connection on one loop.

    Connections holding requests back to share a write (``SessionConfig.coalesce``) wait
    for one timer, not one each: ten connections each flushing every 2 ms would wake the
    process up to 5,000 times a second, and on a shared VM a wake-up costs tens of
    microseconds before any work is done. A request still waits at most its connection's
    ``coalesce`` (the timer is moved earlier for a shorter one); it may go sooner, with
    the tick another connection started. It holds no reference to its loop (the registry
    below is keyed weakly by it): it is reached through the connections' ``_loop``."""

    __slots__ = ("_at", "_due", "_timer")

    def __init__(self) -> None:
        self._due: dict[Connection, None] = {}  # ordered: flushed in the order they came
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def add(self, conn: Connection, delay: float) -> None:
        self._due[conn] = None
        loop = conn._loop
        at = loop.time() + delay
        if self._timer is not None:
            if self._at <= at:
                return
            self._timer.cancel()
        self._at = at
        self._timer = loop.call_at(at, self._fire)

    def discard(self, conn: Connection) -> None:
        self._due.pop(conn, None)
        if not self._due and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        due, self._due = self._due, {}
        for conn in due:
            conn._coalescing = False
        for conn in due:
            try:
                conn._flush()
            except Exception:  # a bug in one connection must not strand the others' requests
                log.exception("flushing %s failed", conn.peer)


_ticks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriteTick] = (
    weakref.WeakKeyDictionary()
)


def _write_tick(loop: asyncio.AbstractEventLoop) -> _WriteTick:
    tick = _ticks.get(loop)
    if tick is None:
        tick = _ticks[loop] = _WriteTick()
    return tick


class ConnectionClosed(SmppError):
    """The session ended before the request was answered."""


class RequestTimeout(SmppError):
    """No window slot (``reason == "window"``) or no response (``"response"``) in time.
    ``sequence_number`` is the request's (a late answer to it reaches
    :meth:`Handler.late_response`)."""

    def __init__(self, message: str, *, reason: str, sequence_number: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.sequence_number = sequence_number


class BindError(SmppError):
    """The peer refused our bind; ``status`` says why."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {status_name(status)}")
        self.status = status


class Handler:
    """What an application does with a connection. Override what you need.

    Callbacks run on the event loop, synchronously inside ``data_received``: answer quickly
    with ``conn.respond(...)`` or hand the work to a task and answer later.
    """

    def connection_made(self, conn: Connection) -> None:
        """A connection is accepted (before any PDU). On a TLS listener this comes before
        the handshake, while ``conn.transport`` is None: a connection in its handshake
        counts as one, and ``conn.abort()`` ends the handshake."""

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        """The peer sent a request. The default refuses it (ESME_RX_R_APPN): override it.
        enquire_link and unbind are answered by the core and never reach here."""
        if pdu.response_class is not None:
            conn.respond(
                pdu.response_class(
                    sequence_number=pdu.sequence_number,
                    command_status=CommandStatus.ESME_RX_R_APPN,
                )
            )

    def protocol_violation(self, conn: Connection, event: ProtocolViolation) -> None:
        """The peer broke the protocol; the core already answered it on the wire."""

    def late_response(self, conn: Connection, request: Pdu, response: Pdu) -> None:
        """The peer answered ``request`` after its callback got RequestTimeout
        (``reason == "response"``); the request's sequence number is its. The default
        ignores it."""

    def session_closed(self, conn: Connection, reason: str) -> None:
        """The session is over (unbind, timer, error or lost connection)."""

    def handshake_failed(self, conn: Connection, reason: str) -> None:
        """A TLS listener's connection ended before its handshake did. ``reason`` says
        why: the TLS error, ``no handshake within <n>s``, ``closed by the peer``, or
        ``closed by the server`` (``conn.abort()``, the listener closing).
        :meth:`session_closed` follows."""
        log.info("TLS handshake with %s failed: %s", conn.peer, reason)


class Connection(asyncio.Protocol):
    """One SMPP connection: a Session on an asyncio transport."""

    def __init__(
        self,
        role: Role,
        config: SessionConfig | None = None,
        handler: Handler | None = None,
        *,
        handler_factory: Callable[[Connection], Handler] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.config = config or SessionConfig()
        self.session = Session(role, self._loop.time(), self.config)
        self.handler = handler or Handler()
        self._handler_factory = handler_factory
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[Any, ...] | None = None
        self._waiters: dict[int, Callback] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._in_receive = False
        self._flush_scheduled = False
        self._tick = _write_tick(self._loop)
        self._coalescing = False  # requests held back on self._tick to share a write
        self._reading_paused = False
        self._stalled = False
        #: MC role: the peer does not read what we write; stop reading it too.
        self._write_blocked = False
        self._close_deadline: asyncio.TimerHandle | None = None
        #: Received but not yet fed to the session (see _receive).
        self._backlog = b""
        self._quickack: Any = None
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._closed = self._loop.create_future()
        #: Ends the TLS handshake under way (a TLS listener's connection before it is up).
        self._cancel_handshake: Callable[[], object] | None = None
        self._accepted = False  # the handler was made before the transport (TLS)
        #: Free-form slot for the application (the authenticated account, say).
        self.context: Any = None

    def handshake_started(self, peer: tuple[Any, ...], cancel: Callable[[], object]) -> None:
        """A TLS listener accepted the TCP connection from ``peer``; its handshake begins
        and ``cancel`` ends it. The handler is made and told (``connection_made``) now."""
        self.peer = peer
        self._cancel_handshake = cancel
        self._accepted = True
        if self._handler_factory is not None:
            self.handler = self._handler_factory(self)
        self.handler.connection_made(self)

    def handshake_ended(self, reason: str) -> None:
        """The TLS handshake failed (``reason``): the handler hears it, then the session
        is closed as for a lost connection."""
        if self._cancel_handshake is None:
            return  # already over (or never started)
        self._cancel_handshake = None
        if not self.closed:
            self.handler.handshake_failed(self, reason)
            self.connection_lost(None)

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _TCP_QUICKACK is not None:
                self._quickack = sock
        self._cancel_handshake = None
        if not self._accepted:  # a TLS listener's handler has been told already
            if self._handler_factory is not None:
                self.handler = self._handler_factory(self)
            self.handler.connection_made(self)
        self._arm(self.session.get_timer())

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:
            # Linux turns quick ACKs off again after a while: a peer that sends one PDU and
            # waits (window 1, Nagle on) would otherwise wait for our delayed ACK, 40 ms.
            self._quickack.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if self._backlog:  # read before the pause took effect: after what waits
            self._backlog += data
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        if len(data) > READ_BUDGET and not self._stalled:
            # One read can hold thousands of PDUs (256 KiB): handled in one go, they would
            # hold the loop for a quarter of a second while every other connection, timer
            # and the store writer wait. Take a slice per loop turn, reading paused meanwhile.
            self._backlog = data[READ_BUDGET:]
            data = data[:READ_BUDGET]
            self._loop.call_soon(self._receive_backlog)
        self._in_receive = True
        try:
            events = self.session.receive_data(data, self._loop.time())
            if events:
                self._dispatch(events)
        finally:
            self._in_receive = False
        self._flush()
        self._update_reading()
        self._arm(self.session.get_timer())

    def _receive_backlog(self) -> None:
        data, self._backlog = self._backlog, b""
        if data and self.transport is not None and not self.session.closed:
            self._receive(data)

    def eof_received(self) -> bool | None:
        while self._backlog and not self.session.closed:  # the peer's last words first
            self._receive_backlog()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed.done():
            return  # a TLS handshake that failed: told once already (handshake_ended)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._coalescing:
            self._coalescing = False
            self._tick.discard(self)
        if self._close_deadline is not None:
            self._close_deadline.cancel()
        self._dispatch(self.session.connection_lost())
        self._write_ready.set()  # release drain() waiters; they see the closed session
        if not self._closed.done():
            self._closed.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        self._write_ready.clear()
        # An ESME that sends without reading (enquire_link, unknown ids: each one answered)
        # would grow our write buffer without bound: as the MC, read no more from it until
        # it reads. Only the MC side does this, so two of our own ends never both wait.
        if self.session.role is Role.MC:
            self._write_blocked = True
            self._update_reading()

    def resume_writing(self) -> None:
        self._write_ready.set()
        if self._write_blocked:
            self._write_blocked = False
            self._update_reading()

    # --- requests we send -------------------------------------------------------------------

    def send_request(self, pdu: Pdu) -> asyncio.Future[Pdu]:
        """Queue a request now; the future gets its response (any status), or fails with
        RequestTimeout or ConnectionClosed. Raises WindowFull / LocalProtocolError at once."""
        fut: asyncio.Future[Pdu] = self._loop.create_future()
        self.send_request_callback(pdu, partial(_settle, fut))
        return fut

    def send_request_callback(self, pdu: Pdu, callback: Callback) -> int:
        """Queue a request now; ``callback`` is called once, from the loop, with its
        response (any status) or with the RequestTimeout / ConnectionClosed that ended it.
        Raises WindowFull / LocalProtocolError at once (and then never calls back).
        Returns the request's sequence number.

        The hot paths use this rather than :meth:`send_request`: no Future, no extra loop
        turn between the response and the code that waits for it."""
        session = self.session
        if session.closed:
            raise ConnectionClosed(f"session closed: {session.close_reason}")
        now = self._loop.time()
        sent = session.send_request(pdu, now)
        if sent.response_class is None:
            callback(sent)  # outbind / alert_notification: nothing to wait for
        else:
            self._await_answer(sent.sequence_number, now, callback)
        self._request_queued()
        return sent.sequence_number

    def send_request_encoded_callback(
        self, command_id: int, body: bytes, callback: Callback
    ) -> int:
        """:meth:`send_request_callback` for a request given as its encoded body (see
        :meth:`Session.send_request_encoded`); returns its sequence number. A peer that
        speaks SMPP 3.3 gets the body decoded and sent without its TLVs (§5.3)."""
        session = self.session
        if session.closed:
            raise ConnectionClosed(f"session closed: {session.close_reason}")
        if not session.takes_tlvs:
            frame = HEADER.pack(HEADER_LENGTH + len(body), command_id, 0, 0) + body
            return self.send_request_callback(decode(frame), callback)
        now = self._loop.time()
        seq = session.send_request_encoded(command_id, body, now)
        self._await_answer(seq, now, callback)
        self._request_queued()
        return seq

    def _await_answer(self, sequence_number: int, now: float, callback: Callback) -> None:
        self._waiters[sequence_number] = callback
        cfg = self.config
        self._arm(now + min(cfg.response_timeout, cfg.slot_timeout))

    def _request_queued(self) -> None:
        self._schedule_request_flush()
        if self._reading_paused:  # awaiting an answer now: reading may resume
            self._update_reading()

    async def request(self, pdu: Pdu) -> Pdu:
        """Send a request and wait for its response (the session's timeouts bound the wait)."""
        return await self.send_request(pdu)

    async def bind(self, pdu: Pdu) -> Pdu:
        """Send a bind request; returns its response or raises BindError."""
        resp = await self.request(pdu)
        if resp.command_status != CommandStatus.ESME_ROK:
            raise BindError(resp.command_status)
        return resp

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the transport takes more data; ConnectionClosed when it is gone."""
        if not self._write_ready.is_set():
            async with asyncio.timeout(
                timeout if timeout is not None else self.config.slot_timeout
            ):
                await self._write_ready.wait()
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed("connection closed")

    # --- answers we send ----------------------------------------------------------------

    def respond(self, pdu: Pdu) -> None:
        """Answer a request from the peer (written with the current batch)."""
        if self._stalled:
            return
        self.session.send_response(pdu)
        self._schedule_flush()
        if self._reading_paused:
            self._update_reading()

    def respond_encoded(
        self, command_id: int, sequence_number: int, status: int, body: bytes
    ) -> None:
        """:meth:`respond` with an encoded body (see :meth:`Session.send_response_encoded`)."""
        if self._stalled:
            return
        self.session.send_response_encoded(command_id, sequence_number, status, body)
        self._schedule_flush()
        if self._reading_paused:
            self._update_reading()

    def stall(self) -> None:
        """Hang like a dead peer: stop reading, answering and running timers, but keep the
        TCP connection open (fault injection for resilience tests)."""
        self._stalled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.pause_reading()

    # --- the end --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def bound(self) -> bool:
        return self.session.is_bound

    async def unbind(self, timeout: float = 5.0) -> None:
        """End the session cleanly: unbind, wait for unbind_resp (bounded), close."""
        if self.transport is None:
            return
        if self.session.is_bound:
            self.session.unbind(self._loop.time())
            self._flush()
            self._arm(self._loop.time() + timeout)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed)
                return
            except TimeoutError:
                log.debug("unbind_resp not received in %.1fs; closing", timeout)
        self.close()
        await self.wait_closed(timeout)

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent data (a peer that reads nothing
        would otherwise keep a clean close waiting); in its TLS handshake, end that."""
        if self.transport is not None:
            self.transport.abort()
        elif self._cancel_handshake is not None:
            self._cancel_handshake()

    def close(self) -> None:
        """Close the transport after writing what is queued."""
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()
            # A peer that reads nothing would keep the close (and its fd) waiting for ever.
            self._close_deadline = self._loop.call_later(self.config.slot_timeout, self.abort)

    async def wait_closed(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._closed)

    # --- internals ------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        waiters = self._waiters
        handler = self.handler
        for ev in events:
            cls = type(ev)
            if cls is RequestReceived:
                pdu = ev.pdu  # type: ignore[union-attr]
                try:
                    handler.request_received(self, pdu)
                except Exception:
                    # A bug in one handler must not take the batch or the session down.
                    log.exception("handler failed on %s from %s", type(pdu).__name__, self.peer)
                    if pdu.response_class is not None and self.session.awaits_answer(
                        pdu.sequence_number
                    ):
                        self.respond(
                            pdu.response_class(
                                sequence_number=pdu.sequence_number,
                                command_status=CommandStatus.ESME_RSYSERR,
                            )
                        )
            elif cls is ResponseReceived:
                cb = waiters.pop(ev.request.sequence_number, None)  # type: ignore[union-attr]
                if cb is not None:
                    self._call_back(cb, ev.response)  # type: ignore[union-attr]
            elif cls is RequestExpired:
                assert isinstance(ev, RequestExpired)
                cb = waiters.pop(ev.request.sequence_number, None)
                if cb is not None:
                    if ev.reason == "closed":
                        err: SmppError = ConnectionClosed(
                            f"session closed: {self.session.close_reason}"
                        )
                    else:
                        err = RequestTimeout(
                            f"{type(ev.request).__name__} seq "
                            f"{ev.request.sequence_number}: no {ev.reason} in time",
                            reason=ev.reason,
                            sequence_number=ev.request.sequence_number,
                        )
                    self._call_back(cb, err)
            elif cls is LateResponse:
                assert isinstance(ev, LateResponse)
                try:
                    handler.late_response(self, ev.request, ev.response)
                except Exception:
                    log.exception("late response handler failed on %s", self.peer)
            elif cls is ProtocolViolation:
                assert isinstance(ev, ProtocolViolation)
                log.info("peer %s: %s (answered %s)", self.peer, ev.detail, status_name(ev.status))
                handler.protocol_violation(self, ev)
            elif cls is SessionClosed:
                assert isinstance(ev, SessionClosed)
                self._schedule_close()
                handler.session_closed(self, ev.reason)

    def _call_back(self, callback: Callback, result: Pdu | SmppError) -> None:
        try:
            callback(result)
        except Exception:
            # One waiter's bug must not take the batch or the session down.
            log.exception("response callback failed on %s", self.peer)

    def _update_reading(self) -> None:
        """Pause reading while the peer's unanswered requests fill the inbound window —
        but never while we wait for answers of our own: pausing would starve them (a
        peer pipelining past the window is answered ESME_RTHROTTLED by the core)."""
        transport = self.transport
        if transport is None or self._stalled:
            return
        session = self.session
        pause = (
            self._write_blocked
            or bool(self._backlog)
            or (session.inbound_full and not session.awaiting_responses)
        )
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _schedule_flush(self) -> None:
        if self._in_receive or self._flush_scheduled:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _schedule_request_flush(self) -> None:
        """A request was queued: written at the end of this loop turn, or after
        ``config.coalesce`` together with those that follow (answers never wait)."""
        if self._flush_scheduled or self._in_receive or self._coalescing:
            return
        delay = self.config.coalesce
        if delay > 0:
            self._coalescing = True
            self._tick.add(self, delay)
        else:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._coalescing:
            self._coalescing = False
            self._tick.discard(self)
        if self._stalled:
            return
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _schedule_close(self) -> None:
        # After the current batch is flushed (unbind_resp, generic_nack), close.
        self._loop.call_soon(self.close)

    def _arm(self, when: float | None) -> None:
        """Make sure the timer fires no later than ``when``."""
        if when is None or self._stalled:
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        events = self.session.handle_timer(self._loop.time())
        if events:
            self._dispatch(events)
        self._flush()
        self._update_reading()
        self._arm(self.session.get_timer())


def _settle(fut: asyncio.Future[Pdu], result: Pdu | SmppError) -> None:
    if fut.done():
        return  # cancelled by its awaiter
    if isinstance(result, SmppError):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class Listener(Protocol):
    """What :func:`start_server` returns: an ``asyncio.Server`` or a :class:`TlsServer`."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class TlsServer:
    """A TLS listener that takes each connection before its handshake.

    ``loop.create_server(ssl=...)`` makes the protocol see a connection only once its
    handshake is over, and says nothing of one that fails: a flood of connections that
    never finish a handshake would hold sockets outside any limit, unseen. Here each
    accepted socket gets its Connection (and its handler's ``connection_made``, where
    limits are applied) at once; the handshake runs within ``handshake_timeout`` and, when
    it fails, the handler hears why (``handshake_failed``). ``conn.abort()`` ends a
    handshake under way. Closing the listener ends the handshakes under way too.
    """

    def __init__(
        self,
        socks: list[socket.socket],
        handler_factory: Callable[[Connection], Handler],
        config: SessionConfig,
        ssl: ssl_module.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._socks = tuple(socks)
        self._factory = handler_factory
        self._config = config
        self._ssl = ssl
        self._timeout = handshake_timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in socks]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._socks

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as exc:  # out of file descriptors, say: as asyncio does, wait
                log.error("accepting on %s failed: %s", listening.getsockname(), exc)
                await asyncio.sleep(1.0)
                continue
            task = loop.create_task(self._handshake(sock, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        conn = Connection(Role.MC, self._config, handler_factory=self._factory)
        task = asyncio.current_task()
        assert task is not None
        reason = "closed by the server"
        conn.handshake_started(peer, task.cancel)  # may abort it: cancelled at the await
        try:
            async with asyncio.timeout(self._timeout):
                await loop.connect_accepted_socket(
                    lambda: conn, sock, ssl=self._ssl, ssl_handshake_timeout=self._timeout + 5.0
                )
            return
        except TimeoutError:
            reason = f"no handshake within {self._timeout:g}s"
        except ssl_module.SSLError as exc:
            reason = str(getattr(exc, "verify_message", None) or exc.reason or exc)
        except ConnectionResetError:
            reason = "closed by the peer"
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            sock.close()
            conn.handshake_ended(reason)
            raise
        sock.close()
        conn.handshake_ended(reason)

    def close(self) -> None:
        """Stop accepting, close the listening sockets and end the handshakes under way
        (connections already up are not touched, as with ``asyncio.Server``)."""
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        for sock in self._socks:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._handshakes, return_exceptions=True)


def _listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host``:``port`` (every address the
    name has), as ``loop.create_server`` makes them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def start_server(
    handler_factory: Callable[[Connection], Handler],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    config: SessionConfig | None = None,
    ssl: ssl_module.SSLContext | None = None,
    backlog: int = 1024,
) -> Listener:
    """Listen for ESMEs: each connection gets an MC-role Connection and its own handler.

    With ``ssl``, a :class:`TlsServer`: a connection counts from its TCP accept, and its
    TLS handshake must end within the config's ``session_init_timeout`` (the time a
    connection has to bind, of which the handshake is part; 60 s when that is off): a
    peer that connects and never says hello is closed."""
    cfg = config or SessionConfig()
    if ssl is not None:
        socks = await asyncio.to_thread(_listening_sockets, host, port, backlog)
        return TlsServer(socks, handler_factory, cfg, ssl, cfg.session_init_timeout or 60.0)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Connection(Role.MC, cfg, handler_factory=handler_factory),
        host,
        port,
        backlog=backlog,
    )


async def connect(
    host: str,
    port: int,
    *,
    config: SessionConfig | None = None,
    handler: Handler | None = None,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 10.0,
    role: Role = Role.ESME,
) -> Connection:
    """Open a TCP (or TLS) connection to an SMPP peer; bind with ``conn.bind(...)``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(
            lambda: Connection(role, config, handler),
            host,
            port,
            ssl=ssl,
            server_hostname=server_hostname if ssl is not None else None,
        )
    return conn


__all__ = [
    "BindError",
    "Connection",
    "ConnectionClosed",
    "Handler",
    "Listener",
    "RequestTimeout",
    "State",
    "TlsServer",
    "connect",
    "start_server",
]
