"""Status and inbound webhooks: receipts and MO of an account with ``webhooks:`` (or of a
message sent with a ``callback_url``) become signed JSON events POSTed to its URLs.

Never from a request handler: :class:`WebhookSink` sits in front of the SMPP delivery on
the router's ReportSink path and writes each event into the durable outbox
(smsc/outbox.py); the carrier's deliver_sm is acknowledged once that is committed.
:class:`WebhookSender` POSTs what the outbox holds over at most ``concurrency``
connections at once, at most ``per_endpoint`` of them to one receiving host (a slow
receiver only delays itself: its events, however many are pipelined, hold only its
connections); JSON events to an account's own URL go up to ``pipeline`` in one write on
one connection (HTTP/1.1 pipelining, answers in order: one write, one read and one task
per batch rather than per event), one at a time to a receiver whose last POST failed. It
retries any answer but a 2xx (timeouts, connection errors, 4xx and 5xx alike) with
exponential backoff and jitter — or after the receiver's ``Retry-After`` — until the
event is ``max_age`` old; then it is dead-lettered (``GET /v1/webhooks/failures``).

Each request carries ``Smsc-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." +
body)>`` with the account's ``webhooks.secret`` (unsigned when it has none), and
``Smsc-Event-Id``. Each event has an ``id`` and a ``sequence`` that grows with each event
of a message (receivers order by it).

A URL that is not one of its account's configured ``status_url``/``inbound_url`` (those
are the operator's) was given by an application — a message's ``callback_url``, a Kannel
or Jasmin ``dlr-url`` — and may reach only ``webhooks.callback_networks``
(smsc/callback_guard.py), judged on the address connected to; one that resolves outside
them is dead-lettered at once (``last_error`` ``refused: ...``, a WARNING line), never
retried.

The sink is also the router's SubmitWatch: a carrier's acceptance and a refusal before any
carrier took a message become the Kannel (dlr-mask 8, 16) and Jasmin (dlr-level 1)
callbacks that asked for them (smsc/legacy_dlr.py), through the same outbox; for a long
message, one callback once every part is answered (smsc/legacy_split.py). Those have
nobody to answer a temporary error to: one the outbox refuses (full) or fails to keep is
counted in ``dropped`` (``smsc_webhook_events_dropped_total``) and logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import hmac
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import msgspec

from router.model import DeliveryReport, Message, Refusal, StoredMessage
from router.ports import ReportSink, SettledCallback
from smppcore.constants import EsmClass, MessageState
from smppcore.errors import RemoteProtocolError
from smppcore.segment import parse_udh
from smppcore.text import codec_name, decode_text
from smsc.accounts import AccountState
from smsc.callback_guard import CallbackGuard, CallbackRefused
from smsc.callbacks import Callbacks
from smsc.delivery import wants_receipt
from smsc.http_config import WebhooksConfig
from smsc.legacy_dlr import (
    asks_submit_answer,
    legacy_accepted,
    legacy_refused,
    legacy_request,
    legacy_verdict,
)
from smsc.legacy_split import Answer, SplitAnswers, Verdict
from smsc.outbox import Outbox, OutboxEvent, host_of
from smsc.tasks import wait_event
from smsc.webhook_client import HttpError, Response, WebhookClient

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Smsc-Signature"
#: Failed POSTs in a row to one host that open its breaker.
BREAKER_FAILURES = 5
#: Receiving hosts whose failures are followed, at most (callback URLs name any host).
_MAX_HOSTS = 10_000
_UDHI = int(EsmClass.UDHI)

EVENT_TYPES: dict[MessageState, str] = {
    MessageState.DELIVERED: "message.delivered",
    MessageState.EXPIRED: "message.expired",
    MessageState.DELETED: "message.deleted",
    MessageState.UNDELIVERABLE: "message.failed",
    MessageState.REJECTED: "message.failed",
    MessageState.UNKNOWN: "message.failed",
    MessageState.SKIPPED: "message.failed",
    MessageState.ENROUTE: "message.enroute",
    MessageState.ACCEPTED: "message.accepted",
    MessageState.SCHEDULED: "message.scheduled",
}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Smsc-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = _keyed(secret).copy()  # (a keyed HMAC copied: not set up again per event)
    mac.update(f"{timestamp}.".encode())
    mac.update(body)
    return f"t={timestamp},v1={mac.hexdigest()}"


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """Does ``header`` sign ``body`` with ``secret``, within ``tolerance`` seconds of now?"""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


class _Sequence:
    """Event sequence numbers: microseconds of the wall clock, strictly increasing (so
    also across restarts, as long as the clock does not go back)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.last = 0

    def next(self) -> int:
        self.last = max(self.last + 1, int(self.wall() * 1_000_000))
        return self.last


