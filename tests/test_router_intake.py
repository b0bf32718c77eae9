"""Intake (router.intake): a submit is queued and stored, then answered — at once
(``enqueue``) or once durable (``store``); a full queue answers ESME_RMSGQFUL; cancel and
replace act on what is not sent yet; and pacing: while more than ``pace_above`` ready
messages wait and a carrier is bound, a submit is answered once room is made, or after
``max_wait`` regardless.

Built with a real store, queue, finals and carriers (bound to :class:`MinimalMC` where
pacing needs a bound carrier); the sink is the one fake.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from loops import Run
from minimal_mc import DEADLINE, MinimalMC
from router_parts import (
    UPSTREAM,
    Parts,
    Sink,
    carrier,
    message,
    open_store,
    router_config,
    running_parts,
)

from smppcore.constants import CommandStatus, MessageState

ROK = CommandStatus.ESME_ROK


class Done:
    """A submit's ``done``: its status, awaitable."""

    def __init__(self) -> None:
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def __call__(self, status: int) -> None:
        assert not self.future.done(), "answered twice"
        self.future.set_result(int(status))

    @property
    def status(self) -> int | None:
        return self.future.result() if self.future.done() else None

    async def wait(self) -> int:
        async with asyncio.timeout(DEADLINE):
            return await self.future


def test_a_submit_is_queued_stored_and_answered(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(), store, Sink())
            done = Done()
            parts.intake.submit(message("m1"), done)
            assert done.status == ROK
            assert "m1" in parts.queue
            await store.flush()
            assert await store.get("m1") is not None

    run(main())


def test_a_full_queue_refuses_and_stores_nothing(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(queue_max=1), store, Sink())
            first, second = Done(), Done()
            parts.intake.submit(message("m1"), first)
            parts.intake.submit(message("m2"), second)
            assert (first.status, second.status) == (ROK, CommandStatus.ESME_RMSGQFUL)
            await store.flush()
            assert await store.get("m2") is None

    run(main())


def test_in_store_mode_a_submit_is_answered_once_durable(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path, commit_interval=0.5) as store:
            parts = Parts(router_config(ack_after="store"), store, Sink())
            done = Done()
            parts.intake.submit(message("m1"), done)
            assert done.status is None  # not before the store has it
            assert "m1" not in parts.queue
            assert await done.wait() == ROK
            assert "m1" in parts.queue
            assert await store.get("m1") is not None

    run(main())


def test_cancel_finishes_a_queued_message_as_deleted(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(), store, sink)
            parts.intake.submit(message("m1"), Done())
            assert parts.intake.cancel("m1")
            assert "m1" not in parts.queue
            assert sink.states() == {"m1": MessageState.DELETED}
            assert not parts.intake.cancel("m1")  # gone: nothing to cancel
            await store.flush()
            got = await store.get("m1")
            assert got is not None
            assert got.state == MessageState.DELETED

    run(main())


def test_replace_swaps_a_queued_message(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store(tmp_path) as store:
            parts = Parts(router_config(), store, Sink())
            parts.intake.submit(message("m1"), Done())
            new = msgspec.structs.replace(message("m1"), short_message=b"new text")
            assert parts.intake.replace(new)
            assert not parts.intake.replace(message("other"))
            popped = parts.queue.pop_ready(time.time())
            assert popped is not None
            assert popped.short_message == b"new text"
            got = await store.get("m1")
            assert got is not None
            assert got.message.short_message == b"new text"

    run(main())


def test_with_no_carrier_bound_nothing_is_paced(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        config = router_config(carrier("down"), pace_above=1)  # nothing listens there
        async with running_parts(tmp_path, config, Sink(), bound=False) as parts:
            parts.dispatcher.running = False  # nothing leaves the queue
            dones = [Done() for _ in range(3)]
            for i, done in enumerate(dones):
                parts.intake.submit(message(f"m{i}"), done)
            assert [d.status for d in dones] == [ROK] * 3
            assert parts.intake.paced == 0

    run(main())


def test_a_paced_submit_is_answered_once_room_is_made(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("uk", mc), pace_above=1, max_wait=60.0)
            async with running_parts(tmp_path, config, Sink()) as parts:
                parts.dispatcher.running = False  # the test makes room itself
                first, paced = Done(), Done()
                parts.intake.submit(message("m1"), first)
                parts.intake.submit(message("m2"), paced)
                assert first.status == ROK
                assert paced.status is None
                assert parts.intake.paced == 1
                assert parts.metrics.events[("paced", "")] == 1
                assert parts.queue.pop_ready(time.time()) is not None  # m1 left
                parts.intake.release()
                assert paced.status == ROK
                assert parts.intake.paced == 0
                assert "m2" in parts.queue

    run(main())


def test_a_paced_submit_goes_in_after_max_wait_regardless(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("uk", mc), pace_above=1, max_wait=0.05)
            async with running_parts(tmp_path, config, Sink()) as parts:
                parts.dispatcher.running = False  # nothing leaves the queue
                parts.intake.submit(message("m1"), Done())
                paced = Done()
                parts.intake.submit(message("m2"), paced)
                assert paced.status is None
                assert await paced.wait() == ROK
                assert parts.queue.ready_count == 2

    run(main())


def test_closing_intake_answers_every_paced_submit(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("uk", mc), pace_above=1, max_wait=60.0)
            async with running_parts(tmp_path, config, Sink()) as parts:
                parts.dispatcher.running = False
                dones = [Done() for _ in range(4)]
                for i, done in enumerate(dones):
                    parts.intake.submit(message(f"m{i}"), done)
                assert parts.intake.paced == 3
                await parts.intake.close(DEADLINE)
                assert [d.status for d in dones] == [ROK] * 4

    run(main())


def test_once_stopping_paced_submits_are_let_in(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with MinimalMC(dict([UPSTREAM])) as mc:
            config = router_config(carrier("uk", mc), pace_above=1, max_wait=60.0)
            async with running_parts(tmp_path, config, Sink()) as parts:
                parts.dispatcher.running = False
                parts.intake.submit(message("m1"), Done())
                paced = Done()
                parts.intake.submit(message("m2"), paced)
                parts.intake.running = False
                parts.intake.release()
                assert paced.status == ROK

    run(main())
