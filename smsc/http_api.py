"""The application HTTP API (``/v1`` on its own listener, ``http_api:`` in the config):
send messages, follow them, cancel them; described by the OpenAPI 3.1 document in
:mod:`smsc.http_openapi` (served at ``/v1/openapi.json``).

Every request but the document's is an account's: ``Authorization: Bearer <api key>``
(``smsc api-key``) or ``Authorization: Basic`` with its SMPP system_id and password. The
account's policies are those of its SMPP binds: each message (each part of a long one)
takes a token from the same bucket (429 with ``Retry-After`` when it is empty), the
router applies its allowed carriers and price ceiling.

Messages are built by smsc/messages.py, as the SMPP server builds them. A text is encoded
in GSM 03.38 when it fits, else UCS-2, and split with a concatenation UDH when long; its
parts are ``<id>``, ``<id>-2``, ... in the store and share one carrier. Every error is an
RFC 9457 ``application/problem+json`` with ``field`` naming what is wrong when a field
is. Webhooks are never sent from here: see smsc/webhooks.py.

The routes are aiohttp's, behind the listener of smsc/http_fast.py: a plain ``POST
/v1/messages`` (Content-Length body, nothing unusual in its head) is read and answered by
that listener through :meth:`HttpApi.post_messages` — the same auth, caps, answers and
counts as the aiohttp route, at a third of aiohttp's cost per request — and any other
request hands its connection to aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
from aiohttp import web

from router.model import Address, Concat, Message, StoredMessage
from smppcore.constants import CommandStatus, DataCoding, EsmClass, MessageState, ton_npi_for
from smppcore.errors import EncodingError, LocalProtocolError
from smppcore.receipt import is_final
from smppcore.segment import split, split_bytes
from smsc.accounts import AccountState
from smsc.apikeys import Authenticator, basic_credentials, bearer
from smsc.callback_guard import DEFAULT_NETWORKS, CallbackGuard, CallbackRefused
from smsc.callbacks import NO_TARGET, VIA_API, Callbacks, Target
from smsc.http_config import HttpApiConfig, check_url
from smsc.http_fast import Answer, FastListener
from smsc.http_metrics import HttpCounters
from smsc.http_openapi import SPEC
from smsc.http_records import HttpRecords, RecordsUnavailable, SentMessage, part_id
from smsc.http_times import instant, validity_end
from smsc.idempotency import Idempotency, KeyInUse, KeyReused
from smsc.messages import InvalidMessage, admit, build_message, retry_after
from smsc.outbox import Outbox, OutboxEvent

if TYPE_CHECKING:
    from router.router import Router
    from smsc.server import Server

log = logging.getLogger(__name__)

MAX_DESTINATIONS: Final = 1000
MAX_TEXT: Final = 40_000
PROBLEM: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://smsc.invalid/problems/"
SEND_PATH: Final = "/v1/messages"
_REF = re.compile(r"`\$\.?([^`]*)`")
_UDHI = int(EsmClass.UDHI)

Number = Annotated[str, msgspec.Meta(pattern=r"^\+?[0-9]{1,20}$")]
Sender = Annotated[str, msgspec.Meta(min_length=1, max_length=20, pattern=r"^[ -~]+$")]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /v1/messages``."""

    to: Number | Annotated[list[Number], msgspec.Meta(min_length=1, max_length=MAX_DESTINATIONS)]
    from_: Sender | None = msgspec.field(default=None, name="from")
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    binary: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    data_coding: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    udh: Annotated[str, msgspec.Meta(min_length=1, max_length=400)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = 0
    validity: Annotated[float, msgspec.Meta(gt=0)] | str | None = None
    send_at: str | None = None
    receipt: bool = True
    callback_url: (
        Annotated[str, msgspec.Meta(max_length=2000, pattern=r"^https?://[^\s]+$")] | None
    ) = None
    reference: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class Problem(Exception):
    """An RFC 9457 problem to answer."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def response(self, instance: str) -> web.Response:
        return web.Response(
            body=self.body(instance), status=self.status, content_type=PROBLEM, headers=self.headers
        )

    def body(self, instance: str) -> bytes:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.title.lower().replace(" ", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.field is not None:
            body["field"] = self.field
        return msgspec.json.encode(body)


def _unavailable() -> Problem:
    return Problem(
        503, "Unavailable", "the API's records cannot be read now", headers={"Retry-After": "1"}
    )


def invalid(field: str, detail: str, status: int = 422) -> Problem:
    return Problem(status, "Invalid field", f"{field}: {detail}", field=field)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class Part(msgspec.Struct, frozen=True):
    """One part's octets (UDH included when ``udhi``)."""

    short_message: bytes
    data_coding: int
    udhi: bool


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """What a send asks, decoded and checked, whatever the endpoint's dialect."""

    destinations: list[str]
    parts: list[Part]
    source: str
    priority: int
    registered: int
    schedule_at: float | None
    expires_at: float | None
    target: Target | None


def text_parts(text: str, coding: int | None, ref: int, field: str = "text") -> list[Part]:
    """``text`` encoded (in ``coding``; None: GSM 03.38 when it fits, else UCS-2) and
    split with a concatenation UDH when long. Problem naming ``field`` when it cannot."""
    try:
        segments = split(text, coding, ref=ref)
    except EncodingError as exc:
        raise invalid(field, str(exc)) from None
    except LocalProtocolError as exc:
        raise invalid(field, f"too long: {exc}") from None
    return [Part(s.short_message, s.data_coding, s.esm_class_udhi) for s in segments]


def binary_parts(
    data: bytes, coding: int, udh: bytes | None, ref: int, field: str = "binary"
) -> list[Part]:
    """Octets as given: one part with ``udh`` (at most 140 octets in all), or split with
    a concatenation UDH when long."""
    if udh is not None:
        if not udh or udh[0] != len(udh) - 1:
            raise invalid("udh", "its first octet (UDHL) must count the octets after it")
        if len(udh) + len(data) > 140:
            raise invalid(field, "with its udh, over 140 octets")
        return [Part(udh + data, coding, True)]
    try:
        segments = split_bytes(data, data_coding=coding, ref=ref)
    except LocalProtocolError as exc:
        raise invalid(field, f"too long: {exc}") from None
    return [Part(s.short_message, s.data_coding, s.esm_class_udhi) for s in segments]


class HttpApi:
    """The API's server. ``await start()``, ``port``, ``await stop()``."""

    def __init__(
        self,
        config: HttpApiConfig,
        *,
        server: Server,
        router: Router,
        records: HttpRecords,
        callbacks: Callbacks,
        outbox: Outbox | None = None,
        ssl: Any = None,
        wake_sender: Callable[[], None] = lambda: None,
        counters: HttpCounters | None = None,
        wall: Callable[[], float] = time.time,
        guard: CallbackGuard | None = None,
    ) -> None:
        self.config = config
        #: What callback URLs given with a message may name (webhooks.callback_networks).
        self.guard = guard if guard is not None else CallbackGuard(DEFAULT_NETWORKS)
        self.server = server
        self.router = router
        self.records = records
        self.callbacks = callbacks
        self.outbox = outbox
        self.ssl = ssl
        self.wake_sender = wake_sender
        self.wall = wall
        self.auth = Authenticator(server.accounts)
        self.counters = counters if counters is not None else HttpCounters()
        self._active = 0
        self._ref = 0
        #: Requests with an Idempotency-Key: answered once (smsc/idempotency.py).
        self.idempotency = Idempotency(
            records,
            ttl=config.idempotency_ttl,
            # (the reservation's: the longest a send may take, and a margin; http_node.py)
            hold=router.config.intake.max_wait + 60.0,
            wall=wall,
        )
        app = web.Application(client_max_size=config.max_body, middlewares=[self._front])
        #: The aiohttp application (more routes may be added before start: legacy_http).
        self.web_app = app
        add = app.router
        add.add_get("/v1/openapi.json", self.openapi)
        add.add_post("/v1/messages", self.send)
        add.add_get("/v1/messages", self.list_messages)
        add.add_get("/v1/messages/{id}", self.get_message)
        add.add_delete("/v1/messages/{id}", self.cancel)
        add.add_get("/v1/account", self.account)
        add.add_get("/v1/webhooks/failures", self.failures)
        add.add_post("/v1/webhooks/failures/{id}/retry", self.retry_failure)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        #: The listener: plain POST /v1/messages itself, the rest through aiohttp.
        self._listener: FastListener | None = None
        self._openapi = msgspec.json.encode(SPEC)

    async def start(self) -> None:
        await self._runner.setup()
        assert self._runner.server is not None
        self._listener = FastListener(
            self.post_messages, self._runner.server, max_body=self.config.max_body
        )
        await self._listener.start(self.config.host, self.config.port, self.ssl)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.port

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop(2.0)
        await self._runner.cleanup()
        await self.idempotency.stop(1.0)

    # --- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """At most ``max_concurrency`` requests at once; every error an RFC 9457 problem;
        each request counted by route and status. (One middleware: each costs a call
        chain per request.)"""
        if self._active >= self.config.max_concurrency:
            return self._busy().response(request.path)
        self._active += 1
        status = 500
        try:
            try:
                response = await handler(request)
            except Problem as problem:
                response = problem.response(request.path)
            except RecordsUnavailable as exc:
                log.warning("HTTP API: %s %s: records unavailable: %s", request.method,
                            request.path, exc)  # fmt: skip
                response = _unavailable().response(request.path)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                headers = {}
                if isinstance(exc, web.HTTPMethodNotAllowed):
                    headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
                response = Problem(exc.status, exc.reason, exc.reason, headers=headers).response(
                    request.path
                )
            except Exception:
                log.exception("HTTP API: %s %s failed", request.method, request.path)
                response = Problem(500, "Internal error", "see the smsc log").response(request.path)
            status = response.status
            return response
        finally:
            self._active -= 1
            route = request.match_info.route.resource
            template = route.canonical if route is not None else "other"
            self.counters.request(request.method, template, status)

    def _busy(self) -> Problem:
        return Problem(
            503,
            "Busy",
            f"{self._active} requests in progress (max_concurrency); try again",
            headers={"Retry-After": "1"},
        )

    async def post_messages(self, authorization: str, key: str | None, raw: bytes) -> Answer:
        """``POST /v1/messages`` as the listener's fast lane reads it (smsc/http_fast.py):
        what :meth:`send` answers under :meth:`_front`, counted as it counts."""
        if self._active >= self.config.max_concurrency:
            problem = self._busy()
            return problem.status, PROBLEM, problem.body(SEND_PATH), problem.headers
        self._active += 1
        status = 500
        try:
            try:
                state = self._by_key(authorization) or await self._account_of(authorization)
                status, body, headers = await self._send_raw(state, key, raw)
            except Problem as exc:
                status, body, headers = exc.status, exc.body(SEND_PATH), exc.headers
            except RecordsUnavailable as exc:
                log.warning("HTTP API: POST %s: records unavailable: %s", SEND_PATH, exc)
                down = _unavailable()
                status, body, headers = down.status, down.body(SEND_PATH), down.headers
            except Exception:
                log.exception("HTTP API: POST %s failed", SEND_PATH)
                failed = Problem(500, "Internal error", "see the smsc log")
                status, body, headers = failed.status, failed.body(SEND_PATH), failed.headers
            return status, _type(status), body, headers
        finally:
            self._active -= 1
            self.counters.request("POST", SEND_PATH, status)

    def _by_key(self, header: str) -> AccountState | None:
        """The account of an ``Authorization: Bearer`` key (the common case, without a
        coroutine); None: not one, or not known."""
        key = bearer(header)
        return None if key is None else self.auth.by_key(key)

    async def _account(self, request: web.Request) -> AccountState:
        """The calling account (Problem 401 when the credentials do not name one)."""
        return await self._account_of(request.headers.get("Authorization", ""))

    async def _account_of(self, header: str) -> AccountState:
        """The account of an ``Authorization`` value (Problem 401 when it names none)."""
        state: AccountState | None = None
        key = bearer(header)
        if key is not None:
            state = self.auth.by_key(key)
        else:
            creds = basic_credentials(header)
            if creds is not None:
                state = await self.auth.by_password(*creds)
        if state is None:
            raise Problem(
                401,
                "Unauthorized",
                "give an API key (Authorization: Bearer) or the account's system_id and"
                " password (Authorization: Basic)",
                headers={"WWW-Authenticate": 'Bearer realm="smsc", Basic realm="smsc"'},
            )
        return state

    # --- the document -------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    # --- sending ------------------------------------------------------------------------

    async def send(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Problem(
                413, "Too large", f"the body is over {self.config.max_body} octets"
            ) from None
        status, body, headers = await self._send_raw(
            state, request.headers.get("Idempotency-Key"), raw
        )
        return web.Response(body=body, status=status, content_type=_type(status), headers=headers)

    async def _send_raw(
        self, state: AccountState, key: str | None, raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        """Answer a send with its ``Idempotency-Key`` (None: none): (status, body,
        headers); Problem for what is wrong with the key."""
        if key is None:
            return await self._send(state, raw)
        if not 1 <= len(key) <= 255:
            raise invalid("Idempotency-Key", "1 to 255 characters", 400)
        try:
            return await self.idempotency.send(
                state.system_id, key, raw, partial(self._send, state, raw)
            )
        except KeyInUse as exc:
            raise Problem(409, "In progress", str(exc)) from None
        except KeyReused as exc:
            raise Problem(
                422, "Idempotency key reused", str(exc), field="Idempotency-Key"
            ) from None

    async def _send(self, state: AccountState, raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Answer a send: (status, body, headers)."""
        try:
            return 202, msgspec.json.encode(await self._accept(state, raw)), {}
        except Problem as problem:
            return problem.status, problem.body(SEND_PATH), problem.headers

    async def _accept(self, state: AccountState, raw: bytes) -> dict[str, Any]:
        req = _decode(raw)
        now = self.wall()
        destinations = [req.to] if isinstance(req.to, str) else list(req.to)
        parts = self._parts(req)
        expires_at = (
            None if req.validity is None else _field("validity", validity_end, req.validity, now)
        )
        schedule_at = None if req.send_at is None else _field("send_at", instant, req.send_at)
        if schedule_at is not None and schedule_at <= now:
            schedule_at = None  # already due: sent now
        if schedule_at is not None and expires_at is not None and schedule_at >= expires_at:
            raise invalid("send_at", "at or after the validity ends")
        hooks = state.account.webhooks
        registered = (1 if req.receipt else 0) | (0x10 if hooks and hooks.intermediate else 0)
        target = None
        self.check_callback("callback_url", req.callback_url)
        if req.callback_url or req.reference:
            target = Target(req.callback_url, req.reference)
        order = Order(
            destinations=[d.lstrip("+") for d in destinations],
            parts=parts,
            source=req.from_.removeprefix("+") if req.from_ else "",
            priority=req.priority,
            registered=registered,
            schedule_at=schedule_at,
            expires_at=expires_at,
            target=target,
        )
        return await self.dispatch(state, order)

    def check_callback(self, field: str, url: str | None) -> None:
        """422 naming ``field`` when ``url`` is not an absolute http(s) URL, or names an
        address literal that callbacks may not reach (a name is judged when the callback
        connects: smsc/webhook_client.py)."""
        if url is None:
            return
        try:
            check_url(url)
            self.guard.check_url(url)
        except (ValueError, CallbackRefused) as exc:
            raise invalid(field, str(exc)) from None

    async def dispatch(self, state: AccountState, order: Order) -> dict[str, Any]:
        """Admit and submit ``order`` for ``state``'s account: one message per
        destination. The answer's body; Problem when none is taken (429 over the
        account's throughput, 503 refused)."""
        server = self.server
        now = self.wall()
        destinations, parts, source = order.destinations, order.parts, order.source
        schedule_at, expires_at = order.schedule_at, order.expires_at
        registered = order.registered
        n = len(destinations) * len(parts)
        bucket = state.bucket
        if bucket is not None and n > bucket.burst:
            raise invalid(
                "to",
                f"{n} messages in one request exceed the account's burst ({bucket.burst:g})",
            )
        mono = time.monotonic()
        status = admit(state, server.delivery, registered, mono, n)
        if status == CommandStatus.ESME_RTHROTTLED:
            self.counters.message(state.system_id, "throttled", len(destinations))
            wait = max(1, int(retry_after(state, mono, n) + 0.999))
            raise Problem(
                429,
                "Throttled",
                "over the account's throughput (shared with its SMPP binds)",
                headers={"Retry-After": str(wait)},
            )
        if status:
            raise Problem(
                503,
                "Receipts held",
                "the account's undelivered receipts are at max_held: messages asking for"
                " one are refused until its receiver takes some",
                headers={"Retry-After": "5"},
            )
        sent: list[SentMessage] = []
        messages: list[list[Message]] = []
        for dest in destinations:
            try:
                msg_id = server.new_id()
            except RuntimeError:
                raise Problem(
                    503, "Unavailable", "no message id available now", headers={"Retry-After": "1"}
                ) from None
            number = dest
            built = []
            group = f"{state.system_id}:http:{msg_id}"
            for seq, part in enumerate(parts, 1):
                try:
                    built.append(
                        build_message(
                            state,
                            msg_id=part_id(msg_id, seq),
                            client_id=msg_id if seq > 1 else "",
                            source=_address(source),
                            destination=Address(1, 1, number),
                            short_message=part.short_message,
                            data_coding=part.data_coding,
                            esm_class=_UDHI if part.udhi else 0,
                            priority=order.priority,
                            registered_delivery=registered,
                            now=now,
                            default_validity=server.default_validity,
                            schedule_at=schedule_at,
                            expires_at=expires_at,
                            concat=Concat(group, len(parts), seq) if len(parts) > 1 else None,
                            via=VIA_API,
                        )
                    )
                except InvalidMessage as exc:
                    raise invalid(exc.field, exc.reason) from None
            messages.append(built)
            sent.append(
                SentMessage(
                    id=msg_id,
                    account=state.system_id,
                    to=number,
                    source=source,
                    parts=len(parts),
                    created=now,
                    reference=order.target.reference if order.target else None,
                    target=order.target,
                )
            )
        if order.target is not None:
            for record in sent:
                self.callbacks.add(record.id, order.target)
        elif self.records.shared:  # known here to ask nothing: its receipts read no record
            for record in sent:
                self.callbacks.add(record.id, NO_TARGET)
        recorded = self.records.add(sent)
        if recorded is None:  # its writes are backed up: nothing is submitted
            raise Problem(
                503,
                "Unavailable",
                "the API's records cannot be written now",
                headers={"Retry-After": "1"},
            )
        # The record is written while the router takes the messages (each is in the
        # store in any case: GET finds a message by its first part without the record;
        # reads of the records wait for the writes queued before them). ``ack_after:
        # store`` answers once the record is committed too; ``enqueue`` (accepted once
        # in memory) does not wait for it: it is written behind, in the next group commit.
        if self.records.shared and not await recorded:
            # Other nodes read the record (a receipt may land on any of them at once):
            # written first, or nothing is submitted.
            raise Problem(
                503,
                "Unavailable",
                "the API's records cannot be written now",
                headers={"Retry-After": "1"},
            )
        recorded.add_done_callback(partial(_recorded, len(sent)))
        if self.router.config.ack_after == "store":
            results, _ = await asyncio.gather(
                asyncio.gather(*(self._submit(ms) for ms in messages)), recorded
            )
        elif len(messages) == 1:
            results = [await self._submit(messages[0])]
        else:
            results = await asyncio.gather(*(self._submit(ms) for ms in messages))
        out = []
        refused = sum(1 for status in results if status)
        self.counters.message(state.system_id, "rejected", refused)
        self.counters.message(state.system_id, "accepted", len(results) - refused)
        for record, status in zip(sent, results, strict=True):
            item: dict[str, Any] = {"id": record.id, "to": record.to, "parts": record.parts}
            if status:
                item["status"] = "rejected"
                item["error"] = _status_name(status)
            else:
                item["status"] = "scheduled" if schedule_at is not None else "accepted"
            out.append(item)
        if all(status for status in results):
            raise Problem(
                503,
                "Not accepted",
                f"the router refused every message: {out[0]['error']}",
                headers={"Retry-After": "1"},
            )
        return {"messages": out, "reference": order.target.reference if order.target else None}

    def _parts(self, req: SendRequest) -> list[Part]:
        if (req.text is None) == (req.binary is None):
            field = "text" if req.text is None else "binary"
            raise invalid(field, "give either text or binary", 422)
        self._ref = (self._ref + 1) & 0xFF
        if req.text is not None:
            if req.udh is not None or req.data_coding is not None:
                raise invalid("udh" if req.udh else "data_coding", "only with binary")
            return text_parts(req.text, None, self._ref)
        data = _base64("binary", req.binary or "")
        udh = None if req.udh is None else _base64("udh", req.udh)
        coding = int(DataCoding.BINARY) if req.data_coding is None else req.data_coding
        return binary_parts(data, coding, udh, self._ref)

    def next_ref(self) -> int:
        """The next concatenation reference (8 bits)."""
        self._ref = (self._ref + 1) & 0xFF
        return self._ref

    async def _submit(self, parts: list[Message]) -> int:
        """Hand the parts of one message to the router; the first refusal, or 0."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        for message in parts:
            done: asyncio.Future[int] = loop.create_future()

            def answered(status: int, done: asyncio.Future[int] = done) -> None:
                if not done.done():
                    done.set_result(status)

            futures.append(done)
            self.server.intake.submit(message, answered)
        if all(f.done() for f in futures):  # answered at once (not paced, not durable)
            return self._all_or_none(parts, [f.result() for f in futures])
        try:
            async with asyncio.timeout(self.router.config.intake.max_wait + 30.0):
                if len(futures) == 1:
                    return await futures[0]
                statuses = await asyncio.gather(*futures)
        except TimeoutError:
            for message in parts:  # its fate unknown: none of it is to go
                self.server.intake.cancel(message.id)
            return int(CommandStatus.ESME_RSYSERR)
        return self._all_or_none(parts, statuses)

    def _all_or_none(self, parts: list[Message], statuses: list[int]) -> int:
        """The first refusal, or 0. A message is taken whole or not at all: when one part
        is refused, the parts already accepted are cancelled (the client is told it was
        refused and may send it again: no partial message reaches the handset)."""
        refused = next((s for s in statuses if s), 0)
        if refused:
            for message, status in zip(parts, statuses, strict=True):
                if status == 0:
                    self.server.intake.cancel(message.id)
        return refused

    # --- reading ------------------------------------------------------------------------

    async def _find(
        self, state: AccountState, message_id: str
    ) -> tuple[SentMessage, list[StoredMessage]]:
        record = await self.records.get(message_id)
        if record is None:  # sent over SMPP: the store knows it as one part
            found = await self.server.store.get(message_id)
            if found is None or found.message.account != state.system_id:
                raise Problem(404, "Not found", f"no message {message_id!r}", field="id")
            msg = found.message
            record = SentMessage(
                id=message_id,
                account=msg.account,
                to=msg.destination.addr,
                source=msg.source.addr,
                parts=1,
                created=msg.submitted_at,
            )
            return record, [found]
        if record.account != state.system_id:
            raise Problem(404, "Not found", f"no message {message_id!r}", field="id")
        parts = [await self.server.store.get(pid) for pid in record.part_ids]
        return record, [p for p in parts if p is not None]

    async def get_message(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        record, parts = await self._find(state, request.match_info["id"])
        return _json(self._view(record, parts, detail=True))

    def _view(
        self, record: SentMessage, parts: list[StoredMessage], *, detail: bool
    ) -> dict[str, Any]:
        now = self.wall()
        states = [_state(p, now) for p in parts]
        carrier = next((p.carrier for p in parts if p.carrier), None)
        view: dict[str, Any] = {
            "id": record.id,
            "to": record.to,
            "from": record.source or None,
            "state": _overall(states) if len(parts) == record.parts else "accepted",
            "parts": record.parts,
            "carrier": carrier,
            "created_at": _iso(record.created),
            "reference": record.reference,
        }
        if detail:
            price = self._price(record.to, record.account, carrier)
            view["price"] = None if price is None else str(price)
            view["part_states"] = [
                {
                    "part": n,
                    "state": s,
                    "carrier": p.carrier or None,
                    "carrier_message_id": p.carrier_message_id or None,
                    "error": p.error,
                }
                for n, (p, s) in enumerate(zip(parts, states, strict=True), 1)
            ]
            view["timeline"] = _timeline(parts[0], price) if parts else []
        return view

    def _price(self, destination: str, account: str, carrier: str | None) -> Any:
        """The route table's price of ``carrier`` for the destination, per part."""
        if carrier is None:
            return None
        for candidate in self.router.explain(destination, account).candidates:
            if candidate.carrier == carrier:
                return candidate.price
        return None

    async def list_messages(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        query = request.query
        to = query.get("to")
        if to is not None and not re.fullmatch(r"\+?[0-9]{1,20}", to):
            raise invalid("to", "expected a number (digits, optional +)", 400)
        wanted = query.get("state")
        if wanted is not None and wanted not in STATES:
            raise invalid("state", f"one of {', '.join(STATES)}", 400)
        since = _query_time(query, "since")
        until = _query_time(query, "until")
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            raise invalid("limit", "expected an integer 1..500", 400) from None
        if not 1 <= limit <= 500:
            raise invalid("limit", "expected an integer 1..500", 400)
        after = _cursor(query.get("cursor"))
        out: list[dict[str, Any]] = []
        last: SentMessage | None = None
        more = True
        while len(out) < limit and more:
            page = await self.records.page(
                state.system_id,
                to=None if to is None else to.lstrip("+"),
                since=since,
                until=until,
                after=after,
                limit=limit,
            )
            more = len(page) == limit
            for record in page:
                last = record
                after = (record.created, record.id)
                parts = [await self.server.store.get(pid) for pid in record.part_ids]
                view = self._view(record, [p for p in parts if p is not None], detail=False)
                if wanted is None or view["state"] == wanted:
                    out.append(view)
                    if len(out) == limit:
                        break
        cursor = None
        if last is not None and len(out) == limit:
            cursor = base64.urlsafe_b64encode(f"{last.created!r}|{last.id}".encode()).decode()
        return _json({"messages": out, "next_cursor": cursor})

    async def cancel(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        record, parts = await self._find(state, request.match_info["id"])
        cancelled = [self.server.intake.cancel(p.message.id) for p in parts]
        if not any(cancelled):
            raise Problem(
                409, "Not cancellable", "the message has left for a carrier (or is final)"
            )
        return _json({"id": record.id, "state": "deleted", "parts_cancelled": sum(cancelled)})

    async def account(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        acct = state.account
        bucket = state.bucket
        stats = self.router.queue_stats()
        return _json(
            {
                "system_id": acct.system_id,
                "throughput": acct.throughput,
                "burst": None if bucket is None else bucket.burst,
                "tokens": None if bucket is None else round(bucket.tokens, 3),
                "max_sessions": acct.max_sessions,
                "sessions_bound": len(state.sessions),
                "allowed_carriers": acct.allowed_carriers,
                "max_price": None if acct.price_ceiling is None else str(acct.price_ceiling),
                "default_priority": acct.default_priority,
                "receipts_held": self.server.delivery.waiting_by_account.get(acct.system_id, 0),
                "max_held": acct.max_held,
                "queue": {"depth": stats.depth, "in_flight": stats.in_flight},
                "webhooks": acct.webhooks is not None,
            }
        )

    # --- webhook failures ---------------------------------------------------------------

    async def failures(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        if self.outbox is None:
            return _json({"failures": []})
        events = await self.outbox.failures(state.system_id, 100)
        return _json(
            {
                "failures": [
                    {
                        "id": str(e.id),
                        "url": e.url,
                        "attempts": e.attempts,
                        "created_at": _iso(e.created),
                        "last_error": e.last_error,
                        "event": _dead_event(e),
                    }
                    for e in events
                ]
            }
        )

    async def retry_failure(self, request: web.Request) -> web.Response:
        state = await self._account(request)
        raw = request.match_info["id"]
        if not raw.isdigit() or self.outbox is None:
            raise Problem(404, "Not found", f"no failed event {raw!r}", field="id")
        if not await self.outbox.revive(state.system_id, int(raw), self.wall()):
            raise Problem(404, "Not found", f"no failed event {raw!r}", field="id")
        self.wake_sender()
        return _json({"id": raw, "state": "queued"}, 202)


STATES: Final = (
    "accepted",
    "scheduled",
    "queued",
    "sent",
    "delivered",
    "undeliverable",
    "expired",
    "rejected",
    "deleted",
)
_FINAL_NAMES: Final = {
    MessageState.DELIVERED: "delivered",
    MessageState.EXPIRED: "expired",
    MessageState.DELETED: "deleted",
    MessageState.UNDELIVERABLE: "undeliverable",
    MessageState.REJECTED: "rejected",
    MessageState.UNKNOWN: "undeliverable",
    MessageState.SKIPPED: "rejected",
}


def _state(stored: StoredMessage, now: float) -> str:
    if is_final(stored.state):
        return _FINAL_NAMES.get(stored.state, "undeliverable")
    if stored.carrier_message_id:
        return "sent"
    if stored.message.schedule_at is not None and stored.message.schedule_at > now:
        return "scheduled"
    return "queued"


def _overall(states: list[str]) -> str:
    """A long message's state from its parts': the least advanced while any part is on
    its way; when all are final, delivered only if every part was."""
    order = ("scheduled", "queued", "sent")
    pending = [s for s in states if s in order]
    if pending:
        return min(pending, key=order.index)
    return next((s for s in states if s != "delivered"), "delivered")


def _timeline(stored: StoredMessage, price: Any) -> list[dict[str, Any]]:
    msg = stored.message
    events: list[dict[str, Any]] = [{"at": _iso(msg.submitted_at), "event": "accepted"}]
    if msg.schedule_at is not None:
        events.append({"at": _iso(msg.schedule_at), "event": "scheduled"})
    for carrier in msg.tried:
        events.append({"at": None, "event": "failover", "carrier": carrier})
    if stored.carrier:
        events.append(
            {
                "at": None,
                "event": "routed",
                "carrier": stored.carrier,
                "price": None if price is None else str(price),
            }
        )
    if stored.carrier_message_id:
        events.append(
            {
                "at": None,
                "event": "carrier_accepted",
                "carrier": stored.carrier,
                "carrier_message_id": stored.carrier_message_id,
            }
        )
    if stored.done_at is not None and is_final(stored.state):
        events.append(
            {
                "at": _iso(stored.done_at),
                "event": _FINAL_NAMES.get(stored.state, "undeliverable"),
                "error": stored.error,
            }
        )
    return events


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dead_event(event: OutboxEvent) -> dict[str, Any]:
    """A dead letter's event: our JSON event, or the request a Kannel or Jasmin callback
    makes (a GET of ``url``; a POST of a form)."""
    if event.kind == "get":
        return {"method": "GET"}
    if event.kind == "form":
        return {"method": "POST", "form": event.body.decode("latin-1")}
    decoded: dict[str, Any] = msgspec.json.decode(event.body)
    return decoded


def _recorded(count: int, done: asyncio.Future[bool]) -> None:
    if done.cancelled() or not done.result():
        log.warning("HTTP API: %d messages accepted without their record", count)


def _type(status: int) -> str:
    return "application/json" if status < 400 else PROBLEM


def _decode(raw: bytes) -> SendRequest:
    if not raw:
        raise Problem(400, "Malformed body", "empty body: expected a JSON object")
    try:
        return msgspec.json.decode(raw, type=SendRequest)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _REF.search(text)
        path = found.group(1) if found else ""
        field = re.split(r"[.\[]", path, maxsplit=1)[0] or None
        if field is None and "unknown field" in text.lower():
            unknown = re.search(r"unknown field `([^`]*)`", text, re.IGNORECASE)
            field = unknown.group(1) if unknown else None
        field = {"from_": "from"}.get(field or "", field)
        raise Problem(422, "Invalid field", text, field=field) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "Malformed body", f"not valid JSON: {exc}") from None


def _field(name: str, parse: Callable[..., float], *args: Any) -> float:
    try:
        return parse(*args)
    except ValueError as exc:
        raise invalid(name, str(exc)) from None


def _query_time(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return instant(value)
    except ValueError as exc:
        raise invalid(name, str(exc), 400) from None


def _cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    try:
        created, _, msg_id = base64.urlsafe_b64decode(value.encode()).decode().partition("|")
        return float(created), msg_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "not a cursor this API gave", 400) from None


def _base64(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "not base64") from None


def _address(number: str) -> Address:
    if not number:
        return Address(0, 0, "")
    return Address(*ton_npi_for(number), number)


def _status_name(status: int) -> str:
    try:
        return CommandStatus(status).name
    except ValueError:
        return f"status {status:#x}"