#: Seconds ``_iso`` formatted lately, and their text (an event formats two: its
#: creation, now, and the report's done_at, often minutes before: receipts' done date).
_seconds: dict[int, str] = {}


def _iso(ts: float) -> str:
    """``2026-12-06T12:00:00.123Z`` (milliseconds, truncated as datetime does after it
    rounds to microseconds); the date and time of recent seconds are reused."""
    fraction, whole = math.modf(ts)
    second, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    text = _seconds.get(second)
    if text is None:
        if len(_seconds) >= 64:
            _seconds.clear()
        text = _seconds[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micros // 1000:03d}Z"


def _part(message_id: str, reported: str) -> int:
    if message_id == reported:
        return 1
    tail = message_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 1


class WebhookSink:
    """The router's ReportSink: events to the outbox for accounts (or messages) with a
    webhook, everything else to ``inner`` (the SMPP delivery). Also its SubmitWatch: the
    carrier's acceptance, and a refusal before any carrier took a message, become the
    Kannel (dlr-mask 8, 16) and Jasmin (dlr-level 1) callbacks that asked for them."""

    def __init__(
        self,
        inner: ReportSink,
        accounts: Mapping[str, AccountState],
        outbox: Outbox,
        callbacks: Callbacks,
        *,
        wake: Callable[[], None] = lambda: None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.accounts = accounts
        self.outbox = outbox
        self.callbacks = callbacks
        self.wake = wake
        self.wall = wall
        self._seq = _Sequence(wall)
        #: Events lost with nobody to answer a temporary error to: refused by a full
        #: outbox, or not kept by it.
        self.dropped = 0
        #: Events refused by a full outbox whose sender was told (it sends them again).
        self.refused = 0
        #: The answers to the parts of long messages sent through Kannel's or Jasmin's
        #: endpoints, until each message has one SMSC-level callback.
        self.splits = SplitAnswers()

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        msg = stored.message
        if self.splits:  # (long messages wait: those idle long enough are decided)
            self.sweep()
        state = self.accounts.get(msg.account)
        hooks = state.account.webhooks if state is not None else None
        target = self.callbacks.get(msg.reported_id)
        if target is not None and target.dialect != "json":
            request = legacy_request(target, stored, report, self.wall())
            if request is None:
                if settled is not None:
                    settled(True)
                return
            self._put(msg.account, request[0], request[1], self.wall(), settled, request[2])
            return
        url = (target.callback_url if target else None) or (hooks.status_url if hooks else None)
        if url is None:
            self.inner.report(stored, report, settled)
            return
        if not wants_receipt(msg.registered_delivery, report.state):
            if settled is not None:
                settled(True)
            return
        now = self.wall()
        seq = self._seq.next()
        data = {
            "message_id": msg.reported_id,
            "part": _part(msg.id, msg.reported_id),
            "parts": msg.concat.total if msg.concat else 1,
            "to": msg.destination.addr,
            "from": msg.source.addr,
            "state": report.state.name.lower(),
            "error": report.error,
            "carrier": report.carrier or stored.carrier or None,
            "done_at": _iso(report.done_at or now),
            "reference": target.reference if target else None,
        }
        event = {
            "id": f"evt_{msg.reported_id}_{seq}",
            "type": EVENT_TYPES.get(report.state, "message.failed"),
            "sequence": seq,
            "created_at": _iso(now),
            "data": data,
        }
        self._put(msg.account, url, msgspec.json.encode(event), now, settled)

    # --- SubmitWatch ----------------------------------------------------------------------

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        target = self.callbacks.get(message.reported_id)
        if target is None or not asks_submit_answer(target):
            return
        now = self.wall()
        if message.concat is not None and message.concat.total > 1:
            self._verdicts(message, Answer(carrier, carrier_message_id), now)
            return
        request = legacy_accepted(target, message, carrier, carrier_message_id, now)
        if request is not None:
            self._put(message.account, request[0], request[1], now, None, request[2])

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        target = self.callbacks.get(message.reported_id)
        if target is None or not asks_submit_answer(target):
            return
        now = self.wall()
        if message.concat is not None and message.concat.total > 1:
            self._verdicts(message, Answer(refusal.carrier, refusal=refusal), now)
            return
        request = legacy_refused(target, message, refusal, now)
        if request is not None:
            self._put(message.account, request[0], request[1], now, None, request[2])

    def _verdicts(self, part: Message, answer: Answer, now: float) -> None:
        """Record a long message's part's answer; call back the messages it decides."""
        self._call_back(self.splits.answer(part, answer, now), now)

    def sweep(self) -> None:
        """Call back the long messages whose parts stopped being answered (done at each
        answer and each report while some wait; a caller with a timer may call it too)."""
        now = self.wall()
        self._call_back(self.splits.sweep(now), now)

    def _call_back(self, verdicts: list[Verdict], now: float) -> None:
        for verdict in verdicts:
            msg = verdict.message
            target = self.callbacks.get(msg.reported_id)
            if target is None:
                continue
            request = legacy_verdict(target, verdict, now)
            if request is not None:
                self._put(msg.account, request[0], request[1], now, None, request[2])

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        state = self.accounts.get(account)
        hooks = state.account.webhooks if state is not None else None
        if hooks is None or hooks.inbound_url is None:
            return self.inner.mobile_originated(account, message, settled)
        payload = message.short_message
        udh = b""
        if message.esm_class & _UDHI:
            try:
                _, payload, udh = parse_udh(payload)
            except RemoteProtocolError:  # a UDH that overruns: passed on as it came
                udh = b""
        now = self.wall()
        seq = self._seq.next()
        text = (
            decode_text(payload, message.data_coding) if codec_name(message.data_coding) else None
        )
        data = {
            "message_id": message.id,
            "from": message.source.addr,
            "to": message.destination.addr,
            "text": text,
            "data_coding": message.data_coding,
            "udh": udh.hex() or None,
            "binary": None if text is not None else payload.hex(),
            "received_at": _iso(message.submitted_at or now),
        }
        event = {
            "id": f"evt_{message.id}_{seq}",
            "type": "message.inbound",
            "sequence": seq,
            "created_at": _iso(now),
            "data": data,
        }
        return self._put(account, hooks.inbound_url, msgspec.json.encode(event), now, settled)

    def _put(
        self,
        account: str,
        url: str,
        body: bytes,
        now: float,
        settled: SettledCallback | None,
        kind: str = "json",
    ) -> bool:
        done = self.outbox.put(account, url, body, now, kind)
        if done is None:  # the outbox is full: the carrier is answered a temporary error
            if settled is not None:
                self.refused += 1
                settled(False)
                self.wake()  # (what waits on the sender's outcomes looks again)
            else:
                self._dropped(account, "the outbox is full")
            return False
        if settled is not None:
            done.add_done_callback(lambda f: settled(not f.cancelled() and f.result()))
        else:  # nobody to tell: a write the outbox could not keep is counted
            done.add_done_callback(lambda f: self._kept(f, account))
        done.add_done_callback(lambda _: self.wake())
        return True

    def _kept(self, done: asyncio.Future[bool], account: str) -> None:
        if done.cancelled() or done.exception() is not None or not done.result():
            self._dropped(account, "the outbox could not keep it")

    def _dropped(self, account: str, why: str) -> None:
        """An event with nobody to answer a temporary error to is lost: counted, and
        logged (the first, then every 1000th: a full outbox drops many at once)."""
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "webhook event for %s dropped: %s (%d dropped so far)", account, why, self.dropped
            )


class SenderMetrics:
    def __init__(self) -> None:
        #: (account, outcome) → POSTs; outcome: delivered, retried, dead.
        self.outcomes: dict[tuple[str, str], int] = {}

    def count(self, account: str, outcome: str) -> None:
        key = (account, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


class WebhookSender:
    """POSTs the outbox's events. ``start()`` / ``wake()`` / ``await stop()``."""

    def __init__(
        self,
        config: WebhooksConfig,
        outbox: Outbox,
        accounts: Mapping[str, AccountState],
        *,
        rng: random.Random,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.accounts = accounts
        self.rng = rng
        self.wall = wall
        self.metrics = SenderMetrics()
        self._wake = asyncio.Event()
        self._inflight: dict[int, str] = {}  # event id → host
        #: Connections in use (POST tasks: one event each, or a pipelined batch), per
        #: host and overall: the caps ``per_endpoint`` and ``concurrency`` count these.
        self._by_host: dict[str, int] = {}
        self._conns = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._client: WebhookClient | None = None
        self._settled = asyncio.Event()
        #: Events whose POST was cancelled (stop): given back.
        self._cancelled: list[OutboxEvent] = []
        #: Events settled while the outbox is being read: that read may show them as
        #: they were (due), so they are not spawned from it again.
        self._recent: set[int] = set()
        self._reading = False
        #: Per receiving host: failures in a row, and until when its breaker is open.
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until ``predicate()`` holds, checked after
        each POST's outcome is recorded and each change to the outbox (:meth:`wake`);
        False when the time is up."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            return False
        return True

    def start(self) -> None:
        self._client = WebhookClient(
            timeout=self.config.timeout,
            max_idle=self.config.per_endpoint,
            guard=CallbackGuard(self.config.callback_networks),
        )
        self._loop_task = asyncio.create_task(self._run(), name="webhook-sender")

    def wake(self) -> None:
        """Something changed in the outbox: read it again (and :meth:`wait_for` looks)."""
        self._wake.set()
        self._settled.set()

    async def stop(self) -> None:
        """Cancel the POSTs on their way and give their events back to the outbox (in a
        cluster another node sends them at once, not once this node's claim lapses)."""
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._cancelled:
            self.outbox.give_back(self._cancelled)
            self._cancelled = []
        if self._client is not None:
            await self._client.close()

    async def _run(self) -> None:
        cfg = self.config
        while True:
            try:
                self._wake.clear()  # before reading: a put or an ending POST is not missed
                spawned = False
                full_read = False
                blocked = self._blocked()
                if self._conns < cfg.concurrency:
                    room = cfg.concurrency - self._conns  # (a connection each, at least)
                    self._recent.clear()
                    self._reading = True
                    try:
                        due = await self.outbox.due(self.wall(), room, self._inflight, blocked)
                    finally:
                        self._reading = False
                    full_read = len(due) >= room
                    unsent = []
                    batches: dict[str, list[OutboxEvent]] = {}
                    for event in due:
                        if event.id in self._recent or event.id in self._inflight:
                            continue
                        host = host_of(event.url)
                        batch = batches.get(event.url) if self._pipelined(event) else None
                        if batch is None and (
                            self._conns >= cfg.concurrency
                            or self._by_host.get(host, 0) >= cfg.per_endpoint
                        ):
                            unsent.append(event)
                            continue
                        spawned = True
                        self._inflight[event.id] = host
                        if batch is None:  # a connection of its own (or a new batch's)
                            self._by_host[host] = self._by_host.get(host, 0) + 1
                            self._conns += 1
                            batch = [event]
                            if self._pipelined(event):
                                batches[event.url] = batch
                        else:
                            batch.append(event)
                        if not self._pipelined(event) or len(batch) >= cfg.pipeline:
                            batches.pop(event.url, None)
                            self._spawn(batch, host)
                    for batch in batches.values():
                        self._spawn(batch, host_of(batch[0].url))
                    self.outbox.give_back(unsent)
                if spawned:
                    # What was due is on its way: read again at once if there may be more,
                    # else when something changes (a put, a POST's end; 1 s at most).
                    if not full_read:
                        await wait_event(self._wake, 1.0)
                    continue
                at = await self.outbox.next_due(self._inflight, self._blocked())
                now = self.wall()
                if self._open_until:  # a breaker closes then
                    reopen = min(self._open_until.values())
                    at = reopen if at is None else min(at, reopen)
                if at is None:
                    wait = 5.0
                elif at > now:
                    wait = min(5.0, at - now)
                else:  # due, but held back (caps, breakers): after a POST ends
                    wait = 1.0
                await wait_event(self._wake, wait)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook sender: reading the outbox failed; again in 1 s")
                await asyncio.sleep(1.0)

    def _blocked(self) -> set[str]:
        """Hosts not to POST to now: at their ``per_endpoint`` cap, or breaker open."""
        now = self.wall()
        for host, until in list(self._open_until.items()):
            if until <= now:  # half open: the next POST tries it
                del self._open_until[host]
        cap = self.config.per_endpoint
        return {h for h, n in self._by_host.items() if n >= cap} | self._open_until.keys()

    def _breaker(self, host: str, ok: bool) -> None:
        """After ``BREAKER_FAILURES`` failed POSTs in a row to ``host``, nothing is POSTed
        to it for a while (doubling, up to ``backoff_max``): its events wait without
        spending attempts, and the other receivers get the sender's slots."""
        if ok:
            self._failures.pop(host, None)
            return
        n = self._failures[host] = self._failures.get(host, 0) + 1
        if len(self._failures) > _MAX_HOSTS:  # forget the host failing longest ago
            self._failures.pop(next(iter(self._failures)))
            if len(self._open_until) > _MAX_HOSTS:
                self._open_until.pop(next(iter(self._open_until)))
        if n >= BREAKER_FAILURES:
            cfg = self.config
            pause = min(cfg.backoff_max, cfg.backoff_min * 2 ** min(n - BREAKER_FAILURES, 20))
            self._open_until[host] = self.wall() + pause

    def _pipelined(self, event: OutboxEvent) -> bool:
        """May ``event`` share a connection's write with others (``pipeline``)? JSON
        events to their account's own URLs (those given by applications go one by one,
        each to an address the guard allows), unless the receiver's last POST failed
        (then one at a time until one is taken: its breaker counts each failure)."""
        if self.config.pipeline < 2 or event.kind != "json":
            return False
        if self._failures and host_of(event.url) in self._failures:
            return False
        state = self.accounts.get(event.account)
        hooks = state.account.webhooks if state is not None else None
        return hooks is not None and event.url in (hooks.status_url, hooks.inbound_url)

    def _spawn(self, events: list[OutboxEvent], host: str) -> None:
        """POST ``events`` (in flight, and a connection to ``host`` counted for them) in
        a task of their own."""
        task = asyncio.create_task(self._post(events, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, events: list[OutboxEvent], host: str) -> None:
        """POST ``events`` (one, or several pipelined to one URL); then, while the
        receiver takes them and more events to it are at hand with nothing else waiting,
        the next ones in the same task and slots (the loop of :meth:`_run` would start
        them a task and a wake-up later)."""
        try:
            while True:
                outcomes = await self._attempts(events)
                failed = False
                for event, (error, retry_after, refused) in zip(events, outcomes, strict=True):
                    if refused:  # (nothing was sent: the host's breaker is left as it is)
                        self._refused(event, error or "refused")
                    else:
                        self._breaker(host, error is None)
                        self._settle(event, error, retry_after)
                    if self._reading:  # (bounded: what settles during one read)
                        self._recent.add(event.id)
                    failed = failed or error is not None
                self._settled.set()
                if failed or self._open_until:
                    break
                events = self._take_next(events, host)  # (those settled are let go)
                if not events:
                    break
        except asyncio.CancelledError:
            self._cancelled.extend(events)  # (not settled: settling is never awaited)
            raise
        finally:
            for event in events:
                self._inflight.pop(event.id, None)
            self._conns -= 1
            n = self._by_host.get(host, 1) - 1
            if n:
                self._by_host[host] = n
            else:
                self._by_host.pop(host, None)
            self._wake.set()

    def _take_next(self, done: list[OutboxEvent], host: str) -> list[OutboxEvent]:
        """The events to ``host`` at hand to POST next on the connection ``done``
        (settled, let go) used: up to ``pipeline`` when they may go in one write to one
        URL, else the first."""
        cfg = self.config
        for event in done:
            self._inflight.pop(event.id, None)
        taken: list[OutboxEvent] = []
        while True:  # (on the connection counted for ``done``: no other cap to heed)
            following = self.outbox.take_next(host, self._inflight)
            if following is None:
                break
            if taken and (following.url != taken[0].url or not self._pipelined(following)):
                self.outbox.give_back([following])  # (the next write's)
                break
            self._inflight[following.id] = host
            taken.append(following)
            if not self._pipelined(following) or len(taken) >= cfg.pipeline:
                break
        return taken

    async def _attempts(
        self, events: list[OutboxEvent]
    ) -> list[tuple[str | None, float | None, bool]]:
        """Each event's POST (:meth:`_attempt`): several in one write when there are
        (one by one if they may not share it any more: a reload moved the account's URL,
        or the receiver failed meanwhile)."""
        if len(events) == 1 or not all(self._pipelined(e) for e in events):
            return [await self._attempt(event) for event in events]
        assert self._client is not None
        now = int(self.wall())
        requests = []
        for event in events:
            _, data, headers, _ = self._request(event, now)  # (JSON to a trusted URL)
            requests.append((data, headers))
        answers = await self._client.post_many(events[0].url, requests)
        return [self._outcome(answer) for answer in answers]

    async def _attempt(self, event: OutboxEvent) -> tuple[str | None, float | None, bool]:
        """One POST (:meth:`_outcome`)."""
        assert self._client is not None
        method, data, headers, trusted = self._request(event, int(self.wall()))
        try:
            resp = await self._client.request(method, event.url, data, headers, guarded=not trusted)
        except (CallbackRefused, TimeoutError, HttpError, OSError) as exc:
            return self._outcome(exc)
        return self._outcome(resp)

    def _request(self, event: OutboxEvent, now: int) -> tuple[str, bytes, dict[str, str], bool]:
        """``event``'s request: method, body, header fields (signed at ``now`` when its
        account has a secret), and whether its URL is trusted (the operator's own URLs
        go anywhere; any other was given by an application)."""
        headers = {"Smsc-Event-Id": str(event.id)}
        method, data = "POST", event.body
        if event.kind == "get":
            method, data = "GET", b""
        elif event.kind == "form":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            headers["Content-Type"] = "application/json"
        state = self.accounts.get(event.account)
        hooks = state.account.webhooks if state is not None else None
        if hooks is not None:
            headers[SIGNATURE_HEADER] = sign(hooks.secret, now, data)
        trusted = hooks is not None and event.url in (hooks.status_url, hooks.inbound_url)
        return method, data, headers, trusted

    def _outcome(self, answer: Response | Exception) -> tuple[str | None, float | None, bool]:
        """A POST's answer, or why there is none: (None, None, False) when taken; else (why
        not, the receiver's Retry-After, whether its URL is refused:
        webhooks.callback_networks)."""
        if isinstance(answer, CallbackRefused):
            return f"refused: {answer}"[:300], None, True
        if isinstance(answer, TimeoutError):
            return "timeout", None, False
        if isinstance(answer, Exception):
            return f"{type(answer).__name__}: {answer}"[:200], None, False
        if 200 <= answer.status < 300:
            return None, None, False
        after = _retry_after(answer.headers.get("retry-after"), self.wall())
        return f"HTTP {answer.status}", after, False

    def _refused(self, event: OutboxEvent, error: str) -> None:
        """``event``'s URL may not be reached (webhooks.callback_networks): dead at once
        (asking again would be refused again), with why."""
        self.outbox.dead(event.id, event.attempts + 1, error)
        self.metrics.count(event.account, "dead")
        log.warning(
            "webhook event %d of %s dead-lettered: its callback URL is refused: %s",
            event.id,
            event.account,
            error,
        )

    def _settle(self, event: OutboxEvent, error: str | None, retry_after: float | None) -> None:
        if error is None:
            self.outbox.delivered(event.id)
            self.metrics.count(event.account, "delivered")
            return
        cfg = self.config
        attempts = event.attempts + 1
        now = self.wall()
        backoff = min(cfg.backoff_max, cfg.backoff_min * 2 ** min(attempts - 1, 30))
        delay = backoff * (0.5 + self.rng.random() / 2)
        if retry_after is not None:
            delay = min(cfg.backoff_max, max(retry_after, 0.0))
        if now + delay > event.created + cfg.max_age:
            self.outbox.dead(event.id, attempts, error)
            self.metrics.count(event.account, "dead")
            log.warning(
                "webhook event %d of %s dead-lettered after %d attempts: %s",
                event.id,
                event.account,
                attempts,
                error,
            )
            return
        self.outbox.retry_at(event.id, attempts, now + delay, error)
        self.metrics.count(event.account, "retried")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
