"""Store backends behind ``router.ports.Store``: SQLite (one node, a local file) and Redis
(a cluster of nodes sharing one Redis), both on the write-behind core of
``router.stores.writebehind``; :func:`create_store` picks one from the configuration.

The backend modules are imported when chosen: a node on SQLite never imports redis-py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from router.config import StoreConfig

if TYPE_CHECKING:
    from router.ports import Handover
    from router.stores.redis import RedisStore
    from router.stores.sqlite import SqliteStore

__all__ = ["create_handover", "create_store"]


def create_store(
    config: StoreConfig,
    *,
    redis_url: str | None = None,
    node_id: str = "",
    clock: Callable[[], float] = time.time,
    held_max: int | None = None,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
    claim_seconds: float = 30.0,
    prefix: str = "smsc",
) -> SqliteStore | RedisStore:
    """The store for ``config``: on Redis at ``redis_url`` when one is given (shared by the
    nodes of a cluster; ``config.path`` is then unused), else SQLite at ``config.path``.
    ``node_id`` owns the messages this node adds. Redis only: ``wait_replicas`` (acks
    wait until that many replicas have a batch: ``WAIT``, ``wait_timeout`` seconds at
    most), ``claim_seconds`` (how long a node's claim on the held deliveries it read
    lasts: the cluster's lease), ``prefix`` (the start of every key)."""
    if redis_url is not None:
        from router.stores.redis import RedisStore

        return RedisStore(
            config,
            url=redis_url,
            node_id=node_id,
            clock=clock,
            held_max=held_max,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            claim_seconds=claim_seconds,
            prefix=prefix,
        )
    from router.stores.sqlite import SqliteStore

    return SqliteStore(config, node_id=node_id, clock=clock, held_max=held_max)


def create_handover(store: SqliteStore | RedisStore, *, lease: float) -> Handover | None:
    """The hand-over of messages between nodes over ``store`` (Redis: a cluster); None for
    a store of one node. ``lease``: how long another node's unfinished read is left to it."""
    from router.stores.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return None
    from router.stores.handover import RedisHandover

    return RedisHandover(store, lease=lease)
