"""The application API's part of a node, as the composition root (smsc/app.py) starts and
stops it: the API's records and the webhook outbox (SQLite files next to the store), the
webhook sink in front of the SMPP delivery, the webhook sender, and the HTTP listener
(when ``http_api`` is configured).

Order: :meth:`open` before the router starts (the sink must be ready for its first
report); :meth:`start` once the SMPP server exists; :meth:`close_listener` with the other
listeners; :meth:`stop` after the router stopped (its last reports are in the outbox).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from router.ports import ReportSink
from smppcore.tls import server_context
from smsc.accounts import AccountState
from smsc.callback_guard import CallbackGuard
from smsc.callbacks import Callbacks
from smsc.config import SmscConfig
from smsc.http_api import HttpApi
from smsc.http_metrics import HttpCollector, HttpCounters
from smsc.http_records import HttpRecords
from smsc.legacy_http import LegacyEndpoints
from smsc.outbox import SqliteOutbox
from smsc.sqlitefile import beside
from smsc.webhooks import WebhookSender, WebhookSink

if TYPE_CHECKING:
    from router.router import Router
    from smsc.server import Server

log = logging.getLogger(__name__)


class HttpNode:
    def __init__(self, config: SmscConfig, *, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall = wall
        store_path = config.router.store.path
        api = config.http_api
        self.records = HttpRecords(
            api.path if api is not None and api.path else beside(store_path, "http")
        )
        hooks = config.webhooks
        self.outbox = SqliteOutbox(
            hooks.path or beside(store_path, "webhooks"), max_pending=hooks.max_pending
        )
        self.callbacks = Callbacks()
        self.sender: WebhookSender | None = None
        self._sink: WebhookSink | None = None
        self.api: HttpApi | None = None
        self.port = 0
        self._purger: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.records.open()
        await self.outbox.open()
        since = self.wall() - self.config.webhooks.max_age
        for sent in await self.records.with_callbacks(since, self.callbacks.limit):
            if sent.target is not None:
                self.callbacks.add(sent.id, sent.target)
        if self.outbox.waiting:
            log.info("webhook outbox: %d events waiting from before", self.outbox.waiting)
        if self.config.router.store.purge_interval > 0:
            self._purger = asyncio.create_task(self._purge_loop(), name="http-purge")

    async def _purge_loop(self) -> None:
        """Forget what is older than the store keeps messages (records, dead letters)
        and answers older than ``idempotency_ttl``, every ``store.purge_interval``."""
        store = self.config.router.store
        ttl = self.config.http_api.idempotency_ttl if self.config.http_api else 86_400.0
        while True:
            await asyncio.sleep(store.purge_interval)
            now = self.wall()
            keep = store.keep_days * 86_400
            self.records.purge(now - keep, now - ttl)
            self.outbox.purge(now - keep)

    def sink(self, inner: ReportSink, accounts: Mapping[str, AccountState]) -> WebhookSink:
        self.sender = WebhookSender(
            self.config.webhooks,
            self.outbox,
            accounts,
            rng=random.Random(),
            wall=self.wall,
        )
        self._sink = WebhookSink(
            inner, accounts, self.outbox, self.callbacks, wake=self.sender.wake, wall=self.wall
        )
        return self._sink

    async def start(
        self, server: Server, router: Router, registry: CollectorRegistry | None = None
    ) -> None:
        sender = self.sender
        if sender is not None:
            sender.start()
        api = self.config.http_api
        counters = HttpCounters()
        if registry is not None:
            registry.register(
                HttpCollector(
                    counters,
                    sender.metrics.outcomes if sender is not None else {},
                    lambda: self.outbox.waiting,
                    lambda: self._sink.dropped if self._sink is not None else 0,
                    lambda: self._sink.refused if self._sink is not None else 0,
                )
            )
        if api is None:
            return
        ssl = server_context(api.tls.server_tls()) if api.tls is not None else None
        self.api = HttpApi(
            api,
            server=server,
            router=router,
            records=self.records,
            callbacks=self.callbacks,
            outbox=self.outbox,
            ssl=ssl,
            wake_sender=self.sender.wake if self.sender is not None else lambda: None,
            counters=counters,
            wall=self.wall,
            guard=CallbackGuard(self.config.webhooks.callback_networks),
        )
        LegacyEndpoints(self.api).register(self.api.web_app)
        await self.api.start()
        self.port = self.api.port
        log.info("HTTP API on %s:%d", api.host, self.port)

    async def close_listener(self) -> None:
        if self.api is not None:
            await self.api.stop()
            self.api = None

    async def stop(self, timeout: float) -> None:
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
            self._purger = None
        if self.sender is not None:
            await self.sender.stop()
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        await self.outbox.close(max(0.05, until - loop.time()))
        await self.records.close(max(0.05, until - loop.time()))
