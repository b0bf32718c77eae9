"""The Idempotency-Key of the HTTP API's sends (smsc/idempotency.py) on the cluster's
records (a real redis-server; two Idempotency objects on clients of their own are two
nodes): a key sends once; when its answer cannot be written (Redis holding writes back),
the node that sent keeps the reservation, replays the answer itself, and writes it once
Redis takes writes again: then the other node replays it too, and nothing is sent twice; a
refusal for now releases the key, once Redis takes writes again if not at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis.asyncio as aioredis
from loops import Run
from redis_server import redis_server, redis_url  # noqa: F401

from smsc.http_records_redis import RedisRecords
from smsc.idempotency import Idempotency, KeyInUse, KeyReused, Reply

NOW = 1_800_000_000.0
DEADLINE = 10.0
BODY = b'{"to": "447700900001", "text": "hi"}'


class Sends:
    """The sending behind a key: counts each send; answers ``status`` (a 202 sends)."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.count = 0
        #: Awaited once the send is done and before it answers (Redis held back meanwhile).
        self.then: aioredis.Redis | None = None

    async def __call__(self) -> Reply:
        self.count += 1
        if self.then is not None:  # writes held back from now: the answer is not written
            await self.then.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        return self.status, b'{"messages": [{"id": "1000001"}]}', {}


@asynccontextmanager
async def nodes(url: str, n: int) -> AsyncIterator[list[Idempotency]]:
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(n):
            client = aioredis.Redis.from_url(url)
            stack.push_async_callback(client.aclose)
            records = RedisRecords(client, timeout=0.05)
            await records.open()
            stack.push_async_callback(records.close, 1.0)
            node = Idempotency(records, ttl=86_400.0, hold=60.0, wall=lambda: NOW, retry_every=0.05)
            stack.push_async_callback(node.stop, 1.0)
            made.append(node)
        yield made


@asynccontextmanager
async def redis_admin(url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own, to pause the nodes' writes (``CLIENT PAUSE``): always
    unpaused and closed at the end, whatever the test did."""
    admin = aioredis.Redis.from_url(url)
    try:
        yield admin
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


def test_a_key_sends_once_and_is_replayed_on_the_other_node(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with nodes(redis_url, 2) as (a, b):
            sends = Sends()
            first = await a.send("acme", "k-1", BODY, sends)
            assert first[0] == 202
            replayed = await b.send("acme", "k-1", BODY, sends)
            assert replayed == (202, first[1], {"Idempotent-Replayed": "true"})
            with pytest.raises(KeyReused):
                await b.send("acme", "k-1", b"{}", sends)
            assert sends.count == 1

    run(main())


def test_an_answer_not_written_keeps_the_key_and_is_written_once_redis_takes_writes(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with redis_admin(redis_url) as admin, nodes(redis_url, 2) as (a, b):
            sends = Sends()
            sends.then = admin
            first = await a.send("acme", "k-1", BODY, sends)
            assert first[0] == 202  # sent: the answer is given, not written yet
            assert a.unwritten == 1
            again = await a.send("acme", "k-1", BODY, sends)  # replayed from memory
            assert again == (202, first[1], {"Idempotent-Replayed": "true"})
            await admin.execute_command("CLIENT", "UNPAUSE")
            await a.stop(DEADLINE)  # (lets the answers not written be written)
            assert a.unwritten == 0
            on_b = await b.send("acme", "k-1", BODY, sends)  # not 409: replayed
            assert on_b == (202, first[1], {"Idempotent-Replayed": "true"})
            assert sends.count == 1

    run(main())


def test_a_refusal_for_now_releases_the_key_even_once_redis_takes_writes_again(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with redis_admin(redis_url) as admin, nodes(redis_url, 2) as (a, b):
            refused = Sends(status=503)  # nothing sent: not remembered
            refused.then = admin
            assert (await a.send("acme", "k-1", BODY, refused))[0] == 503
            assert a.unwritten == 1  # the release: not written yet
            await admin.execute_command("CLIENT", "UNPAUSE")
            await a.stop(DEADLINE)
            assert a.unwritten == 0
            sends = Sends()
            assert (await b.send("acme", "k-1", BODY, sends))[0] == 202  # not 409
            assert sends.count == 1

    run(main())


def test_a_key_being_answered_is_in_use_on_the_other_node(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        async with nodes(redis_url, 2) as (a, b):
            sends = Sends()

            async def meanwhile() -> Reply:
                with pytest.raises(KeyInUse):
                    await b.send("acme", "k-1", BODY, sends)
                with pytest.raises(KeyInUse):
                    await a.send("acme", "k-1", BODY, sends)
                return await sends()

            assert (await a.send("acme", "k-1", BODY, meanwhile))[0] == 202
            assert sends.count == 1

    run(main())
