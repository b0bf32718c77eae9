"""The composition root of ``smsc serve``: builds every part, starts them in order and
stops them in the reverse order ARCHITECTURE.md gives.

Start: store → id blocks → simulated carriers (loopback) → router (carrier binds) →
ESME listener → HTTP (metrics, route explanations).
Stop: close the listener → stop intake → unbind ESMEs → stop dispatching (queued
messages stay in the store and resume at the next start) → await upstream windows and
unbind carriers → stop simulators → flush and close the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.config import CarrierConfig as RouterCarrier
from router.router import Router
from router.routing import format_explanation
from router.store import SqliteStore
from simulator.carrier import Carrier
from simulator.config import CarrierConfig as SimulatorConfig
from smppcore import aio
from smppcore.config import ConfigError, load_config
from smsc.accounts import AccountState
from smsc.config import SmscConfig
from smsc.configfile import sharpen
from smsc.delivery import Delivery
from smsc.ids import IdAllocator
from smsc.metrics import SmscCollector
from smsc.server import Server

log = logging.getLogger(__name__)


def simulator_configs(config: SmscConfig, *, source: str = "") -> list[tuple[str, SimulatorConfig]]:
    """Decode each simulated carrier's config. Errors name the key under the smsc file
    (``source``, the file's path, when there is one) as a file's own errors do."""
    out = []
    for i, sim in enumerate(config.simulated_carriers):
        data: dict[str, Any] = {**sim.config, "host": "127.0.0.1", "port": 0}
        try:
            out.append((sim.name, load_config(data, SimulatorConfig)))
        except ConfigError as err:
            err = sharpen(err, SimulatorConfig)
            raise ConfigError(
                f"$.simulated_carriers[{i}].config{err.path[1:]}", err.reason, source=source
            ) from None
    return out


class App:
    """One smsc node."""

    def __init__(self, config: SmscConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.simulators: dict[str, Carrier] = {}
        self.store = SqliteStore(config.router.store)
        self.router: Router | None = None
        self.server: Server | None = None
        self.delivery: Delivery | None = None
        self._listener: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self.port = 0
        self.http_port = 0

    async def start(self) -> None:
        config = self.config
        await self.store.open()
        ids = IdAllocator(config.node_id, self.store.reserve_ids)
        await ids.start()

        router_config = config.router
        sims = simulator_configs(config)
        addresses: dict[str, int] = {}
        for name, sim_config in sims:
            carrier = Carrier(sim_config)
            await carrier.start()
            self.simulators[name] = carrier
            addresses[name] = carrier.port
            log.info("simulated carrier %s on 127.0.0.1:%d", name, carrier.port)
        if addresses:
            carriers: list[RouterCarrier] = [
                msgspec.structs.replace(c, host="127.0.0.1", port=addresses[c.name])
                if c.name in addresses
                else c
                for c in router_config.carriers
            ]
            router_config = msgspec.structs.replace(router_config, carriers=tuple(carriers))

        now = time.monotonic()
        accounts = {a.system_id: AccountState(a, now) for a in config.accounts}
        self.delivery = Delivery(accounts, self.store)
        self.router = Router(
            router_config,
            store=self.store,
            sink=self.delivery,
            policies={name: state.policy for name, state in accounts.items()},
        )
        await self.router.start()
        self.server = Server(
            system_id=config.system_id,
            accounts=accounts,
            intake=self.router,
            store=self.store,
            delivery=self.delivery,
            ids=ids,
            default_validity=router_config.retry.default_validity,
        )
        SmscCollector(self.server, self.router, self.delivery).register(self.registry)
        self._listener = await aio.start_server(
            self.server.handler, config.listen.host, config.listen.port, config=config.session
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        if config.metrics.port is not None:
            await self._start_http(config.metrics.host, config.metrics.port)

    async def _start_http(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/route", self._route)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else port

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _route(self, request: web.Request) -> web.Response:
        destination = request.query.get("destination", "")
        account = request.query.get("account", "")
        if not destination or not account:
            return web.json_response(
                {"error": "give ?destination=<digits>&account=<system_id>"}, status=400
            )
        assert self.router is not None
        explanation = self.router.explain(destination, account)
        if "json" in request.headers.get("Accept", ""):
            return web.json_response(msgspec.to_builtins(explanation))
        return web.Response(text=format_explanation(explanation) + "\n")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._listener is not None:
            self._listener.close()
        if self.server is not None:
            self.server.accepting = False
            await self.server.unbind_all(min(timeout, 5.0))
            await self.server.stop()
        if self.router is not None:
            await self.router.stop(timeout)
        if self.delivery is not None:
            await self.delivery.stop()
        for carrier in self.simulators.values():
            await carrier.stop(min(timeout, 5.0))
        if self._http is not None:
            await self._http.cleanup()
        await self.store.close()
        if self._listener is not None:
            await self._listener.wait_closed()
