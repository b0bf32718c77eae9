"""SMPP clients nobody here wrote, bound to BOTH nodes of a two-node cluster on Redis:
Python ``smpplib`` and the npm ``smpp`` package (tests/interop_clients.py's conversations).
Each client submits through the node it is bound to, that node sends over its own bind of
the carrier (``binds: 2`` for the cluster, one per node), and the receipts come back to the
client on its own node, naming the ids that node gave (an id starts with its node's digit).
Both nodes read every message from the shared store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cluster_fixtures import node_config, running_carrier, two_nodes
from interop_clients import (
    GSM,
    GSM_TEXT,
    LONG_GSM_TEXT,
    PASSWORD,
    SYSTEM_ID,
    UCS2,
    UCS2_TEXT,
    needs_node,
    node_trx_mix,
    node_tx_to_rx,
    smpplib_trx,
    smpplib_tx_rx,
)
from redis_server import redis_server, redis_url  # noqa: F401

from smppcore.constants import MessageState
from smsc.app import App

pytestmark = pytest.mark.interop


@asynccontextmanager
async def cluster(tmp_path: Path, url: str) -> AsyncIterator[tuple[App, App]]:
    async with running_carrier() as carrier:
        configs = [
            node_config(
                tmp_path,
                url,
                node_id,
                carrier.port,
                accounts=[{"system_id": SYSTEM_ID, "password": PASSWORD}],
            )
            for node_id in (1, 2)
        ]
        async with two_nodes(*configs) as nodes:
            yield nodes


async def assert_delivered_by(nodes: tuple[App, App], ids: list[str], node_id: int) -> None:
    """Each of ``ids`` was given by node ``node_id`` and is final in the shared store, as
    either node reads it (once the nodes' stores wrote what they hold behind)."""
    assert ids
    for node in nodes:
        await node.store.flush()
    for message_id in ids:
        assert message_id[0] == str(node_id), message_id
        for node in nodes:
            found = await node.store.get(message_id)
            assert found is not None, message_id
            assert found.state == MessageState.DELIVERED, found


@pytest.mark.asyncio
async def test_smpplib_on_both_nodes_gets_its_receipts_on_its_own_node(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    async with cluster(tmp_path, redis_url) as nodes:
        a, b = nodes
        (on_a, _), on_b = await asyncio.gather(
            smpplib_tx_rx(a.port, [(GSM_TEXT, GSM), (LONG_GSM_TEXT, GSM)]),
            smpplib_trx(b.port, [(GSM_TEXT, GSM), (UCS2_TEXT, UCS2)]),
        )
        assert len(on_a) == 1 + 3
        assert len(on_b) == 2
        await assert_delivered_by(nodes, on_a, 1)
        await assert_delivered_by(nodes, on_b, 2)


@needs_node
@pytest.mark.asyncio
async def test_node_smpp_on_both_nodes_gets_its_receipts_on_its_own_node(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    async with cluster(tmp_path, redis_url) as nodes:
        a, b = nodes
        (_, on_a), on_b = await asyncio.gather(node_trx_mix(a.port), node_tx_to_rx(b.port))
        assert len(on_b) == 1 + 2
        await assert_delivered_by(nodes, list(on_a.values()), 1)
        await assert_delivered_by(nodes, on_b, 2)
