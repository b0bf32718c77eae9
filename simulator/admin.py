"""The simulator's admin HTTP endpoint (aiohttp), on ``admin_host:admin_port``.

Routes:

``GET /metrics``
    Prometheus exposition of the registry (text or OpenMetrics, by the Accept header).

``GET /``
    The simulator's page (simulator/console/): sessions, last messages, MO form, profiles.

``POST /mo``
    Inject one MO message toward an account's receive-capable binds (held while it has
    none). JSON body::

        {"system_id": "test", "text": "Hello", "source": "447700900123",
         "destination": "1234", "data_coding": null}

    ``system_id`` and ``text`` are required; a missing ``source`` / ``destination`` is
    drawn from the account profile's ``mo`` number ranges; ``data_coding`` null means GSM
    when the text fits, else UCS-2 (8). A long text goes as UDH parts.
    Answers ``202 {"system_id": ..., "parts": N}``; ``400 {"error": ...}`` for a body
    that is not JSON or has missing, unknown or wrong fields, or text that does not fit
    the coding; ``404 {"error": ...}`` for an unknown account.

The endpoint has no authentication: it binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import logging
import random
from typing import Annotated, Final

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from simulator.carrier import Carrier
from simulator.console import SimulatorConsole
from simulator.mo import MoError, build_mo

log = logging.getLogger(__name__)

#: Largest request body accepted (octets).
MAX_BODY: Final = 64 * 1024


class MoRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /mo``."""

    system_id: str
    text: Annotated[str, msgspec.Meta(min_length=1)]
    source: str | None = None
    destination: str | None = None
    data_coding: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None


class Admin:
    """The admin HTTP server of one carrier. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        carrier: Carrier,
        registry: CollectorRegistry,
        *,
        rng: random.Random | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.carrier = carrier
        self.registry = registry
        self.rng = rng or random.Random("admin-mo")
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_post("/mo", self.mo)
        #: The page (GET /, its files, its event stream): simulator/console/.
        self.console = SimulatorConsole(carrier)
        self.console.install(self.app)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=shutdown_timeout)
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        log.info("admin endpoint on http://%s:%d", host, self.port)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        addresses = self._runner.addresses
        assert addresses, "not started"
        port: int = addresses[0][1]
        return port

    async def stop(self) -> None:
        """Stop listening and close connections (in-flight requests get shutdown_timeout)."""
        self.console.stop()  # its event streams end at once
        await self._runner.cleanup()

    # --- handlers ---------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def mo(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {MAX_BODY} octets")
        if not body:
            return _error(400, "empty body: expected a JSON object")
        try:
            req = msgspec.json.decode(body, type=MoRequest)
        except msgspec.ValidationError as exc:
            return _error(400, str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        state = self.carrier.account(req.system_id)
        if state is None:
            return _error(404, f"no account {req.system_id!r}")
        try:
            pdus = build_mo(
                self.rng,
                state.profile.mo,
                text=req.text,
                source=req.source,
                destination=req.destination,
                data_coding=req.data_coding,
            )
        except MoError as exc:
            return _error(400, str(exc))
        self.carrier.inject(req.system_id, pdus)
        log.info("MO injected for %s: %d part(s)", req.system_id, len(pdus))
        return web.json_response({"system_id": req.system_id, "parts": len(pdus)}, status=202)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
