"""The one lock of carrier control: a reload, and the admin API's pause, drain and resume of
a carrier, each wait for the one under way (at most a deadline), so that a reload never
rebinds a carrier an operator drains while it runs, nor a drain loses a reload's carrier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: Seconds a reload, pause, drain or resume waits at most for the one under way.
CONTROL_WAIT = 30.0


class ControlBusy(LookupError):
    """Another carrier change (reload, pause, drain, resume) held the lock too long."""


class CarrierControl:
    """``async with control.turn(wait):`` one carrier change at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextlib.asynccontextmanager
    async def turn(self, wait: float = CONTROL_WAIT) -> AsyncIterator[None]:
        """Hold the lock; ControlBusy when it is not had within ``wait`` seconds."""
        try:
            async with asyncio.timeout(wait):
                await self._lock.acquire()
        except TimeoutError:
            raise ControlBusy(
                "another carrier change (reload, pause, drain, resume) is under way: "
                f"waited {wait:g}s"
            ) from None
        try:
            yield
        finally:
            self._lock.release()
