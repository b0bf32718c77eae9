"""The Store contract (router.ports.Store), run against every backend: SQLite in a temporary
directory and Redis (a real redis-server). Then what only a shared backend can show: two
store instances are two nodes on one Redis. Then a Redis outage: the store refuses what it
cannot write, and recovers by itself when Redis returns.

Every test runs under a deadline and waits on the store (flush, callbacks), never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message
from router.ports import Store, StoreError
from router.stores import create_store
from router.stores.redis import BUCKETS, RedisStore
from router.stores.sqlite import SqliteStore
from router.stores.writebehind import DAY
from smppcore.constants import MessageState

DEADLINE = 20.0
AnyStore = SqliteStore | RedisStore
SRC = Address(5, 0, "ACME")
DST = Address(1, 1, "447700900123")


def msg(i: int, *, account: str = "acme", **kw: Any) -> Message:
    fields: dict[str, Any] = {"short_message": b"hello", "submitted_at": 1_000.0 + i}
    fields.update(kw)
    return Message(id=f"m{i:06d}", account=account, source=SRC, destination=DST, **fields)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Makes stores of one backend that share their data (one file, one Redis)."""

    name: str
    path: str
    redis_url: str | None

    def make(self, node_id: str = "a", *, clock: Clock | None = None, **kw: Any) -> AnyStore:
        config = StoreConfig(path=self.path, **kw)
        return create_store(
            config, redis_url=self.redis_url, node_id=node_id, clock=clock or Clock()
        )


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(request.param, str(tmp_path / "smsc.db"), url)


