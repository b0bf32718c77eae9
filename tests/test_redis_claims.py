"""Final-state claims and settles on Redis go through the write-behind batches: a claim is a
record of its bucket's batch script call (no round trip of its own), answered when that
batch returns; a settle is a record too. The contract (tests/test_store_contract.py) says
what a claim means; this says what it costs and how it is ordered among a node's writes.

Every test runs under a deadline and waits on the store, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message
from router.ports import StoreError, StoreTimeout
from router.stores.handover import RedisHandover
from router.stores.redis import BUCKETS, RedisStore, bucket
from smppcore.constants import MessageState

DEADLINE = 20.0
SRC = Address(5, 0, "ACME")
DST = Address(1, 1, "447700900123")
DELIVERED = DeliveryReport("", MessageState.DELIVERED, done_at=2.0)


def msg(i: int, **kw: Any) -> Message:
    fields: dict[str, Any] = {"short_message": b"hello", "submitted_at": 1_000.0 + i}
    fields.update(kw)
    return Message(id=f"m{i:06d}", account="acme", source=SRC, destination=DST, **fields)


def node(url: str, node_id: str = "a", **config: Any) -> RedisStore:
    return RedisStore(StoreConfig(**config), url=url, node_id=node_id)


@contextlib.asynccontextmanager
async def opened(store: RedisStore) -> AsyncIterator[RedisStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close(5.0)


def test_claims_and_settles_under_load_cost_no_round_trip_of_their_own(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A thousand claims at once go out in the writer's batches (at most one script call
    per bucket and batch), and so do their settles; then every claim is a duplicate."""
    n = 1_000

    async def main() -> None:
        async with opened(node(redis_url)) as store:
            for i in range(n):
                assert store.add(msg(i))
            await store.flush()
            base = store.commands
            won = await asyncio.gather(
                *(store.claim_final(f"m{i:06d}", DELIVERED) for i in range(n))
            )
            assert won == [True] * n
            await asyncio.gather(*(store.settle_final(f"m{i:06d}") for i in range(n)))
            # One claim and one settle per message sent alone would be 2 * n commands.
            assert store.commands - base <= 4 * BUCKETS
            again = await asyncio.gather(
                *(store.claim_final(f"m{i:06d}", DELIVERED) for i in range(n))
            )
            assert again == [False] * n
            stored = await store.get(f"m{n - 1:06d}")
            assert stored is not None
            assert (stored.state, stored.done_at) == (MessageState.DELIVERED, 2.0)
            assert await store.unfinished() == []

    run(asyncio.wait_for(main(), DEADLINE))


