"""The webhook outbox contract (smsc.outbox.Outbox): each behaviour against both backends
(``sqlite``: a node's own file; ``redis``: a real redis-server, as in a cluster), then what
only several nodes show, on Redis (two outboxes on one Redis are two nodes): an event is
handed out to one node at a time, and a dead node's events go to another once its claim's
lease has passed.

Time is a parameter (``now``): a lease passes because the ``now`` given moves past it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from loops import Run
from redis_server import redis_server, redis_url, sqlite_or_redis  # noqa: F401

from smsc.http_records import RecordsUnavailable
from smsc.outbox import Outbox, SqliteOutbox
from smsc.outbox_redis import RedisOutbox

NOW = 1_800_000_000.0
LEASE = 30.0
A = "http://a.example/hook"
B = "http://b.example/hook"

Make = Callable[..., Outbox]


@asynccontextmanager
async def outboxes(url: str | None, tmp_path: Path) -> AsyncIterator[Callable[..., Outbox]]:
    """Makes opened outboxes (on Redis: nodes of one cluster); closes them at the end."""
    async with AsyncExitStack() as stack:
        made = 0

        async def make(*, max_pending: int = 1_000, per_host: int = 32) -> Outbox:
            nonlocal made
            made += 1
            outbox: Outbox
            if url is None:
                outbox = SqliteOutbox(str(tmp_path / f"o{made}.db"), max_pending=max_pending)
            else:
                client = aioredis.Redis.from_url(url, socket_timeout=2.0)
                stack.push_async_callback(client.aclose)
                outbox = RedisOutbox(
                    client, lease=LEASE, max_pending=max_pending, per_host=per_host
                )
            await outbox.open()
            stack.push_async_callback(outbox.close, 2.0)
            return outbox

        yield make  # type: ignore[misc]


async def put(outbox: Outbox, url: str = A, account: str = "acme", at: float = NOW) -> None:
    done = outbox.put(account, url, b'{"n":1}', at)
    assert done is not None
    assert await done


def test_an_event_put_is_handed_out_posted_once_and_gone(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with outboxes(backend, tmp_path) as make:
            outbox = await make()
            await put(outbox)
            assert outbox.waiting == 1
            [event] = await outbox.due(NOW, 10, set())
            assert (event.account, event.url, event.body, event.attempts) == (
                "acme", A, b'{"n":1}', 0
            )  # fmt: skip
            assert await outbox.due(NOW, 10, {event.id}) == []
            outbox.delivered(event.id)
            assert await outbox.due(NOW + 3600, 10, set()) == []
            assert await outbox.next_due(set()) is None
            assert outbox.waiting == 0

    run(main())


def test_a_retry_waits_until_its_time_and_counts_its_attempts(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with outboxes(backend, tmp_path) as make:
            outbox = await make()
            await put(outbox)
            [event] = await outbox.due(NOW, 10, set())
            outbox.retry_at(event.id, 1, NOW + 5, "HTTP 500")
            assert await outbox.due(NOW + 1, 10, set()) == []
            assert await outbox.next_due(set()) == NOW + 5
            [again] = await outbox.due(NOW + 5, 10, set())
            assert (again.id, again.attempts, again.last_error) == (event.id, 1, "HTTP 500")

    run(main())


def test_held_back_hosts_wait_and_what_is_given_back_comes_again(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with outboxes(backend, tmp_path) as make:
            outbox = await make()
            await put(outbox, A)
            await put(outbox, B)
            [to_b] = await outbox.due(NOW, 10, set(), hosts={"a.example"})
            assert to_b.url == B
            outbox.give_back([to_b])
            handed = await outbox.due(NOW, 10, set())
            assert sorted(e.url for e in handed) == [A, B]

    run(main())


def test_dead_letters_are_listed_per_account_sent_again_and_purged(
    run: Run, backend: str | None, tmp_path: Path
) -> None:
    async def main() -> None:
        async with outboxes(backend, tmp_path) as make:
            outbox = await make()
            await put(outbox, account="acme")
            await put(outbox, account="globex")
            events = await outbox.due(NOW, 10, set())
            for event in events:
                outbox.dead(event.id, 3, "timeout")
            assert outbox.waiting == 0
            [failed] = await outbox.failures("acme", 10)
            assert (failed.account, failed.attempts, failed.last_error) == ("acme", 3, "timeout")
            assert not await outbox.revive("globex", failed.id, NOW + 10)  # not theirs
            assert await outbox.revive("acme", failed.id, NOW + 10)
            assert await outbox.failures("acme", 10) == []
            [again] = await outbox.due(NOW + 10, 10, set())
            assert (again.id, again.attempts) == (failed.id, 0)
            outbox.purge(NOW + 1)  # globex's dead letter, created at NOW
            assert await outbox.failures("globex", 10) == []
            assert not await outbox.revive("globex", events[1].id, NOW + 20)

    run(main())


def test_past_max_pending_a_put_is_refused(run: Run, backend: str | None, tmp_path: Path) -> None:
    async def main() -> None:
        async with outboxes(backend, tmp_path) as make:
            outbox = await make(max_pending=2)
            await put(outbox)
            await put(outbox)
            done = outbox.put("acme", A, b"{}", NOW)
            assert done is None or not await done

    run(main())


# --- several nodes, on Redis -----------------------------------------------------------------


def test_an_event_is_handed_to_one_node_at_a_time_and_a_dead_nodes_after_its_lease(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with outboxes(redis_url, tmp_path) as make:
            first, second = await make(), await make()
            for _ in range(4):
                await put(first)
            mine = await first.due(NOW, 2, set())
            theirs = await second.due(NOW, 10, set())
            assert len(mine) == 2
            assert len(theirs) == 2
            assert {e.id for e in mine}.isdisjoint(e.id for e in theirs)
            assert await second.due(NOW + LEASE - 1, 10, set()) == []  # first still holds
            # first dies holding its two: they go to second once the lease has passed
            taken = await second.due(NOW + LEASE + 1, 10, {e.id for e in theirs})
            assert sorted(e.id for e in taken) == sorted(e.id for e in mine)
            second.delivered(taken[0].id)
            later = await second.due(NOW + 9 * LEASE, 10, set())  # every claim lapsed
            assert sorted(e.id for e in later) == sorted(
                e.id for e in [*mine, *theirs] if e.id != taken[0].id
            )

    run(main())


def test_an_event_given_back_goes_to_another_node_at_once_unless_it_holds_it_since(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with outboxes(redis_url, tmp_path) as make:
            first, second, third = await make(), await make(), await make()
            await put(first)
            await put(first, B)
            to_a, to_b = await first.due(NOW, 10, set())
            first.give_back([to_a])  # (a stop: its POST cancelled)
            assert [e.id for e in await second.due(NOW + 1, 10, set())] == [to_a.id]
            second.delivered(to_a.id)
            # first's claim on to_b lapses; second takes it; first's late give-back of it
            # leaves second's claim alone
            [taken] = await second.due(NOW + LEASE + 1, 10, set())
            assert taken.id == to_b.id
            first.give_back([to_b])
            assert await third.due(NOW + LEASE + 2, 10, set()) == []

    run(main())


def test_dead_letters_of_one_node_are_sent_again_from_another(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with outboxes(redis_url, tmp_path) as make:
            first, second = await make(), await make()
            await put(first)
            [event] = await first.due(NOW, 10, set())
            first.dead(event.id, 5, "HTTP 404")
            assert len(await first.failures("acme", 10)) == 1  # (a read waits for it)
            assert [e.id for e in await second.failures("acme", 10)] == [event.id]
            assert await second.revive("acme", event.id, NOW + 1)
            assert [e.id for e in await first.due(NOW + 1, 10, set())] == [event.id]

    run(main())


def test_redis_away_refuses_puts_reads_nothing_and_failures_name_it(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with outboxes(f"redis://127.0.0.1:{port}/0", tmp_path) as make:
            outbox = await make()
            done = outbox.put("acme", A, b"{}", NOW)
            assert done is not None
            assert not await done
            assert await outbox.due(NOW, 10, set()) == []
            with pytest.raises(RecordsUnavailable):
                await outbox.failures("acme", 10)

    run(main())


def test_redis_hands_out_at_most_per_host_events_to_one_host_until_some_settle(
    run: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with outboxes(redis_url, tmp_path) as make:
            outbox = await make(per_host=2)
            for url in (A, A, A, B):
                await put(outbox, url)
            first = await outbox.due(NOW, 10, set())
            assert sorted(e.url for e in first) == [A, A, B]
            inflight = {e.id for e in first}
            assert await outbox.due(NOW, 10, inflight) == []  # A's host at 2
            outbox.delivered(first[0].id if first[0].url == A else first[1].id)
            [third] = await outbox.due(NOW, 10, inflight)
            assert third.url == A
            assert third.id not in inflight
            # handed out and never settled: not counted once its claim has lapsed
            later = await outbox.due(NOW + LEASE + 1, 10, set())
            assert sorted(e.url for e in later) == [A, A, B]

    run(main())
