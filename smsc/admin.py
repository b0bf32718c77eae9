"""The HTTP side of ``smsc serve``, on the metrics port: Prometheus ``/metrics``, ``/route``
(plain-text route explanations for ``smsc route``) and the admin API under ``/api/v1``,
described by the OpenAPI 3.1 document in :mod:`smsc.openapi` (served at
``/api/v1/openapi.json``).

Authentication: ``/metrics``, ``/route``, ``/api/v1/health``, ``/api/v1/ready`` and
``/api/v1/openapi.json`` are open (read-only, no message content; the port listens on
127.0.0.1 by default). Every other ``/api/v1`` endpoint needs ``Authorization: Bearer
<admin.token>`` (compared in constant time): 401 without it; and when no token is
configured, those endpoints are off altogether (403) — never open, not even on loopback,
since any local user could reach them.

Errors are JSON ``{"error": "..."}`` with the HTTP status that fits. The server listens
from the start of start-up: until the node has started, ``/api/v1/health`` and
``/api/v1/openapi.json`` answer as usual, ``/api/v1/ready`` answers 503 not ready, and every
other ``/api/v1`` endpoint 503 ``{"error": "starting: not serving yet"}`` with
``Retry-After: 1`` (after the token is checked).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.model import Address
from router.ports import ClusterUnavailable
from router.routing import format_explanation
from smppcore.config import ConfigError
from smppcore.constants import CommandStatus, ton_npi_for
from smppcore.text import choose_coding, encode_text
from smsc.config import AdminConfig
from smsc.console.web import SESSION_KEY, Console
from smsc.control import ControlBusy
from smsc.messages import admit, build_message
from smsc.openapi import SPEC

if TYPE_CHECKING:
    from router.router import Router
    from smsc.app import App
    from smsc.server import Server

log = logging.getLogger(__name__)

#: Largest request body accepted (octets).
MAX_BODY: Final = 64 * 1024
#: The longest ``GET /api/v1/ready?wait=`` may hold a request.
MAX_READY_WAIT: Final = 60.0
#: Reachable without the token.
OPEN_PATHS: Final = frozenset({"/api/v1/health", "/api/v1/ready", "/api/v1/openapi.json"})
#: The error of every /api/v1 endpoint (but health, ready, openapi.json) during start-up.
STARTING: Final = "starting: not serving yet"
#: Longest text a submit through the API may carry (it goes in message_payload when long).
MAX_TEXT: Final = 10_000

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Digits = Annotated[str, msgspec.Meta(pattern=r"^\+?[0-9]{1,20}$")]


class SubmitRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/messages``."""

    account: Annotated[str, msgspec.Meta(min_length=1, max_length=15)]
    destination: Digits
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
    source: Annotated[str, msgspec.Meta(max_length=20, pattern="^[ -~]*$")] = ""
    """Printable ASCII (a number or an alphanumeric sender); empty: none."""
    registered_delivery: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = 0


class MoRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/carriers/{name}/mo``."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    source: str | None = None
    destination: str | None = None
    data_coding: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    system_id: str | None = None
    """The simulator account to deliver to; default: the one smsc binds with."""


def resolve_token(config: AdminConfig) -> str | None:
    """The configured token (read from ``token_file`` when that is set; OSError when it
    cannot be read, ValueError when it is too short)."""
    if config.token_file is None:
        return config.token
    text = Path(config.token_file).read_text(encoding="utf-8")
    token = text.splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ValueError(f"{config.token_file}: the token must have at least 16 characters")
    return token


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


