"""Calls to Redis in order, a pipeline at a time (group commit): the calls queued while
one pipeline is on its way go together in the next, one round trip for the lot, and each
call sees every call queued before it (one pipeline in flight, on one connection, at a
time). For the many small writes of the HTTP API's records and the webhook outbox in a
cluster: a Redis call costs a round trip and ~50 µs of Python; a batch of them, one.

Scripts are called by their SHA (``EVALSHA``); when a call finds its script missing (Redis
restarted) the scripts are loaded and, when none of the calls from that one on ran (each
found its script missing), those calls are sent again in order; when one after it ran (a
plain command), the calls that did not run fail (NoScriptError) rather than run after
it: calls never apply out of the order they were queued in. Bounded: past ``limit`` queued
calls :meth:`Serial.call` refuses (None). Each pipeline has ``timeout`` seconds; when it
fails, every call in it fails (its future raises) — a call may have run or not."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from smsc.tasks import stop_tasks, wait_event

log = logging.getLogger(__name__)

FAILURES = (RedisError, OSError, TimeoutError)
#: Calls in one pipeline, at most.
BATCH = 1_000


@functools.cache
def sha(script: str) -> str:
    """The SHA1 Redis names ``script`` by (once per script: a few module constants)."""
    return hashlib.sha1(script.encode()).hexdigest()


class Serial:
    """``start()``; ``call(*command)`` → Future of its reply; ``await close(timeout)``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        scripts: tuple[str, ...] = (),
        timeout: float = 2.0,
        limit: int = 100_000,
    ) -> None:
        self.redis = client
        self.timeout = timeout
        self.limit = limit
        self._scripts = {sha(s): s for s in scripts}
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Pipelines sent (one round trip each).
        self.pipelines = 0
        #: Set when the queue is empty and nothing is on its way.
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def room(self) -> int:
        """Calls :meth:`call` takes now (0: closing, or not started)."""
        if self._closing or self._task is None:
            return 0
        return self.limit - len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-serial")

    def call(self, *command: Any) -> asyncio.Future[Any] | None:
        """Queue ``command`` (``EVALSHA`` with :func:`sha` of one of ``scripts`` for a
        script); None: refused (``limit`` calls queued, or closing)."""
        if len(self._queue) >= self.limit or self._closing or self._task is None:
            return None
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, done))
        self._idle.clear()
        self._wake.set()
        return done

    def script(self, script: str, keys: list[str], *args: Any) -> asyncio.Future[Any] | None:
        return self.call("EVALSHA", sha(script), len(keys), *keys, *args)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self._queue:
                self._idle.set()
                await wait_event(self._wake, 5.0)
                continue
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            await self._send(batch)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._pipeline([command for command, _ in batch])
                first = next(
                    (i for i, r in enumerate(replies) if isinstance(r, NoScriptError)), None
                )
                if first is not None:  # Redis lost its scripts (restarted)
                    for source in self._scripts.values():
                        await self.redis.script_load(source)
                    if all(isinstance(r, NoScriptError) for r in replies[first:]):
                        # None of the calls from there on ran: sent again, in order.
                        replies[first:] = await self._pipeline(
                            [command for command, _ in batch[first:]]
                        )
                    # Else a call after one that did not run ran: those that did not run
                    # fail (sent again now, they would run after it: out of order).
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # Redis away (FAILURES), or a bug: the batch fails
            if not isinstance(exc, FAILURES):
                log.exception("redis: a pipeline failed")
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, RedisError) else RedisError(exc))
            return
        for (_, done), reply in zip(batch, replies, strict=True):
            if done.done():
                continue
            if isinstance(reply, Exception):
                done.set_exception(reply)
            else:
                done.set_result(reply)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.pipelines += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def close(self, timeout: float) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop; what is left
        fails (cancelled)."""
        self._closing = True
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("redis: %d calls not sent before the deadline", len(self._queue))
        await stop_tasks([self._task], timeout, "redis-serial")
        self._task = None
        for _, done in self._queue:
            done.cancel()
        self._queue = []