@contextlib.asynccontextmanager
async def opened(store: AnyStore, close_within: float = 5.0) -> AsyncIterator[AnyStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close(close_within)


def durable() -> tuple[asyncio.Future[bool], Callable[[bool], None]]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def done(ok: bool) -> None:
        if not future.done():
            future.set_result(ok)

    return future, done


def test_every_backend_is_a_store(backend: Backend) -> None:
    store: Store = backend.make()
    assert store.node_id == "a"


# -- messages ----------------------------------------------------------------------------------


def test_an_added_message_reads_back_as_enroute(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make()) as store:
            m = msg(1, registered_delivery=1, via="http")
            assert store.add(m)
            await store.flush()
            stored = await store.get(m.id)
            assert stored is not None
            assert stored.message == m  # (every field: where it came in too)
            assert stored.state is MessageState.ENROUTE
            assert (stored.carrier, stored.carrier_message_id, stored.done_at) == ("", "", None)
            assert await store.get("nope") is None

    run(asyncio.wait_for(main(), DEADLINE))


def test_acks_come_after_the_commit_and_reads_see_queued_writes(backend: Backend, run: Any) -> None:
    """``on_durable(True)`` once the add is committed; a read of a message with a write
    still queued (a long group commit) waits for it and sees it."""

    async def main() -> None:
        async with opened(backend.make(commit_interval=1.0)) as store:
            future, done = durable()
            assert store.add(msg(1), done)
            assert await future is True
            assert store.add(msg(2))
            store.set_sent("m000002", "c1", "X-2", key="x2")
            store.set_final("m000002", DeliveryReport("", MessageState.DELIVERED, done_at=5.0))
            stored = await store.get("m000002")  # no flush: read your writes
            assert stored is not None
            assert (stored.carrier, stored.carrier_message_id) == ("c1", "X-2")
            assert (stored.state, stored.done_at) == (MessageState.DELIVERED, 5.0)
            assert await store.find_sent("c1", "x2") == "m000002"

    run(asyncio.wait_for(main(), DEADLINE))


def test_sending_then_sent_then_receipt_lookup(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make()) as store:
            assert store.add(msg(1))
            future, done = durable()
            store.set_sending("m000001", "c1", done)
            assert await future is True
            stored = await store.get("m000001")
            assert stored is not None
            assert (stored.carrier, stored.carrier_message_id) == ("c1", "")
            store.set_sent("m000001", "c1", "ABC", key="abc")
            await store.flush()
            assert await store.find_sent("c1", "abc") == "m000001"
            assert await store.find_sent("c2", "abc") is None
            stored = await store.get("m000001")
            assert stored is not None
            assert stored.carrier_message_id == "ABC"

    run(asyncio.wait_for(main(), DEADLINE))


def test_intermediate_states_leave_a_message_unfinished(backend: Backend, run: Any) -> None:
    async def main() -> None:
        clock = Clock(7_000.0)
        async with opened(backend.make(clock=clock)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            store.set_final("m000001", DeliveryReport("", MessageState.SCHEDULED))
            store.set_final("m000002", DeliveryReport("", MessageState.UNDELIVERABLE, error=11))
            await store.flush()
            one, two = await store.get("m000001"), await store.get("m000002")
            assert one is not None
            assert (one.state, one.done_at) == (MessageState.SCHEDULED, None)
            assert two is not None
            assert (two.state, two.error, two.done_at) == (MessageState.UNDELIVERABLE, 11, 7_000.0)
            assert [s.message.id for s in await store.unfinished()] == ["m000001"]

    run(asyncio.wait_for(main(), DEADLINE))


def test_update_replaces_the_message_and_cancel_deletes_only_unfinished_ones(
    backend: Backend, run: Any
) -> None:
    async def main() -> None:
        async with opened(backend.make()) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            store.update_message(msg(1, short_message=b"replaced"))
            store.set_final("m000002", DeliveryReport("", MessageState.DELIVERED, done_at=9.0))
            store.mark_cancelled("m000001", 10.0)
            store.mark_cancelled("m000002", 10.0)
            await store.flush()
            one, two = await store.get("m000001"), await store.get("m000002")
            assert one is not None
            assert one.message.short_message == b"replaced"
            assert (one.state, one.done_at) == (MessageState.DELETED, 10.0)
            assert two is not None
            assert (two.state, two.done_at) == (MessageState.DELIVERED, 9.0)

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_final_state_is_claimed_once(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make()) as store:
            assert store.add(msg(1))
            report = DeliveryReport("", MessageState.DELIVERED, done_at=3.0)
            assert await store.claim_final("m000001", report) is True
            await store.settle_final("m000001")  # its receipt is delivered or held
            assert await store.claim_final("m000001", report) is False
            assert await store.claim_final("unknown", report) is False
            stored = await store.get("m000001")
            assert stored is not None
            assert stored.state is MessageState.DELIVERED
            with pytest.raises(ValueError, match="not a final state"):
                await store.claim_final("m000001", DeliveryReport("", MessageState.ENROUTE))

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_without_a_coroutine_answers_as_claim_final(backend: Backend, run: Any) -> None:
    """``claim_soon`` queues the claim at once; its answer, read by ``claim_won``, says
    what ``claim_final`` would: won once, then a duplicate; an unknown id is not won."""

    async def main() -> None:
        async with opened(backend.make()) as store:
            assert store.add(msg(1))
            report = DeliveryReport("", MessageState.DELIVERED, done_at=3.0)
            first = store.claim_soon("m000001", report)
            unknown = store.claim_soon("unknown", report)
            assert store.claim_won("m000001", await first) is True
            assert store.claim_won("unknown", await unknown) is False
            await store.settle_final("m000001")
            again = store.claim_soon("m000001", report)
            assert store.claim_won("m000001", await again) is False
            with pytest.raises(ValueError, match="not a final state"):
                store.claim_soon("m000001", DeliveryReport("", MessageState.ENROUTE))

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_batch_holds_the_backends_batch_max_records_unless_the_config_sets_one(
    backend: Backend, run: Any
) -> None:
    """``store.batch_max`` unset: 2,000 records a batch on SQLite (a transaction), 10,000
    on Redis (a pipeline, whose fixed cost is a script call per bucket); set: that many."""

    async def main() -> None:
        own = 2_000 if backend.name == "sqlite" else 10_000
        async with opened(backend.make()) as store:
            for i in range(own + 1):  # queued in one turn: the writer takes them after
                assert store.add(msg(i))
            await store.flush()
            assert store.transactions == 2
            assert store.message_rows == own + 1
        async with opened(backend.make(batch_max=300)) as store:
            for i in range(own + 1, own + 1 + 600):
                assert store.add(msg(i))
            await store.flush()
            assert store.transactions == 2

    run(asyncio.wait_for(main(), DEADLINE))


def test_two_claims_of_one_node_at_one_instant_are_won_once(backend: Backend, run: Any) -> None:
    """Two copies of a final receipt claimed by one node at the same instant (its clock
    does not move between them): one wins; the other is a duplicate, or — on a store
    shared by nodes, while the winner's report lease holds — refused for now."""

    async def main() -> None:
        async with opened(backend.make(clock=Clock())) as store:
            assert store.add(msg(1))
            report = DeliveryReport("", MessageState.DELIVERED, done_at=3.0)
            results = await asyncio.gather(
                store.claim_final("m000001", report),
                store.claim_final("m000001", report),
                return_exceptions=True,
            )
            assert results.count(True) == 1, results
            [other] = [r for r in results if r is not True]
            assert other is False or isinstance(other, StoreError), results

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_closed_store_kept_what_was_queued(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make(commit_interval=1.0)) as store:
            for i in range(50):
                assert store.add(msg(i))
        async with opened(backend.make()) as again:
            assert len(await again.unfinished()) == 50

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_full_queue_refuses_adds_and_holds(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make(queue_max=2, commit_interval=1.0)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            assert not store.add(msg(3))
            assert not store.hold("acme", b"r", 2e6)
            assert (store.refused_adds, store.refused_holds) == (1, 1)

    run(asyncio.wait_for(main(), DEADLINE))


def test_an_id_that_holds_another_message_is_refused(backend: Backend, run: Any) -> None:
    """A second add of an id with another message fails that add alone (its ack False),
    in a batch of its own or amid others; the same message added again is no error."""

    async def main() -> None:
        async with opened(backend.make()) as store:
            assert store.add(msg(1))
            await store.flush()
            future, done = durable()
            assert store.add(msg(1, short_message=b"another"), done)
            other, other_done = durable()
            assert store.add(msg(2), other_done)
            assert await future is False
            assert await other is True
            stored = await store.get("m000001")
            assert stored is not None
            assert stored.message == msg(1)
            assert await store.get("m000002") is not None

    run(asyncio.wait_for(main(), DEADLINE))


def test_reserved_ids_never_overlap(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make()) as store:
            first = await store.reserve_ids(100)
            second = await store.reserve_ids(10)
        async with opened(backend.make("b")) as other:
            third = await other.reserve_ids(1)
        assert second >= first + 100
        assert third >= second + 10
        with pytest.raises(ValueError, match="at least one"):
            await backend.make().reserve_ids(0)

    run(asyncio.wait_for(main(), DEADLINE))


# -- ownership -------------------------------------------------------------------------------


def test_unfinished_messages_are_the_owners_until_taken_over(backend: Backend, run: Any) -> None:
    """Node a accepted two messages and finished one; node b sees none of a's as its own
    until it takes a's over, then exactly the unfinished one; a second take-over finds
    nothing."""

    async def main() -> None:
        async with opened(backend.make("a")) as a:
            assert a.add(msg(1, via="http"))
            assert a.add(msg(2))
            a.set_final("m000002", DeliveryReport("", MessageState.DELIVERED, done_at=1.0))
            await a.flush()
            assert [s.message.id for s in await a.unfinished()] == ["m000001"]
        async with opened(backend.make("b")) as b:
            assert b.add(msg(3))
            assert [s.message.id for s in await b.unfinished()] == ["m000003"]
            assert await b.take_over("a") == 1
            assert await b.take_over("a") == 0
            taken = [(s.message.id, s.message.via) for s in await b.unfinished()]
            assert taken == [("m000001", "http"), ("m000003", "")]  # oldest first
        async with opened(backend.make("a")) as a_again:
            assert await a_again.unfinished() == []

    run(asyncio.wait_for(main(), DEADLINE))


# -- held deliveries -------------------------------------------------------------------------


def test_held_items_come_back_in_order_until_released(backend: Backend, run: Any) -> None:
    async def main() -> None:
        clock = Clock(1_000.0)
        async with opened(backend.make(clock=clock)) as store:
            future, done = durable()
            assert store.hold("acme", b"r1", 2_000.0)
            assert store.hold("acme", b"r2", 2_000.0)
            assert store.hold("other", b"o1", 2_000.0)
            assert store.hold("acme", b"r3", 1_500.0, done)
            assert await future is True
            items = await store.held("acme", 10)
            assert [item for _, item in items] == [b"r1", b"r2", b"r3"]
            assert [item for _, item in await store.held("acme", 2)] == [b"r1", b"r2"]
            assert await store.held_counts() == {"acme": 3, "other": 1}
            store.release([items[0][0]])
            assert [item for _, item in await store.held("acme", 10)] == [b"r2", b"r3"]
            clock.now = 1_600.0  # r3 expired
            assert [item for _, item in await store.held("acme", 10)] == [b"r2"]
            assert await store.held_counts() == {"acme": 1, "other": 1}

    run(asyncio.wait_for(main(), DEADLINE))


def test_held_items_beyond_the_bound_drop_the_oldest(backend: Backend, run: Any) -> None:
    async def main() -> None:
        async with opened(backend.make(held_max=2)) as store:
            for n in range(3):
                assert store.hold("acme", b"r%d" % n, 2e6)
            await store.flush()
            assert [i for _, i in await store.held("acme", 10)] == [b"r1", b"r2"]
            assert store.dropped_held == 1

    run(asyncio.wait_for(main(), DEADLINE))


def test_purge_deletes_expired_held_items_and_old_final_messages(
    backend: Backend, run: Any
) -> None:
    async def main() -> None:
        now = 100 * DAY
        async with opened(backend.make(clock=Clock(now), keep_days=1.0)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            assert store.add(msg(3))
            old = DeliveryReport("", MessageState.DELIVERED, done_at=now - 2 * DAY)
            recent = DeliveryReport("", MessageState.DELIVERED, done_at=now - 0.5 * DAY)
            store.set_final("m000001", old)
            store.set_final("m000002", recent)
            assert store.hold("acme", b"gone", now - 1)
            assert store.hold("acme", b"kept", now + 60)
            await store.flush()
            assert await store.purge(now) == 2
            assert await store.get("m000001") is None
            assert await store.get("m000002") is not None
            assert await store.get("m000003") is not None
            assert [i for _, i in await store.held("acme", 10)] == [b"kept"]
            assert (store.purged_messages, store.expired_held) == (1, 1)

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_purge_larger_than_its_batch_goes_on_until_done(backend: Backend, run: Any) -> None:
    async def main() -> None:
        now = 100 * DAY
        config = {"keep_days": 1.0, "purge_batch": 2}
        async with opened(backend.make(clock=Clock(now), **config)) as store:
            for i in range(5):
                assert store.add(msg(i))
                store.set_final(
                    f"m{i:06d}", DeliveryReport("", MessageState.DELIVERED, done_at=1.0)
                )
                assert store.hold("acme", b"r%d" % i, now - 1)
            await store.flush()
            assert await store.purge(now) == 10
            assert await store.held_counts() == {}
            assert await store.get("m000004") is None

    run(asyncio.wait_for(main(), DEADLINE))


# -- two nodes on one Redis ------------------------------------------------------------------


def redis_backend(url: str) -> Backend:
    return Backend("redis", "", url)


def test_a_message_added_on_one_node_is_read_and_finished_on_another(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    async def main() -> None:
        nodes = redis_backend(redis_url)
        async with opened(nodes.make("a")) as a, opened(nodes.make("b")) as b:
            assert a.add(msg(1))
            a.set_sent("m000001", "c1", "ID-1", key="id-1")
            await a.flush()
            assert await b.find_sent("c1", "id-1") == "m000001"
            stored = await b.get("m000001")
            assert stored is not None
            assert stored.message == msg(1)
            b.set_final("m000001", DeliveryReport("", MessageState.DELIVERED, done_at=2.0))
            await b.flush()
            seen = await a.get("m000001")
            assert seen is not None
            assert seen.state is MessageState.DELIVERED
            assert await a.unfinished() == []
            assert await b.unfinished() == []

    run(asyncio.wait_for(main(), DEADLINE))


def test_of_two_nodes_finishing_one_message_exactly_one_wins(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    async def main() -> None:
        nodes = redis_backend(redis_url)
        async with opened(nodes.make("a")) as a, opened(nodes.make("b")) as b:
            for i in range(20):
                assert a.add(msg(i))
            await a.flush()
            delivered = DeliveryReport("", MessageState.DELIVERED, done_at=2.0)
            expired = DeliveryReport("", MessageState.EXPIRED, done_at=3.0)
            for i in range(20):
                wins = await asyncio.gather(
                    a.claim_final(f"m{i:06d}", delivered),
                    b.claim_final(f"m{i:06d}", expired),
                    return_exceptions=True,
                )
                # The loser finds the winner reporting it (try again later: StoreError).
                assert wins.count(True) == 1
                loser = wins[1] if wins[0] is True else wins[0]
                assert isinstance(loser, StoreError), wins
                stored = await b.get(f"m{i:06d}")
                assert stored is not None
                winner = MessageState.DELIVERED if wins[0] is True else MessageState.EXPIRED
                assert stored.state is winner
                await (a if wins[0] is True else b).settle_final(f"m{i:06d}")
                # Settled: the loser's next try is a duplicate.
                again = (b if wins[0] is True else a).claim_final(f"m{i:06d}", delivered)
                assert await again is False
            # A write-behind final state after the claim does not overwrite it either.
            a.set_final("m000000", DeliveryReport("", MessageState.REJECTED, done_at=4.0))
            await a.flush()
            stored = await a.get("m000000")
            assert stored is not None
            assert stored.state is not MessageState.REJECTED

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_whose_node_died_before_settling_is_claimed_again_once_it_lapses(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Node a claims a final state and dies before its receipt is delivered or held: the
    carrier's resend, at node b, is asked to come back while a's lease lasts, and once it
    lapsed b claims it and reports it (at least once); after b settles, it is a duplicate."""

    async def main() -> None:
        clock = Clock(1_000.0)
        nodes = redis_backend(redis_url)
        report = DeliveryReport("", MessageState.DELIVERED, done_at=2.0)
        async with (
            opened(nodes.make("a", clock=clock)) as a,
            opened(nodes.make("b", clock=clock)) as b,
        ):
            assert a.add(msg(1))
            await a.flush()
            assert await a.claim_final("m000001", report) is True  # ... and a dies
            with pytest.raises(StoreError, match="being reported"):
                await b.claim_final("m000001", report)
            clock.now += 31.0  # a's lease lapsed (claim_seconds 30)
            assert await b.claim_final("m000001", report) is True
            await b.settle_final("m000001")
            assert await b.claim_final("m000001", report) is False
            assert await a.claim_final("m000001", report) is False

    run(asyncio.wait_for(main(), DEADLINE))


def test_held_items_are_drained_by_one_node_at_a_time(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Node a reads (claims) the account's held items: node b sees none of them while a's
    claim lasts, nor once a released them; items held later go to whoever reads first; a
    claim that lapsed (a died) leaves the items to b."""

    async def main() -> None:
        clock = Clock(1_000.0)
        nodes = redis_backend(redis_url)
        async with (
            opened(nodes.make("a", clock=clock)) as a,
            opened(nodes.make("b", clock=clock)) as b,
        ):
            for n in range(3):
                assert a.hold("acme", b"r%d" % n, 9_000.0)
            await a.flush()
            taken = await a.held("acme", 10)
            assert [i for _, i in taken] == [b"r0", b"r1", b"r2"]
            assert await b.held("acme", 10) == []
            assert [i for _, i in await a.held("acme", 10)] == [b"r0", b"r1", b"r2"]
            a.release([taken[0][0]])
            await a.flush()
            assert b.hold("acme", b"r3", 9_000.0)
            await b.flush()
            assert [i for _, i in await b.held("acme", 10)] == [b"r3"]
            clock.now += 31.0  # a's claims lapsed (claim_seconds 30)
            assert [i for _, i in await b.held("acme", 10)] == [b"r1", b"r2", b"r3"]
            assert await a.held("acme", 10) == []
            assert await a.held_counts() == {"acme": 3}

    run(asyncio.wait_for(main(), DEADLINE))


def test_take_over_messages_returns_the_unfinished_ones_it_took(
    backend: Backend, run: Any
) -> None:
    async def main() -> None:
        async with opened(backend.make("a")) as a:
            assert a.add(msg(1))
            assert a.add(msg(2))
            a.set_final("m000001", DeliveryReport("", MessageState.DELIVERED, done_at=1.0))
        async with opened(backend.make("b")) as b:
            assert b.add(msg(3))
            taken = await b.take_over_messages("a")
            assert [s.message.id for s in taken] == ["m000002"]
            assert await b.take_over_messages("a") == []
            assert await b.take_over_messages("b") == []  # its own: nothing to take
            assert [s.message.id for s in await b.unfinished()] == ["m000002", "m000003"]

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_dead_nodes_messages_are_taken_over_once(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    async def main() -> None:
        nodes = redis_backend(redis_url)
        async with opened(nodes.make("dead")) as dead:
            for i in range(100):
                assert dead.add(msg(i))
        async with opened(nodes.make("b")) as b, opened(nodes.make("c")) as c:
            counts = await asyncio.gather(b.take_over("dead"), c.take_over("dead"))
            assert sum(counts) == 100
            mine_b, mine_c = await b.unfinished(), await c.unfinished()
            assert len(mine_b) + len(mine_c) == 100
            assert not {s.message.id for s in mine_b} & {s.message.id for s in mine_c}

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_take_over_returns_the_messages_it_took_and_one_node_takes_them(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Two live nodes take over a dead node's messages at once: one of them gets every
    unfinished one (a lock), the other none; the final one stays where it was."""

    async def main() -> None:
        nodes = redis_backend(redis_url)
        async with opened(nodes.make("dead")) as dead:
            for i in range(50):
                assert dead.add(msg(i))
            dead.set_final("m000007", DeliveryReport("", MessageState.DELIVERED, done_at=1.0))
        async with opened(nodes.make("b")) as b, opened(nodes.make("c")) as c:
            got_b, got_c = await asyncio.gather(
                b.take_over_messages("dead"), c.take_over_messages("dead")
            )
            taken, other = (got_b, got_c) if got_b else (got_c, got_b)
            assert other == []
            ids = [s.message.id for s in taken]
            assert len(ids) == 49
            assert "m000007" not in ids
            assert ids == sorted(ids)  # oldest first
            owner = b if taken is got_b else c
            assert {s.message.id for s in await owner.unfinished()} == set(ids)
            assert await owner.take_over_messages("dead") == []  # nothing left

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_node_that_comes_back_while_another_takes_it_over_recovers_none_of_its_taken(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Node "x" restarts while node "y" is taking its messages over (y holds x's take-over
    lock, as a take-over in flight does): x's recovery waits for y to be done, then
    recovers only what is still its own — never a message y took too (both would send
    it). And a take-over finds the lock of a node recovering its own messages held: it
    takes nothing."""

    async def main() -> None:
        nodes = redis_backend(redis_url)
        async with opened(nodes.make("x")) as x:
            for i in range(20):
                assert x.add(msg(i))
        async with opened(nodes.make("x")) as x, opened(nodes.make("y")) as y:
            lock = "smsc:takeover:x"
            assert await x.client().set(lock, "y", nx=True, px=30_000)  # y's take-over began
            before = x.commands
            recovering = asyncio.ensure_future(x.unfinished())
            for _ in range(10_000):  # turns of the loop until x's recovery sent a command
                if x.commands != before:
                    break
                await asyncio.sleep(0)
            assert x.commands != before
            taken = await y.take_over_messages("x")  # y's take-over goes on and ends
            assert len(taken) == 20
            assert await recovering == []
            assert not await x.client().exists(lock)  # released: x was not kept waiting

            for i in range(20, 25):
                assert x.add(msg(i))
            await x.flush()
            assert await x.client().set(lock, "x", nx=True, px=30_000)  # x recovering
            assert await y.take_over_messages("x") == []
            assert len(await y.unfinished()) == 20

    run(asyncio.wait_for(main(), DEADLINE))


def test_commands_per_message_stay_few(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A message whose add, send and final state each go out in a batch of their own costs
    at most four commands (a send writes the receipt index, which may be in another
    bucket); a batch costs at most one command per bucket, however many messages it
    holds."""

    async def main() -> None:
        async with opened(redis_backend(redis_url).make("a")) as store:
            assert isinstance(store, RedisStore)
            base = store.commands
            assert store.add(msg(0))
            await store.flush()
            store.set_sent("m000000", "c1", "X0")
            await store.flush()
            store.set_final("m000000", DeliveryReport("", MessageState.DELIVERED))
            await store.flush()
            assert store.commands - base <= 4
            n = 1_000
            base = store.commands
            for i in range(1, n + 1):
                assert store.add(msg(i))
            await store.flush()
            for i in range(1, n + 1):
                store.set_sent(f"m{i:06d}", "c1", f"X{i}")
            await store.flush()
            for i in range(1, n + 1):
                store.set_final(f"m{i:06d}", DeliveryReport("", MessageState.DELIVERED))
            await store.flush()
            assert store.transactions == 6
            assert store.commands - base <= 3 * BUCKETS
            for i in (1, n):
                assert await store.find_sent("c1", f"X{i}") == f"m{i:06d}"


# -- Redis outage ----------------------------------------------------------------------------


def test_redis_outage_refuses_adds_then_recovers_by_itself(tmp_path: Path, run: Any) -> None:
    """Redis stops: an add waiting for its commit is failed (never acknowledged), the store
    says why it cannot write, refuses adds and holds, reads fail within their deadline;
    what was accepted before stays queued. Redis returns on the same port: the queued
    writes go out and adds are taken again, without anyone reopening the store."""
    server = RedisServer(tmp_path, aof=True)  # what it had before the outage survives
    server.start()

    async def main() -> None:
        store = redis_backend(server.url).make("a", retry_max=0.2, read_timeout=2.0)
        async with opened(store):
            assert store.add(msg(1))
            await store.flush()
            server.stop()
            future, done = durable()
            assert store.add(msg(2), done)
            assert await future is False
            assert store.unwritable == "unreachable"
            assert not store.add(msg(3))
            assert not store.hold("acme", b"r", 2e6)
            store.set_final("m000001", DeliveryReport("", MessageState.DELIVERED, done_at=5.0))
            with pytest.raises(StoreError):
                await store.get("m000009")
            server.start()
            await store.flush(timeout=15.0)
            assert store.unwritable is None
            assert store.add(msg(4))
            stored = await store.get("m000001")
            assert stored is not None
            assert stored.state is MessageState.DELIVERED
            assert await store.get("m000002") is None  # refused, never written
            assert await store.get("m000004") is not None

    try:
        run(asyncio.wait_for(main(), DEADLINE + 20))
    finally:
        server.stop()


def test_acknowledged_messages_survive_a_redis_kill_with_aof_always(
    tmp_path: Path, run: Any
) -> None:
    """``appendfsync always``: every add acknowledged (``on_durable(True)``) is in Redis
    after ``kill -9`` and a restart from its append-only file."""
    server = RedisServer(tmp_path, aof=True, appendfsync="always")
    server.start()

    async def main() -> None:
        store = redis_backend(server.url).make("a", retry_max=0.2)
        async with opened(store):
            acks = [durable() for _ in range(500)]
            for i, (_, done) in enumerate(acks):
                assert store.add(msg(i), done)
            assert all([await future for future, _ in acks])
            server.kill()
            server.start()
            for i in (0, 250, 499):
                assert await store.get(f"m{i:06d}") is not None
            assert len(await store.unfinished()) == 500

    try:
        run(asyncio.wait_for(main(), DEADLINE))
    finally:
        server.stop()


def test_a_batch_short_of_its_replicas_is_not_acknowledged(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """``wait_replicas``: an add is acknowledged only once that many replicas have it;
    with none to be had the store says so and refuses further adds."""

    async def main() -> None:
        store = RedisStore(
            StoreConfig(retry_max=0.2), url=redis_url, node_id="a", wait_replicas=1,
            wait_timeout=0.05,
        )  # fmt: skip
        async with opened(store, close_within=0.5):  # what is queued never gets a replica
            future, done = durable()
            assert store.add(msg(1), done)
            assert await future is False
            assert store.unwritable == "replicas"
            assert not store.add(msg(2))

    run(asyncio.wait_for(main(), DEADLINE))
