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
"""

from __future__ import annotations

import logging

from router.metrics import RouterMetrics
from router.ports import Store
from router.queue import MessageQueue
from router.receipts import Receipts

log = logging.getLogger(__name__)


async def recover(
    store: Store, queue: MessageQueue, receipts: Receipts, metrics: RouterMetrics, now: float
) -> None:
    """Pick up the unfinished messages of ``store`` (see the module); ``now`` is wall time."""
    requeued = 0
    resent: dict[str, int] = {}
    for stored in await store.unfinished():
        msg = stored.message
        if not stored.carrier:
            queue.requeue(msg)
            requeued += 1
        elif not stored.carrier_message_id:
            queue.requeue(msg)
            resent[stored.carrier] = resent.get(stored.carrier, 0) + 1
            metrics.event("resent", stored.carrier)
            log.warning(
                "message %s: handed to %s before the restart, its answer unknown: sent again",
                msg.id,
                stored.carrier,
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
