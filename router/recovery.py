"""After a restart: every message the store holds with no final state is picked up again.

- never handed to a carrier: queued again (its first send);
- handed to a carrier with no answer recorded (``ack_after: store`` writes the carrier
  before the submit goes out; the answer, with the carrier's id, may not have been
  committed): the carrier may have it, and we cannot ask (query_sm needs the carrier's
  id) nor match its receipt. Policy: send it again (at least once: the handset may get it
  twice; a receipt of the first copy is counted as unmatched). Each one counts as
  ``resent`` (smsc_router_events) and is logged;
- accepted by a carrier: its receipt is awaited (the correlation is in the store) until
  ``receipt_timeout`` from now, or its validity.

The same holds for the messages a live node takes over from a node that died
(:func:`pick_up`, from ``Router.take_over``): a carrier may see one of them twice when the
dead node had handed it over (``set_sending`` committed, ``ack_after: store``) and died
before the carrier's answer was committed; each such one counts as ``resent``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from router.metrics import RouterMetrics
from router.model import StoredMessage
from router.ports import Store
from router.queue import MessageQueue
from router.receipts import Receipts

log = logging.getLogger(__name__)


async def recover(
    store: Store, queue: MessageQueue, receipts: Receipts, metrics: RouterMetrics, now: float
) -> None:
    """Pick up the unfinished messages of ``store`` (see the module); ``now`` is wall time."""
    pick_up(await store.unfinished(), queue, receipts, metrics, now)


def pick_up(
    found: Iterable[StoredMessage],
    queue: MessageQueue,
    receipts: Receipts,
    metrics: RouterMetrics,
    now: float,
    *,
    why: str = "the restart",
) -> int:
    """Pick up ``found`` (unfinished messages now this node's: after a restart, or taken
    over from a node that died) as the module says; those already in memory here (queued,
    or awaiting their receipt) are left as they are. How many were picked up."""
    requeued = picked = 0
    resent: dict[str, int] = {}
    for stored in found:
        msg = stored.message
        if msg.id in queue or receipts.deadlines.awaits(msg.id, stored.carrier):
            continue
        picked += 1
        if not stored.carrier:
            queue.requeue(msg)
            requeued += 1
        elif not stored.carrier_message_id:
            queue.requeue(msg)
            resent[stored.carrier] = resent.get(stored.carrier, 0) + 1
            metrics.event("resent", stored.carrier)
            log.warning(
                "message %s: handed to %s before %s, its answer unknown: sent again",
                msg.id,
                stored.carrier,
                why,
            )
        else:
            receipts.await_receipt(msg, stored.carrier, now)
    if requeued:
        log.info("recovered %d accepted messages not yet sent upstream", requeued)
    for carrier, count in sorted(resent.items()):
        log.warning(
            "recovered %d messages handed to %s with no answer recorded: sent again",
            count,
            carrier,
        )
    return picked