class AdminServer:
    """The HTTP server. ``await start(host, port)``, ``port``, ``await stop()``."""

    def __init__(self, app: App, registry: CollectorRegistry) -> None:
        self.app = app
        self.registry = registry
        #: The browser console (smsc/console/): its pages, and its sessions' use of the API.
        self.console = Console(app)
        web_app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[self._errors, self.console.guard, self._auth, self._starting],
        )
        self.console.install(web_app)
        add = web_app.router
        add.add_get("/metrics", self.metrics)
        add.add_get("/route", self.route_text)
        v1 = "/api/v1"
        add.add_get(f"{v1}/openapi.json", self.openapi)
        add.add_get(f"{v1}/health", self.health)
        add.add_get(f"{v1}/ready", self.ready)
        add.add_get(f"{v1}/binds", self.binds)
        add.add_delete(f"{v1}/binds/{{id}}", self.kick)
        add.add_get(f"{v1}/carriers", self.carriers)
        add.add_get(f"{v1}/carriers/{{name}}", self.carrier)
        add.add_post(f"{v1}/carriers/{{name}}/pause", self.pause)
        add.add_post(f"{v1}/carriers/{{name}}/resume", self.resume)
        add.add_post(f"{v1}/carriers/{{name}}/drain", self.drain)
        add.add_post(f"{v1}/carriers/{{name}}/mo", self.mo)
        add.add_get(f"{v1}/routes", self.routes)
        add.add_get(f"{v1}/routes/explain", self.explain)
        add.add_get(f"{v1}/queue", self.queue)
        add.add_post(f"{v1}/messages", self.submit)
        add.add_post(f"{v1}/reload", self.reload)
        add.add_get(f"{v1}/cluster", self.cluster)
        self._runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=2.0)
        self._openapi = msgspec.json.encode(SPEC)

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.console.start()

    @property
    def port(self) -> int:
        addresses = self._runner.addresses
        assert addresses, "not started"
        port: int = addresses[0][1]
        return port

    async def stop(self) -> None:
        await self.console.stop()  # its event streams end first: nothing to wait for
        await self._runner.cleanup()

    def _submit_wait(self) -> float:
        """How long a submit through the API may wait for the router's answer."""
        return self._router().config.intake.max_wait + 30.0

    def _router(self) -> Router:
        if self.app.router is None:
            raise web.HTTPServiceUnavailable(reason="not started")
        return self.app.router

    def _server(self) -> Server:
        if self.app.server is None:
            raise web.HTTPServiceUnavailable(reason="not started")
        return self.app.server

    # --- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """HTTP errors under /api/ as JSON."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if not request.path.startswith("/api/") or exc.status < 400:
                raise
            if isinstance(exc, web.HTTPMethodNotAllowed):
                return error(exc.status, exc.reason, Allow=", ".join(sorted(exc.allowed_methods)))
            return error(exc.status, exc.reason)
        except Exception:
            if not request.path.startswith("/api/"):
                raise
            # A bug (or a race with a reload): the caller still gets JSON, the log the why.
            log.exception("admin API: %s %s failed", request.method, request.path)
            return error(500, "internal error (see the smsc log)")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/") or path in OPEN_PATHS or SESSION_KEY in request:
            return await handler(request)  # (a console session: checked by Console.guard)
        token = self.app.admin_token
        if token is None:
            return error(403, "admin API disabled: no admin.token configured")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            # aiohttp keeps undecodable header octets as surrogates: compare them as octets
            given.strip().encode("utf-8", "surrogateescape"),
            token.encode(),
        ):
            return error(
                401, "missing or wrong bearer token", **{"WWW-Authenticate": 'Bearer realm="smsc"'}
            )
        return await handler(request)

    @web.middleware
    async def _starting(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Until the node has started, only health, readiness and the OpenAPI document
        answer under /api/; the rest is 503 (JSON, Retry-After: 1)."""
        path = request.path
        if self.app.started or not path.startswith("/api/") or path in OPEN_PATHS:
            return await handler(request)
        return error(503, STARTING, **{"Retry-After": "1"})

    # --- open -------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def route_text(self, request: web.Request) -> web.Response:
        destination = request.query.get("destination", "")
        account = request.query.get("account", "")
        if not destination or not account:
            return error(400, "give ?destination=<digits>&account=<system_id>")
        explanation = self._router().explain(destination, account)
        if "json" in request.headers.get("Accept", ""):
            return _json(explanation)
        return web.Response(text=format_explanation(explanation) + "\n")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready: the store is open and takes writes (not while its disk is full, say:
        submits are refused then), and every carrier not taken out by the operator has
        a bind up. ``?wait=SECONDS`` (at most 60): answer as soon as that is so, or when the
        wait is over (for scripts that start a server and wait for it, without polling).
        During start-up: not ready, with no carriers yet."""
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            return error(400, "wait: expected seconds")
        if not 0 <= wait <= MAX_READY_WAIT:
            return error(400, f"wait: expected 0 <= seconds <= {MAX_READY_WAIT:g}")
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        if not await self.app.wait_started(wait):
            return _json({"ready": False, "store": self.app.store.is_open, "carriers": {}}, 503)
        router = self._router()
        while True:
            store = self.app.store.is_open and self.app.store.unwritable is None
            carriers = {s.name: s.bound for s in router.carrier_states()}
            out = router.paused | router.drained | self.app.carriers_elsewhere()
            ok = store and all(n > 0 for name, n in carriers.items() if name not in out)
            left = until - loop.time()
            if ok or left <= 0 or not await router.binds_changed(left):
                break
        return _json({"ready": ok, "store": store, "carriers": carriers}, 200 if ok else 503)

    # --- binds ------------------------------------------------------------------------

    async def binds(self, request: web.Request) -> web.Response:
        out = [
            {
                **msgspec.to_builtins(info),
                "in_flight": conn.session.in_flight,
                "pending": conn.session.inbound_pending,
            }
            for info, conn in self._server().binds.values()
        ]
        return _json({"binds": out})

    async def kick(self, request: web.Request) -> web.Response:
        bind_id = request.match_info["id"]
        if not await self._server().kick(bind_id, 5.0):
            return error(404, f"no bind {bind_id!r}")
        return _json({"id": bind_id, "unbound": True})

    # --- carriers ---------------------------------------------------------------------

    def _carrier_state(self, name: str) -> web.Response:
        for state in self._router().carrier_states():
            if state.name == name:
                return _json(state)
        return error(404, f"no carrier {name!r}")

    async def carriers(self, request: web.Request) -> web.Response:
        return _json({"carriers": self._router().carrier_states()})

    async def carrier(self, request: web.Request) -> web.Response:
        return self._carrier_state(request.match_info["name"])

    async def pause(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._control(name, "paused", self.app.pause_carrier(name))

    async def resume(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._control(name, "resumed", self.app.resume_carrier(name))

    async def drain(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            timeout = float(request.query.get("timeout", "30"))
        except ValueError:
            return error(400, "timeout: expected seconds")
        if not 0 < timeout <= 300:
            return error(400, "timeout: expected 0 < seconds <= 300")
        return await self._control(name, "drained", self.app.drain_carrier(name, timeout))

    async def _control(
        self, name: str, done: str, change: Coroutine[Any, Any, None]
    ) -> web.Response:
        """Run a pause, resume or drain (it waits for a reload or another change under way:
        409 when that takes too long); 404 when there is no such carrier (by then)."""
        if name not in self._router().pools:
            change.close()
            return error(404, f"no carrier {name!r}")
        try:
            await change
        except KeyError:  # removed by a reload it waited for
            return error(404, f"no carrier {name!r}")
        except ControlBusy as exc:
            return error(409, str(exc))
        log.info("carrier %s %s (admin API)", name, done)
        return self._carrier_state(name)

    async def mo(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await _body(request, MoRequest)
        if isinstance(body, web.Response):
            return body
        try:
            system_id, parts = self.app.inject_mo(
                name,
                system_id=body.system_id,
                text=body.text,
                source=body.source,
                destination=body.destination,
                data_coding=body.data_coding,
            )
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        except ValueError as exc:
            return error(400, str(exc))
        return _json({"carrier": name, "system_id": system_id, "parts": parts}, 202)

    # --- routes and queue -------------------------------------------------------------

    async def routes(self, request: web.Request) -> web.Response:
        routes = [
            {
                "prefix": route.prefix,
                "accounts": list(route.accounts),
                "carriers": [
                    {"carrier": cp.carrier, "price": str(cp.amount)} for cp in route.carriers
                ],
            }
            for route in self._router().config.routes
        ]
        return _json({"routes": routes})

    async def explain(self, request: web.Request) -> web.Response:
        destination = request.query.get("destination", "")
        account = request.query.get("account", "")
        if not destination or not account:
            return error(400, "give ?destination=<digits>&account=<system_id>")
        return _json(self._router().explain(destination, account))

    async def queue(self, request: web.Request) -> web.Response:
        return _json(self._router().queue_stats())

    # --- submit -----------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        body = await _body(request, SubmitRequest)
        if isinstance(body, web.Response):
            return body
        server = self._server()
        state = server.accounts.get(body.account)
        if state is None:
            return error(404, f"no account {body.account!r}")
        loop = asyncio.get_running_loop()
        # The same admission and the same Message builder as SMPP and the HTTP API.
        status = admit(state, server.delivery, body.registered_delivery, time.monotonic())
        if status == CommandStatus.ESME_RMSGQFUL:
            return error(503, "refused: ESME_RMSGQFUL (the account's held receipts: max_held)")
        if status:
            return error(429, "the account's throughput is used up (ESME_RTHROTTLED)")
        coding = int(choose_coding(body.text))
        data = encode_text(body.text, coding)
        try:
            msg_id = server.new_id()
        except RuntimeError:
            return error(503, "no message id available (store)")
        message = build_message(
            state,
            msg_id=msg_id,
            source=_address(body.source.removeprefix("+")),
            destination=Address(1, 1, body.destination.lstrip("+")),
            short_message=data,
            data_coding=coding,
            priority=body.priority,
            registered_delivery=body.registered_delivery,
            now=server.wall(),
            default_validity=server.default_validity,
            payload_tlv=len(data) > 254,
        )
        done: asyncio.Future[int] = loop.create_future()

        def answered(status: int) -> None:
            if not done.done():
                done.set_result(status)

        server.intake.submit(message, answered)
        try:
            # The router answers within intake.max_wait (paced) plus a durable write in
            # ack_after: store mode; past that something is wrong, and the id is what the
            # caller can query to find out what became of the message.
            async with asyncio.timeout(self._submit_wait()):
                status = await done
        except TimeoutError:
            return error(504, f"the router did not answer in time; message id {msg_id}")
        if status:
            try:
                name = CommandStatus(status).name
            except ValueError:
                name = f"status {status:#x}"
            return error(503, f"refused: {name}")
        return _json({"message_id": msg_id}, 202)

    # --- cluster ----------------------------------------------------------------------

    async def cluster(self, request: web.Request) -> web.Response:
        """The nodes (alive, or lately dead), so that drift and failures show."""
        node = self.app.cluster
        try:
            states = await node.nodes()
        except ClusterUnavailable as exc:
            return error(503, str(exc))
        return _json(
            {
                "node_id": node.node_id,
                "shared": node.shared,
                "reachable": node.reachable,
                "lease": node.config.lease,
                "nodes": [
                    {
                        "node_id": s.node_id,
                        "address": s.report.address,
                        "ports": list(s.report.ports),
                        "alive": s.alive,
                        "left": s.left,
                        "heartbeat_age": round(s.age, 3),
                        "config_hash": s.report.config_hash,
                        "esme_binds": s.report.esme_binds,
                        "bind_slots": s.bind_slots,
                        "queue_share": s.report.queue_share,
                    }
                    for s in states
                ],
            }
        )

    # --- reload -----------------------------------------------------------------------

    async def reload(self, request: web.Request) -> web.Response:
        try:
            plan = await self.app.reload()
        except ControlBusy as exc:
            return error(409, str(exc))
        except LookupError as exc:
            return error(409, str(exc.args[0]))
        except ConfigError as exc:
            return error(400, str(exc))
        except (OSError, ValueError) as exc:
            return error(400, str(exc))
        return _json({"applied": plan.applied(), "requires_restart": plan.requires_restart})


async def _body(request: web.Request, kind: type[T]) -> T | web.Response:
    """The JSON body decoded as ``kind``, or the 4xx response that says why not."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"body larger than {MAX_BODY} octets")
    if not raw:
        return error(400, "empty body: expected a JSON object")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        return error(400, str(exc))
    except msgspec.DecodeError as exc:
        return error(400, f"body is not valid JSON: {exc}")


def _address(number: str) -> Address:
    """A source with its likely TON/NPI (ton_npi_for); none when empty."""
    if not number:
        return Address(0, 0, "")
    return Address(*ton_npi_for(number), number)
