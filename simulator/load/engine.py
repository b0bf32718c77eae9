"""One worker's load: its binds, its share of the schedule, its counters and histograms.

Built for speed on the submit path. A bind is a lean ESME-side ``asyncio.Protocol``: the
submit_sm PDUs come pre-encoded from :class:`~simulator.load.traffic.MessageFactory`
(only the sequence number and random digits are patched), a whole batch goes out in one
``transport.write``, and a submit_sm_resp is read from its 16-octet header (plus its
message_id when receipts are tracked) without building a struct. A deliver_sm (a receipt,
one per message) is read straight from its frame by
:func:`~simulator.load.fastpdu.scan_deliver_sm`, which hands anything the codec might
refuse back to it, and the deliver_sm_resp of one read go out with the next submits in
one write. Everything else — bind, data_sm, enquire_link, unbind, generic_nack, odd
deliver_sm — is encoded and decoded by :mod:`smppcore.codec`. smppcore's Session is
not used because its ``send_request`` takes a PDU struct and encodes it: it has no seam
for pre-encoded bytes (measured: see bench/RESULTS.md).

Latency is measured from the *intended* send time in open loop (coordinated omission:
when the server, a full window or the generator itself holds a message back, that wait
counts) and from the actual send time as ``service`` time.

Nothing here knows about processes: :class:`Engine` takes decoded control messages with
:meth:`Engine.handle` and reports through an ``emit`` callback; :mod:`simulator.load.run`
carries both over a pipe, or calls them directly for a worker in the parent's loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Final as Const

from simulator.load.fastpdu import scan_deliver_sm
from simulator.load.histogram import Histogram
from simulator.load.messages import (
    Closed,
    Counters,
    Drained,
    Fatal,
    Final,
    Finish,
    Go,
    Plan,
    Ready,
    Relay,
    Report,
    Snapshot,
    Status,
    Stop,
    ToParent,
    ToWorker,
)
from simulator.load.traffic import MessageFactory
from smppcore.codec import decode, encode
from smppcore.constants import (
    HEADER_LENGTH,
    MAX_SEQUENCE,
    RESPONSE_BIT,
    CommandId,
    CommandStatus,
    EsmClass,
    MessageState,
)
from smppcore.errors import RemoteProtocolError
from smppcore.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    GenericNack,
)
from smppcore.receipt import is_final, normalize_id, parse_receipt, stat_word
from smppcore.tlv import Tag

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IIII")
_SEQ = struct.Struct(">I")

_SUBMIT_SM_RESP: Const = int(CommandId.SUBMIT_SM_RESP)
_DELIVER_SM: Const = int(CommandId.DELIVER_SM)
_DELIVER_SM_RESP: Const = int(CommandId.DELIVER_SM_RESP)
#: A deliver_sm_resp: the header and an empty message_id.
_DELIVER_SM_RESP_PACK: Const = struct.Struct(">IIIIB").pack
_GENERIC_NACK: Const = int(CommandId.GENERIC_NACK)
_THROTTLED: Const = int(CommandStatus.ESME_RTHROTTLED)
_MSGQFUL: Const = int(CommandStatus.ESME_RMSGQFUL)
_RECEIPT_BITS: Const = int(EsmClass.DELIVERY_RECEIPT | EsmClass.INTERMEDIATE_NOTIFICATION)
_INTERMEDIATE: Const = int(EsmClass.INTERMEDIATE_NOTIFICATION)
_DELIVERY_RECEIPT: Const = int(EsmClass.DELIVERY_RECEIPT)
#: The stat word of each message_state that ends a message, None for the others
#: (SCHEDULED, ENROUTE); a value outside the enum reads as UNKNOWN.
_FINAL_WORDS: Const[dict[int, str | None]] = {
    int(state): stat_word(state) if is_final(state) else None for state in MessageState
}
_UNKNOWN_WORD: Const = _FINAL_WORDS[int(MessageState.UNKNOWN)]
#: Bind refusals that will not get better by trying again: fatal on the first bind.
FATAL_BIND_STATUSES: Const = frozenset(
    {int(CommandStatus.ESME_RINVPASWD), int(CommandStatus.ESME_RINVSYSID)}
)
#: Receipts that came before their submit_sm_resp, kept at most this many per worker.
_EARLY_MAX: Const = 100_000
#: Ids whose receipt was declared missing, remembered to tell "late" from "unmatched".
_EXPIRED_MAX: Const = 100_000
#: How often housekeeping runs (timeouts, receipts, snapshots, back-off ends): seconds.
_TICK: Const = 0.05
#: The shortest wait for the next open-loop send: the event loop's timer resolution.
#: uvloop (libuv) counts timers in whole milliseconds and rounds ``delay * 1000``: a
#: shorter delay rounds to 0 and makes the loop spin (measured: a whole core at 3000/s).
#: Messages due between two ticks also go out whenever a PDU arrives (data_received).
_MIN_TICK: Const = 0.001
#: On Ctrl-C, wait at most this long for answers to submits in flight.
_INTERRUPT_DRAIN: Const = 2.0
_UNBIND_TIMEOUT: Const = 2.0
_MAX_PDU: Const = 65_536 + 1024


class BindFailed(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Bind(asyncio.Protocol):
    """One SMPP connection of the harness (transceiver, transmitter or receiver)."""

    def __init__(self, engine: Engine, kind: str, index: int) -> None:
        self.engine = engine
        self.kind = kind  # "trx", "tx", "rx"
        self.index = index
        self.submits = kind != "rx"
        self.transport: asyncio.Transport | None = None
        self.bound = False
        self.unbinding = False
        self.buf = bytearray()
        self.inflight: dict[int, tuple[float, float, bytes, int]] = {}
        self.seq = 1
        self.writable = True
        self.paused_until = 0.0
        self.backoff_level = 0
        self.last_rx = 0.0
        self.enquire_sent: float | None = None
        self._bind_waiter: asyncio.Future[int] | None = None
        self.closed: asyncio.Future[None] | None = None

    # --- connection -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bind, bounded by connect_timeout; BindFailed or OSError/TimeoutError."""
        engine = self.engine
        target = engine.config.target
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        async with asyncio.timeout(engine.config.binds.connect_timeout):
            await loop.create_connection(lambda: self, target.host, target.port)
            cls = {"trx": BindTransceiver, "tx": BindTransmitter, "rx": BindReceiver}[self.kind]
            waiter: asyncio.Future[int] = loop.create_future()
            self._bind_waiter = waiter
            seq = self._next_seq()
            self._write(
                encode(
                    cls(
                        sequence_number=seq,
                        system_id=target.system_id,
                        password=target.password,
                        system_type=target.system_type,
                    )
                )
            )
            try:
                status = await waiter
            finally:
                self._bind_waiter = None
        if status:
            self.close()
            raise BindFailed(f"bind refused: {CommandStatus(status).name}", status)
        self.bound = True
        self.last_rx = time.monotonic()

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = seq + 1 if seq < MAX_SEQUENCE else 1
        return seq

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = bytearray()
        self.writable = True
        self.bound = False
        self.unbinding = False
        self.enquire_sent = None
        self.backoff_level = 0
        self.paused_until = 0.0
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        was_bound = self.bound
        self.bound = False
        self.transport = None
        engine = self.engine
        if self.inflight:
            engine.counters.lost += len(self.inflight)
            self.inflight.clear()
        if self._bind_waiter is not None and not self._bind_waiter.done():
            self._bind_waiter.set_exception(ConnectionResetError("connection lost during bind"))
        if was_bound and not self.unbinding:
            engine.counters.drops += 1
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.engine.fill(self)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def unbind(self) -> None:
        """Unbind (bounded), then close."""
        if self.transport is None or self.closed is None:
            return
        if self.bound:
            self.unbinding = True
            self._write(_HEADER.pack(16, CommandId.UNBIND, 0, self._next_seq()))
            try:
                async with asyncio.timeout(_UNBIND_TIMEOUT):
                    await asyncio.shield(self.closed)
                return
            except TimeoutError:
                pass
        self.unbinding = True
        self.close()
        try:
            async with asyncio.timeout(_UNBIND_TIMEOUT):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()

    # --- reading --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        size = len(src)
        pos = 0
        now = time.monotonic()
        self.last_rx = now
        engine = self.engine
        inflight = self.inflight
        unpack = _HEADER.unpack_from
        lat = engine.lat_iv
        svc = engine.svc_iv
        c = engine.counters
        track = engine.track_receipts
        plain = engine.plain_ids
        plain_receipts = engine.plain_receipts
        receipt_states = c.receipt_states
        rcpt = engine.rcpt_iv
        awaiting = engine.awaiting
        max_tracked = engine.max_tracked
        freed = False
        # deliver_sm_resp of this batch: written with the next submits, in one write.
        replies: list[bytes] = []
        while size - pos >= HEADER_LENGTH:
            length, cid, status, seq = unpack(src, pos)
            if length < HEADER_LENGTH or length > _MAX_PDU:
                c.protocol_errors += 1
                log.warning("bind %d: command_length %d: closing", self.index, length)
                if replies:
                    self._write(b"".join(replies))
                self.buf = bytearray()
                self.abort()
                return
            if size - pos < length:
                break
            if cid == _SUBMIT_SM_RESP:
                entry = inflight.pop(seq, None)
                if entry is None:
                    c.unmatched_responses += 1
                elif status == 0:
                    freed = True
                    c.accepted += 1
                    self.backoff_level = 0
                    # Latency from the intended time (no coordinated omission), and
                    # from the moment it went out.
                    lat.record(now - entry[0])
                    svc.record(now - entry[1])
                    if track:
                        end = src.find(0, pos + 16, pos + length)
                        mid = src[pos + 16 : end if end >= 0 else pos + length].decode("latin-1")
                        # submit_accepted's common case inlined: the id as is, owned here.
                        if plain and mid and not engine.early and len(awaiting) < max_tracked:
                            awaiting[mid] = entry[0]
                        else:
                            engine.submit_accepted(mid, entry[0])
                else:
                    freed = True
                    engine.submit_failed(self, entry, status, now)
            elif (
                cid == _DELIVER_SM
                and (scanned := scan_deliver_sm(src, pos, pos + length)) is not None
            ):
                # A receipt (or MO) read from the frame; the codec reads anything odder.
                replies.append(_DELIVER_SM_RESP_PACK(17, _DELIVER_SM_RESP, 0, seq, 0))
                esm_class, rid, state, body = scanned
                # Engine._delivered's common case inlined: a final receipt with both TLVs,
                # its id as is and owned here, awaited.
                if (
                    plain_receipts
                    and rid
                    and state is not None
                    and esm_class & _RECEIPT_BITS == _DELIVERY_RECEIPT
                    and (word := _FINAL_WORDS.get(state, _UNKNOWN_WORD))
                    and (intended := awaiting.pop(rid, None)) is not None
                ):
                    c.receipts += 1
                    receipt_states[word] = receipt_states.get(word, 0) + 1
                    rcpt.record(now - intended)
                else:
                    engine._delivered(esm_class, rid, state, body, now)
            else:
                if replies:  # in order, before an unbind_resp (say) closes the transport
                    self._write(b"".join(replies))
                    replies.clear()
                self._other(bytes(src[pos : pos + length]), cid, status, seq, now)
            pos += length
        if src is buf:
            del buf[:pos]
        elif pos < size:
            self.buf = bytearray(data[pos:])
        if (freed or engine.schedule is not None) and self.bound:
            # Open loop: what fell due since the last tick goes out now, not at the next.
            engine.fill(self, None, replies)
        elif replies:
            self._write(b"".join(replies))

    def _other(self, frame: bytes, cid: int, status: int, seq: int, now: float) -> None:
        engine = self.engine
        c = engine.counters
        if cid == _GENERIC_NACK:
            entry = self.inflight.pop(seq, None)
            if entry is not None:
                engine.submit_failed(
                    self, entry, status or int(CommandStatus.ESME_RUNKNOWNERR), now
                )
                engine.fill(self)
            elif self._bind_waiter is not None and not self._bind_waiter.done():
                self._bind_waiter.set_result(status or int(CommandStatus.ESME_RBINDFAIL))
            elif self.enquire_sent is not None:
                self.enquire_sent = None
            return
        if cid in _BIND_RESPS:
            if self._bind_waiter is not None and not self._bind_waiter.done():
                self._bind_waiter.set_result(status)
            return
        if cid == CommandId.ENQUIRE_LINK:
            c.enquire_links_received += 1
            self._write(_HEADER.pack(16, CommandId.ENQUIRE_LINK_RESP, 0, seq))
            return
        if cid == CommandId.ENQUIRE_LINK_RESP:
            self.enquire_sent = None
            return
        if cid == CommandId.DELIVER_SM or cid == CommandId.DATA_SM:
            try:
                pdu = decode(frame)
            except RemoteProtocolError as err:
                c.protocol_errors += 1
                resp_cls = DeliverSmResp if cid == CommandId.DELIVER_SM else DataSmResp
                self._write(encode(resp_cls(sequence_number=seq, command_status=err.status)))
                return
            if isinstance(pdu, DeliverSm):
                self._write(_DELIVER_SM_RESP_PACK(17, _DELIVER_SM_RESP, 0, seq, 0))
                engine.delivered(pdu, now)
            elif isinstance(pdu, DataSm):
                self._write(encode(DataSmResp(sequence_number=seq)))
                engine.delivered(pdu, now)
            return
        if cid == CommandId.UNBIND:
            c.unbinds_by_peer += 1
            self._write(_HEADER.pack(16, CommandId.UNBIND_RESP, 0, seq))
            self.bound = False
            self.close()
            return
        if cid == CommandId.UNBIND_RESP:
            self.bound = False
            self.close()
            return
        if cid in (CommandId.ALERT_NOTIFICATION, CommandId.OUTBIND) or cid & RESPONSE_BIT:
            if cid & RESPONSE_BIT:
                c.unmatched_responses += 1
            return
        c.protocol_errors += 1
        self._write(encode(GenericNack(seq, int(CommandStatus.ESME_RINVCMDID))))

    # --- timers ---------------------------------------------------------------------------

    def housekeeping(self, now: float, response_timeout: float, enquire: float | None) -> None:
        """Time out unanswered submits; probe an idle link; drop a dead one."""
        inflight = self.inflight
        if inflight:
            limit = now - response_timeout
            expired = []
            for seq, entry in inflight.items():
                if entry[1] > limit:
                    break
                expired.append(seq)
            if expired:
                for seq in expired:
                    del inflight[seq]
                self.engine.counters.timeouts += len(expired)
                self.engine.fill(self)
        if not self.bound or self.transport is None:
            return
        if self.enquire_sent is not None:
            if now - self.enquire_sent > response_timeout:
                log.info("bind %d: enquire_link unanswered: dropping", self.index)
                self.abort()
        elif enquire is not None and now - self.last_rx >= enquire:
            self.enquire_sent = now
            self.engine.counters.enquire_links_sent += 1
            self._write(_HEADER.pack(16, CommandId.ENQUIRE_LINK, 0, self._next_seq()))


