"""Two ``smsc serve`` nodes (Apps) on loopback sharing a real redis-server: what the
cluster shares that is not a message. max_sessions counts both nodes' sessions; the
admin API lists both nodes; a reload on one reloads the other; a carrier's ``binds`` is
the number of binds for the whole cluster, and another node takes them over when the
holder goes. Real leases here (a node's heartbeat in real time): quick heartbeats, a lease
no live node's lapses, and every wait is for a condition under a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_fixtures import TOKEN, Api
from loops import Run
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401
from smsc_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    UPSTREAM_ID,
    accounts,
    app_config,
    bind_client,
    running_app,
    simulator,
    upstream,
    wait_final_receipts,
)

from router.cluster.config import ClusterConfig
from router.cluster.redis import RedisCoordinator
from router.ports import NodeReport
from simulator.carrier import Carrier
from simulator.config import CarrierConfig as SimulatorConfig
from smppcore.aio import BindError
from smppcore.config import load_config
from smppcore.constants import CommandStatus
from smsc.app import App
from smsc.cluster import ClusterNode
from smsc.config import SmscConfig

#: Real time: a node silent for LEASE seconds is dead. No test here waits for a lease to
#: run out (a node that stops gives its slots back), so it is long enough that no live
#: node's lapses on a slow, loaded machine (the other would take its carrier bind slot and
#: its session slots). Heartbeats stay quick.
LEASE = 5.0
HEARTBEAT = 0.1


def cluster(url: str) -> dict[str, Any]:
    return {"redis": url, "lease": LEASE, "heartbeat": HEARTBEAT}


def node_config(tmp_path: Path, url: str, node_id: int, **top: Any) -> SmscConfig:
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return app_config(
        where,
        {"sim": {}},
        node_id=node_id,
        cluster=cluster(url),
        admin={"token": TOKEN},
        security={"failed_binds": None},  # the tests probe with binds that fail
        **top,
    )


@asynccontextmanager
async def two_nodes(a: SmscConfig, b: SmscConfig, **kw: Any) -> AsyncIterator[tuple[App, App]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_app(a, wait_for=[], **kw))
        second = await stack.enter_async_context(running_app(b, wait_for=[], **kw))
        yield first, second


async def bind_when_free(app: App, system_id: str, password: str) -> Any:
    """Bind, again while refused, until it works (each try is a round trip) or DEADLINE."""
    async with asyncio.timeout(DEADLINE):
        while True:
            try:
                return await bind_client(app, "trx", system_id, password)
            except BindError as exc:
                status = exc.status
            assert status == CommandStatus.ESME_RBINDFAIL


def test_max_sessions_counts_the_sessions_of_every_node(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    def config(tmp_path: Path, node_id: int) -> SmscConfig:
        return node_config(
            tmp_path, redis_url, node_id, accounts=accounts(max_sessions=2)
        )

    async def main(tmp_path: Path) -> None:
        async with two_nodes(config(tmp_path, 1), config(tmp_path, 2)) as (a, b):
            first = await bind_client(a, "trx")
            second = await bind_client(b, "rx")
            try:
                for node in (a, b):
                    with pytest.raises(BindError) as refused:
                        await bind_client(node, "tx")
                    assert refused.value.status == CommandStatus.ESME_RBINDFAIL
                async with asyncio.timeout(DEADLINE):
                    await first.c.unbind()
                third = await bind_when_free(b, SYSTEM_ID, PASSWORD)  # the slot is back
                await third.close()
            finally:
                await first.close()
                await second.close()

    run1(main(tmp_path))


def test_an_accounts_throughput_is_shared_by_the_nodes(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Burst 3 and a rate that adds no token within the test: three submits in all are
    accepted, whichever node they reach (each node alone would accept three)."""

    def config(node_id: int) -> SmscConfig:
        return node_config(
            tmp_path, redis_url, node_id, accounts=accounts(throughput=0.001, burst=3)
        )

    async def main() -> None:
        async with two_nodes(config(1), config(2)) as (a, b):
            on_a, on_b = await bind_client(a, "trx"), await bind_client(b, "trx")
            try:
                accepted = {"a": 0, "b": 0}
                for _ in range(10):
                    for name, esme in (("a", on_a), ("b", on_b)):
                        resp = await esme.submit(registered_delivery=0)
                        assert resp.command_status in (
                            CommandStatus.ESME_ROK,
                            CommandStatus.ESME_RTHROTTLED,
                        )
                        accepted[name] += resp.command_status == CommandStatus.ESME_ROK
                assert 2 <= sum(accepted.values()) <= 3  # a token leased and not spent is lost
                assert accepted["a"] >= 1
                assert accepted["b"] >= 1
            finally:
                await on_a.close()
                await on_b.close()

    run1(main())


