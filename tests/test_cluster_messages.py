"""Messages across the nodes of a cluster on a real redis-server: a message accepted on a
node that holds no bind of its carrier is sent by a node that does (handed over through
Redis), and the messages of a node killed mid-load are taken over by a live node within
the lease. Real leases (real time): short only where a node is killed, long enough
elsewhere that no live node's lapses; every wait is for a condition under a deadline.

Receipts reach a client bound on the node that sends them (here: the receiver is bound on
that node); a receipt for a client bound on another node is held in Redis for the account
(its delivery across nodes is another part of the cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from loops import Run
from processes import smsc_process
from redis_server import redis_server, redis_url  # noqa: F401
from smsc_fixtures import (
    DEADLINE,
    FAST,
    UPSTREAM_ID,
    accounts,
    app_config,
    bind_client,
    final_receipts,
    running_app,
    simulator,
    upstream,
    wait_final_receipts,
)

from simulator.carrier import Carrier
from simulator.config import CarrierConfig as SimulatorConfig
from smppcore.config import load_config
from smppcore.constants import CommandStatus, MessageState
from smppcore.receipt import is_final
from smppcore.tlv import Tag
from smsc.app import App
from smsc.config import SmscConfig

#: A node's lease (and the claims and report leases that last as long, store.claim_seconds),
#: long enough that no live node's lapses on a slow, loaded machine (a live node counted dead
#: would lose its bind to the other, which then sends and reports messages itself); the
#: test of a node killed sets a short one of its own. Heartbeats stay quick.
LEASE = 5.0
HEARTBEAT = 0.1


@asynccontextmanager
async def external_carrier() -> AsyncIterator[Carrier]:
    """A simulated carrier the nodes bind to over TCP (shared by every node)."""
    sim = load_config({**simulator(), "host": "127.0.0.1", "port": 0}, SimulatorConfig)
    carrier = Carrier(sim)
    await carrier.start()
    try:
        yield carrier
    finally:
        await carrier.stop(2.0)


def upstream_sessions(carrier: Carrier) -> int:
    state = carrier.account(UPSTREAM_ID)
    return 0 if state is None else len(state.sessions)


def router_section(port: int, where: Path, **extra: Any) -> dict[str, Any]:
    """One carrier, ``binds: 1`` for the whole cluster, every message routed to it."""
    return {
        "carriers": [upstream("ext", host="127.0.0.1", port=port, binds=1, **extra)],
        "routes": [{"prefix": "", "carriers": [{"carrier": "ext", "price": "0.001"}]}],
        "store": {"path": str(where / "smsc.db")},
        "routing": {"explore": 0},
        "ack_after": "store",
    }


def node_config(
    tmp_path: Path,
    url: str,
    node_id: int,
    port: int,
    lease: float = LEASE,
    heartbeat: float = HEARTBEAT,
    **carrier: Any,
) -> SmscConfig:
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return app_config(
        where,
        {},
        node_id=node_id,
        cluster={"redis": url, "lease": lease, "heartbeat": heartbeat},
        router=router_section(port, where, **carrier),
    )


async def wait_all_final(app: App, ids: list[str], timeout: float = DEADLINE) -> dict[str, Any]:
    """Read the store until every message of ``ids`` has a final state (each read is a
    round trip to Redis); their stored records."""
    async with asyncio.timeout(timeout):
        while True:
            found = {mid: await app.store.get(mid) for mid in ids}
            if all(s is not None and is_final(s.state) for s in found.values()):
                return found
            await app.store.flush()


def test_a_message_accepted_where_its_carrier_is_not_bound_is_sent_by_the_node_bound_to_it(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main() -> None:
        async with external_carrier() as carrier, AsyncExitStack() as stack:
            holder = await stack.enter_async_context(
                running_app(node_config(tmp_path, redis_url, 1, carrier.port))
            )
            other = await stack.enter_async_context(
                running_app(node_config(tmp_path, redis_url, 2, carrier.port), wait_for=[])
            )
            assert holder.cluster.slots() == {"ext": 1}
            assert other.cluster.slots() == {"ext": 0}
            assert other.router is not None
            assert other.router.pools["ext"].bound == 0
            # The client sends on node 2; its receipts come over a receiver bound on node 1,
            # the node bound to the carrier.
            receiver = await bind_client(holder, "rx")
            sender = await bind_client(other, "tx")
            try:
                ids = [await sender.submit_ok() for _ in range(20)]
                await wait_final_receipts(receiver, ids)
            finally:
                await sender.close()
                await receiver.close()
            receipts = final_receipts(receiver)
            assert all(len(receipts[mid]) == 1 for mid in ids)
            assert upstream_sessions(carrier) == 1  # the cluster's one bind, on node 1
            events = other.router.metrics.events
            assert events[("handed_over", "ext")] == 20
            assert holder.router is not None
            assert holder.router.metrics.events[("adopted", "ext")] == 20
            for mid in ids:
                found = await other.store.get(mid)
                assert found is not None
                assert found.state == MessageState.DELIVERED
                assert found.carrier == "ext"

    run1(main())


def process_config(where: Path, url: str, node_id: int, port: int, lease: float) -> Path:
    """The YAML file of a node run as ``smsc serve`` (the same settings as node_config)."""
    data = {
        "node_id": node_id,
        "listen": {"host": "127.0.0.1", "port": 0},
        "accounts": accounts(),
        "router": router_section(port, where, receipt_timeout=2.0),
        "cluster": {"redis": url, "lease": lease, "heartbeat": lease / 6},
        "log_level": "warning",
    }
    path = where / "smsc.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_messages_of_a_node_killed_mid_load_are_finished_by_a_live_node(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Node 1 (a real process) holds the carrier's one bind; the client submits on node 2,
    whose messages go over node 1. kill -9 of node 1 half-way: node 2 takes the bind once
    node 1's lease has run out, takes over node 1's unfinished messages and the ones
    handed over to it, and every message acknowledged to the client gets exactly one final
    state (a compare-and-set in the store); the client gets a receipt twice only for a
    message whose receipt node 1 was reporting when it died (at least once, never two
    outcomes)."""
    lease = 2.0
    total, kill_at = 200, 80

    async def main() -> None:
        async with external_carrier() as carrier, AsyncExitStack() as stack:
            where = tmp_path / "node1"
            where.mkdir()
            path = process_config(where, redis_url, 1, carrier.port, lease)
            holder = await stack.enter_async_context(
                smsc_process("serve", where, "--config", str(path), name="node1")
            )
            # Node 1 claimed the carrier's one bind slot before it listened.
            config = node_config(
                tmp_path,
                redis_url,
                2,
                carrier.port,
                lease=lease,
                heartbeat=lease / 6,
                receipt_timeout=2.0,
            )
            live = await stack.enter_async_context(running_app(config, wait_for=[]))
            assert live.router is not None
            assert live.cluster.slots() == {"ext": 0}
            async with asyncio.timeout(DEADLINE):  # each heartbeat is a round trip
                while not live.router.carriers.remote("ext"):
                    await live.cluster.beat()  # until node 2 reads that node 1 holds the bind
            esme = await bind_client(live, "trx")
            acked: list[str] = []
            try:
                for n in range(total):
                    if n == kill_at:
                        await holder.kill()  # SIGKILL: no unbind, no goodbye
                    resp = await esme.submit(registered_delivery=1)
                    assert resp.command_status == CommandStatus.ESME_ROK, resp
                    acked.append(resp.message_id)
                async with asyncio.timeout(DEADLINE):
                    while live.router.pools["ext"].bound < 1:
                        await live.router.binds_changed(DEADLINE)
                assert live.cluster.slots() == {"ext": 1}
                found = await wait_all_final(live, acked, timeout=6 * DEADLINE)
            finally:
                await esme.close()
            assert len(found) == total
            receipts = final_receipts(esme)
            assert set(receipts) <= set(acked)
            # A receipt twice only in SMPP's window: node 1 delivered it and died before its
            # report lease was settled, and the carrier's resend was reported again by
            # node 2 — the same final state, for a message node 1 was finishing at the kill
            # (at most its carrier window), never two outcomes of one message.
            twice = {mid: got for mid, got in receipts.items() if len(got) > 1}
            for got in twice.values():
                assert len({pdu.tlv(Tag.MESSAGE_STATE) for pdu in got}) == 1, got
            assert len(twice) <= 50, twice  # the carrier's window (upstream(): 50)

    run1(main())


