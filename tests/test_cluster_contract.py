"""The coordination contract (router.ports.Coordinator): each behaviour against both
backends (``local``: one node in memory; ``redis``: a real redis-server), then what only
several nodes show, on Redis (two coordinators are two nodes).

Time is a parameter: leases expire because the ``now`` given moves past them, so no test
waits for a clock."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from loops import Run
from redis_server import redis_server, redis_url  # noqa: F401

from router.cluster.config import ClusterConfig
from router.cluster.local import LocalCoordinator
from router.cluster.redis import RedisCoordinator
from router.cluster.tokens import LeasedBucket
from router.ports import ClusterUnavailable, Coordinator, NodeIdTaken, NodeReport

T0 = 1_800_000_000.0
LEASE = 10.0

Make = Callable[..., Coordinator]


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the local backend, else the URL of an emptied Redis."""
    if request.param == "local":
        return None
    return str(request.getfixturevalue("redis_url"))


@asynccontextmanager
async def nodes(url: str | None) -> AsyncIterator[Make]:
    """Makes coordinators (nodes) of one cluster; closes them all at the end."""
    made: list[Coordinator] = []

    def make(node_id: str = "1", *, lease: float = LEASE) -> Coordinator:
        node: Coordinator
        if url is None:
            node = LocalCoordinator(node_id, lease=lease)
        else:
            config = ClusterConfig(redis=url, lease=lease, heartbeat=lease / 4)
            node = RedisCoordinator.from_config(config, node_id)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.close()


@asynccontextmanager
async def two_nodes(url: str) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    """Nodes "1" and "2" of one cluster on Redis, both opened at T0."""
    async with nodes(url) as make:
        a, b = make("1"), make("2")
        await a.open(T0)
        await b.open(T0)
        yield a, b


# --- each backend -------------------------------------------------------------------------


def test_a_node_lists_itself_alive_until_its_heartbeat_is_older_than_the_lease(
    run: Run, backend: str | None
) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make("3")
            await node.open(T0)
            report = NodeReport(address="10.0.0.3", ports=(2775, 0, 9775), config_hash="abc")
            await node.heartbeat(report, T0 + 1)
            (seen,) = await node.nodes(T0 + 4)
            assert (seen.node_id, seen.report, seen.alive) == ("3", report, True)
            assert seen.age == pytest.approx(3.0)
            (later,) = await node.nodes(T0 + 1 + LEASE + 0.5)
            assert not later.alive

    run(main())


def test_session_slots_stop_at_the_limit_and_come_back_on_release(
    run: Run, backend: str | None
) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            first = await node.acquire_session("acme", 2, T0)
            second = await node.acquire_session("acme", 2, T0)
            assert first is not None
            assert second is not None
            assert first != second
            assert await node.acquire_session("acme", 2, T0) is None
            assert await node.acquire_session("other", 2, T0) is not None  # per account
            assert await node.sessions("acme", T0) == 2
            await node.release_session("acme", first)
            assert await node.sessions("acme", T0) == 1
            assert await node.acquire_session("acme", 2, T0) is not None

    run(main())


def test_session_slots_last_a_lease_unless_a_heartbeat_renews_them(
    run: Run, backend: str | None
) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            assert await node.acquire_session("acme", 1, T0) is not None
            await node.heartbeat(NodeReport(), T0 + LEASE - 1)  # renewed until T0+2*LEASE-1
            assert await node.sessions("acme", T0 + LEASE + 1) == 1
            assert await node.acquire_session("acme", 1, T0 + LEASE + 1) is None
            # No heartbeat since: the slot lapses with the lease.
            assert await node.sessions("acme", T0 + 2 * LEASE) == 0
            assert await node.acquire_session("acme", 1, T0 + 2 * LEASE) is not None

    run(main())


