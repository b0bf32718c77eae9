"""smsc/redis_pipeline.py's Serial on a real redis-server: calls answered in the order
queued, those queued together sent as one pipeline, a script Redis lost loaded again and
run once, Redis away failing every call of its pipeline, close sending what is queued."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis
from loops import Run
from redis.exceptions import NoScriptError, RedisError
from redis_server import redis_server, redis_url  # noqa: F401

from smsc.redis_pipeline import Serial

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SET = "return redis.call('SET', KEYS[1], ARGV[1])"


def test_calls_queued_together_go_in_one_pipeline_and_answer_in_order(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        serial = Serial(client, scripts=(INCR_BY,))
        serial.start()
        try:
            replies = [serial.call("INCR", "n") for _ in range(100)]
            scripted = serial.script(INCR_BY, ["n"], 10)
            assert all(r is not None for r in replies)
            assert [await r for r in replies if r is not None] == list(range(1, 101))
            assert scripted is not None
            assert await scripted == 110  # (its script loaded on the way)
            assert serial.pipelines <= 2  # the batch (and the script resent once loaded)
        finally:
            await serial.close(2.0)
            await client.aclose()

    run(main())


def test_a_script_redis_lost_is_loaded_again_and_runs_once(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        serial = Serial(client, scripts=(INCR_BY,))
        serial.start()
        try:
            first = serial.script(INCR_BY, ["n"], 1)
            assert first is not None
            assert await first == 1
            await client.script_flush()  # as after a restart
            again = serial.script(INCR_BY, ["n"], 1)
            assert again is not None
            assert await again == 2
        finally:
            await serial.close(2.0)
            await client.aclose()

    run(main())


def test_calls_redis_lost_the_scripts_of_never_run_after_one_queued_later(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        serial = Serial(client, scripts=(SET, INCR_BY))
        serial.start()
        try:
            warm = serial.script(SET, ["k"], "x")
            assert warm is not None
            assert await warm == b"OK"
            await client.script_flush()  # as after a restart
            # One pipeline: a script (missing: not run), then a plain command (runs).
            scripted = serial.script(SET, ["k"], "first")
            plain = serial.call("APPEND", "k", "-then")
            assert scripted is not None
            assert plain is not None
            with pytest.raises(NoScriptError):
                await scripted  # (sent again, it would overwrite what came after it)
            assert await plain == len(b"x-then")
            assert await client.get("k") == b"x-then"
            # Both queued again together, all scripts: in order, once each.
            first = serial.script(SET, ["k"], "a")
            await client.script_flush()
            second = serial.script(INCR_BY, ["n"], 5)
            assert first is not None
            assert second is not None
            assert (await first, await second) == (b"OK", 5)
            assert await client.get("k") == b"a"
        finally:
            await serial.close(2.0)
            await client.aclose()

    run(main())


def test_redis_away_fails_each_call_and_close_sends_what_is_queued(
    run: Run,
    redis_url: str,  # noqa: F811
) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        away = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        serial = Serial(away, timeout=1.0)
        serial.start()
        failed = serial.call("INCR", "n")
        assert failed is not None
        with pytest.raises(RedisError):
            await failed
        await serial.close(1.0)
        assert serial.call("INCR", "n") is None  # closed
        await away.aclose()

        client = aioredis.Redis.from_url(redis_url)
        serial = Serial(client)
        serial.start()
        queued = [serial.call("INCR", "m") for _ in range(10)]
        await serial.close(2.0)
        assert all(r is not None and r.done() for r in queued)
        assert int(await client.get("m")) == 10
        await client.aclose()

    run(main())