def test_a_message_refused_by_the_carrier_on_one_node_fails_over_to_a_carrier_on_another(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Carrier b1 (the cheaper, bound from node 2) refuses every submit with a temporary
    error; a1 (bound from node 1) delivers. A message submitted on node 1 goes to node 2
    for b1, fails over there to a1, and comes back to node 1, which sends it."""
    refusing = {**simulator(), "host": "127.0.0.1", "port": 0}
    refusing["profiles"] = {"default": {**FAST, "submit_errors": {"ESME_RSYSERR": 1.0}}}

    async def main() -> None:
        b1 = Carrier(load_config(refusing, SimulatorConfig))
        await b1.start()
        try:
            async with external_carrier() as a1, AsyncExitStack() as stack:

                def config(node_id: int) -> SmscConfig:
                    where = tmp_path / f"node{node_id}"
                    where.mkdir(exist_ok=True)
                    router = router_section(a1.port, where)
                    router["carriers"] = [
                        upstream("a1", host="127.0.0.1", port=a1.port, binds=1),
                        upstream("b1", host="127.0.0.1", port=b1.port, binds=1),
                    ]
                    router["routes"] = [
                        {
                            "prefix": "",
                            "carriers": [
                                {"carrier": "b1", "price": "0.001"},
                                {"carrier": "a1", "price": "0.002"},
                            ],
                        }
                    ]
                    return app_config(
                        where,
                        {},
                        node_id=node_id,
                        cluster={"redis": redis_url, "lease": LEASE, "heartbeat": HEARTBEAT},
                        router=router,
                    )

                one = await stack.enter_async_context(running_app(config(1)))
                two = await stack.enter_async_context(running_app(config(2), wait_for=[]))
                assert one.router is not None
                assert two.router is not None
                # Node 1 joined alone and holds both carriers' one bind: it lets b1's go,
                # and node 2's next heartbeat takes it.
                await one.cluster.release_binds(["b1"])
                one.router.pools["b1"].allow(0)
                await two.router.wait_carriers_bound(DEADLINE, ["b1"])
                async with asyncio.timeout(DEADLINE):  # each heartbeat is a round trip
                    while not (
                        one.router.carriers.remote("b1") and two.router.carriers.remote("a1")
                    ):
                        await one.cluster.beat()
                        await two.cluster.beat()
                esme = await bind_client(one, "trx")
                try:
                    ids = [await esme.submit_ok() for _ in range(5)]
                    await wait_final_receipts(esme, ids)
                finally:
                    await esme.close()
                receipts = final_receipts(esme)
                assert all(len(receipts[mid]) == 1 for mid in ids)
                for mid in ids:
                    found = await one.store.get(mid)
                    assert found is not None
                    assert (found.state, found.carrier) == (MessageState.DELIVERED, "a1")
                assert one.router.metrics.events[("handed_over", "b1")] >= 1
                assert two.router.metrics.events[("handed_over", "a1")] >= 1
        finally:
            await b1.stop(2.0)

    run1(main())


def test_a_node_stopped_cleanly_leaves_its_unsent_messages_to_a_live_node_at_once(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Node 1 holds the carrier's one bind, paused there by the operator: the messages it
    accepts wait in its queue. Node 1 stops cleanly (what SIGTERM does): it leaves the
    cluster marked as left, its bind slot goes to node 2, and node 2 takes over node 1's
    unfinished messages at once — the lease here outlasts every deadline, so a take-over
    that waited for it would fail — and sends them: each gets one final state, and its
    receipt is held in Redis for the account until a receiver binds on node 2."""
    lease = 20 * DEADLINE

    async def main() -> None:
        async with external_carrier() as carrier, AsyncExitStack() as stack:
            one = App(node_config(tmp_path, redis_url, 1, carrier.port, lease=lease))
            await one.start()
            try:
                assert one.router is not None
                await one.router.wait_carriers_bound(DEADLINE)
                two = await stack.enter_async_context(
                    running_app(
                        node_config(tmp_path, redis_url, 2, carrier.port, lease=lease),
                        wait_for=[],
                    )
                )
                assert two.router is not None
                assert two.cluster.slots() == {"ext": 0}
                await one.pause_carrier("ext")
                esme = await bind_client(one, "tx")
                ids = [await esme.submit_ok() for _ in range(10)]
                await esme.close()
            finally:
                async with asyncio.timeout(DEADLINE):
                    await one.stop(timeout=2.0)
            [gone] = [n for n in await two.cluster.nodes() if n.node_id == "1"]
            assert (gone.left, gone.alive) == (True, False)

            async with asyncio.timeout(DEADLINE):  # each heartbeat is a round trip
                while two.router.pools["ext"].bound < 1:
                    await two.cluster.beat()  # learns node 1 left: its slot, its messages
                    await two.router.binds_changed(0.2)
            found = await wait_all_final(two, ids)
            assert {s.state for s in found.values()} == {MessageState.DELIVERED}
            receiver = await bind_client(two, "rx")
            try:
                await wait_final_receipts(receiver, ids)
            finally:
                await receiver.close()
            assert all(len(got) == 1 for got in final_receipts(receiver).values())

    run1(main())