def test_a_token_bucket_grants_its_burst_then_its_rate(run: Run, backend: str | None) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            assert await node.take_tokens("acct:acme", 10.0, 5.0, 3, T0) == 3
            assert await node.take_tokens("acct:acme", 10.0, 5.0, 3, T0) == 2
            assert await node.take_tokens("acct:acme", 10.0, 5.0, 3, T0) == 0
            assert await node.take_tokens("acct:acme", 10.0, 5.0, 100, T0 + 0.2) == 2
            # Never more than the burst, however long it rested.
            assert await node.take_tokens("acct:acme", 10.0, 5.0, 100, T0 + 3600) == 5
            # Buckets are independent.
            assert await node.take_tokens("carrier:mid", 1.0, 1.0, 5, T0) == 1

    run(main())


def test_a_lone_node_holds_the_bind_slots_it_asks_for_up_to_the_total(
    run: Run, backend: str | None
) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            assert await node.claim_binds("mid", 2, 5, T0) == 2
            assert await node.claim_binds("cheap", 4, 1, T0) == 1
            assert await node.heartbeat(NodeReport(), T0 + 1) == {"mid": 2, "cheap": 1}
            (me,) = await node.nodes(T0 + 1)
            assert me.bind_slots == {"mid": 2, "cheap": 1}
            await node.release_binds("mid")
            assert await node.heartbeat(NodeReport(), T0 + 2) == {"cheap": 1}

    run(main())


def test_a_node_does_not_see_its_own_reload(run: Run, backend: str | None) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            await node.publish_reload("SIGHUP")
            assert await node.next_reload(0.2) is None

    run(main())


