"""Messages across the nodes of a cluster, the router's side of
:class:`router.ports.Handover`.

Routing happens on the accepting node, on what the cluster has: a carrier whose bind slots
other live nodes hold (the registry says so at each heartbeat: ``Carriers.set_elsewhere``)
is available to it. A message routed to such a carrier is offered to the hand-over and
leaves this node's memory; a node holding a bind of the carrier takes it, becomes its
owner, and routes it again (its own choice: the same carrier, now local, unless it failed
the message, which then fails over, possibly back through the hand-over to a carrier bound
on another node). A full hand-over buffer is like a full window: the message waits.

:class:`Taking` is the task that takes what other nodes handed over for the carriers this
node has bound, as long as the queue has room for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from router.carriers import Carriers
from router.metrics import RouterMetrics
from router.model import Message
from router.ports import HandedOver, Handover, StoreError
from router.queue import MessageQueue

log = logging.getLogger(__name__)

#: Messages taken at once at most.
_TAKE = 256
#: Seconds between two looks for messages handed over, while none come (a read that does
#: not block: a blocking read cancelled half-way may never end): 20 reads a second per
#: idle node, and up to that long before a message handed over is taken. Also how long
#: :meth:`Taking.stop` may wait for the task to end (with one read).
WAIT = 0.05


class Taking:
    """Offers messages for carriers bound elsewhere (:meth:`offer`) and runs the task that
    takes messages handed over to this node (:meth:`run`, owned by the router); each taken
    message goes to ``adopt``."""

    def __init__(
        self,
        port: Handover,
        *,
        carriers: Carriers,
        queue: MessageQueue,
        metrics: RouterMetrics,
        adopt: Callable[[list[HandedOver]], None],
    ) -> None:
        self.port = port
        self.carriers = carriers
        self.queue = queue
        self.metrics = metrics
        self._adopt = adopt
        self._failing = False
        self._stopping = False

    def offer(self, carrier: str, msg: Message) -> bool:
        """Hand ``msg`` over to the nodes bound to ``carrier``; False: the buffer is full
        (the message waits, as for a full window)."""
        if not self.port.offer(carrier, msg):
            return False
        self.metrics.event("handed_over", carrier)
        return True

    def _bound_here(self) -> list[str]:
        """Carriers this node can send to now: a bind up, not paused."""
        paused = self.carriers.paused
        return sorted(
            name for name, pool in self.carriers.pools.items() if pool.bound and name not in paused
        )

    def stop(self) -> None:
        """:meth:`run` ends after its current wait (``WAIT`` seconds at most): a blocking
        read of Redis is not cancelled half-way (the client may not recover from that)."""
        self._stopping = True

    async def run(self) -> None:
        """Take handed-over messages until :meth:`stop`: for the carriers bound here, as
        many as the queue has room for; with none bound, wait for a bind to change."""
        while not self._stopping:
            names = self._bound_here()
            room = min(_TAKE, self.queue.max_size - len(self.queue))
            if not names or room <= 0:
                # Nothing to take for: a bind coming up (or the next check) ends the wait.
                await self.carriers.changed(WAIT)
                continue
            try:
                taken = await self.port.take(names, room, 0.0)
            except Exception as exc:  # StoreError; a bug must not stop the taking either
                if not self._failing:
                    log.error(
                        "hand-over: cannot take messages: %s",
                        exc,
                        exc_info=not isinstance(exc, StoreError),
                    )
                self._failing = True
                await self.carriers.changed(WAIT)
                continue
            if self._failing:
                log.warning("hand-over: taking messages again")
                self._failing = False
            if not taken:
                await self.carriers.changed(WAIT)
                continue
            for handed in taken:
                self.metrics.event("adopted", handed.carrier)
            self._adopt(taken)