_BIND_RESPS: Const = frozenset(
    {
        int(CommandId.BIND_TRANSCEIVER_RESP),
        int(CommandId.BIND_TRANSMITTER_RESP),
        int(CommandId.BIND_RECEIVER_RESP),
    }
)


class Schedule:
    """Open-loop send times: ``rate`` messages/s after a linear ramp from 0 over ``ramp`` s."""

    def __init__(self, rate: float, ramp: float) -> None:
        self.rate = rate
        self.ramp = ramp
        self._ramp_count = rate * ramp / 2

    def count_by(self, t: float) -> float:
        """Messages due in [0, t]: message i is due at time_of(i); this is N(t)."""
        if t <= 0:
            return 0.0
        if t < self.ramp:
            return self.rate * t * t / (2 * self.ramp)
        return self._ramp_count + self.rate * (t - self.ramp)

    def time_of(self, i: int) -> float:
        if i < self._ramp_count:
            return float((2 * self.ramp * i / self.rate) ** 0.5)
        return self.ramp + (i - self._ramp_count) / self.rate


class Engine:
    """The binds and traffic of one worker, driven by control messages."""

    def __init__(
        self,
        plan: Plan,
        emit: Callable[[ToParent], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.config = config = plan.config
        self.worker = plan.worker
        self.workers = plan.workers
        self._emit = emit
        self._clock = clock
        self.factory = MessageFactory(config.traffic, f"{config.seed}:{plan.worker}")
        self._rng = random.Random(f"{config.seed}:{plan.worker}:reconnect")
        self.counters = Counters()
        self.lat_iv = Histogram()
        self.svc_iv = Histogram()
        self.rcpt_iv = Histogram()
        self.latency = Histogram()
        self.service = Histogram()
        self.receipt_latency = Histogram()
        self.send_lag = Histogram()
        self.track_receipts = config.traffic.registered_delivery
        self.window = config.binds.window
        self.binds: list[Bind] = []
        kinds = (["trx"] if config.binds.type == "transceiver" else ["tx", "rx"]) * plan.binds
        for i, kind in enumerate(kinds):
            self.binds.append(Bind(self, kind, plan.worker * 100_000 + i))
        self.tx = [b for b in self.binds if b.submits]
        self.schedule = Schedule(plan.rate, config.load.ramp) if plan.rate else None
        self.limit = plan.messages
        self.t0 = 0.0
        self.issued = 0
        self.last_sent = 0.0
        self.sending = False
        self.phase = "new"
        self.interrupted = False
        self.retry: deque[tuple[float, bytes, int]] = deque()
        self._rr = 0
        # Receipt correlation (ids owned here; see messages.py).
        self.awaiting: dict[str, float] = {}
        self.early: dict[str, tuple[str, float]] = {}
        self.expired: dict[str, None] = {}
        self._relay_submits: list[list[tuple[str, float]]] = [[] for _ in range(self.workers)]
        self._relay_receipts: list[list[tuple[str, str, float]]] = [[] for _ in range(self.workers)]
        self.relays_received = 0
        self._submit_style = config.receipts.submit_id
        self._receipt_style = config.receipts.receipt_id
        self.max_tracked = config.receipts.max_tracked
        #: Submit ids used as they come and all owned here (one worker): no key to make.
        self.plain_ids = self._submit_style == "as_is" and self.workers == 1
        self.plain_receipts = self._receipt_style == "as_is" and self.workers == 1
        self._second = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._drain_deadline = 0.0
        self._status = (0, 0)
        self._closing = False
        self.done: asyncio.Future[None] | None = None

    # --- control ------------------------------------------------------------------------

    def handle(self, msg: ToWorker) -> None:
        """Take one control message from the parent."""
        if isinstance(msg, Relay):
            self._take_relay(msg)
        elif isinstance(msg, Go):
            self._go(msg.t0)
        elif isinstance(msg, Stop):
            self.stop(interrupted=msg.interrupted)
        elif isinstance(msg, Finish):
            self._spawn(self._finish())
        elif isinstance(msg, Report):
            self._report()

    def emit(self, msg: ToParent) -> None:
        self._emit(msg)

    async def start(self) -> None:
        """Make every bind (concurrently); Ready, or Fatal with the first failure."""
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.phase = "binding"
        firsts: list[asyncio.Future[None]] = []
        for bind in self.binds:
            first: asyncio.Future[None] = loop.create_future()
            firsts.append(first)
            self._spawn(self._maintain(bind, first))
        results = await asyncio.gather(*firsts, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self._closing = True
                await self._close_all()
                self.emit(Fatal(self.worker, str(result)))
                if not self.done.done():
                    self.done.set_result(None)
                return
        self.phase = "ready"
        self._timer = loop.call_later(_TICK, self._housekeeping)
        self.emit(Ready(self.worker))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self, bind: Bind, first: asyncio.Future[None]) -> None:
        """Keep ``bind`` bound until the end: reconnect with back-off and jitter."""
        cfg = self.config
        delay = cfg.binds.reconnect_delay
        target = f"{cfg.target.host}:{cfg.target.port}"
        while not self._closing:
            try:
                await bind.open()
            except BindFailed as exc:
                if exc.status is not None:
                    failures = self.counters.bind_failures
                    failures[exc.status] = failures.get(exc.status, 0) + 1
                if not first.done():
                    first.set_exception(BindFailed(f"{target}: {exc}"))
                    return
            except (OSError, TimeoutError) as exc:
                bind.abort()
                self.counters.connect_failures += 1
                if not first.done():
                    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                    first.set_exception(BindFailed(f"cannot bind to {target}: {reason}"))
                    return
            else:
                self.counters.binds += 1
                if first.done():
                    self.counters.reconnects += 1
                else:
                    first.set_result(None)
                delay = cfg.binds.reconnect_delay
                if self.sending or self.retry:
                    self.fill(bind)
                assert bind.closed is not None
                await bind.closed
                if self.closing:
                    return
            # Reconnect pacing (with jitter), not a wait for some state.
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, cfg.binds.reconnect_delay_max)

    @property
    def closing(self) -> bool:
        return self._closing

    def _go(self, t0: float) -> None:
        self.t0 = t0
        self.sending = True
        self.phase = "sending"
        loop = asyncio.get_running_loop()
        delay = max(0.0, t0 - self._clock())
        self._send_timer = loop.call_later(delay, self._send_tick)

    def stop(self, *, interrupted: bool) -> None:
        """Stop sending (Ctrl-C, or the parent's deadline)."""
        if interrupted:
            self.interrupted = True
        if self.phase in ("new", "binding", "ready"):
            self.phase = "drained"
            self.emit(Drained(self.worker, 0, self.relays_received))
            return
        if self.sending:
            self._end_sending(self._clock())
        elif self.phase == "draining" and interrupted:
            self._drain_deadline = min(self._drain_deadline, self._clock() + _INTERRUPT_DRAIN)

    def _end_sending(self, now: float) -> None:
        if self.schedule is not None:
            self.counters.unsent += max(0, self._due(now) - self.issued)
        self.sending = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self.counters.abandoned += len(self.retry)
        self.retry.clear()
        self.phase = "draining"
        wait = _INTERRUPT_DRAIN if self.interrupted else self.config.binds.response_timeout
        self._drain_deadline = now + wait

    # --- sending ------------------------------------------------------------------------

    def _due(self, now: float) -> int:
        """Messages that should have been issued by ``now`` (capped by the count)."""
        schedule = self.schedule
        if schedule is None:
            due = 1 << 62
        else:
            t = now - self.t0
            duration = self.config.load.duration
            if duration is not None and t >= duration:
                t = duration
                due = int(schedule.count_by(t))
                if schedule.time_of(due) < duration:
                    due += 1
            else:
                due = int(schedule.count_by(t)) + 1
        if self.limit is not None and due > self.limit:
            due = self.limit
        return due

    def _send_tick(self) -> None:
        self._send_timer = None
        if not self.sending:
            return
        now = self._clock()
        binds = self.tx
        n = len(binds)
        start = self._rr
        self._rr = (start + 1) % n if n else 0
        schedule = self.schedule
        for k in range(n):
            self.fill(binds[(start + k) % n], now)
            if schedule is not None and not self.retry and self._due(now) <= self.issued:
                break  # all that is due went out: the other binds have nothing to send
        if self._finished_sending(now):
            return
        if schedule is not None and self.sending:
            next_at = self.t0 + schedule.time_of(self.issued)
            delay = max(next_at - self._clock(), _MIN_TICK)
            self._send_timer = asyncio.get_running_loop().call_later(
                min(delay, _TICK), self._send_tick
            )

    def _finished_sending(self, now: float) -> bool:
        duration = self.config.load.duration
        if (self.limit is not None and self.issued >= self.limit) or (
            duration is not None and now - self.t0 >= duration
        ):
            if self.sending:
                self._end_sending(now)
            return True
        return False

    def fill(
        self, bind: Bind, now: float | None = None, pending: list[bytes] | None = None
    ) -> None:
        """Send on ``bind`` what its window and the schedule allow (retries first).

        ``pending``: PDUs already due on ``bind`` (replies), written in the same write."""
        if not (self.sending and bind.bound and bind.writable and bind.submits):
            if pending:
                bind._write(b"".join(pending))
            return
        if now is None:
            now = self._clock()
        out: list[bytes] = [] if pending is None else pending
        inflight = bind.inflight
        free = self.window - len(inflight)
        if free <= 0 or bind.paused_until > now + 0.001:  # timers may fire 1 ms early
            if out:
                bind._write(b"".join(out))
            return
        seq = bind.seq
        retry = self.retry
        c = self.counters
        while retry and free > 0:
            intended, pdu, attempts = retry.popleft()
            pdu = pdu[:12] + _SEQ.pack(seq) + pdu[16:]
            inflight[seq] = (intended, now, pdu, attempts)
            seq = seq + 1 if seq < MAX_SEQUENCE else 1
            out.append(pdu)
            c.resubmitted += 1
            free -= 1
        due = self._due(now) - self.issued
        if due > 0 and free > 0:
            issued = self.issued
            schedule = self.schedule
            t0 = self.t0
            if schedule is not None:
                lag = now - (t0 + schedule.time_of(issued))
                self.send_lag.record(lag)
            if self.factory.single_part:  # one submit_sm per message
                one = self.factory.one
                append = out.append
                n = due if due < free else free
                if schedule is None:
                    for _ in range(n):
                        pdu = one(seq)
                        inflight[seq] = (now, now, pdu, 0)
                        seq = seq + 1 if seq < MAX_SEQUENCE else 1
                        append(pdu)
                else:
                    time_of = schedule.time_of
                    for i in range(issued, issued + n):
                        pdu = one(seq)
                        inflight[seq] = (t0 + time_of(i), now, pdu, 0)
                        seq = seq + 1 if seq < MAX_SEQUENCE else 1
                        append(pdu)
                c.submitted += n
                issued += n
            else:
                message = self.factory.message
                while due > 0 and free > 0:
                    intended = now if schedule is None else t0 + schedule.time_of(issued)
                    for pdu in message(seq):
                        inflight[seq] = (intended, now, pdu, 0)
                        seq = seq + 1 if seq < MAX_SEQUENCE else 1
                        out.append(pdu)
                        free -= 1
                        c.submitted += 1
                    issued += 1
                    due -= 1
            c.messages += issued - self.issued
            self.issued = issued
            self.last_sent = now
        bind.seq = seq
        if out:
            bind._write(b"".join(out))
        if self.limit is not None and self.issued >= self.limit and self.sending:
            self._end_sending(now)

    def submit_failed(
        self, bind: Bind, entry: tuple[float, float, bytes, int], status: int, now: float
    ) -> None:
        """A submit was answered with an error (or a generic_nack)."""
        c = self.counters
        if status in (_THROTTLED, _MSGQFUL):
            if status == _THROTTLED:
                c.throttled += 1
            else:
                c.queue_full += 1
            throttling = self.config.throttling
            if now >= bind.paused_until:
                bind.backoff_level += 1
                pause = min(
                    throttling.backoff * 2 ** (bind.backoff_level - 1), throttling.backoff_max
                )
                bind.paused_until = now + pause
                asyncio.get_running_loop().call_later(pause, self.fill, bind)
            if throttling.retry and entry[3] < throttling.max_retries:
                if self.sending:
                    c.retried += 1
                    self.retry.append((entry[0], entry[2], entry[3] + 1))
                else:
                    c.abandoned += 1
                return
        rejected = c.rejected
        rejected[status] = rejected.get(status, 0) + 1
        self.lat_iv.record(now - entry[0])
        self.svc_iv.record(now - entry[1])

    # --- receipts -----------------------------------------------------------------------

    def _owner(self, key: str) -> int:
        if self.workers == 1:
            return 0
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % self.workers

    def submit_accepted(self, message_id: str, intended: float) -> None:
        """A submit_sm_resp with ``message_id``: await its receipt (or match an early one)."""
        if not message_id:
            self.counters.receipts_untracked += 1
            return
        style = self._submit_style
        key = message_id if style == "as_is" else normalize_id(message_id, style=style)
        if self.workers != 1:
            owner = self._owner(key)
            if owner != self.worker:
                self._relay_submits[owner].append((key, intended))
                return
        if self.early:
            self._await_receipt(key, intended)
            return
        awaiting = self.awaiting
        if len(awaiting) >= self.max_tracked:
            self.counters.receipts_untracked += 1
            return
        awaiting[key] = intended

    def _await_receipt(self, key: str, intended: float) -> None:
        early = self.early.pop(key, None) if self.early else None
        if early is not None:
            self._count_receipt(early[0], early[1] - intended)
            return
        if len(self.awaiting) >= self.max_tracked:
            self.counters.receipts_untracked += 1
            return
        self.awaiting[key] = intended

    def delivered(self, pdu: DeliverSm | DataSm, now: float) -> None:
        """A deliver_sm or data_sm: a receipt (matched to its submit) or MO."""
        tlv_id = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
        tlv_state = pdu.tlv(Tag.MESSAGE_STATE)
        body = getattr(pdu, "short_message", b"") or pdu.tlv(Tag.MESSAGE_PAYLOAD) or b""
        self._delivered(
            pdu.esm_class,
            tlv_id if isinstance(tlv_id, str) else None,
            tlv_state if isinstance(tlv_state, int) else None,
            body if isinstance(body, bytes) else b"",
            now,
        )

    def _delivered(
        self, esm_class: int, tlv_id: str | None, tlv_state: int | None, body: bytes, now: float
    ) -> None:
        """A receipt's (or MO's) fields: the TLVs when both are there, else the text.

        (From a decoded PDU, or straight from the frame by
        :func:`~simulator.load.fastpdu.scan_deliver_sm`.)"""
        c = self.counters
        if not esm_class & _RECEIPT_BITS:
            c.mo += 1
            return
        if tlv_id and tlv_state is not None:
            raw = tlv_id
            word = _FINAL_WORDS.get(tlv_state, _UNKNOWN_WORD)
        else:
            receipt = parse_receipt(body)
            if tlv_state is not None:
                word = _FINAL_WORDS.get(tlv_state, _UNKNOWN_WORD)
            elif receipt is not None:
                word = _FINAL_WORDS[int(receipt.state)]
            else:
                word = _UNKNOWN_WORD
            raw = tlv_id or (receipt.message_id if receipt is not None else "")
        if word is None or esm_class & _INTERMEDIATE:
            c.intermediate += 1
            return
        style = self._receipt_style
        key = raw if style == "as_is" else normalize_id(raw, style=style)
        if self.workers != 1:
            owner = self._owner(key)
            if owner != self.worker:
                self._relay_receipts[owner].append((key, word, now))
                return
        intended = self.awaiting.pop(key, None)
        if intended is None:
            self._receipt_for(key, word, now)
            return
        c.receipts += 1
        states = c.receipt_states
        states[word] = states.get(word, 0) + 1
        self.rcpt_iv.record(now - intended)

    def _receipt_for(self, key: str, word: str, arrived: float) -> None:
        intended = self.awaiting.pop(key, None)
        if intended is not None:
            self._count_receipt(word, arrived - intended)
            return
        c = self.counters
        if key in self.expired:
            c.receipts_late += 1
        elif len(self.early) < _EARLY_MAX and key not in self.early:
            self.early[key] = (word, arrived)  # before its submit_sm_resp, perhaps
        else:
            c.receipts_unmatched += 1

    def _count_receipt(self, word: str, latency: float) -> None:
        c = self.counters
        c.receipts += 1
        states = c.receipt_states
        states[word] = states.get(word, 0) + 1
        self.rcpt_iv.record(latency)

    def _take_relay(self, relay: Relay) -> None:
        self.relays_received += 1
        for key, intended in relay.submits:
            self._await_receipt(key, intended)
        for key, word, arrived in relay.receipts:
            self._receipt_for(key, word, arrived)

    def _flush_relays(self) -> None:
        if self.workers == 1:
            return
        for to in range(self.workers):
            submits = self._relay_submits[to]
            receipts = self._relay_receipts[to]
            if submits or receipts:
                self._relay_submits[to] = []
                self._relay_receipts[to] = []
                self.emit(Relay(to, submits, receipts))

    def _expire_receipts(self, now: float) -> None:
        grace = self.config.receipts.grace
        limit = now - grace
        c = self.counters
        awaiting = self.awaiting
        if awaiting:
            gone = []
            for key, intended in awaiting.items():
                if intended > limit:
                    break
                gone.append(key)
            if gone:
                expired = self.expired
                for key in gone:
                    del awaiting[key]
                    expired[key] = None
                c.receipts_missing += len(gone)
                while len(expired) > _EXPIRED_MAX:
                    del expired[next(iter(expired))]
        early = self.early
        if early:
            old = []
            for key, (_, arrived) in early.items():
                if arrived > limit:
                    break
                old.append(key)
            for key in old:
                del early[key]
            c.receipts_unmatched += len(old)

    # --- housekeeping -------------------------------------------------------------------

    def _housekeeping(self) -> None:
        self._timer = None
        if self.phase in ("closed", "final"):
            return
        now = self._clock()
        cfg = self.config.binds
        for bind in self.binds:
            bind.housekeeping(now, cfg.response_timeout, cfg.enquire_link_interval)
        if self.sending and not self._finished_sending(now):
            for bind in self.tx:  # a safety net: nothing else may wake an idle bind
                if bind.paused_until <= now and len(bind.inflight) < self.window:
                    self.fill(bind, now)
        if self.phase == "draining":
            in_flight = sum(len(b.inflight) for b in self.tx)
            if in_flight == 0 or now >= self._drain_deadline:
                for bind in self.tx:
                    self.counters.abandoned += len(bind.inflight)
                    bind.inflight.clear()
                self.phase = "drained"
                self._flush_relays()
                self._status = (len(self.awaiting), self.relays_received)
                self.emit(Drained(self.worker, *self._status))
        if self.phase in ("sending", "draining", "drained") and self.t0:
            self._expire_receipts(now)
            self._flush_relays()
            while now >= self.t0 + self._second + 1:
                self._snapshot()
            status = (len(self.awaiting), self.relays_received)
            if self.phase == "drained" and status != self._status:
                self._status = status
                self.emit(Status(self.worker, *status))
        self._timer = asyncio.get_running_loop().call_later(_TICK, self._housekeeping)

    def _gauges(self) -> None:
        c = self.counters
        c.in_flight = sum(len(b.inflight) for b in self.tx) + len(self.retry)
        if self.sending and self.schedule is not None:
            c.backlog = max(0, self._due(self._clock()) - self.issued)
        else:
            c.backlog = 0

    def _roll(self) -> tuple[Histogram, Histogram, Histogram]:
        """The interval histograms, folded into the totals and replaced by empty ones."""
        lat, svc, rcpt = self.lat_iv, self.svc_iv, self.rcpt_iv
        self.latency.merge(lat)
        self.service.merge(svc)
        self.receipt_latency.merge(rcpt)
        self.lat_iv, self.svc_iv, self.rcpt_iv = Histogram(), Histogram(), Histogram()
        return lat, svc, rcpt

    def _snapshot(self) -> None:
        self._gauges()
        lat, svc, rcpt = self._roll()
        self.emit(
            Snapshot(
                worker=self.worker,
                second=self._second,
                counters=self.counters.copy(),
                latency=lat.to_sparse(),
                service=svc.to_sparse(),
                receipt_latency=rcpt.to_sparse(),
                awaiting=len(self.awaiting),
                relays_received=self.relays_received,
            )
        )
        self._second += 1

    # --- the end ------------------------------------------------------------------------

    async def _finish(self) -> None:
        self._closing = True
        if self.sending:
            self._end_sending(self._clock())
        await self._close_all()
        self._flush_relays()
        self.phase = "closed"
        self.emit(Closed(self.worker))

    async def _close_all(self) -> None:
        await asyncio.gather(*(b.unbind() for b in self.binds), return_exceptions=True)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _report(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        now = self._clock()
        c = self.counters
        if not self.interrupted:
            self._expire_receipts(now + self.config.receipts.grace)  # all remaining: missing
        c.receipts_pending += len(self.awaiting)
        self.awaiting.clear()
        c.receipts_unmatched += len(self.early)
        self.early.clear()
        for bind in self.tx:
            c.abandoned += len(bind.inflight)
            bind.inflight.clear()
        self._gauges()
        if self.t0:
            self._snapshot()
        self._roll()
        self.phase = "final"
        sending = (self.last_sent - self.t0) if self.last_sent else 0.0
        self.emit(
            Final(
                worker=self.worker,
                counters=c,
                latency=self.latency.to_sparse(),
                service=self.service.to_sparse(),
                receipt_latency=self.receipt_latency.to_sparse(),
                send_lag=self.send_lag.to_sparse(),
                sending_seconds=max(0.0, sending),
                interrupted=self.interrupted,
            )
        )
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def status_label(status: int) -> str:
    try:
        return CommandStatus(status).name
    except ValueError:
        return f"0x{status:08X}"


__all__ = ["Bind", "Engine", "Schedule", "status_label"]
