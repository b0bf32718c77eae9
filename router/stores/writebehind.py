"""The write-behind core every store backend shares: writes are synchronous calls that queue
a record; ONE writer task drains the queue into batches the backend commits atomically.

``WriteBehind`` owns the queue and the writer; a backend (``router.stores.sqlite``,
``router.stores.redis``) subclasses it with how a batch is committed (``_transaction``),
which failures mean the backend cannot be written (``_why``), one step of a purge
(``_purge_step``), and the reads.

Batching. The writer gathers records for ``commit_interval`` (group commit) — unless an ack
or a read waits for them, or a batch is full — and then takes whatever is queued (up to
``batch_max``: the config's, else the backend's, 2,000 records on SQLite, 10,000 on Redis),
so the batches are large and the cost per message falls.

Durability. ``add(message, on_durable)`` calls ``on_durable(True)`` only after the batch
holding the message has COMMITTED (the backend says what commit means: a SQLite
transaction in WAL, a Redis pipeline that returned), and the server answers submit_sm then.

Read your writes. A read about something with a queued write waits until that write is
committed (``_until``), never longer — and no longer than ``read_timeout`` (``_deadline``).

Unwritable. Failures of the backend (disk full, read-only file system, I/O errors, Redis
unreachable) are not the records' fault: the writer keeps the batch and tries it again and
again, the wait doubling from 0.05 s to ``retry_max``, until it commits. Meanwhile the store
is *unwritable*: one ERROR line says why (and one line when writes resume), ``add`` and
``hold`` refuse (the layers above answer a temporary error), the adds of the batch that wait
for their commit (``ack_after: store``) are failed at once (``on_durable(False)``: the
client is answered ESME_RSYSERR and never acknowledged) and taken out of the batch, and
everything else — records already acknowledged — stays queued, in memory, until the backend
returns. Nothing is dropped; only a process that dies before then loses what was queued.

A batch that fails for any other reason (a record's fault) is logged and retried once. If it
fails again the batch is split and each record is tried on its own, so one bad record (a
duplicate id) does not fail its neighbours; a record that still fails is logged, and its
``on_durable`` is called with False. No acknowledgement is ever lost silently.

Back-pressure. The writer queue holds at most ``queue_max`` records. ``add`` refuses a message
(returns False: the server answers ESME_RMSGQFUL) when it is full, and so does ``hold``. State
changes of messages already accepted are never refused, but they count against the bound.

Costs. A write is one record (an ``Op``: a msgspec Struct the cyclic GC does not track,
~0.15 µs to build; under load the queue may hold tens of thousands) appended to a deque;
the writer takes the whole queue in one copy when it fits a batch. A record's caller that
waits for it gives an ``on_durable`` callback or an ``outcome`` future (a claim's result,
a settle's write): either makes the writer send its batch at once, and the writer settles
an outcome the backend left pending (None once written, StoreError when not).

Purge. ``purge(now)`` queues a purge job that the writer carries out a step at a time
(``_purge_step``), one step between two of its batches: a purge never stalls the writes.
:func:`run_purges` calls it every ``purge_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from router.config import StoreConfig
from router.metrics import STORE_BUCKETS, Histogram
from router.model import DeliveryReport, Message
from router.ports import DurableCallback, Store, StoreClosed, StoreError, StoreTimeout
from smppcore.constants import MessageState
from smppcore.receipt import is_final

__all__ = [
    "ADD",
    "CANCEL",
    "CLAIM",
    "FINAL",
    "HOLD",
    "RELEASE",
    "SENT",
    "SETTLE",
    "UPDATE",
    "Op",
    "Purge",
    "WriteBehind",
    "run_purges",
]

log = logging.getLogger(__name__)

DAY: Final = 86_400.0
#: Records per batch at most, unless the config or the backend says otherwise.
BATCH_MAX: Final = 2000
#: First wait before the writer tries a failed batch again (then doubling).
RETRY_MIN: Final = 0.05

# -- records queued for the writer ---------------------------------------------------------
#
# Each kind's params are a tuple in the order below (the SQLite backend binds them as they
# are; the Redis backend reads them by position):
#   ADD     (id, account, state, submitted_at, body, owner)
#   SENT    (carrier, carrier_message_id, key | None, id)
#   FINAL   (state, error, done_at | None, id)
#   UPDATE  (account, submitted_at, body, id)
#   CANCEL  (state, done_at, id)
#   HOLD    (account, expires_at, item)
#   RELEASE (held id,)
#   CLAIM   a final state as a compare-and-set with a report lease; its result goes to
#           ``Op.outcome``; the params are the backend's own record (Redis: its C record)
#   SETTLE  (id,)   the claimed final state's receipt is delivered or held: the lease goes
#           (the backend may replace them with its record once, as Redis its S record)
# (CLAIM and SETTLE are written by backends whose store nodes share: Redis.)

ADD: Final = 0
SENT: Final = 1
FINAL: Final = 2
UPDATE: Final = 3
CANCEL: Final = 4
HOLD: Final = 5
RELEASE: Final = 6
CLAIM: Final = 7
SETTLE: Final = 8


class Op(msgspec.Struct, gc=False):
    """One queued record (mutable bookkeeping of the writer, never encoded).

    Not tracked by the cyclic GC (``gc=False``): under load tens of thousands wait in the
    queue at once, and each was a live object every young collection walked. Nothing the
    queue holds makes a cycle that outlives the record: its callback and its outcome are
    dropped once it is written or failed (and a claim's waiter with them). A store must be
    closed before it is dropped: records still queued in an abandoned store could hold a
    cycle (outcome → its waiter → the store → its queue) the GC cannot see."""

    kind: int
    params: tuple[Any, ...]
    seq: int = 0
    message_id: str | None = None
    """The message this record writes (for read-your-writes in ``get``)."""
    sent_key: tuple[str, str] | None = None
    """(carrier, key) of a ``set_sent`` (for read-your-writes in ``find_sent``)."""
    on_durable: DurableCallback | None = None
    settled: bool = False
    """Failed and taken out of its batch (an ack that could not wait): not abandoned."""
    outcome: asyncio.Future[Any] | None = None
    """What the record's caller waits on: the backend puts in it what writing the record
    answered (a claim's result); else the writer settles it with the record (see
    ``_durable``: None once written, StoreError when not). Done (the caller gave up)
    before the batch is sent: the record is not written. Like ``on_durable``, it makes
    the writer send its batch at once."""


@dataclass(slots=True)
class Purge:
    """A purge the writer carries out a step at a time (``purge``)."""

    now: float
    cutoff: float
    future: asyncio.Future[int]
    held_done: bool = False
    deleted: int = 0


def _awaited(op: Op) -> bool:
    """Does someone wait for ``op``'s commit (the writer sends its batch at once)?"""
    return op.on_durable is not None or op.outcome is not None


def _waits(op: Op) -> bool:
    """A record whose caller waits for its commit and is not kept waiting while the store
    cannot write: an add whose acknowledgement does (``ack_after: store``), a claim (its
    caller waits for the result). (A settle stays queued: it is written when the store can
    write again, and its caller's wait has a deadline of its own.)"""
    return op.kind in (ADD, CLAIM) and _awaited(op)


@dataclass(order=True)
class _Waiter:
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class WriteBehind:
    """The queue, the writer task and the bookkeeping every backend shares (see the module
    docstring); a backend subclasses it with the hooks at the end of the class and the reads.

    ``clock`` gives wall-clock Unix seconds (a report without done_at, held items' expiry);
    ``node_id`` is written as the owner of every message added; ``write_error_reasons``
    are the labels of ``write_errors`` (each series exists from the start).
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        clock: Callable[[], float],
        node_id: str,
        write_error_reasons: Sequence[str],
        batch_max: int = BATCH_MAX,
    ) -> None:
        self._config = config
        #: Records per batch at most: the config's, else the backend's ``batch_max``.
        self._batch_max = batch_max if config.batch_max is None else config.batch_max
        self._clock = clock
        self._node_id = node_id
        #: Open (set by the backend's ``open``, cleared by its ``close``).
        self._open = False
        self._writer: asyncio.Task[None] | None = None
        self._queue: deque[Op] = deque()
        self._inflight: list[Op] = []  # the batch being written
        self._wake = asyncio.Event()
        #: Ends the group-commit wait early: a batch is full, an ack or a read waits.
        self._hurry = asyncio.Event()
        self._durable_queued = 0  # queued records whose add waits for its commit (ack)
        self._closing = False
        self._seq = itertools.count(1)
        self._queued_seq = 0  # last seq queued
        self._done_seq = 0  # last seq committed or failed
        self._waiters: list[_Waiter] = []
        self._pending_ids: dict[str, int] = {}  # message id → seq of its last queued write
        self._pending_sent: dict[tuple[str, str], tuple[str, int]] = {}
        self._held_seq = 0  # seq of the last queued hold/release
        self._purges: deque[Purge] = deque()
        #: Why the backend cannot be written now ("disk_full", ...); None: it can.
        self._unwritable: str | None = None
        self._unwritable_since = 0.0
        self._error_logged_at = -3600.0
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Message).decode
        self.transactions = 0
        """Batches committed by the writer (observability; tests count batches with it)."""
        self.failed = 0
        """Records the writer could not store (each logged)."""
        self.dropped_held = 0
        """Held deliveries dropped by the per-account bound (logged when an account starts
        and stops dropping)."""
        self._dropping: set[str] = set()  # accounts whose last holds dropped the oldest
        self.records = 0
        """Records committed by the writer (with ``transactions``: the batch size)."""
        self.commit_seconds = Histogram(STORE_BUCKETS)
        """Seconds per writer batch, sent to committed (observability)."""
        self.write_errors: dict[str, int] = dict.fromkeys(write_error_reasons, 0)
        """Batches that failed because the backend could not be written, by reason."""
        self.refused_adds = 0
        """Messages ``add`` refused (queue full, or the backend cannot be written)."""
        self.refused_holds = 0
        """Deliveries ``hold`` refused (likewise)."""
        self.read_timeouts = 0
        """Reads (and flushes) that gave up after ``read_timeout``."""
        self.purged_messages = 0
        """Final messages deleted by ``purge`` (older than ``keep_days``)."""
        self.expired_held = 0
        """Held deliveries deleted by ``purge`` past their expiry, never delivered."""
        self.message_rows = 0
        """Messages stored (counted at open where the backend can, kept by the writer)."""
        self.held_rows = 0
        """Held deliveries stored (likewise)."""

    @property
    def node_id(self) -> str:
        """The owner written into every message this store adds."""
        return self._node_id

    def _start_writer(self) -> None:
        """The backend is open: start taking writes (called at the end of ``open``)."""
        self._open = True
        self._closing = False
        self._unwritable = None
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _stop_writer(self, timeout: float | None) -> bool:
        """Write what is queued and stop the writer (``close``); after ``timeout`` seconds
        (None: no limit) it is cancelled and what it still holds is failed and logged.
        Pending purges fail. True when the writer hung (the backend's connections then get
        little time to close)."""
        self._closing = True
        self._wake.set()
        self._hurry.set()
        hung = False
        try:
            if self._writer is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._writer)
                except TimeoutError:
                    hung = True
                    log.error("store: not committed within %.1f s of closing; giving up", timeout)
                    self._writer.cancel()
                    await asyncio.gather(self._writer, return_exceptions=True)
        finally:
            self._writer = None
            self._open = False
            for purge in self._purges:
                if not purge.future.done():
                    purge.future.set_exception(StoreClosed("store closed"))
            self._purges.clear()
        return hung

    # -- what a backend provides ---------------------------------------------------------------

    async def _transaction(self, ops: list[Op], *, probe: bool = False) -> None:
        """Write ``ops`` atomically (all or nothing); raise on failure. ``probe``: write a
        token as well (``ops`` may be empty: does the backend take writes again?). Updates
        ``transactions``, ``records`` and ``commit_seconds``."""
        raise NotImplementedError

    def _why(self, exc: Exception) -> str | None:
        """Why ``exc`` says the backend cannot be written now (a reason word, a key of
        ``write_errors``), or None when it is a record's fault."""
        raise NotImplementedError

    async def _purge_step(self) -> None:
        """One step of the oldest purge (``self._purges[0]``): settle its future when done."""
        raise NotImplementedError

    def _failed_in_flight(self, adds: list[Op]) -> None:
        """``adds`` were failed (their clients refused) after an attempt to write them that
        may have reached the backend (a commit whose answer was lost). Nothing to do for a
        backend whose failed commit writes nothing (SQLite)."""

    # -- state -------------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        async with self._deadline("flush", timeout):
            await self._until(self._queued_seq)

    @property
    def is_open(self) -> bool:
        """Open and not closing (readiness)."""
        return self._open and not self._closing

    @property
    def queued(self) -> int:
        """Records waiting for the writer (a hot gauge)."""
        return len(self._queue)

    @property
    def unwritable(self) -> str | None:
        """Why the database cannot be written now (a reason word, as in
        ``write_errors``); None while it can. Adds and holds are refused meanwhile."""
        return self._unwritable

    # -- writes (queued) -----------------------------------------------------------------------

    def add(self, message: Message, on_durable: DurableCallback | None = None) -> bool:
        if not self._open or self._closing:
            return False
        if self._unwritable is not None or len(self._queue) >= self._config.queue_max:
            self.refused_adds += 1
            return False
        params = (
            message.id,
            message.account,
            int(MessageState.ENROUTE),
            message.submitted_at,
            self._encode(message),
            self._node_id,
        )
        self._put(Op(ADD, params, message_id=message.id, on_durable=on_durable))
        return True

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None:
        key = carrier_message_id if key is None else key
        op = Op(
            SENT,
            (carrier, carrier_message_id, key, message_id),
            message_id=message_id,
            sent_key=(carrier, key),
        )
        self._put(op)
        self._pending_sent[(carrier, key)] = (message_id, op.seq)

    def set_sending(
        self, message_id: str, carrier: str, on_durable: DurableCallback | None = None
    ) -> None:
        # A send without the carrier's id (and no correlation key: nothing matches it).
        params = (carrier, "", None, message_id)
        self._put(Op(SENT, params, message_id=message_id, on_durable=on_durable))

    def set_final(
        self,
        message_id: str,
        report: DeliveryReport,
        on_durable: DurableCallback | None = None,
    ) -> None:
        done_at: float | None = None
        if is_final(report.state):
            done_at = report.done_at if report.done_at > 0 else self._clock()
        params = (int(report.state), report.error, done_at, message_id)
        self._put(Op(FINAL, params, message_id=message_id, on_durable=on_durable))

    def update_message(self, message: Message) -> None:
        params = (message.account, message.submitted_at, self._encode(message), message.id)
        self._put(Op(UPDATE, params, message_id=message.id))

    def mark_cancelled(self, message_id: str, done_at: float) -> None:
        params = (int(MessageState.DELETED), done_at, message_id)
        self._put(Op(CANCEL, params, message_id=message_id))

    def hold(
        self,
        account: str,
        item: bytes,
        expires_at: float,
        on_durable: DurableCallback | None = None,
    ) -> bool:
        if (
            self._open
            and not self._closing
            and (self._unwritable is not None or len(self._queue) >= self._config.queue_max)
        ):
            self.refused_holds += 1
            return False
        self._put(Op(HOLD, (account, expires_at, item), on_durable=on_durable))
        self._held_seq = self._queued_seq
        return True

    def release(self, ids: Sequence[int]) -> None:
        for held_id in ids:
            self._put(Op(RELEASE, (held_id,)))
        if ids:
            self._held_seq = self._queued_seq

    def _put(self, op: Op, *, hurry: bool = False) -> None:
        """Queue ``op``; the writer sends its batch at once if someone waits for it (its
        ``on_durable`` or ``outcome``, or ``hurry``: a backend that answers a group of
        records with one future of its own, see RedisStore.settle_final)."""
        if not self._open or self._closing:
            raise StoreClosed("store is not open")
        op.seq = self._queued_seq = next(self._seq)
        if op.message_id is not None:
            self._pending_ids[op.message_id] = op.seq
        self._queue.append(op)
        self._wake.set()
        if hurry or op.on_durable is not None or op.outcome is not None:
            self._durable_queued += 1  # (a hurried record: until the queue is taken whole)
            self._hurry.set()
        elif len(self._queue) >= self._batch_max:
            self._hurry.set()

    async def purge(self, now: float) -> int:
        """Carried out by the writer, ``purge_batch`` rows per transaction, one such
        transaction between two of its batches (see _purge_step): the writes are never
        held up for long. Expired held items first, then old final messages."""
        if self._writer is None or self._writer.done() or self._closing:
            raise StoreClosed("store writer is not running")
        job = Purge(
            now=now,
            cutoff=now - self._config.keep_days * DAY,
            future=asyncio.get_running_loop().create_future(),
        )
        self._purges.append(job)
        self._wake.set()
        return await job.future

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound a read by ``timeout`` (None: ``read_timeout``); StoreTimeout past it."""
        limit = self._config.read_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:
            if isinstance(exc, StoreTimeout):
                raise
            self.read_timeouts += 1
            why = f" (cannot write: {self._unwritable})" if self._unwritable else ""
            raise StoreTimeout(f"store: {what} took more than {limit:g} s{why}") from None

    async def _until(self, seq: int) -> None:
        """Wait until every record up to ``seq`` is committed (or failed). No deadline of
        its own: callers bound it (``_deadline``)."""
        if seq <= self._done_seq:
            return
        if self._writer is None or self._writer.done():
            raise StoreClosed("store writer is not running")
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(seq, future))
        self._hurry.set()
        await future

    # -- the writer ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    if self._purges:
                        await self._purge_step()
                        continue
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._config.commit_interval > 0 and not self._urgent():
                    # Group commit: gather records for a while, unless someone waits.
                    self._hurry.clear()
                    try:
                        async with asyncio.timeout(self._config.commit_interval):
                            await self._hurry.wait()
                    except TimeoutError:
                        pass
                batch = self._inflight = self._take()
                await self._write_batch(list(batch))
                self._inflight = []
                self._finish(batch)
                if self._purges and not self._closing:
                    await self._purge_step()  # one purge transaction between two batches
        except asyncio.CancelledError:
            self._abandon(RuntimeError("store writer cancelled"))
            raise
        except BaseException as exc:  # a bug: fail everything instead of hanging callers
            log.exception("store writer stopped")
            self._abandon(exc)
            raise

    def _take(self) -> list[Op]:
        """The next batch: the whole queue (the common case: one copy, and no record left
        that waits for its commit), or its first ``batch_max`` records."""
        queue = self._queue
        if len(queue) <= self._batch_max:
            batch = list(queue)
            queue.clear()
            self._durable_queued = 0
            return batch
        batch = [queue.popleft() for _ in range(self._batch_max)]
        if self._durable_queued:
            self._durable_queued -= sum(map(_awaited, batch))
        return batch

    def _urgent(self) -> bool:
        """Write now, without the group-commit wait: an ack (``ack_after: store``) or a
        read (read your writes, flush) waits for queued records, a batch is full, or the
        store is closing."""
        return bool(
            self._durable_queued
            or self._waiters
            or self._closing
            or len(self._queue) >= self._batch_max
        )

    async def _write_batch(self, batch: list[Op]) -> None:
        """Commit ``batch`` (see _commit for a database that cannot be written); a batch
        that fails by a record's fault is tried once more, then record by record."""
        for attempt in (1, 2):
            exc = await self._commit(batch)
            if exc is None:
                self._durable(batch, ok=True)
                return
            log.warning(
                "store: transaction of %d records failed (attempt %d): %s",
                len(batch),
                attempt,
                exc,
            )
        # Still failing: one transaction per record, so only the bad ones fail.
        for op in batch:
            one = [op]
            exc = await self._commit(one)
            if not one:  # refused while the database could not be written (failed there)
                continue
            if exc is not None:
                self.failed += 1
                log.error(
                    "store: record lost (kind %d, message %s): %s", op.kind, op.message_id, exc
                )
                self._durable([op], ok=False)
            else:
                self._durable([op], ok=True)

    async def _commit(self, batch: list[Op]) -> Exception | None:
        """Write ``batch`` in one transaction: None once committed, or the error of a
        failure that is the records' fault (a constraint, a value SQLite cannot bind).

        While the database cannot be written (disk full, read-only, I/O error, locked) the
        batch is kept and tried again, the wait doubling from RETRY_MIN to ``retry_max``,
        as long as it takes (``close`` has the deadline). The adds in it that wait for
        their commit to be acknowledged (``ack_after: store``) are failed at once and taken
        out (edited in place): their clients are answered ESME_RSYSERR, not kept waiting,
        and those messages are not written later either. An emptied batch is replaced by a
        probe write, so the store finds out by itself when it can write again."""
        delay = RETRY_MIN
        while True:
            try:
                await self._transaction(batch, probe=not batch)
            except Exception as exc:  # sqlite3.Error, or a value SQLite cannot bind
                reason = self._why(exc)
                if reason is None:
                    return exc
                self._cannot_write(reason, exc, len(batch))
                self._fail_waiting_adds(batch)
                await asyncio.sleep(delay)  # a backoff, not a wait for an event
                delay = min(delay * 2, self._config.retry_max)
            else:
                if self._unwritable is not None:
                    self._can_write()
                return None

    def _fail_waiting_adds(self, batch: list[Op]) -> None:
        """The database cannot be written: the adds whose clients wait for their commit
        (``ack_after: store``), in ``batch`` and still queued behind it, are failed now
        (their clients are answered ESME_RSYSERR) and taken out: none is written later.
        So are claims (their callers get StoreError, like a read's, and the carrier is
        asked to send the receipt again; one that reached the backend all the same leaves
        a report lease that lapses) and settles (the lease lapses instead)."""
        waiting = [op for op in batch if _waits(op)]
        if waiting:
            batch[:] = [op for op in batch if not _waits(op)]
            adds = [op for op in waiting if op.kind == ADD]
            if adds:
                self._failed_in_flight(adds)
        queued = [op for op in self._queue if _waits(op)]
        if queued:
            self._queue = deque(op for op in self._queue if not _waits(op))
            self._durable_queued -= len(queued)
            for op in queued:
                mid = op.message_id
                if mid is not None and self._pending_ids.get(mid) == op.seq:
                    del self._pending_ids[mid]
        waiting += queued
        if waiting:
            for op in waiting:
                op.settled = True
            self.failed += len(waiting)
            self._durable(waiting, ok=False)

    def _cannot_write(self, reason: str, exc: Exception, records: int) -> None:
        self.write_errors[reason] = self.write_errors.get(reason, 0) + 1
        if self._unwritable is not None:
            self._unwritable = reason
            return
        self._unwritable = reason
        now = time.monotonic()
        self._unwritable_since = now
        # One ERROR line when writes stop — not one per record, nor one per retry; at
        # most one a minute while the database comes and goes.
        level = logging.ERROR if now - self._error_logged_at >= 60.0 else logging.DEBUG
        if level == logging.ERROR:
            self._error_logged_at = now
        log.log(
            level,
            "store: the database cannot be written (%s: %s); new submits and held deliveries"
            " are refused until it can; %d records already accepted are kept in memory and"
            " tried again",
            reason,
            exc,
            records + len(self._queue),
        )

    def _can_write(self) -> None:
        log.warning(
            "store: the database can be written again (after %.1f s, %s); %d records queued",
            time.monotonic() - self._unwritable_since,
            self._unwritable,
            len(self._queue),
        )
        self._unwritable = None

    def _durable(self, ops: Iterable[Op], *, ok: bool) -> None:
        """Call each record's ``on_durable`` — once: it is cleared — and settle its
        ``outcome`` if the backend has not: None once written; StoreError when it was not
        written, or is a claim the backend gave no answer for (never a hang)."""
        for op in ops:
            callback = op.on_durable
            if callback is not None:
                op.on_durable = None
                try:
                    callback(ok)
                except Exception:
                    log.exception("store: on_durable callback failed")
            outcome = op.outcome
            if outcome is None:
                continue
            op.outcome = None
            if not outcome.done():
                if not ok:
                    why = f" (cannot write: {self._unwritable})" if self._unwritable else ""
                    outcome.set_exception(StoreError(f"store: record not written{why}"))
                elif op.kind == CLAIM:
                    outcome.set_exception(StoreError("store: claim_final: no answer"))
                else:
                    outcome.set_result(None)

    def _finish(self, batch: list[Op]) -> None:
        """Forget read-your-writes marks of these records; wake waiters they satisfy."""
        for op in batch:
            if op.message_id is not None and self._pending_ids.get(op.message_id) == op.seq:
                del self._pending_ids[op.message_id]
            if op.sent_key is not None:
                pending = self._pending_sent.get(op.sent_key)
                if pending is not None and pending[1] == op.seq:
                    del self._pending_sent[op.sent_key]
        self._done_seq = batch[-1].seq
        while self._waiters and self._waiters[0].seq <= self._done_seq:
            future = heapq.heappop(self._waiters).future
            if not future.done():
                future.set_result(None)

    def _abandon(self, exc: BaseException) -> None:
        """The writer is gone: fail what it will never write, and everyone waiting."""
        abandoned = [op for op in self._inflight if not op.settled] + list(self._queue)
        self._inflight = []
        self._queue.clear()
        self._durable_queued = 0
        self.failed += len(abandoned)
        if abandoned:
            log.error("store: %d queued records abandoned", len(abandoned))
        self._durable(abandoned, ok=False)
        self._closing = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(StoreClosed(f"store writer stopped: {exc!r}"))
        self._waiters.clear()


async def run_purges(store: Store, interval: float, clock: Callable[[], float]) -> None:
    """Purge ``store`` now and then every ``interval`` seconds, until cancelled: a task of
    whoever owns the store's lifetime (``smsc/app.py`` cancels it before closing the store).
    ``clock`` gives wall-clock Unix seconds. A purge that fails is logged; the next one
    tries again."""
    while True:
        try:
            deleted = await store.purge(clock())
        except StoreError as exc:
            log.warning("store: purge failed: %s", exc)
        else:
            if deleted:
                log.info("store: purged %d rows (old final messages, expired held items)", deleted)
        await asyncio.sleep(interval)  # a schedule, not a wait for an event
