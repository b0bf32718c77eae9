"""Waiting on the background: an event under a deadline (:func:`wait_event`), and stopping
the tasks a component owns with a deadline (:func:`stop_tasks`).

A task blocked in a Redis read (redis-py, uvloop) can lose a cancellation on the way: its
read timeout turns the CancelledError into a TimeoutError that the task's loop handles as
"Redis away" and goes on. So :func:`stop_tasks` cancels again until every task has ended,
within a deadline, and the owner's loops also check a stopping flag of their own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: Seconds between two cancellations of a task that is still running.
_AGAIN = 0.5


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], timeout: float, what: str) -> bool:
    """Cancel ``tasks`` (again every 0.5 s while one still runs) and wait for them, at most
    ``timeout`` seconds; False (logged) when one was left running."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while pending:
        left = end - loop.time()
        if left <= 0:
            log.error("%s: %d task(s) did not stop: %s", what, len(pending), pending)
            return False
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(_AGAIN, left))
    return True


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds. The caller clears it before it looks
    at what the event announces, so that nothing set since is missed."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
