"""Message ids: unique across restarts and across nodes, and short enough for SMPP 3.3.

An id is 8 characters of base 36 (0-9, A-Z): the node's digit, then 7 digits of a
counter (78 billion ids per node). The counter is handed out in blocks reserved
durably in the store before any id of the block is used, so a restart — even after
kill -9 — never repeats an id; it only skips the unused rest of a block.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COUNTER_DIGITS = 7
COUNTER_LIMIT = 36**COUNTER_DIGITS
BLOCK = 100_000

Reserve = Callable[[int], Awaitable[int]]
"""Reserve ``n`` ids durably; returns the first of them (the store implements it)."""


def base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


#: Every 2-digit base-36 string (1,296 of them): an id's counter takes three divisions
#: and four lookups instead of seven divisions — it is made for every message.
_PAIRS = tuple(base36(n, 2) for n in range(36**2))


def _counter_digits(n: int) -> str:
    """``base36(n, 7)`` for 0 <= n < 36**7."""
    n, d = divmod(n, 1296)
    n, c = divmod(n, 1296)
    a, b = divmod(n, 1296)
    return _DIGITS[a] + _PAIRS[b] + _PAIRS[c] + _PAIRS[d]


class IdAllocator:
    """Hands out ids from durably reserved blocks; ``refill`` before a block runs out."""

    def __init__(self, node_id: int, reserve: Reserve, *, block: int = BLOCK) -> None:
        if not 0 <= node_id < 36:
            raise ValueError("node_id must be 0..35")
        self._prefix = _DIGITS[node_id]
        self._reserve = reserve
        self._block = block
        self._next = 0
        self._end = 0
        self._spare: tuple[int, int] | None = None
        self._refilling = False
        self._refill_failing = False

    async def start(self) -> None:
        first = await self._reserve(self._block)
        self._next, self._end = first, first + self._block
        await self.refill()

    async def refill(self) -> None:
        """Reserve the next block ahead of need (called when half the block is used). A
        reservation that fails (the store cannot write: disk full, say) is logged once
        while it keeps failing; the next call tries again, and ``next`` answers from what
        is left meanwhile."""
        if self._spare is not None or self._refilling:
            return
        self._refilling = True
        try:
            first = await self._reserve(self._block)
        except Exception as exc:
            if not self._refill_failing:
                log.warning("message ids: the next block could not be reserved: %s", exc)
            self._refill_failing = True
            return
        finally:
            self._refilling = False
        if self._refill_failing:
            log.info("message ids: blocks are reserved again")
        self._refill_failing = False
        self._spare = (first, first + self._block)

    @property
    def low(self) -> bool:
        """True when the current block is past half and no spare block is reserved yet."""
        return self._spare is None and self._end - self._next < self._block // 2

    def next(self) -> str:
        """A fresh id. Raises RuntimeError only if two whole blocks ran out before the
        store could reserve more (the caller answers ESME_RSYSERR)."""
        if self._next >= self._end:
            if self._spare is None:
                raise RuntimeError("message id block exhausted; the store is not keeping up")
            self._next, self._end = self._spare
            self._spare = None
        n = self._next
        self._next = n + 1
        return self._prefix + _counter_digits(n % COUNTER_LIMIT)