def test_a_leased_bucket_spends_local_tokens_and_refills_in_batches(
    run: Run, backend: str | None
) -> None:
    async def main() -> None:
        async with nodes(backend) as make:
            node = make()
            await node.open(T0)
            now = [T0]
            bucket = LeasedBucket(node, "acct:acme", 1000.0, 1000.0, clock=lambda: now[0])
            assert bucket.batch == 50
            assert not bucket.take()  # nothing leased yet: the first take asks for some
            spent = 0
            while True:
                if bucket.take():
                    spent += 1
                elif not await bucket.refill():
                    break
            assert spent == 1000  # the burst, and not one more at the same instant
            assert bucket.calls <= 2 * (1000 // 50) + 2  # batches, not a call per token
            now[0] += 0.25  # 250 more tokens in the shared bucket
            for _ in range(10):
                await bucket.refill()
            assert bucket.tokens == 250
            await bucket.close()

    run(main())


# --- several nodes (Redis) -----------------------------------------------------------------


def test_max_sessions_holds_across_nodes(run: Run, redis_url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with two_nodes(redis_url) as (a, b):
            slot = await a.acquire_session("acme", 2, T0)
            assert slot is not None
            assert await b.acquire_session("acme", 2, T0) is not None
            assert await a.acquire_session("acme", 2, T0) is None
            assert await b.acquire_session("acme", 2, T0) is None
            await a.release_session("acme", slot)
            assert await b.acquire_session("acme", 2, T0) is not None

    run(main())


def test_a_dead_nodes_session_slots_expire_with_its_lease(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with two_nodes(redis_url) as (a, b):
            assert await a.acquire_session("acme", 2, T0) is not None
            assert await b.acquire_session("acme", 2, T0) is not None
            t = T0 + LEASE - 1
            await b.heartbeat(NodeReport(), t)  # b lives on; a says nothing more
            assert await b.acquire_session("acme", 2, t) is None
            t = T0 + LEASE + 1
            assert await b.sessions("acme", t) == 1
            assert await b.acquire_session("acme", 2, t) is not None

    run(main())


def test_bind_slots_of_a_dead_node_go_to_another_within_the_lease(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with two_nodes(redis_url) as (a, b):
            assert await a.claim_binds("mid", 2, 2, T0) == 2
            assert await b.claim_binds("mid", 2, 2, T0) == 0  # the carrier's 2 are a's
            t = T0 + LEASE / 2
            assert await a.heartbeat(NodeReport(), t) == {"mid": 2}
            assert await b.heartbeat(NodeReport(), t) == {}
            # a stops (kill -9): no heartbeat, no release. Before its lease ends b waits...
            assert await b.heartbeat(NodeReport(), t + LEASE - 0.5) == {}
            # ...after, b's heartbeat claims them again and gets them.
            assert await b.heartbeat(NodeReport(), t + LEASE + 0.5) == {"mid": 2}
            by_id = {n.node_id: n for n in await b.nodes(t + LEASE + 0.5)}
            assert by_id["2"].bind_slots == {"mid": 2}
            assert by_id["2"].alive
            assert not by_id["1"].alive

    run(main())


def test_bind_slots_are_shared_out_up_to_the_carriers_total(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with two_nodes(redis_url) as (a, b):
            assert await a.claim_binds("mid", 3, 2, T0) == 2
            assert await b.claim_binds("mid", 3, 2, T0) == 1
            await a.release_binds("mid")  # a unbinds the carrier (drain, reload, stop)
            assert await b.heartbeat(NodeReport(), T0 + 1) == {"mid": 2}

    run(main())


def test_a_token_bucket_is_shared_by_the_nodes(run: Run, redis_url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with two_nodes(redis_url) as (a, b):
            granted = 0
            for t in (T0, T0 + 0.5, T0 + 1.0):
                for node in (a, b, a, b):
                    granted += await node.take_tokens("acct:acme", 10.0, 10.0, 4, t)
            assert granted == 10 + 10 * 1.0  # the burst and one second of the rate: not twice

    run(main())


def test_a_reload_published_by_one_node_reaches_the_others(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with nodes(redis_url) as make:
            a, b, c = make("1"), make("2"), make("3")
            for node in (a, b, c):
                await node.open(T0)
            await a.publish_reload("SIGHUP")
            for other in (b, c):
                notice = await other.next_reload(5.0)
                assert notice is not None
                assert (notice.origin, notice.reason) == ("1", "SIGHUP")
                assert await other.next_reload(0.1) is None  # once
            assert await a.next_reload(0.1) is None

    run(main())


def test_a_node_id_in_use_by_a_live_node_is_refused(run: Run, redis_url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with nodes(redis_url) as make:
            first, second = make("5"), make("5")
            await first.open(T0)
            with pytest.raises(NodeIdTaken):
                await second.open(T0 + 1)
            await second.open(T0 + LEASE + 1)  # the first one's heartbeat lapsed

    run(main())


def test_the_registry_lists_every_node_with_what_it_reported(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with nodes(redis_url) as make:
            a, b = make("1"), make("2")
            await a.open(T0)
            await b.open(T0)
            await a.claim_binds("mid", 2, 1, T0)
            await a.heartbeat(NodeReport(address="10.0.0.1", esme_binds=3, queue_share=7), T0)
            await b.heartbeat(NodeReport(address="10.0.0.2", config_hash="h"), T0 + 2)
            listed = await b.nodes(T0 + 3)
            assert [n.node_id for n in listed] == ["1", "2"]
            assert listed[0].report.esme_binds == 3
            assert listed[0].bind_slots == {"mid": 1}
            assert listed[1].report.config_hash == "h"
            assert [n.age for n in listed] == [pytest.approx(3.0), pytest.approx(1.0)]
            await a.close()
            # a left: listed as such, not alive (the others take over what it left), and
            # its id may join again at once
            listed = await b.nodes(T0 + 3)
            assert [(n.node_id, n.alive, n.left) for n in listed] == [
                ("1", False, True),
                ("2", True, False),
            ]
            assert listed[0].bind_slots == {}
            await make("1").open(T0 + 3)
            assert [n.alive for n in await b.nodes(T0 + 3)] == [True, True]

    run(main())


def test_an_unreachable_redis_is_cluster_unavailable(run: Run) -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, not listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

        async def main() -> None:
            config = ClusterConfig(redis=f"redis://127.0.0.1:{port}/0", timeout=0.5)
            node = RedisCoordinator.from_config(config, "1")
            with pytest.raises(ClusterUnavailable):
                await node.open(T0)
            with pytest.raises(ClusterUnavailable):
                await node.acquire_session("acme", 1, T0)
            await node.close()

        run(main())
