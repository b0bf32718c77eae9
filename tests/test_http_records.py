"""The HTTP API's records contract (smsc.http_records.HttpRecords): each behaviour against
both backends (``sqlite``: a file of the node's own; ``redis``: a real redis-server, as in
a cluster), and what only Redis shows (the answers and the records expire; Redis away)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from loops import Run
from redis_server import redis_server, redis_url, sqlite_or_redis  # noqa: F401

from smsc.callbacks import Target
from smsc.http_records import Answer, HttpRecords, RecordsUnavailable, SentMessage, SqliteRecords
from smsc.http_records_redis import RedisRecords

T0 = 1_800_000_000.0
DAY = 86_400.0


@asynccontextmanager
async def opened(
    url: str | None, tmp_path: Path, *, retention: float = 7 * DAY, answer_ttl: float = DAY
) -> AsyncIterator[HttpRecords]:
    records: HttpRecords
    client = None
    if url is None:
        records = SqliteRecords(str(tmp_path / "http.db"))
    else:
        client = aioredis.Redis.from_url(url, socket_timeout=2.0)
        records = RedisRecords(client, retention=retention, answer_ttl=answer_ttl)
    await records.open()
    try:
        yield records
    finally:
        await records.close(2.0)
        if client is not None:
            await client.aclose()


def sent(
    n: int,
    *,
    account: str = "acme",
    at: float = T0,
    to: str = "447700900001",
    parts: int = 1,
    reference: str | None = None,
    target: Target | None = None,
) -> SentMessage:
    return SentMessage(
        id=f"1{n:05d}",
        account=account,
        to=to,
        source="SHOP",
        parts=parts,
        created=at,
        reference=reference,
        target=target,
    )


async def added(records: HttpRecords, messages: list[SentMessage]) -> None:
    done = records.add(messages)
    assert done is not None
    assert await done


def test_a_message_is_found_by_its_id_with_its_target(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(backend, tmp_path) as records:
            target = Target("http://hooks.example/cb", "order-7", mask=3)
            message = sent(1, parts=3, reference="order-7", target=target)
            await added(records, [message, sent(2)])
            assert await records.get(message.id) == message
            found = await records.get(sent(2).id)
            assert found is not None
            assert found.target is None
            assert await records.get("nope") is None

    run(main())


def test_an_accounts_messages_page_newest_first_by_filter_and_cursor(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(backend, tmp_path) as records:
            mine = [sent(i, at=T0 + i // 2, to=f"44770090000{i % 3}") for i in range(10)]
            await added(records, [*mine, sent(99, account="globex", at=T0 + 100)])
            newest_first = sorted(mine, key=lambda m: (m.created, m.id), reverse=True)

            async def page(**kw: object) -> list[SentMessage]:
                args: dict[str, object] = {"to": None, "since": None, "until": None,
                                           "after": None, "limit": 100}  # fmt: skip
                return await records.page("acme", **{**args, **kw})  # type: ignore[arg-type]

            assert await page() == newest_first
            assert await page(limit=4) == newest_first[:4]
            cursor = (newest_first[2].created, newest_first[2].id)  # a tie on created
            assert await page(after=cursor, limit=4) == newest_first[3:7]
            assert await page(to="447700900001") == [m for m in newest_first if m.to.endswith("1")]
            assert (
                await page(to="447700900001", limit=1)
                == [m for m in newest_first if m.to.endswith("1")][:1]
            )
            assert await page(since=T0 + 1, until=T0 + 3) == [
                m for m in newest_first if T0 + 1 <= m.created < T0 + 3
            ]
            assert await page(until=T0 + 3, after=cursor) == [
                m for m in newest_first[3:] if m.created < T0 + 3
            ]
            assert (
                await records.page("nobody", to=None, since=None, until=None, after=None, limit=5)
                == []
            )

    run(main())


def test_an_answer_is_remembered_per_account_and_key_until_its_ttl(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(backend, tmp_path) as records:
            answer = Answer("hash-1", 202, b'{"messages":[]}')
            done = records.remember("acme", "k-1", answer, T0)
            assert done is not None
            assert await done
            assert await records.answer("acme", "k-1", T0 - DAY) == answer
            assert await records.answer("acme", "k-2", T0 - DAY) is None
            assert await records.answer("globex", "k-1", T0 - DAY) is None
            assert await records.answer("acme", "k-1", T0 + 1) is None  # older than asked

    run(main())


def test_redis_reserves_a_key_for_one_request_until_answered_or_released(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with opened(redis_url, tmp_path) as records:
            assert await records.reserve("acme", "k-1", T0)
            assert not await records.reserve("acme", "k-1", T0)  # another node's request
            assert await records.answer("acme", "k-1", T0 - DAY) is None  # not answered yet
            assert await records.reserve("globex", "k-1", T0)
            records.release("globex", "k-1")
            first = Answer("hash-1", 202, b"first")
            done = records.remember("acme", "k-1", first, T0)
            assert done is not None
            assert await done
            assert await records.answer("acme", "k-1", T0) == first
            assert not await records.reserve("acme", "k-1", T0)  # answered: replayed
            await records.close(2.0)  # (the release written)
            assert await records.reserve("globex", "k-1", T0)

    run(main())


def test_redis_expires_answers_and_trims_an_accounts_list_to_the_retention(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with opened(redis_url, tmp_path, retention=DAY, answer_ttl=60.0) as records:
            assert isinstance(records, RedisRecords)
            done = records.remember("acme", "k-1", Answer("h", 202, b"x"), T0)
            assert done is not None
            assert await done
            assert 0 < await records.redis.pttl(records.answer_key("acme", "k-1")) <= 60_000
            await added(records, [sent(1, at=T0 - 2 * DAY), sent(2, at=T0 - DAY / 2)])
            await added(records, [sent(3, at=T0)])
            page = await records.page("acme", to=None, since=None, until=None, after=None, limit=10)
            assert [m.id for m in page] == [sent(3).id, sent(2).id]
            assert 0 < await records.redis.pttl(records.message_key(sent(3).id)) <= DAY * 1000
            assert 0 < await records.redis.pttl(records.list_key("acme")) <= DAY * 1000

    run(main())


def test_redis_reads_the_records_of_many_messages_in_one_round_trip(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with opened(redis_url, tmp_path) as records:
            assert isinstance(records, RedisRecords)
            hook = Target("http://hooks.example/cb", "order-7")
            await added(records, [sent(1, target=hook), sent(2)])
            found = await records.get_many([sent(2).id, "nobody", sent(1).id])
            assert found == [sent(2), None, sent(1, target=hook)]
            assert await records.get_many([]) == []

    run(main())


def test_redis_away_refuses_writes_and_reads_name_it(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with opened(f"redis://127.0.0.1:{port}/0", tmp_path) as records:
            done = records.add([sent(1)])
            assert done is not None
            assert not await done
            with pytest.raises(RecordsUnavailable):
                await records.get(sent(1).id)
            with pytest.raises(RecordsUnavailable):
                await records.answer("acme", "k-1", T0)
            assert isinstance(records, RedisRecords)
            with pytest.raises(RecordsUnavailable):
                await records.get_many([sent(1).id])

    run(main())
