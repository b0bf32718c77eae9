"""Signals between nodes on a real redis-server (router/cluster/signals.py): a node reads
what the others sent for it or for every node, in order, from when it joined; never its
own, never another node's; and an empty read ends at its deadline."""

from __future__ import annotations

import asyncio

from loops import Run
from redis_server import redis_server, redis_url  # noqa: F401

from router.cluster.config import ClusterConfig
from router.cluster.signals import RedisSignals
from router.ports import Signal

DEADLINE = 5.0


def test_a_node_reads_the_signals_for_it_in_order_from_when_it_joined(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        config = ClusterConfig(redis=redis_url)
        one = RedisSignals.from_config(config, "1")
        two = RedisSignals.from_config(config, "2")
        try:
            await one.open()
            await one.send([Signal(kind="held", origin="1", account="before")])
            await two.open()  # what came before is not for it
            await one.send(
                [
                    Signal(kind="held", origin="1", account="acme"),
                    Signal(kind="cancel", origin="1", to="3", message_id="x"),
                    Signal(kind="cancel", origin="1", to="2", message_id="y", token="t"),
                    Signal(kind="held", origin="1", account="globex"),
                ]
            )
            await two.send([Signal(kind="held", origin="2", account="own")])
            got: list[Signal] = []
            async with asyncio.timeout(DEADLINE):
                while len(got) < 3:
                    got += await two.next(DEADLINE)
            assert [(s.kind, s.account, s.message_id) for s in got] == [
                ("held", "acme", ""),
                ("cancel", "", "y"),
                ("held", "globex", ""),
            ]
            assert got[1].token == "t"
            # node 1 sees node 2's signal only (not its own)
            async with asyncio.timeout(DEADLINE):
                mine = await one.next(DEADLINE)
            assert [(s.origin, s.account) for s in mine] == [("2", "own")]
            assert await two.next(0.05) == []  # nothing more: the read ends at its deadline
        finally:
            await one.close()
            await two.close()

    run(main())
