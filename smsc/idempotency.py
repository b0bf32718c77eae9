"""The ``Idempotency-Key`` of the HTTP API's sends: a request answered once is replayed
(the same body), refused with another body (:class:`KeyReused`), and while it is being
answered another with the same key is told so (:class:`KeyInUse`). The answers are kept
in the API's records (smsc/http_records.py); in a cluster a key is first reserved there
(every node sees it), so the same key sent to two nodes at once sends once.

When the answer cannot be written (Redis backed up or away) the key must still send once:

- nothing was sent (a 4xx answer; a 5xx or 429 is never remembered): the reservation is
  released (a request with the key again is answered again); a release that cannot be
  written is written again the same way as an answer (below), else the key would answer
  409 until the reservation lapses;
- something was sent (2xx): the reservation is kept (the other nodes answer 409), this node
  replays the answer from memory, and the answer is written again every ``retry_every``
  seconds until it is, as long as the reservation holds (``hold``: it lapses then, and a
  request after that could send again: logged).

Bounded: at most ``limit`` answers wait to be written (past it, the oldest is given up)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from smsc.http_records import Answer, HttpRecords, RecordsUnavailable
from smsc.tasks import stop_tasks, wait_event

log = logging.getLogger(__name__)

#: An answer: status, body, headers.
Reply = tuple[int, bytes, dict[str, str]]
#: Answers waiting to be written again, at most.
LIMIT = 10_000
REPLAYED = {"Idempotent-Replayed": "true"}


class KeyInUse(Exception):
    """A request with this key is being answered (here, or on another node)."""


class KeyReused(Exception):
    """This key answered a request with another body."""


class Idempotency:
    """``await send(account, key, body, answer)``; ``await stop(timeout)``."""

    def __init__(
        self,
        records: HttpRecords,
        *,
        ttl: float,
        hold: float,
        wall: Callable[[], float],
        retry_every: float = 1.0,
        limit: int = LIMIT,
        timeout: float = 5.0,
    ) -> None:
        self.records = records
        self.ttl = ttl
        self.hold = hold
        self.wall = wall
        self.retry_every = retry_every
        self.limit = limit
        #: How long a read of the records, or the write of an answer, may take.
        self.timeout = timeout
        #: (account, key) of requests being answered here now.
        self._busy: set[tuple[str, str]] = set()
        #: Answers of sends not written yet (in a cluster), and when they were given.
        #: (None: the reservation's release.)
        self._unwritten: OrderedDict[tuple[str, str], tuple[Answer | None, float]] = OrderedDict()
        self._stopped = False
        self._wake = asyncio.Event()
        #: Set when no answer waits to be written.
        self._written = asyncio.Event()
        self._written.set()
        self._writer: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        """Answers of sends waiting to be written again."""
        return len(self._unwritten)

    async def send(
        self, account: str, key: str, body: bytes, answer: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """The answer to a request with ``key`` and ``body``: ``answer()`` once, or the
        one remembered (headers: Idempotent-Replayed). KeyInUse, KeyReused,
        RecordsUnavailable (a read of the records)."""
        digest = hashlib.sha256(body).hexdigest()
        now = self.wall()
        mark = (account, key)
        if mark in self._busy:
            raise KeyInUse("a request with this Idempotency-Key is being answered")
        self._busy.add(mark)
        try:
            known = self._remembered(mark, now)
            if known is None:
                try:
                    async with asyncio.timeout(self.timeout):
                        known = await self.records.answer(account, key, now - self.ttl)
                except TimeoutError:
                    raise RecordsUnavailable(
                        f"the Idempotency-Key answers were not read within {self.timeout:g} s"
                    ) from None
            if known is not None:
                if known.body_hash != digest:
                    raise KeyReused("this Idempotency-Key was used with another body")
                return known.status, known.response, dict(REPLAYED)
            shared = self.records.shared
            if shared and not await self.records.reserve(account, key, now):
                raise KeyInUse(
                    "a request with this Idempotency-Key is being answered (or just was)"
                )
            try:
                status, response, headers = await answer()
            except BaseException:
                if shared:
                    self._release(mark, now)
                raise
            if status >= 500 or status == 429:  # a temporary refusal is not remembered
                if shared:
                    await self._release(mark, now)
            else:
                given = Answer(digest, status, response)
                done = self.records.remember(account, key, given, now)
                written = False
                if done is not None:
                    # Sent already: the answer goes back whatever becomes of its write.
                    try:
                        async with asyncio.timeout(self.timeout):
                            written = await asyncio.shield(done)  # (its writer sets it)
                    except TimeoutError:
                        log.warning("Idempotency-Key answer not written within %g s", self.timeout)
                if not written and shared:
                    self._not_written(mark, given, now)
            return status, response, headers
        finally:
            self._busy.discard(mark)

    def _remembered(self, mark: tuple[str, str], now: float) -> Answer | None:
        kept = self._unwritten.get(mark)
        if kept is None or kept[1] < now - self.ttl:
            return None
        return kept[0]

    def _release(self, mark: tuple[str, str], now: float) -> asyncio.Future[None]:
        """Release ``mark``'s reservation; written again later when it cannot be now. The
        future: done once the release's outcome is known (within two pipelines' time)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done = self.records.release(*mark)

        def outcome(done: asyncio.Future[bool] | None) -> None:
            if done is None or done.cancelled() or not done.result():
                self._again(mark, None, now)
            if not ended.done():
                ended.set_result(None)

        if done is None:
            outcome(None)
        else:
            done.add_done_callback(outcome)
        return ended

    def _not_written(self, mark: tuple[str, str], given: Answer, now: float) -> None:
        if given.status >= 300:  # nothing was sent: asked again, answered again
            self._release(mark, now)
            return
        log.warning("idempotency: the answer to a key not written: written again")
        self._again(mark, given, now)

    def _again(self, mark: tuple[str, str], given: Answer | None, now: float) -> None:
        """Write ``given`` (None: the release) of ``mark`` again, until it is written."""
        if self._stopped:
            log.error("idempotency: a key's answer or release not written at the stop")
            return
        self._unwritten[mark] = (given, now)
        self._written.clear()
        if len(self._unwritten) > self.limit:
            self._unwritten.popitem(last=False)
            log.error("idempotency: %d answers not written: one given up", self.limit)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_again(), name="idempotency")
        self._wake.set()

    async def _write_again(self) -> None:
        while True:
            await wait_event(self._wake, self.retry_every)
            self._wake.clear()
            now = self.wall()
            pending: list[tuple[tuple[str, str], asyncio.Future[bool]]] = []
            for mark, (given, at) in list(self._unwritten.items()):
                if at + self.hold <= now:  # (the reservation lapsed: nothing to release)
                    del self._unwritten[mark]
                    if given is not None:
                        log.error(
                            "idempotency: an answer not written before its key's reservation "
                            "lapsed: a request with that key again would send again"
                        )
                    continue
                if given is None:
                    done = self.records.release(*mark)
                else:
                    done = self.records.remember(*mark, given, at)
                if done is not None:
                    pending.append((mark, done))
            for mark, done in pending:
                if await done:
                    self._unwritten.pop(mark, None)
            if not self._unwritten and not self._written.is_set():
                log.warning("idempotency: the answers not written are written")
                self._written.set()

    async def stop(self, timeout: float) -> None:
        """Let the answers (and releases) not written be written (at most ``timeout``),
        then stop."""
        self._stopped = True
        if self._writer is not None:
            await wait_event(self._written, timeout)
            await stop_tasks([self._writer], timeout, "idempotency")
            self._writer = None
