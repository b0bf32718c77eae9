"""The application API's part of a node, as the composition root (smsc/app.py) starts and
stops it: the API's records and the webhook outbox (SQLite files next to the store; in a
cluster both in its Redis: smsc/http_records_redis.py, smsc/outbox_redis.py), the
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
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.cluster.config import ClusterConfig
from router.ports import ReportSink
from smppcore.tls import server_context
from smsc.accounts import AccountState
from smsc.callback_guard import CallbackGuard
from smsc.callbacks import Callbacks, Target
from smsc.config import SmscConfig
from smsc.http_api import HttpApi
from smsc.http_metrics import HttpCollector, HttpCounters
from smsc.http_records import HttpRecords, SqliteRecords
from smsc.http_records_redis import RedisRecords
from smsc.legacy_http import LegacyEndpoints
from smsc.outbox import Outbox, SqliteOutbox
from smsc.outbox_redis import RedisOutbox
from smsc.shared_targets import TargetLookup
from smsc.sqlitefile import beside
from smsc.webhooks import WebhookSender, WebhookSink

if TYPE_CHECKING:
    from router.router import Router
    from smsc.server import Server

log = logging.getLogger(__name__)

#: Connections to Redis of the records and the outbox, at most: a call waits for one
#: (``cluster.timeout`` at most).
REDIS_CONNECTIONS = 32


def _redis_client(cluster: ClusterConfig) -> aioredis.Redis:
    """The client of the records and the outbox: a bounded pool (a call waits its turn,
    under the deadline, rather than failing when many are on their way at once)."""
    url = cluster.url_with_credentials()
    assert url is not None
    options: dict[str, Any] = {
        "max_connections": REDIS_CONNECTIONS,
        "timeout": cluster.timeout,
        "socket_timeout": cluster.timeout,
        "socket_connect_timeout": cluster.timeout,
        # Once more at once (a pooled connection Redis closed when it restarted).
        "retry": Retry(NoBackoff(), 1),
    }
    if url.startswith("rediss:"):
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if cluster.tls_ca is not None:
            options["ssl_ca_certs"] = cluster.tls_ca
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis.from_pool(pool)  # (closing the client closes the pool)


class HttpNode:
    def __init__(self, config: SmscConfig, *, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall = wall
        store_path = config.router.store.path
        api = config.http_api
        #: In a cluster: the one Redis client of the records (and the outbox); closed here.
        self.redis: aioredis.Redis | None = None
        self.records: HttpRecords
        #: In a cluster: the same records, where a report's target is read.
        self._shared: RedisRecords | None = None
        if config.cluster.enabled:
            self.redis = _redis_client(config.cluster)
            self.records = self._shared = RedisRecords(
                self.redis,
                prefix=config.cluster.key_prefix,
                retention=config.router.store.keep_days * 86_400,
                answer_ttl=api.idempotency_ttl if api is not None else 86_400.0,
                # The longest a send may take (HttpApi._submit's deadline), and a margin.
                reserve_ttl=config.router.intake.max_wait + 60.0,
                timeout=config.cluster.timeout,
            )
        else:
            self.records = SqliteRecords(
                api.path if api is not None and api.path else beside(store_path, "http")
            )
        hooks = config.webhooks
        self.outbox: Outbox
        if self.redis is not None:
            self.outbox = RedisOutbox(
                self.redis,
                prefix=config.cluster.key_prefix,
                # An event handed out is this node's for longer than its POST may take.
                lease=hooks.timeout + config.cluster.lease,
                max_pending=hooks.max_pending,
                per_host=hooks.per_endpoint,
                timeout=config.cluster.timeout,
            )
        else:
            self.outbox = SqliteOutbox(
                hooks.path or beside(store_path, "webhooks"), max_pending=hooks.max_pending
            )
        self.callbacks = Callbacks()
        self.sender: WebhookSender | None = None
        self._sink: WebhookSink | None = None
        #: In a cluster with the API: in front of the sink (smsc/shared_targets.py).
        self._lookup: TargetLookup | None = None
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

    def sink(
        self, inner: ReportSink, accounts: Mapping[str, AccountState]
    ) -> WebhookSink | TargetLookup:
        """The router's ReportSink and SubmitWatch."""
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
        if self._shared is not None and self.config.http_api is not None:
            # In a cluster a message may have been sent through another node's API.
            self._lookup = TargetLookup(
                self._sink, self.callbacks, self._targets, timeout=self.config.cluster.timeout
            )
            return self._lookup
        return self._sink

    async def _targets(self, message_ids: list[str]) -> list[Target | None]:
        assert self._shared is not None
        found = await self._shared.get_many(message_ids)
        return [None if sent is None else sent.target for sent in found]

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
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        try:
            if self._lookup is not None:  # the router's last reports into the outbox
                await self._lookup.stop(max(0.05, until - loop.time()))
            if self.sender is not None:
                await self.sender.stop()
            await self.outbox.close(max(0.05, until - loop.time()))
            await self.records.close(max(0.05, until - loop.time()))
        finally:  # (open connections would hold up the loop's close: uvloop)
            if self.redis is not None:
                await self.redis.aclose()