def test_settles_that_fill_several_batches_are_done_once_the_last_of_them_is_written(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A settle's future is done once its record is written — settles queued together
    may share one, which is done once the last of them is written, also when the queue
    fills several batches; by then another node's claim of each is a duplicate, not a
    live lease."""
    n = 25

    async def main() -> None:
        async with (
            opened(node(redis_url, "a", batch_max=10)) as a,
            opened(node(redis_url, "b")) as b,
        ):
            for i in range(n):
                assert a.add(msg(i))
            await a.flush()
            won = await asyncio.gather(*(a.claim_final(f"m{i:06d}", DELIVERED) for i in range(n)))
            assert won == [True] * n
            settles = [a.settle_final(f"m{i:06d}") for i in range(n)]
            await settles[-1]
            assert a.queued == 0  # the last batch was written, not only the first
            await asyncio.gather(*settles)
            again = await asyncio.gather(*(b.claim_final(f"m{i:06d}", DELIVERED) for i in range(n)))
            assert again == [False] * n

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_comes_after_this_nodes_queued_writes_and_before_its_later_ones(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """In one batch: the add, the send, the claim, then a write-behind final state queued
    after the claim: the claim finds the message and wins; the later final state loses the
    compare-and-set to it."""

    async def main() -> None:
        async with opened(node(redis_url)) as store:
            assert store.add(msg(1))
            store.set_sent("m000001", "c1", "X1")

            async def later() -> None:  # its task runs after the claim's has queued it
                store.set_final("m000001", DeliveryReport("", MessageState.REJECTED, done_at=4.0))

            won, _ = await asyncio.gather(store.claim_final("m000001", DELIVERED), later())
            assert won is True
            await store.flush()
            stored = await store.get("m000001")
            assert stored is not None
            assert (stored.state, stored.done_at) == (MessageState.DELIVERED, 2.0)
            assert stored.carrier_message_id == "X1"
            assert await store.find_sent("c1", "X1") == "m000001"

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_does_not_wait_for_the_group_commit(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A claim makes the writer send its batch at once, as an add whose ack waits does:
    with a commit interval longer than the read deadline it is still answered."""

    async def main() -> None:
        async with opened(node(redis_url, commit_interval=1.0, read_timeout=0.9)) as store:
            assert store.add(msg(1))
            await store.flush()
            assert await store.claim_final("m000001", DELIVERED) is True

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_sent_again_in_a_retried_batch_is_still_won(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A batch that fails by a record's fault (an add of an id that holds another message)
    is sent again, whole and then record by record: the claim in it ran the first time, and
    is answered as this node's claim each time, not as a claim being reported."""

    async def main() -> None:
        async with opened(node(redis_url)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            await store.flush()
            assert store.add(msg(2, short_message=b"another message"))  # a duplicate id
            assert await store.claim_final("m000001", DELIVERED) is True
            assert store.failed == 1  # the duplicate only
            await store.settle_final("m000001")
            assert await store.claim_final("m000001", DELIVERED) is False

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_fails_like_a_read_while_redis_is_unreachable(tmp_path: Path, run: Any) -> None:
    """Redis stops: a claim raises StoreError (the carrier is asked to send the receipt
    again), the one in the batch that found Redis gone and the ones after it at once; it is
    not kept queued for later. A settle is kept queued, its caller answered past the read
    deadline. Redis returns: the settle is written, claims are won again."""
    server = RedisServer(tmp_path, aof=True)  # the message survives the outage
    server.start()

    async def main() -> None:
        async with opened(node(server.url, retry_max=0.2, read_timeout=2.0)) as store:
            assert store.add(msg(1))
            await store.flush()
            server.stop()
            with pytest.raises(StoreError):
                await store.claim_final("m000001", DELIVERED)
            assert store.unwritable == "unreachable"
            with pytest.raises(StoreError, match="cannot be written"):
                await store.claim_final("m000001", DELIVERED)
            # A settle stays queued (written once Redis is back: it is harmless late); its
            # caller — the carriers' answers — waits no longer than the read deadline.
            settled = store.settle_final("m000001")
            with pytest.raises(StoreTimeout):
                await settled
            assert store.queued >= 1
            server.start()
            await store.flush(timeout=15.0)
            assert store.unwritable is None
            assert store.queued == 0
            assert await store.claim_final("m000001", DELIVERED) is True

    try:
        run(asyncio.wait_for(main(), DEADLINE + 20))
    finally:
        server.stop()


def test_redis_executes_a_few_commands_per_call_whatever_the_records_in_it(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A thousand messages added, sent, claimed and settled, each step a batch of its own:
    the commands Redis executes (those the scripts run included: INFO commandstats) stay
    a few per script call — one per container a call reads or writes, not one per
    message — so, all four steps together, under four per message."""
    n = 1_000

    async def main() -> None:
        async with opened(node(redis_url)) as store:
            client = store.client()
            await client.config_resetstat()
            base = store.commands
            for i in range(n):
                assert store.add(msg(i))
            await store.flush()
            for i in range(n):
                store.set_sent(f"m{i:06d}", "c1", f"X{i}")
            await store.flush()
            won = await asyncio.gather(
                *(store.claim_final(f"m{i:06d}", DELIVERED) for i in range(n))
            )
            assert won == [True] * n
            await asyncio.gather(*(store.settle_final(f"m{i:06d}") for i in range(n)))
            stats = await client.info("commandstats")
            executed = sum(
                int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",
                                                                       "cmdstat_config|resetstat")
            )  # fmt: skip
            calls = store.commands - base
            assert executed <= 12 * calls
            assert executed < 4 * n
            assert await store.find_sent("c1", "X7") == "m000007"
            stored = await store.get("m000007")
            assert stored is not None
            assert (stored.state, stored.carrier_message_id) == (MessageState.DELIVERED, "X7")

    run(asyncio.wait_for(main(), DEADLINE))


def test_unfinished_messages_of_the_version_before_are_moved_at_start(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """The version before kept each message in a hash of its own (``P:{m<b>}:m:<id>``) and
    each receipt index entry in a key of its own: a node starting on such a Redis moves
    the unfinished messages into this layout first (once: ``P:format`` says it is done),
    so that they are recovered, found by their receipt and finished; the final ones are
    left to expire (their TTLs), the zsets that listed them for the purge (``done``, no
    TTL, no longer read) go; an index member with no message is dropped."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            for i, final in ((1, False), (2, True)):
                m = msg(i)
                tag = f"smsc:{{m{bucket(m.id)}}}"
                fields: dict[str, Any] = {
                    "a": "acme", "t": repr(m.submitted_at), "b": msgspec.msgpack.encode(m),
                    "o": "a", "s": int(MessageState.ENROUTE), "e": 0, "c": "c1",
                    "ci": f"X{i}", "k": f"x{i}",
                }  # fmt: skip
                if final:
                    fields.update(s=int(MessageState.DELIVERED), d="2.0")
                    await client.zadd(f"{tag}:done", {m.id: 2.0})
                else:
                    await client.zadd(f"{tag}:u:a", {m.id: m.submitted_at})
                await client.hset(f"{tag}:m:{m.id}", mapping=fields)
                await client.set(f"smsc:{{m{bucket(f'c1:x{i}')}}}:k:c1:x{i}", m.id)
            await client.zadd(f"smsc:{{m{bucket('m000009')}}}:u:a", {"m000009": 9.0})
            async with opened(node(redis_url, "a")) as store:
                [stored] = await store.unfinished()
                assert stored.message == msg(1)
                assert (stored.owner, stored.state) == ("a", MessageState.ENROUTE)
                assert (stored.carrier, stored.carrier_message_id) == ("c1", "X1")
                assert await store.find_sent("c1", "x1") == "m000001"
                assert await store.get("m000002") is None  # final: left to expire
                assert await store.claim_final("m000001", DELIVERED) is True
                await store.settle_final("m000001")
                assert await store.unfinished() == []
            assert await client.get("smsc:format") == b"2"
            assert await client.exists(f"smsc:{{m{bucket('m000001')}}}:m:m000001") == 0
            assert await client.exists(f"smsc:{{m{bucket('m000009')}}}:u:a") == 0
            assert await client.exists(f"smsc:{{m{bucket('m000002')}}}:done") == 0
            async with opened(node(redis_url, "a")) as again:  # nothing to move any more
                stored_again = await again.get("m000001")
                assert stored_again is not None
                assert stored_again.state is MessageState.DELIVERED
        finally:
            await client.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_settle_after_a_restart_finds_the_lease_of_the_claim_before_it(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A node remembers where its won claims keep their leases (the day) for their settles;
    a node that restarted between a claim and its settle has forgotten: the settle finds
    the message's day by itself, and a later claim is a duplicate. So is a claim of a
    message final since an earlier day, once settled."""

    async def main() -> None:
        async with opened(node(redis_url)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            await store.flush()
            now = time.time()  # (the store's clock: the days its leases are kept by)
            today = DeliveryReport("", MessageState.DELIVERED, done_at=now)
            old = DeliveryReport("", MessageState.DELIVERED, done_at=now - 86_400)
            assert await store.claim_final("m000001", today) is True
            assert await store.claim_final("m000002", old) is True
        async with opened(node(redis_url)) as again:
            await again.settle_final("m000001")
            await again.settle_final("m000002")
            assert await again.claim_final("m000001", DELIVERED) is False
            assert await again.claim_final("m000002", DELIVERED) is False
            stored = await again.get("m000002")
            assert stored is not None
            assert stored.done_at == old.done_at

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_claim_waits_no_longer_than_the_read_deadline(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Redis stops answering writes for longer than ``read_timeout``: the claim raises
    StoreError within it (the carrier is asked to send the receipt again); once Redis
    answers, the store writes again."""

    async def main() -> None:
        async with opened(node(redis_url, read_timeout=0.5, retry_max=0.2)) as store:
            assert store.add(msg(1))
            assert store.add(msg(2))
            await store.flush()
            await store.client().execute_command("CLIENT", "PAUSE", 4000, "WRITE")
            try:
                async with asyncio.timeout(3.0):  # well before the pause ends
                    with pytest.raises(StoreError):
                        await store.claim_final("m000001", DELIVERED)
            finally:
                await store.client().execute_command("CLIENT", "UNPAUSE")
            await store.flush(timeout=15.0)
            assert await store.claim_final("m000002", DELIVERED) is True

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_move_to_this_format_that_died_half_way_is_finished_by_the_next_node(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A node that moved a bucket's unfinished messages of the version before into the
    live hash and died before writing their receipt index leaves no ``P:format``: the next
    node starting moves again, and a message already moved is still found by its receipt
    (the old index entry is no longer read)."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            m = msg(1)
            tag = f"smsc:{{m{bucket(m.id)}}}"
            # What the node that died left: the record in live (see RECORD_LUA), the old
            # hash deleted, the owner's index as it was, the old receipt index entry.
            head = msgspec.msgpack.encode(
                ["acme", m.submitted_at, "a", int(MessageState.ENROUTE), 0, "c1", "X1", "x1", 0]
            )
            record = len(head).to_bytes(2, "big") + head + msgspec.msgpack.encode(m)
            await client.hset(f"{tag}:live", m.id, record)
            await client.zadd(f"{tag}:u:a", {m.id: m.submitted_at})
            await client.set(f"smsc:{{m{bucket('c1:x1')}}}:k:c1:x1", m.id)
            async with opened(node(redis_url, "b")) as store:
                assert await store.find_sent("c1", "x1") == "m000001"
                [stored] = await store.take_over_messages("a")
                assert stored.message == m
                assert await store.claim_final("m000001", DELIVERED) is True
            assert await client.get("smsc:format") == b"2"
        finally:
            await client.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_node_whose_move_to_this_format_fails_lets_the_next_one_move_at_once(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """The move of the version before's messages fails (here: a key of its layout that
    is not what it should be): the node does not open (StoreError naming what Redis
    said) and leaves the move's lock to the next node starting, which need not wait for
    the lock to lapse (a minute)."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            tag = f"smsc:{{m{bucket('m000001')}}}"
            await client.zadd(f"{tag}:u:a", {"m000001": 1.0})
            await client.set(f"{tag}:m:m000001", "not a hash")
            with pytest.raises(StoreError, match="WRONGTYPE"):
                await node(redis_url, "a").open()
            assert await client.get("smsc:format") is None
            await client.delete(f"{tag}:m:m000001")
            async with asyncio.timeout(10.0):  # the lock lapses after a minute
                async with opened(node(redis_url, "b")) as store:
                    assert await store.unfinished() == []
            assert await client.get("smsc:format") == b"2"
        finally:
            await client.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


async def _old_unfinished(client: aioredis.Redis, m: Message, owner: str, n: int) -> None:
    """``m`` as the version before kept an unfinished message of ``owner`` (its hash, its
    owner's index, its receipt index entry ``c1:x<n>``)."""
    tag = f"smsc:{{m{bucket(m.id)}}}"
    fields: dict[str, Any] = {
        "a": m.account, "t": repr(m.submitted_at), "b": msgspec.msgpack.encode(m),
        "o": owner, "s": int(MessageState.ENROUTE), "e": 0, "c": "c1", "ci": f"X{n}",
        "k": f"x{n}",
    }  # fmt: skip
    await client.hset(f"{tag}:m:{m.id}", mapping=fields)
    await client.zadd(f"{tag}:u:{owner}", {m.id: m.submitted_at})
    await client.set(f"smsc:{{m{bucket(f'c1:x{n}')}}}:k:c1:x{n}", m.id)


def test_a_node_of_the_version_before_that_ran_on_after_the_move_loses_nothing_unfinished(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A rolling upgrade: a node of this version moved the messages (``P:format``) while
    another of the version before still ran and accepted messages in its layout. That
    node, restarted with this version, recovers them (moved then: found by their receipt
    and finished); a node that takes over one that never came back takes them too."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with opened(node(redis_url, "a")):
                pass  # the first node of this version: the move is done
            assert await client.get("smsc:format") == b"2"
            await _old_unfinished(client, msg(1), "b", 1)  # the old node "b" ran on
            await _old_unfinished(client, msg(2), "c", 2)  # so did "c", which never returns
            async with opened(node(redis_url, "b")) as store:
                [stored] = await store.unfinished()
                assert stored.message == msg(1)
                assert (stored.owner, stored.carrier_message_id) == ("b", "X1")
                assert await store.find_sent("c1", "x1") == "m000001"
                assert await store.claim_final("m000001", DELIVERED) is True
                [taken] = await store.take_over_messages("c")
                assert taken.message == msg(2)
                assert taken.owner == "b"
                assert await store.find_sent("c1", "x2") == "m000002"
                [mine] = await store.unfinished()
                assert mine.message == msg(2)
        finally:
            await client.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_message_a_node_of_the_version_before_handed_over_is_adopted(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A node of the version before that ran on after the format's change handed a
    message over to a carrier's nodes (its hash owned by ``>carrier``, an entry in the
    carrier's stream): the node of this version that reads the entry adopts the message
    (moved into this layout), instead of taking it for one another node has."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with opened(node(redis_url, "a")):
                pass  # the first node of this version: the move is done
            await _old_unfinished(client, msg(1), ">c1", 1)
            await client.xadd("smsc:{x}:s:c1", {"i": "m000001", "f": "old"})
            async with opened(node(redis_url, "b")) as store:
                handover = RedisHandover(store, lease=30.0)
                [adopted] = await handover.take(["c1"], 10, 1.0)
                assert adopted.carrier == "c1"
                assert adopted.stored.message == msg(1)
                assert adopted.stored.owner == "b"
                [mine] = await store.unfinished()
                assert mine.message == msg(1)
                await handover.close(1.0)
        finally:
            await client.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


def test_a_message_whose_hand_over_was_sent_twice_is_adopted_once(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A hand-over batch sent again whole leaves two entries of one message in the
    carrier's stream; read together, in one take, the message is adopted once (sent once),
    the second entry acknowledged as one another node has."""

    async def main() -> None:
        async with opened(node(redis_url, "a")) as offering, opened(node(redis_url, "b")) as store:
            assert offering.add(msg(1))
            hand = RedisHandover(offering, lease=30.0)
            assert hand.offer("c1", msg(1))
            await hand.close(5.0)  # handed over (the offer's batch is done)
            assert hand.handed == 1
            client = store.client()
            await client.xadd("smsc:{x}:s:c1", {"i": "m000001", "f": "a"})  # sent again
            handover = RedisHandover(store, lease=30.0)
            [adopted] = await handover.take(["c1"], 10, 1.0)
            assert adopted.stored.message == msg(1)
            assert adopted.stored.owner == "b"
            assert await handover.take(["c1"], 10, 0.01) == []
            await handover.close(1.0)

    run(asyncio.wait_for(main(), DEADLINE))


async def flush_times_out(store: RedisStore, why: str) -> None:
    """``flush`` fails (StoreTimeout) naming ``why`` the store cannot be written, once the
    store has tried and learnt it (each flush 1 s, tried again until then: a slow machine
    makes this slower, not false)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            with pytest.raises(StoreTimeout) as raised:
                await store.flush(timeout=1.0)
            if f"cannot write: {why}" in str(raised.value):
                return


def test_records_wait_while_redis_is_busy_running_a_long_script(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """A script runs past Redis's busy threshold (another node's take-over of a large
    index, an operator's): Redis answers BUSY to every other command. That is Redis
    that cannot be written now (``busy``), not the records' fault: a record already
    accepted waits and is written once the script ends, never dropped."""

    async def main() -> None:
        probe = aioredis.Redis.from_url(redis_url)
        busy = aioredis.Redis.from_url(redis_url)
        try:
            await probe.config_set("busy-reply-threshold", 20)
            async with opened(node(redis_url, retry_max=0.1)) as store:
                loop = asyncio.create_task(busy.eval("while true do end", 0))
                while True:  # until Redis answers BUSY (each ping is a round trip)
                    try:
                        await probe.ping()
                    except ResponseError:
                        break
                with pytest.raises(ResponseError, match=r"^BUSY"):
                    await probe.ping()
                assert store.add(msg(1))  # accepted (ack_after: submit)
                await flush_times_out(store, "busy")
                assert store.unwritable == "busy"
                await probe.script_kill()
                with pytest.raises(ResponseError):
                    await loop
                await store.flush(timeout=10.0)
                assert store.failed == 0
                assert store.unwritable is None
                assert await store.get("m000001") is not None
        finally:
            with contextlib.suppress(ResponseError):
                await probe.config_set("busy-reply-threshold", 5000)
            await busy.aclose()
            await probe.aclose()

    run(asyncio.wait_for(main(), DEADLINE))


def test_records_wait_while_redis_has_too_few_replicas_to_take_writes(
    redis_url: str,  # noqa: F811
    run: Any,
) -> None:
    """Redis refuses writes while fewer replicas than its ``min-replicas-to-write`` are
    connected (NOREPLICAS): the store cannot be written (``replicas``), the records
    already accepted wait and are written once it takes writes again."""

    async def main() -> None:
        probe = aioredis.Redis.from_url(redis_url)
        try:
            async with opened(node(redis_url, retry_max=0.1)) as store:
                await probe.config_set("min-replicas-to-write", 1)
                assert store.add(msg(1))  # accepted (ack_after: submit)
                await flush_times_out(store, "replicas")
                await probe.config_set("min-replicas-to-write", 0)
                await store.flush(timeout=10.0)
                assert store.failed == 0
                assert await store.get("m000001") is not None
        finally:
            await probe.config_set("min-replicas-to-write", 0)
            await probe.aclose()

    run(asyncio.wait_for(main(), DEADLINE))