def test_the_admin_api_lists_every_node(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main(tmp_path: Path) -> None:
        configs = node_config(tmp_path, redis_url, 1), node_config(tmp_path, redis_url, 2)
        async with two_nodes(*configs) as (a, b), Api(b.http_port) as client:
            await a.cluster.beat()
            await b.cluster.beat()
            reply = await client.get("/cluster")
            assert reply.status == 200
            body = reply.body
            assert (body["node_id"], body["shared"], body["reachable"]) == ("2", True, True)
            nodes = {n["node_id"]: n for n in body["nodes"]}
            assert set(nodes) == {"1", "2"}
            assert nodes["1"]["ports"][0] == a.port
            assert nodes["2"]["ports"][0] == b.port
            assert all(n["alive"] for n in nodes.values())
            # Same file, same hash: no drift. The carrier's one bind is one node's.
            assert nodes["1"]["config_hash"] == nodes["2"]["config_hash"]
            assert sum(n["bind_slots"].get("sim", 0) for n in nodes.values()) == 1

    run1(main(tmp_path))


def test_a_node_routes_on_what_every_node_has_seen_of_a_carrier(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main() -> None:
        configs = node_config(tmp_path, redis_url, 1), node_config(tmp_path, redis_url, 2)
        async with two_nodes(*configs) as (a, b):
            assert a.router is not None
            assert b.router is not None
            await a.router.wait_carriers_bound(DEADLINE)  # node 1 holds sim's one bind
            esme = await bind_client(a, "trx")
            try:
                ids = [await esme.submit_ok() for _ in range(3)]
                await wait_final_receipts(esme, ids)
            finally:
                await esme.close()
            # Node 2 has seen nothing of sim itself (node 1 holds its one bind): what its
            # view counts is node 1's. (Not its view before the beats below as the zero to
            # compare with: node 2's own heartbeats, every HEARTBEAT, may have read node
            # 1's sums already on a slow machine.)
            health = b.router.health["sim"]
            await a.cluster.beat()  # node 1 shares what it saw...
            await b.cluster.beat()  # ...node 2 reads it
            now = b.router.wall()
            own = health.sums(now)
            assert (own.acc_w, own.lat_w, own.dlv_w) == (0.0, 0.0, 0.0)
            after = b.router.carriers.views(now)["sim"]
            assert after.submits == pytest.approx(3.0, rel=0.01)
            assert after.acceptance == 1.0
            assert after.receipts == pytest.approx(3.0, rel=0.01)

    run1(main())


def test_a_node_whose_configuration_differs_shows_in_the_cluster_listing(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main() -> None:
        drifted = node_config(
            tmp_path,
            redis_url,
            2,
            accounts=[*accounts(), {"system_id": "newco", "password": "newco-pw"}],
        )
        async with two_nodes(node_config(tmp_path, redis_url, 1), drifted) as (a, b):
            await a.cluster.beat()
            await b.cluster.beat()
            async with Api(a.http_port) as client:
                nodes = (await client.get("/cluster")).body["nodes"]
            hashes = {n["node_id"]: n["config_hash"] for n in nodes}
            assert hashes["1"] != hashes["2"]

    run1(main())


def test_a_reload_on_one_node_reloads_every_node(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main(tmp_path: Path) -> None:
        path = tmp_path / "smsc.yaml"
        base = node_config(tmp_path, redis_url, 1)

        def write(extra_accounts: list[dict[str, Any]]) -> None:
            data = {
                "accounts": [*accounts(), *extra_accounts],
                "admin": {"token": TOKEN},
            }
            path.write_text(yaml.safe_dump(data), encoding="utf-8")

        def loader(node_id: int) -> Any:
            def load() -> SmscConfig:
                import msgspec

                data = yaml.safe_load(path.read_text(encoding="utf-8"))
                extra = load_config(data, SmscConfig)
                return msgspec.structs.replace(
                    node_config(tmp_path, redis_url, node_id), accounts=extra.accounts
                )

            return load

        write([])
        a_config, b_config = base, node_config(tmp_path, redis_url, 2)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                running_app(a_config, wait_for=[], loader=loader(1))
            )
            b = await stack.enter_async_context(
                running_app(b_config, wait_for=[], loader=loader(2))
            )
            with pytest.raises(BindError):
                await bind_client(b, "trx", "newco", "newco-pw")
            write([{"system_id": "newco", "password": "newco-pw"}])
            async with Api(a.http_port) as client:
                reply = await client.post("/reload")
                assert reply.status == 200, reply
            # Node 2 was not asked through its API: it follows node 1.
            async with asyncio.timeout(DEADLINE):
                while True:
                    try:
                        esme = await bind_client(b, "trx", "newco", "newco-pw")
                        break
                    except BindError as exc:
                        status = exc.status
                    assert status == CommandStatus.ESME_RINVSYSID
            await esme.close()

    run1(main(tmp_path))


def test_a_carriers_binds_count_for_the_cluster_and_move_when_a_node_goes(
    run1: Run, redis_url: str, tmp_path: Path  # noqa: F811
) -> None:
    async def main(tmp_path: Path) -> None:
        sim = load_config({**simulator(), "host": "127.0.0.1", "port": 0}, SimulatorConfig)
        carrier = Carrier(sim)
        await carrier.start()
        try:
            router = {
                "carriers": [upstream("ext", host="127.0.0.1", port=carrier.port, binds=1)],
                "routes": [{"prefix": "", "carriers": [{"carrier": "ext", "price": "0.001"}]}],
            }

            def config(node_id: int) -> SmscConfig:
                where = tmp_path / f"node{node_id}"
                where.mkdir(exist_ok=True)
                return app_config(
                    where,
                    {},
                    node_id=node_id,
                    cluster=cluster(redis_url),
                    router={**router, "store": {"path": str(where / "smsc.db")}},
                )

            async with AsyncExitStack() as b_stack:
                async with AsyncExitStack() as a_stack:
                    a = await a_stack.enter_async_context(running_app(config(1)))
                    b = await b_stack.enter_async_context(running_app(config(2), wait_for=[]))
                    assert a.cluster.slots() == {"ext": 1}
                    assert b.cluster.slots() == {"ext": 0}
                    assert b.router is not None
                    assert b.router.pools["ext"].bound == 0
                    assert len(upstream_sessions(carrier)) == 1  # one bind for the whole cluster
                # Node 1 has stopped: its slot is free, and node 2's heartbeat takes it.
                async with asyncio.timeout(DEADLINE):
                    while b.router.pools["ext"].bound < 1:
                        await b.router.binds_changed(DEADLINE)
                assert b.cluster.slots() == {"ext": 1}
                assert len(upstream_sessions(carrier)) == 1
        finally:
            await carrier.stop(2.0)

    run1(main(tmp_path))


def upstream_sessions(carrier: Carrier) -> set[Any]:
    """The carrier's bound sessions of the account the nodes bind with."""
    state = carrier.account(UPSTREAM_ID)
    assert state is not None
    return state.sessions


def test_while_redis_is_away_sessions_stay_up_submits_and_binds_are_refused_and_it_recovers(
    run1: Run, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def beat_until(app: App, reachable: bool) -> None:
        """Heartbeats (each one a round trip) until the node sees Redis as ``reachable``."""
        async with asyncio.timeout(DEADLINE):
            while True:
                await app.cluster.beat()
                if app.cluster.reachable is reachable:
                    return

    async def main() -> None:
        config = node_config(tmp_path, server.url, 1, router={"ack_after": "store"})
        async with running_app(config, wait_for=[]) as node, Api(node.http_port) as client:
            esme = await bind_client(node, "trx")
            try:
                server.kill()
                await beat_until(node, False)
                assert node.registry.get_sample_value("smsc_cluster_reachable") == 0.0
                failures = node.registry.get_sample_value("smsc_cluster_heartbeat_failures_total")
                assert failures is not None
                assert failures >= 1
                away = await client.get("/cluster")
                assert away.status == 503
                assert "redis unreachable" in away.body["error"]
                with pytest.raises(BindError) as refused:
                    await bind_client(node, "tx")
                assert refused.value.status == CommandStatus.ESME_RBINDFAIL
                assert not esme.c.closed  # the sessions bound stay up
                # ack_after: store: what cannot be stored is not acknowledged.
                refused_submit = await esme.submit(registered_delivery=0)
                assert refused_submit.command_status == CommandStatus.ESME_RSYSERR
                server.start()  # same port, empty
                await beat_until(node, True)
                assert node.registry.get_sample_value("smsc_cluster_reachable") == 1.0
                back = await client.get("/cluster")
                assert back.status == 200
                assert back.body["reachable"]
                assert [n["node_id"] for n in back.body["nodes"]] == ["1"]
                again = await bind_client(node, "tx")
                await again.close()
                async with asyncio.timeout(DEADLINE):  # the store finds Redis back too
                    while (await esme.submit(registered_delivery=0)).command_status:
                        pass
            finally:
                await esme.close()

    try:
        run1(main())
    finally:
        server.stop()


def test_a_node_cut_off_from_redis_for_a_lease_gives_up_its_bind_slots(
    run1: Run, tmp_path: Path
) -> None:
    """The others count it dead after a lease and take its slots: it must not keep its
    carrier binds open meanwhile (the carrier would see more binds than it allows)."""
    server = RedisServer(tmp_path)
    server.start()
    config = ClusterConfig(redis=server.url, lease=10.0, heartbeat=2.0, timeout=0.5)
    now = [1_800_000_000.0]
    seen: list[dict[str, int]] = []

    async def no_reload(notice: object) -> None:
        raise AssertionError(notice)

    async def main() -> None:
        node = ClusterNode(
            RedisCoordinator.from_config(config, "1"),
            config,
            report=NodeReport,
            on_reload=no_reload,
            on_slots=seen.append,
            clock=lambda: now[0],
        )
        await node.start()
        try:
            await node.claim_binds([("ext", 2)])
            assert node.slots() == {"ext": 2}
            server.kill()
            now[0] += 5.0
            await node.beat()
            assert not node.reachable
            assert node.slots() == {"ext": 2}  # within the lease: kept
            now[0] += 6.0
            await node.beat()
            assert node.slots() == {"ext": 0}  # past it: given up
            assert seen[-1] == {"ext": 0}
            server.start()
            async with asyncio.timeout(DEADLINE):
                while not node.reachable:  # each beat is a round trip
                    await node.beat()
            assert node.slots() == {"ext": 2}
            assert seen[-1] == {"ext": 2}
        finally:
            await node.stop()

    try:
        run1(main())
    finally:
        server.stop()
