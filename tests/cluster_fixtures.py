"""Two ``smsc serve`` nodes (in-process Apps) on one redis-server, bound to ONE carrier (a
simulator of its own, outside both nodes) whose ``binds: 2`` count for the cluster: each
node holds one of them once the shares settle, so each node sends the messages it accepted
and gets their receipts back over its own bind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from smsc_fixtures import DEADLINE, app_config, running_app, simulator, upstream

from simulator.carrier import Carrier
from simulator.config import CarrierConfig as SimulatorConfig
from smppcore.config import load_config
from smsc.app import App
from smsc.config import SmscConfig

#: Real time: heartbeats often (the shares settle fast), a lease long enough that a short
#: Redis outage does not count a node dead.
HEARTBEAT = 0.1
LEASE = 5.0
CARRIER = "ext"


@asynccontextmanager
async def running_carrier() -> AsyncIterator[Carrier]:
    """The carrier both nodes bind to: answers at once, a DELIVRD receipt at once."""
    carrier = Carrier(load_config({**simulator(), "host": "127.0.0.1", "port": 0}, SimulatorConfig))
    await carrier.start()
    try:
        yield carrier
    finally:
        await carrier.stop(2.0)


def node_config(
    tmp_path: Path,
    url: str,
    node_id: int,
    carrier_port: int,
    *,
    router: dict[str, Any] | None = None,
    **top: Any,
) -> SmscConfig:
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return app_config(
        where,
        {},
        node_id=node_id,
        cluster={"redis": url, "lease": LEASE, "heartbeat": HEARTBEAT},
        router={
            "carriers": [upstream(CARRIER, host="127.0.0.1", port=carrier_port, binds=2)],
            "routes": [{"prefix": "", "carriers": [{"carrier": CARRIER, "price": "0.001"}]}],
            "store": {"path": str(where / "smsc.db")},
            **(router or {}),
        },
        **top,
    )


@asynccontextmanager
async def two_nodes(a: SmscConfig, b: SmscConfig) -> AsyncIterator[tuple[App, App]]:
    """Both nodes started, each holding one of the carrier's two binds (bound)."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_app(a, wait_for=[]))
        second = await stack.enter_async_context(running_app(b, wait_for=[]))
        await share_binds([first, second])
        yield first, second


async def share_binds(nodes: list[App]) -> None:
    """Until each node holds one bind slot of the carrier and has that bind up: each
    heartbeat asks for the fair share again, and a node waits for its binds to change."""
    async with asyncio.timeout(DEADLINE):
        while True:
            for node in nodes:
                await node.cluster.beat()
            behind = [
                node
                for node in nodes
                if node.cluster.slots() != {CARRIER: 1}
                or node.router is None
                or node.router.pools[CARRIER].bound != 1
            ]
            if not behind:
                return
            router = behind[0].router
            assert router is not None
            await router.binds_changed(HEARTBEAT)
