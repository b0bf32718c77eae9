"""This node's side of the signals between nodes (``router.ports.Signals``): what one node
asks of the others through Redis, beyond what the shared store and coordinator hold.

- Held deliveries: a receipt or MO held for an account that has no receive-capable bind
  on this node is announced (once per account and batch of holds, after the hold is
  committed) to every node; the nodes that have one of the account's receivers start a
  drain (``Delivery.woken``). The store's claims keep two nodes from sending the same
  held item. A node that misses a signal (Redis away a moment) still drains at its next
  ``sweep`` (every ``sweep_interval`` seconds, each account it has a receiver of).
- cancel_sm and replace_sm of a message queued on another node: asked of that node (the
  message's owner in the store), which alone knows whether it is still in its queue; it
  answers. No answer within ``timeout`` seconds: StoreError (the client is answered
  ESME_RSYSERR and may ask again).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

import msgspec

from router.model import Message
from router.ports import ClusterUnavailable, Intake, Signal, Signals, StoreError
from smsc.tasks import stop_tasks

log = logging.getLogger(__name__)

#: Seconds one read of signals blocks at most (then reads again).
_POLL = 1.0
#: Seconds to wait after Redis did not answer before reading again.
_PAUSE = 0.5
#: Seconds stop() waits for the node's signal tasks to end.
_STOP_DEADLINE = 10.0
#: Questions (cancel, replace) waiting for their answer, at most.
_MAX_ASKING = 10_000

_encode_message = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(Message).decode


class Peers:
    """Sends and follows signals; owns its tasks (:meth:`start`, :meth:`stop`).

    ``woken(account)``: another node held deliveries for ``account``. ``sweep()``: start
    a drain for every account with a receiver here (a signal may have been missed).
    ``flush()``: commit the store's queued writes (a cancel or replace done for another
    node is committed before it is answered)."""

    def __init__(
        self,
        signals: Signals,
        *,
        intake: Intake,
        woken: Callable[[str], None],
        sweep: Callable[[], None],
        sweep_interval: float,
        timeout: float,
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.signals = signals
        self.intake = intake
        self._woken = woken
        self._sweep = sweep
        self.sweep_interval = sweep_interval
        self.timeout = timeout
        self._flush = flush
        self._to_wake: dict[str, None] = {}
        self._waking: asyncio.Task[None] | None = None
        self._asking: dict[str, asyncio.Future[bool]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by stop(): the loops end even if a cancellation is lost in a Redis read.
        self._stopping = False
        #: Signals sent and received, by kind (metrics, tests).
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}

    @property
    def node_id(self) -> str:
        return self.signals.node_id

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._following(), name="peers-signals"),
            asyncio.create_task(self._sweeping(), name="peers-sweep"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks, *([self._waking] if self._waking else [])]
        await stop_tasks(tasks, _STOP_DEADLINE, "peers")
        self._tasks = []
        for future in self._asking.values():
            if not future.done():  # the SMPP handler awaiting it answers ESME_RSYSERR
                future.set_exception(StoreError("this node is stopping"))
        await self.signals.close()

    # --- held deliveries ----------------------------------------------------------------

    def held(self, account: str) -> None:
        """Deliveries for ``account`` are held (committed) and it has no receiver here:
        tell the other nodes (once for all the accounts held since the last send). Not
        once stopping: the other nodes' sweeps find them (and the client is closed)."""
        if self._stopping:
            return
        self._to_wake[account] = None
        if self._waking is None or self._waking.done():
            self._waking = asyncio.create_task(self._wake(), name="peers-wake")

    async def _wake(self) -> None:
        while self._to_wake:
            accounts, self._to_wake = list(self._to_wake), {}
            try:
                await self._send(
                    [Signal(kind="held", origin=self.node_id, account=a) for a in accounts]
                )
            except ClusterUnavailable as exc:
                # The items stay held: the other nodes' sweeps find them.
                log.warning("cluster: held deliveries not announced: %s", exc)
                return

    async def _sweeping(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.sweep_interval)
            try:
                self._sweep()
            except Exception:  # a bug must not end the sweeps
                log.exception("cluster: sweep of held deliveries failed")

    # --- cancel and replace on the owner ------------------------------------------------

    async def cancel(self, owner: str, message_id: str) -> bool:
        """Ask ``owner`` to cancel ``message_id`` (True: it was in its queue, and is
        DELETED now). StoreError when it does not answer in time."""
        return await self._ask(Signal(kind="cancel", origin=self.node_id, to=owner,
                                      message_id=message_id))  # fmt: skip

    async def replace(self, owner: str, message: Message) -> bool:
        """Ask ``owner`` to replace its queued ``message`` (same id) with this version."""
        return await self._ask(
            Signal(kind="replace", origin=self.node_id, to=owner, message_id=message.id,
                   body=_encode_message(message))
        )  # fmt: skip

    async def _ask(self, question: Signal) -> bool:
        if self._stopping:
            raise StoreError("this node is stopping")
        if len(self._asking) >= _MAX_ASKING:
            raise StoreError("too many questions to other nodes waiting")
        token = secrets.token_hex(8)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asking[token] = future
        try:
            await self._send([msgspec.structs.replace(question, token=token)])
            async with asyncio.timeout(self.timeout):
                return await future
        except ClusterUnavailable as exc:
            raise StoreError(f"node {question.to} not asked: {exc}") from exc
        except TimeoutError as exc:
            raise StoreError(f"node {question.to} did not answer in {self.timeout:g}s") from exc
        finally:
            self._asking.pop(token, None)

    # --- following ----------------------------------------------------------------------

    async def _send(self, signals: list[Signal]) -> None:
        await self.signals.send(signals)
        for signal in signals:
            self.sent[signal.kind] = self.sent.get(signal.kind, 0) + 1

    async def _following(self) -> None:
        while not self._stopping:
            try:
                got = await self.signals.next(_POLL)
            except ClusterUnavailable as exc:
                log.debug("cluster: signals not read: %s", exc)
                await asyncio.sleep(_PAUSE)
                continue
            answers: list[Signal] = []
            for signal in got:
                self.received[signal.kind] = self.received.get(signal.kind, 0) + 1
                try:
                    answer = self._on(signal)
                except Exception:
                    log.exception("cluster: signal %s from node %s failed", signal.kind,
                                  signal.origin)  # fmt: skip
                    continue
                if answer is not None:
                    answers.append(answer)
            if answers:
                if any(a.ok for a in answers):
                    # What the asking node reads next (query_sm) sees the change.
                    try:
                        await self._flush()
                    except StoreError as exc:
                        log.warning("cluster: cancel/replace not committed yet: %s", exc)
                try:
                    await self._send(answers)
                except ClusterUnavailable as exc:  # the asking node times out
                    log.warning("cluster: answers to other nodes not sent: %s", exc)

    def _on(self, signal: Signal) -> Signal | None:
        kind = signal.kind
        if kind == "held":
            self._woken(signal.account)
            return None
        if kind == "answer":
            future = self._asking.get(signal.token)
            if future is not None and not future.done():
                future.set_result(signal.ok)
            return None
        if kind == "cancel":
            ok = self.intake.cancel(signal.message_id)
        elif kind == "replace":
            try:
                message = _decode_message(signal.body)
            except msgspec.DecodeError:
                log.warning("cluster: unreadable replace from node %s", signal.origin)
                ok = False
            else:
                ok = message.id == signal.message_id and self.intake.replace(message)
        else:
            return None  # a kind a newer node sends: not ours
        return Signal(kind="answer", origin=self.node_id, to=signal.origin, token=signal.token,
                      ok=ok)  # fmt: skip
