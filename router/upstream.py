"""Upstream carrier binds: where we are the ESME toward a carrier.

:class:`CarrierPool` keeps ``config.binds`` connections to one carrier up (a transceiver
each, or a transmitter plus a receiver each in ``tx+rx`` mode), each supervised by its own
task that connects, binds, waits for the connection to end and reconnects with exponential
backoff and jitter. Submits are pipelined: each bind carries up to ``config.window``
submit_sm in flight (SMPP-NOTES: never stop-and-wait), and :meth:`CarrierPool.send` puts a
message on the least-loaded bind.

The pool does not queue. The dispatcher asks :meth:`CarrierPool.ready` (a bind with a free
slot and a token of its adaptive rate, a token of the carrier's rate), then calls
:meth:`CarrierPool.send`, which returns
at once with a future of the :data:`SubmitOutcome`: ``Accepted`` with the carrier's id,
``Rejected`` with the status (``retryable`` for temporary ones), or ``Failed`` when the
answer never came (response timeout, bind lost) — the caller requeues, nothing is lost.

Decisions (see also :func:`submit_pdu`):

- ``now`` is the event loop's monotonic clock (``loop.time()``): the rate buckets are kept
  on it.
- Throttling converges (router/aimd.py): each bind has an adaptive rate, cut by every
  ESME_RTHROTTLED or ESME_RMSGQFUL of a submit it sent after its last cut and climbing back
  while used up, never above the carrier's ``rate`` (which still bounds all binds together).
  A carrier that throttles above N msg/s is thus sent about N msg/s, and what it cannot
  take goes to the next carrier at once, instead of the whole carrier pausing on every
  throttle. Only at ``adaptive.min_rate`` does a throttle hold a bind back
  (``throttle_pause``).
- A response timeout makes its bind *suspect*: no new submits go to it while one
  enquire_link probes it; answered, the bind is used again; unanswered (or the session
  closes), the connection is aborted and reconnected. A black-holed carrier thus costs one
  window of timeouts per bind, not a steady stream of them.
- Registered delivery: a final receipt is always requested upstream (bits 1-0 set to 01,
  the other bits kept as the client asked). The router needs every message's final state
  (query_sm, delivery-rate health, the store); whether the client gets a receipt is decided
  by its own ``registered_delivery`` when the report goes back (``ReportSink``).
- Validity: sent as a relative period (``...R``), the time left until ``expires_at`` (our
  wall clock, injectable), so the carrier stops trying when we would report EXPIRED anyway.
  Schedules are held by the router: schedule_delivery_time is always empty.
- ``Failed("timeout")`` means the carrier may still have taken the message (its answer was
  late); the caller's requeue can then duplicate it — the usual at-least-once trade.
- Write-ahead: ``send(..., before=hook)`` holds a window slot and a rate token while the
  hook runs (the router records durably which carrier the message is handed to), and
  writes the submit_sm only when the hook says go. ``_pick`` counts such slots as in flight.
- deliver_sm is answered when ``on_deliver`` says: at once (a status), or later through
  the ``respond`` it was given (the router answers ESME_ROK once the receipt's effect is
  durable). An answer for a connection that closed meanwhile is dropped: the carrier
  resends what it never saw answered.
- esm_class: the messaging-mode bits (1-0) are cleared (default mode: we already answered
  the client, so datagram/transaction semantics cannot be honoured across our hop); message
  type, UDHI and reply path are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Final

import msgspec

from router.aimd import AdaptiveRate, AimdConfig
from router.config import CarrierConfig, Reconnect
from router.model import Accepted, Failed, Message, Rejected, SubmitOutcome
from smppcore.aio import (
    Connection,
    ConnectionClosed,
    Handler,
    RequestTimeout,
    connect,
)
from smppcore.codec import encode
from smppcore.constants import TEMPORARY_STATUSES, CommandId, CommandStatus
from smppcore.errors import LocalProtocolError, SmppError
from smppcore.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DeliverSm,
    EnquireLink,
    Pdu,
    SubmitSm,
    SubmitSmResp,
)
from smppcore.session import SessionConfig, WindowFull
from smppcore.smpptime import RelativeTime, format_relative
from smppcore.throttle import TokenBucket
from smppcore.tls import client_context
from smppcore.tlv import Tag, Tlv, encode_tlvs, find_tlv

_DELIVER_SM_RESP = int(CommandId.DELIVER_SM_RESP)
#: Seconds a bind without a slot waits before it looks again (it is woken when one comes).
SLOT_LOOK = 5.0

log = logging.getLogger(__name__)

#: Answers one deliver_sm of the carrier with a command_status (once, at any later time).
Respond = Callable[[int], None]
#: ``answer(conn, sequence_number, status)``: answers a deliver_sm later (the pool's
#: :meth:`CarrierPool.answer`).
Answer = Callable[[Connection, int, int], None]
#: ``on_deliver(carrier, pdu, conn, answer)``: the status to answer now, or None to answer
#: later with ``answer(conn, pdu.sequence_number, status)`` (once the receipt's effect is
#: durable). ``conn`` is the connection it came on and ``answer`` the pool's own (a pool a
#: reload retired still answers what comes while its binds wind down); nothing is
#: allocated for a later answer on the hot path, where it is answered at once.
DeliverCallback = Callable[[str, DeliverSm, Connection, Answer], int | None]
#: ``before(go)``: a hook run before a submit_sm goes out (``send(..., before=...)``); the
#: submit is written once it calls ``go(True)``, and given up (``Failed("not ready")``)
#: on ``go(False)``.
BeforeSend = Callable[[Callable[[bool], None]], None]
StateCallback = Callable[[str, int], None]
OutcomeCallback = Callable[[SubmitOutcome], None]

#: The longest short_message (§5.2.21); longer content travels in message_payload.
MAX_SHORT_MESSAGE: Final = 254
#: Inbound requests (deliver_sm) held unanswered per session at most. We answer each one
#: synchronously, but the core counts a whole read's worth before we see any of them.
INBOUND_WINDOW: Final = 10_000
_MODE_BITS: Final = 0x03
_RECEIPT_BITS: Final = 0x03
_FINAL_RECEIPT: Final = 0x01
_MAX_RELATIVE_SECONDS: Final = 99 * 86_400 + 23 * 3600 + 59 * 60 + 59
_THROTTLED: Final = int(CommandStatus.ESME_RTHROTTLED)
_MSGQFUL: Final = int(CommandStatus.ESME_RMSGQFUL)
_SUBMIT_SM: Final = int(CommandId.SUBMIT_SM)
_DELIVER_SM: Final = int(CommandId.DELIVER_SM)
_MESSAGE_PAYLOAD: Final = int(Tag.MESSAGE_PAYLOAD)
_ROK: Final = int(CommandStatus.ESME_ROK)


def relative_validity(seconds: float) -> str:
    """A relative validity_period for ``seconds`` from now (at least 1 s, at most ~99 days)."""
    return _relative_validity(min(_MAX_RELATIVE_SECONDS, max(1, math.ceil(seconds))))


@lru_cache(maxsize=4096)
def _relative_validity(total: int) -> str:
    # Messages of one burst share a validity a few seconds apart: formatted once each.
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return format_relative(RelativeTime(days=days, hours=hours, minutes=minutes, seconds=secs))


def backoff_delay(reconnect: Reconnect, failures: int, rng: random.Random) -> float:
    """Seconds before the next connect after ``failures`` failures in a row (0 after a bind
    that was up): ``min`` doubling per failure, capped at ``max``, plus up to ``jitter``."""
    base = min(reconnect.max, reconnect.min * 2.0 ** min(max(failures - 1, 0), 30))
    return base * (1.0 + reconnect.jitter * rng.random())


def submit_pdu(message: Message, *, wall_now: float | None = None) -> SubmitSm:
    """The submit_sm that carries ``message`` upstream (see the module's decisions).

    ``wall_now`` (Unix seconds) is needed to turn ``expires_at`` into a relative validity;
    None leaves validity_period empty (the carrier's default).
    """
    validity = ""
    if message.expires_at is not None and wall_now is not None:
        validity = relative_validity(message.expires_at - wall_now)
    tlvs = message.tlvs
    if tlvs:
        tlvs = tuple(t for t in tlvs if t.tag != _MESSAGE_PAYLOAD)
    short_message = message.short_message
    if message.payload_tlv or len(short_message) > MAX_SHORT_MESSAGE:
        tlvs = (*tlvs, Tlv(_MESSAGE_PAYLOAD, short_message))
        short_message = b""
    receipts = (message.registered_delivery & ~_RECEIPT_BITS & 0xFF) | _FINAL_RECEIPT
    return SubmitSm(
        service_type=message.service_type,
        source_addr_ton=message.source.ton,
        source_addr_npi=message.source.npi,
        source_addr=message.source.addr,
        dest_addr_ton=message.destination.ton,
        dest_addr_npi=message.destination.npi,
        destination_addr=message.destination.addr,
        esm_class=message.esm_class & ~_MODE_BITS & 0xFF,
        protocol_id=message.protocol_id,
        priority_flag=message.priority,
        validity_period=validity,
        registered_delivery=receipts,
        data_coding=message.data_coding,
        short_message=short_message,
        tlvs=tlvs,
    )


_CHR: Final = tuple(chr(i) for i in range(256))


def submit_body(message: Message, *, wall_now: float | None = None) -> bytes:
    """``encode(submit_pdu(message, wall_now=...))`` without the header, written directly
    (the hot path: a session sends it as an encoded request). Fields that do not fit a
    submit_sm go through the codec, which says what is wrong."""
    source, destination = message.source, message.destination
    service_type = message.service_type
    short_message = message.short_message
    octets = (
        source.ton,
        source.npi,
        destination.ton,
        destination.npi,
        message.protocol_id,
        message.priority,
        message.data_coding,
    )
    if (
        len(source.addr) > 20
        or len(destination.addr) > 20
        or len(service_type) > 5
        or message.payload_tlv
        or len(short_message) > MAX_SHORT_MESSAGE
        or min(octets) < 0
        or max(octets) > 255
        or "\0" in source.addr
        or "\0" in destination.addr
        or "\0" in service_type
    ):
        return encode(submit_pdu(message, wall_now=wall_now))[16:]
    validity = ""
    if message.expires_at is not None and wall_now is not None:
        validity = relative_validity(message.expires_at - wall_now)
    c = _CHR
    receipts = (message.registered_delivery & ~_RECEIPT_BITS & 0xFF) | _FINAL_RECEIPT
    head = (
        f"{service_type}\0{c[source.ton]}{c[source.npi]}{source.addr}\0"
        f"{c[destination.ton]}{c[destination.npi]}{destination.addr}\0"
        f"{c[message.esm_class & ~_MODE_BITS & 0xFF]}{c[message.protocol_id]}"
        f"{c[message.priority]}\0{validity}\0{c[receipts]}\0{c[message.data_coding]}\0"
        f"{c[len(short_message)]}"
    )
    try:
        body = head.encode("latin-1") + short_message
    except UnicodeEncodeError:  # an address beyond Latin-1: the codec refuses it
        return encode(submit_pdu(message, wall_now=wall_now))[16:]
    tlvs = message.tlvs
    if tlvs:
        body += encode_tlvs(tuple(t for t in tlvs if t.tag != _MESSAGE_PAYLOAD))
    return body


class _Link(Handler):
    """One connection slot of the pool (transceiver, transmitter or receiver)."""

    def __init__(self, pool: CarrierPool, index: int, kind: str, rate: AimdConfig) -> None:
        self.pool = pool
        self.index = index
        self.kind = kind  # "trx", "tx" or "rx"
        #: This bind's adaptive send rate (kept across reconnects: the carrier's limit is).
        self.rate = AdaptiveRate(rate, 0.0)
        self.conn: Connection | None = None
        self.suspect = False
        self.failures = 0
        self.ended = asyncio.Event()
        #: Window slots held by submits waiting for their ``before`` hook.
        self.reserved = 0

    @property
    def name(self) -> str:
        return f"{self.pool.name}#{self.index}{'' if self.kind == 'trx' else self.kind}"

    @property
    def submit_ready(self) -> bool:
        conn = self.conn
        return conn is not None and not self.suspect and conn.session.can_submit

    # --- Handler ----------------------------------------------------------------------

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            pool = self.pool
            status = pool._deliver(pdu, conn)
            if status is not None:
                # deliver_sm_resp: message_id unused (§4.6.2), one NUL; an error, no body.
                key = (_DELIVER_SM, status)
                pool.pdus[key] = pool.pdus.get(key, 0) + 1
                body = b"" if status else b"\0"
                conn.respond_encoded(_DELIVER_SM_RESP, pdu.sequence_number, status, body)
        else:
            super().request_received(conn, pdu)

    def session_closed(self, conn: Connection, reason: str) -> None:
        log.info("carrier bind %s closed: %s", self.name, reason)
        self.ended.set()
        self.pool._state_changed()


class CarrierPool:
    """The binds to one carrier, their reconnection, window and adaptive rates."""

    def __init__(
        self,
        config: CarrierConfig,
        *,
        on_deliver: DeliverCallback,
        on_state: StateCallback | None = None,
        rng: random.Random,
        wall_clock: Callable[[], float] = time.time,
        bind_slots: int | None = None,
    ) -> None:
        """``bind_slots``: how many of ``config.binds`` this node may open (the carrier's
        bind slots it holds in a cluster; see :meth:`allow`); None: all of them."""
        self.config = config
        self.name = config.name
        self._on_deliver = on_deliver
        self._answer: Answer = self.answer
        self._on_state = on_state
        self._rng = rng
        self._wall_clock = wall_clock
        self.session_config = SessionConfig(
            window=config.window,
            max_waiting=0,  # the pool never queues behind a full window
            inbound_window=INBOUND_WINDOW,
            response_timeout=config.response_timeout,
            slot_timeout=config.response_timeout,
            enquire_link_interval=config.enquire_link_interval,
            inactivity_timeout=None,  # our enquire_link finds dead links
            session_init_timeout=None,  # we bind at once; the bind response is bounded
            coalesce=config.coalesce,
        )
        #: TLS toward the carrier (a bad file raises TlsError: the CLI checks them first).
        self._ssl = client_context(config.tls) if config.tls is not None else None
        rate, burst = config.rate, config.burst
        self._bucket = (
            TokenBucket(rate, float(burst or max(1.0, rate)), 0.0) if rate is not None else None
        )
        #: In a cluster the carrier's ``rate`` is shared out like its binds: this node
        #: sends at ``rate * slots / binds`` (see :meth:`allow`); None: the whole rate.
        self._sliced = bind_slots is not None
        adaptive = config.adaptive
        self.aimd = AimdConfig(
            ceiling=rate,
            decrease=adaptive.decrease,
            increase=adaptive.increase,
            min_rate=adaptive.min_rate,
            burst=adaptive.burst,
            burst_min=float(burst or max(1.0, rate)) if rate is not None else 1.0,
            pause=config.throttle_pause,
            window=adaptive.window,
        )
        kinds = ("trx",) if config.bind_mode == "transceiver" else ("tx", "rx")
        self._links = [_Link(self, i, k, self.aimd) for i in range(config.binds) for k in kinds]
        self._senders = [lk for lk in self._links if lk.kind != "rx"]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_event = asyncio.Event()
        #: Binds (by index) this node may have up: the bind slots it holds.
        self._allowed = config.binds if bind_slots is None else max(0, bind_slots)
        self._slice_rate()
        #: Set (and replaced) whenever ``_allowed`` changes: wakes the binds waiting for one.
        self._slots_changed = asyncio.Event()
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._reported = 0
        #: (now, link) of the last :meth:`ready` that found a bind: :meth:`send` at the same
        #: ``now`` reuses it rather than pick again. Cleared by every send, settle and bind
        #: state change (anything that can change which bind is least loaded).
        self._readied: tuple[float, _Link] | None = None
        #: Successful binds so far (every link, every reconnect).
        self.binds_made = 0
        #: Connects or binds that failed so far (refusals included).
        self.connect_failures = 0
        #: (command_id, status) → count: our submit_sm by the status of its answer, the
        #: carrier's deliver_sm by the status we answered (metrics, read when scraped).
        self.pdus: dict[tuple[int, int], int] = {}
        #: reason → submits that got no answer: "timeout", "connection_lost", "error".
        self.failures: dict[str, int] = {}

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting every bind; returns at once (a carrier that is down does not
        block start-up: its binds keep retrying with backoff)."""
        self.start_now()

    def start_now(self) -> None:
        """:meth:`start`, from code that must not yield (a reload applying at once)."""
        if self._tasks or self._stopping:
            return
        for link in self._links:
            task = asyncio.create_task(self._supervise(link), name=f"carrier {link.name}")
            task.add_done_callback(_log_crash)
            self._tasks.append(task)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop: no new submits, wait (≤ ``timeout``) for those in flight to be answered,
        unbind every bind (within what is left of ``timeout``, at least a short grace),
        stop reconnecting. Submits still unanswered resolve ``Failed("connection lost")``."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._pending:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._idle.wait()
            except TimeoutError:
                log.warning(
                    "carrier %s: %d submits unanswered at shutdown", self.name, self._pending
                )
        conns = [lk.conn for lk in self._links if lk.conn is not None and not lk.conn.closed]
        grace = max(deadline - loop.time(), min(timeout, 0.5))
        if conns:
            try:
                async with asyncio.timeout(grace + 0.5):
                    await asyncio.gather(*(c.unbind(grace) for c in conns), return_exceptions=True)
            except TimeoutError:
                log.warning("carrier %s: unbind not finished in time; aborting", self.name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def allow(self, slots: int) -> None:
        """Keep at most ``slots`` binds up (a carrier's ``binds`` counts for the whole
        cluster; this node holds ``slots`` of them): binds above it close (their submits
        in flight come back as failed, to be routed again); more slots open more."""
        slots = max(0, min(slots, self.config.binds))
        if slots == self._allowed:
            return
        log.info("carrier %s: %d of %d bind slots held here", self.name, slots, self.config.binds)
        self._allowed = slots
        self._slice_rate()
        for link in self._links:
            if link.index >= slots and link.conn is not None:
                link.ended.set()
        changed, self._slots_changed = self._slots_changed, asyncio.Event()
        changed.set()

    def _slice_rate(self) -> None:
        """This node's share of the carrier's ``rate``: as many parts of it as bind slots
        held (none: the bucket is left as it is, no bind sends anyway)."""
        rate, burst = self.config.rate, self.config.burst
        if not self._sliced or rate is None or self._allowed == 0:
            return
        share = self._allowed / self.config.binds
        size = float(burst or max(1.0, rate)) * share
        self._bucket = TokenBucket(rate * share, max(1.0, size), 0.0)

    @property
    def allowed(self) -> int:
        """Binds this node may have up (its bind slots)."""
        return self._allowed

    async def _slot_for(self, link: _Link) -> bool:
        """Wait until ``link`` has a bind slot (True) or the pool stops (False)."""
        while link.index >= self._allowed:
            if self._stop_event.is_set():
                return False
            waiters = [
                asyncio.ensure_future(self._stop_event.wait()),
                asyncio.ensure_future(self._slots_changed.wait()),
            ]
            try:  # bounded: looked at again every SLOT_LOOK seconds whatever happens
                await asyncio.wait(waiters, timeout=SLOT_LOOK, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return not self._stop_event.is_set()

    # --- state ------------------------------------------------------------------------

    @property
    def bound(self) -> int:
        """Submit-capable binds up (and not suspect)."""
        return sum(1 for lk in self._links if lk.submit_ready)

    def any_bound(self) -> bool:
        """``bound > 0``, stopping at the first one (asked for every paced submit)."""
        for lk in self._links:
            conn = lk.conn
            if conn is not None and not lk.suspect and conn.session.can_submit:
                return True
        return False

    @property
    def receivers(self) -> int:
        """Binds up that can receive deliver_sm."""
        return sum(1 for lk in self._links if lk.conn is not None and lk.conn.session.can_deliver)

    @property
    def free_slots(self) -> int:
        """Window slots free over the submit-capable binds."""
        window = self.config.window
        return sum(
            max(0, window - lk.conn.session.in_flight - lk.reserved)
            for lk in self._links
            if lk.submit_ready and lk.conn is not None
        )

    @property
    def in_flight(self) -> int:
        """Submits sent and not yet settled."""
        return self._pending

    def paused(self, now: float) -> bool:
        """Is every bind held back at its rate floor after a throttle?"""
        return all(lk.rate.paused(now) for lk in self._senders)

    @property
    def rate_limit(self) -> float | None:
        """Submits per second the binds may send now, together (their adaptive rates,
        within the carrier's ``rate``); None: no limit (none configured, none met yet)."""
        total = 0.0
        for lk in self._senders:
            limit = lk.rate.limit
            if limit is None:
                return self.rate_share
            total += limit
        ceiling = self.rate_share
        return total if ceiling is None else min(total, ceiling)

    @property
    def rate_share(self) -> float | None:
        """The part of the carrier's ``rate`` this node may send at: all of it alone, as
        many parts as bind slots held in a cluster; None: no rate configured."""
        if self._bucket is None:
            return None
        return self._bucket.rate

    @property
    def rate_cuts(self) -> int:
        """Throttles that cut a bind's rate (or held it back at the floor) so far."""
        return sum(lk.rate.cuts for lk in self._senders)

    def ready(self, now: float) -> bool:
        """May :meth:`send` go now: a bind with a free slot and a token of its rate, and a
        token of the carrier's rate."""
        link = self._ready_link(now)
        if link is None:
            return False
        self._readied = (now, link)
        return True

    def _ready_link(self, now: float) -> _Link | None:
        """The bind :meth:`send` would use now, or None when it may not send."""
        if self._stopping:
            return None
        if self._bucket is not None and self._bucket.delay(now) > 0:
            return None
        return self._pick(now)

    def ready_at(self, now: float) -> float | None:
        """When :meth:`ready` will hold, if only time is missing (a rate token, the end of
        a pause at the rate floor); ``now`` when it holds now; None when it waits for a
        bind or a window slot (an event: a bind comes up — ``on_state`` — or a future of
        :meth:`send` resolves)."""
        if self._stopping:
            return None
        wait: float | None = None
        window = self.config.window
        for lk in self._senders:
            conn = lk.conn
            if conn is not None and not lk.suspect:
                session = conn.session
                if session.can_submit and session.in_flight + lk.reserved < window:
                    delay = lk.rate.delay(now)
                    if wait is None or delay < wait:
                        wait = delay
        if wait is None:
            return None
        if self._bucket is not None:
            wait = max(wait, self._bucket.delay(now))
        return now + wait

    def _pick(self, now: float) -> _Link | None:
        """The submit-capable bind with the fewest submits in flight, if one has a slot and
        a token of its rate."""
        best: _Link | None = None
        best_load = self.config.window
        for lk in self._senders:
            conn = lk.conn  # lk.submit_ready, inlined
            if conn is not None and not lk.suspect:
                session = conn.session
                if session.can_submit:
                    load = session.in_flight + lk.reserved
                    if load < best_load and lk.rate.delay(now) == 0:
                        best, best_load = lk, load
        return best

    def _state_changed(self) -> None:
        self._readied = None
        count = self.bound
        if count != self._reported:
            self._reported = count
            if self._on_state is not None:
                try:
                    self._on_state(self.name, count)
                except Exception:
                    log.exception("carrier %s: on_state failed", self.name)

    # --- submits ----------------------------------------------------------------------

    def send(
        self,
        message: Message,
        now: float,
        done: OutcomeCallback,
        before: BeforeSend | None = None,
    ) -> None:
        """Submit ``message`` on the least-loaded bind; ``done`` is called once with its
        outcome (never an exception) — at once with ``Failed("not ready")`` when no bind
        can take it. With ``before``, the bind's slot and a rate token are held while
        ``before(go)`` runs, and the submit_sm is written when it calls ``go(True)``."""
        readied = self._readied
        self._readied = None
        link: _Link | None
        if (
            readied is not None
            and readied[0] == now
            and not self._stopping
            and readied[1].submit_ready
        ):
            # ready(now) just picked it and nothing sent, settled or changed binds since:
            # the same bind a new pick would find, without walking every bind again.
            link = readied[1]
        else:
            link = self._ready_link(now)
        if link is None or link.conn is None:
            done(Failed(self.name, "not ready"))
            return
        if self._bucket is not None:
            self._bucket.take(now)
        link.rate.take(now)
        self._pending += 1
        self._idle.clear()
        if before is not None:
            link.reserved += 1
            before(partial(self._go, link, message, done))
            return
        self._write(link, message, done, now)

    def _go(self, link: _Link, message: Message, done: OutcomeCallback, ok: bool) -> None:
        """The ``before`` hook of a send answered: write the submit (on its bind, or
        another of this carrier's if that one dropped meanwhile), or give it up."""
        link.reserved -= 1
        self._readied = None
        now = asyncio.get_running_loop().time()
        if ok and not link.submit_ready:
            link = self._pick(now) or link
        if not ok or not link.submit_ready:
            self._unpend()
            done(Failed(self.name, "not ready"))
            return
        self._write(link, message, done, now)

    def _unpend(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    def _write(self, link: _Link, message: Message, done: OutcomeCallback, now: float) -> None:
        """Write the submit_sm of ``message`` on ``link`` at ``now`` (counted in
        ``_pending`` by the caller; uncounted here when it cannot go)."""
        conn = link.conn
        if conn is None:
            self._unpend()
            done(Failed(self.name, "not ready"))
            return
        try:
            wall_now = self._wall_clock() if message.expires_at is not None else None
            settle = partial(self._settle, link, conn, done, now)
            if conn.session.takes_tlvs:  # the usual case: the body written directly
                body = submit_body(message, wall_now=wall_now)
                conn.send_request_encoded_callback(_SUBMIT_SM, body, settle)
            else:
                pdu = submit_pdu(message, wall_now=wall_now)
                payload = find_tlv(pdu.tlvs, _MESSAGE_PAYLOAD) if pdu.tlvs else None
                if payload is not None:
                    # A 3.3 carrier takes no TLVs (the session strips them): up to 254
                    # octets go in short_message; more cannot travel to this carrier.
                    if len(payload.value) > MAX_SHORT_MESSAGE:
                        done(Rejected(self.name, CommandStatus.ESME_RINVMSGLEN, retryable=False))
                        return
                    pdu = _in_short_message(pdu, payload)
                conn.send_request_callback(pdu, settle)
        except ConnectionClosed:
            self._unpend()
            done(Failed(self.name, "connection lost"))
            return
        except WindowFull:  # a probe took the last slot meanwhile
            self._unpend()
            done(Failed(self.name, "not ready"))
            return
        except LocalProtocolError as err:
            # Our PDU cannot be built (a field too long...): no carrier would take it.
            self._unpend()
            log.warning("carrier %s: message %s not sendable: %s", self.name, message.id, err)
            done(Rejected(self.name, err.status, retryable=False))
            return

    def _settle(
        self,
        link: _Link,
        conn: Connection,
        done: OutcomeCallback,
        sent_at: float,
        result: Pdu | SmppError,
    ) -> None:
        self._readied = None
        self._unpend()
        outcome: SubmitOutcome
        if isinstance(result, SmppError):  # no answer came
            if isinstance(result, ConnectionClosed):
                outcome = Failed(self.name, "connection lost")
                self._failed("connection_lost")
            elif isinstance(result, RequestTimeout):
                outcome = Failed(self.name, "timeout")
                self._failed("timeout")
                self._suspect(link, conn)
            else:
                log.error("carrier %s: submit failed: %r", self.name, result)
                outcome = Failed(self.name, f"error: {type(result).__name__}")
                self._failed("error")
        else:
            resp = result
            status = resp.command_status
            key = (_SUBMIT_SM, status)
            pdus = self.pdus
            pdus[key] = pdus.get(key, 0) + 1
            if status == _ROK and isinstance(resp, SubmitSmResp):
                outcome = Accepted(self.name, resp.message_id)
            else:
                if status == CommandStatus.ESME_ROK:  # a generic_nack saying "OK": nonsense
                    status = CommandStatus.ESME_RSYSERR
                outcome = Rejected(self.name, status, retryable=status in TEMPORARY_STATUSES)
                if status in (_THROTTLED, _MSGQFUL):
                    self._throttled(link, sent_at)
        done(outcome)

    def _throttled(self, link: _Link, sent_at: float) -> None:
        """The carrier throttled a submit ``link`` sent at ``sent_at``: slow the bind."""
        rate = link.rate
        now = asyncio.get_running_loop().time()
        if rate.throttled(now, sent_at):
            if rate.paused(now):
                log.info(
                    "carrier bind %s throttles at %.3g msg/s: holding back %.2fs",
                    link.name,
                    rate.limit,
                    self.config.throttle_pause,
                )
            else:
                log.debug("carrier bind %s throttles: rate %.4g msg/s", link.name, rate.limit)
            self._readied = None

    def _failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def _suspect(self, link: _Link, conn: Connection) -> None:
        """A response timed out: stop using the bind and probe it with an enquire_link."""
        if link.suspect or link.conn is not conn or conn.closed:
            return
        link.suspect = True
        self._state_changed()
        try:
            probe = conn.send_request(EnquireLink())
        except SmppError:
            _abort(conn)
            return
        probe.add_done_callback(partial(self._probed, link, conn))

    def _probed(self, link: _Link, conn: Connection, probe: asyncio.Future[Pdu]) -> None:
        if probe.cancelled() or probe.exception() is not None:
            if not conn.closed:
                log.warning("carrier bind %s does not answer: reconnecting", link.name)
                _abort(conn)
            return
        if link.conn is conn and link.suspect:
            link.suspect = False
            self._state_changed()

    # --- receipts and MO --------------------------------------------------------------

    def _deliver(self, pdu: DeliverSm, conn: Connection) -> int | None:
        """The status to answer ``pdu`` with now, or None: :meth:`answer` answers it later."""
        try:
            status = self._on_deliver(self.name, pdu, conn, self._answer)
        except Exception:
            log.exception("carrier %s: on_deliver failed", self.name)
            return int(CommandStatus.ESME_RX_T_APPN)
        return None if status is None else int(status)

    def answer(self, conn: Connection, sequence_number: int, status: int) -> None:
        """Answer the deliver_sm ``sequence_number`` that came on ``conn``, later (see
        ``DeliverCallback``). Dropped when the connection closed meanwhile: the carrier
        sends it again."""
        key = (_DELIVER_SM, status)
        self.pdus[key] = self.pdus.get(key, 0) + 1
        if conn.closed or not conn.session.awaits_answer(sequence_number):
            return
        body = b"" if status else b"\0"
        conn.respond_encoded(_DELIVER_SM_RESP, sequence_number, status, body)

    # --- connections ------------------------------------------------------------------

    def _bind_pdu(self, kind: str) -> Pdu:
        cfg = self.config
        cls = {"trx": BindTransceiver, "tx": BindTransmitter, "rx": BindReceiver}[kind]
        return cls(system_id=cfg.system_id, password=cfg.password, system_type=cfg.system_type)

    async def _supervise(self, link: _Link) -> None:
        """Keep one bind up until stop: connect, bind, wait for the end, back off, again."""
        cfg = self.config
        limit = cfg.response_timeout
        while not self._stop_event.is_set():
            if not await self._slot_for(link):
                break
            conn: Connection | None = None
            try:
                link.ended = asyncio.Event()
                conn = await connect(
                    cfg.host,
                    cfg.port,
                    config=self.session_config,
                    handler=link,
                    ssl=self._ssl,
                    server_hostname=cfg.tls.server_hostname if cfg.tls is not None else None,
                    timeout=limit,
                )
                async with asyncio.timeout(limit + 1.0):  # the session bounds it already
                    await conn.bind(self._bind_pdu(link.kind))
                link.failures = 0
                link.suspect = False
                link.conn = conn
                self.binds_made += 1
                log.info("carrier bind %s up", link.name)
                self._state_changed()
                if link.index >= self._allowed:  # its slot went while it bound
                    link.ended.set()
                await link.ended.wait()  # the bind's lifetime: ends on close, or on stop()
                if link.index >= self._allowed and not conn.closed:  # its slot went
                    with contextlib.suppress(OSError, TimeoutError, SmppError):
                        await conn.unbind(limit)
                await _close(conn, limit)
            except (OSError, TimeoutError, SmppError) as exc:
                link.failures += 1
                self.connect_failures += 1
                log.info("carrier bind %s failed (%d): %s", link.name, link.failures, exc)
            except Exception:  # a bug must not leave this bind down for good
                link.failures += 1
                self.connect_failures += 1
                log.exception("carrier bind %s: unexpected error", link.name)
            finally:
                if conn is not None and not conn.closed:
                    _abort(conn)
                if link.conn is not None:
                    link.conn = None
                    link.suspect = False
                    self._state_changed()
            if self._stop_event.is_set():
                break
            delay = backoff_delay(self.config.reconnect, link.failures, self._rng)
            try:
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()
            except TimeoutError:
                pass


def _in_short_message(pdu: SubmitSm, payload: Tlv) -> SubmitSm:
    rest = tuple(t for t in pdu.tlvs if t.tag != Tag.MESSAGE_PAYLOAD)
    return msgspec.structs.replace(pdu, short_message=payload.value, tlvs=rest)


def _abort(conn: Connection) -> None:
    """Drop a connection at once (a dead peer may never read what a clean close sends)."""
    if conn.transport is not None:
        conn.transport.abort()


async def _close(conn: Connection, timeout: float) -> None:
    """Close ``conn`` and wait (bounded) until it is gone; abort it if that takes too long."""
    conn.close()
    try:
        await conn.wait_closed(timeout)
    except TimeoutError:
        _abort(conn)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed", task.get_name(), exc_info=task.exception())


__all__ = ["CarrierPool", "backoff_delay", "relative_validity", "submit_pdu"]
