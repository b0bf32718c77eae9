"""Message ids (smsc/ids.py): the node's digit and seven base-36 digits of a counter that
comes in durably reserved blocks."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsc.ids import COUNTER_LIMIT, IdAllocator, base36


def decode36(text: str) -> int:
    return int(text, 36)


@given(st.integers(min_value=0, max_value=COUNTER_LIMIT * 3))
def test_an_id_is_the_node_digit_and_the_counter_in_seven_base36_digits(n: int) -> None:
    blocks = [n]

    async def reserve(count: int) -> int:
        return blocks.pop(0) if blocks else n + count

    async def main() -> str:
        ids = IdAllocator(35, reserve, block=4)
        await ids.start()
        return ids.next()

    message_id = asyncio.run(main())
    assert len(message_id) == 8
    assert message_id[0] == "Z"
    assert message_id[1:] == base36(n % COUNTER_LIMIT, 7)
    assert decode36(message_id[1:]) == n % COUNTER_LIMIT


def test_ids_follow_the_counter_and_move_to_the_spare_block() -> None:
    starts = [0, 1000]

    async def reserve(count: int) -> int:
        return starts.pop(0)

    async def main() -> list[str]:
        ids = IdAllocator(1, reserve, block=3)
        await ids.start()  # block 0..2, spare 1000..1002
        return [ids.next() for _ in range(6)]

    got = asyncio.run(main())
    assert [decode36(i[1:]) for i in got] == [0, 1, 2, 1000, 1001, 1002]
    assert {i[0] for i in got} == {"1"}


def test_running_out_of_reserved_ids_is_an_error_not_a_repeat() -> None:
    starts = [0, 1]

    async def reserve(count: int) -> int:
        return starts.pop(0)

    async def main() -> None:
        ids = IdAllocator(0, reserve, block=1)
        await ids.start()  # one id in the block, one in the spare; no refill asked for
        assert [ids.next(), ids.next()] == ["00000000", "00000001"]
        with pytest.raises(RuntimeError, match="exhausted"):
            ids.next()

    asyncio.run(main())


def test_a_refill_the_store_cannot_make_is_logged_once_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store cannot write (disk full): refills fail, logged once, not raised out of
    the background task; ids come from what is left; once the store writes, they resume."""
    outcomes: list[int | Exception] = [0, OSError("disk full"), OSError("disk full"), 4]

    async def reserve(count: int) -> int:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def main() -> None:
        ids = IdAllocator(0, reserve, block=4)
        with caplog.at_level(logging.INFO, logger="smsc.ids"):
            await ids.start()  # its refill fails
            assert [ids.next(), ids.next(), ids.next()] == ["00000000", "00000001", "00000002"]
            assert ids.low
            await ids.refill()  # fails again: not logged again
            await ids.refill()  # the store writes again
        assert [ids.next() for _ in range(5)] == [f"0000000{i}" for i in range(3, 8)]
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "could not be reserved" in m]) == 1
        assert any("reserved again" in m for m in messages)

    asyncio.run(main())
