"""Delivery receipt correlation: which of our messages a carrier's receipt is about.

The failure of older gateways, and how this module avoids it (SMPP-NOTES.md):

- The mapping (carrier, carrier's id) → our id is recorded by ``expect()`` the moment the
  submit_sm_resp is processed: synchronously in a bounded in-memory map, and in the store
  (``set_sent``, indexed by carrier and normalised id), so it survives eviction and restarts.
  A store read of a mapping still queued for the writer answers from the queue.
- Carriers write ids differently in submit_sm_resp and in receipts (hex in one, decimal in
  the other; case; leading zeros). Both sides are reduced to one key with
  ``smppcore.receipt.normalize_id``: the carrier's ``submit_id`` style on ``expect``, its
  ``receipt_id`` style on ``resolve``. The two styles must agree on a key: ``hex`` with
  ``decimal`` (both yield the decimal number), ``decimal`` or ``strip_zeros`` with either,
  ``upper``/``lower`` on both sides, ``as_is`` with ``as_is``.
- A receipt can arrive before its submit_sm_resp was processed (the carrier answers on
  another bind, or pipelines both). ``resolve`` then finds nothing; the caller ``park``s the
  receipt, and the ``expect`` that follows hands it back. Parked receipts are bounded in
  number (the oldest is dropped beyond ``max_early``) and in time (``early_ttl``); ``expire``
  returns those given up on so the caller logs them as unmatched.

The caller's flow::

    # submit_sm_resp from carrier c (Accepted):
    for payload in correlator.expect(c.name, resp_id, our_id, c.submit_id):
        handle_receipt(our_id, payload)          # receipts that came early
    # receipt from carrier c:
    our_id = await correlator.resolve(c.name, receipt_id, c.receipt_id)
    if our_id is None:
        our_id = correlator.park(c.name, correlation_key(receipt_id, c.receipt_id), payload, now)
    if our_id is not None:
        handle_receipt(our_id, payload)          # park found it: expect ran during resolve
    # periodically:
    for early in correlator.expire(now):
        log unmatched receipt early.carrier / early.key

``now`` is any clock that does not go backwards (the loop's monotonic time). Nothing here
does I/O but the store calls; nothing reads a clock.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from smppcore.receipt import IdStyle, normalize_id

__all__ = ["Correlator", "Early", "SentIndex", "correlation_key"]

log = logging.getLogger(__name__)

P = TypeVar("P")


class SentIndex(Protocol):
    """What correlation needs from the store (``router.ports.Store`` provides it)."""

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None: ...

    async def find_sent(self, carrier: str, key: str) -> str | None: ...


def correlation_key(carrier_message_id: str, id_style: IdStyle) -> str:
    """The key of a carrier's message id written in ``id_style`` ("" never correlates)."""
    return normalize_id(carrier_message_id, style=id_style)


@dataclass(frozen=True, slots=True)
class Early(Generic[P]):
    """A receipt parked because its message was not known yet."""

    carrier: str
    key: str
    payload: P
    parked_at: float


class Correlator(Generic[P]):
    """Maps carriers' message ids to ours; parks receipts that come before their mapping.

    ``P`` is whatever the caller parks for a receipt (the parsed receipt, the PDU...).
    ``max_cache`` bounds the in-memory map (the oldest mappings leave it first; the store
    still has them); ``max_early`` bounds the parked receipts and ``early_ttl`` (in the unit
    of ``now``) is how long one waits for its mapping.
    """

    def __init__(
        self, store: SentIndex, *, max_cache: int, early_ttl: float, max_early: int
    ) -> None:
        if max_cache < 1:
            raise ValueError("max_cache must be at least 1")
        if max_early < 0:
            raise ValueError("max_early must not be negative")
        if not early_ttl > 0:
            raise ValueError("early_ttl must be positive")
        self._store = store
        self._max_cache = max_cache
        self._ttl = early_ttl
        self._max_early = max_early
        self._cache: dict[tuple[str, str], str] = {}  # insertion order: oldest first
        self._parked: OrderedDict[int, Early[P]] = OrderedDict()  # oldest first
        self._parked_by_key: dict[tuple[str, str], list[int]] = {}
        self._tickets = itertools.count()
        # Dropped by the bound, waiting for the next expire(); bounded too (lost beyond it).
        self._evicted: deque[Early[P]] = deque()
        self.matched_early = 0
        """Parked receipts handed back by ``expect`` (or matched by ``park``)."""
        self.lost = 0
        """Unmatched receipts not even reported by ``expire`` (its outbox overflowed)."""

    @property
    def cached(self) -> int:
        """Mappings held in memory (a hot gauge)."""
        return len(self._cache)

    @property
    def parked(self) -> int:
        """Receipts waiting for their mapping (a hot gauge)."""
        return len(self._parked)

    def expect(
        self, carrier: str, carrier_message_id: str, our_id: str, id_style: IdStyle
    ) -> list[P]:
        """Record that ``carrier`` accepted ``our_id`` as ``carrier_message_id`` (written in
        its ``submit_id`` style). Returns the receipts parked for it, in arrival order."""
        key = correlation_key(carrier_message_id, id_style)
        self._store.set_sent(our_id, carrier, carrier_message_id, key=key)
        if not key:
            log.warning("carrier %s accepted message %s with an empty id", carrier, our_id)
            return []
        entry = (carrier, key)
        self._cache.pop(entry, None)  # a reused id moves to the young end
        self._cache[entry] = our_id
        while len(self._cache) > self._max_cache:
            del self._cache[next(iter(self._cache))]
        tickets = self._parked_by_key.pop(entry, None)
        if tickets is None:
            return []
        self.matched_early += len(tickets)
        return [self._parked.pop(ticket).payload for ticket in tickets]

    def lookup(self, carrier: str, receipt_id: str, id_style: IdStyle) -> str | None:
        """Our id for a receipt from memory only (no await: the fast path for recent
        messages); None means "ask ``resolve``", not "unknown"."""
        key = correlation_key(receipt_id, id_style)
        return self._cache.get((carrier, key)) if key else None

    async def resolve(self, carrier: str, receipt_id: str, id_style: IdStyle) -> str | None:
        """Our id for a receipt of ``carrier`` naming ``receipt_id`` (in its ``receipt_id``
        style): from memory, else from the store; None when unknown (then ``park`` it)."""
        key = correlation_key(receipt_id, id_style)
        if not key:
            return None
        our_id = self._cache.get((carrier, key))
        if our_id is not None:
            return our_id
        return await self._store.find_sent(carrier, key)

    def forget(self, carrier: str, receipt_id: str, id_style: IdStyle) -> None:
        """Drop a mapping from memory once its final receipt is handled (the store keeps it)."""
        self._cache.pop((carrier, correlation_key(receipt_id, id_style)), None)

    def park(self, carrier: str, normalized_id: str, payload: P, now: float) -> str | None:
        """Keep a receipt that ``resolve`` could not place until its ``expect`` comes.

        Returns our id instead of parking when the mapping appeared meanwhile (``expect``
        ran while ``resolve`` awaited the store): handle the receipt then. The oldest parked
        receipt is dropped beyond ``max_early`` (``expire`` reports it).
        """
        entry = (carrier, normalized_id)
        if normalized_id:
            our_id = self._cache.get(entry)
            if our_id is not None:
                self.matched_early += 1
                return our_id
        early = Early(carrier, normalized_id, payload, now)
        if not normalized_id or self._max_early == 0:
            self._give_up(early)
            return None
        while len(self._parked) >= self._max_early:
            ticket, oldest = self._parked.popitem(last=False)
            self._unlink(ticket, oldest)
            self._give_up(oldest)
        ticket = next(self._tickets)
        self._parked[ticket] = early
        self._parked_by_key.setdefault(entry, []).append(ticket)
        return None

    def expire(self, now: float) -> list[Early[P]]:
        """Receipts given up on: parked for ``early_ttl`` or longer, or dropped by the bound
        since the last call. The caller logs them as unmatched."""
        given_up = list(self._evicted)
        self._evicted.clear()
        deadline = now - self._ttl
        while self._parked:
            ticket, early = next(iter(self._parked.items()))
            if early.parked_at > deadline:
                break
            del self._parked[ticket]
            self._unlink(ticket, early)
            given_up.append(early)
        return given_up

    def _unlink(self, ticket: int, early: Early[P]) -> None:
        entry = (early.carrier, early.key)
        tickets = self._parked_by_key[entry]
        tickets.remove(ticket)
        if not tickets:
            del self._parked_by_key[entry]

    def _give_up(self, early: Early[P]) -> None:
        if len(self._evicted) >= max(self._max_early, 1):
            self.lost += 1
            log.warning(
                "unmatched receipt from %s for %r dropped unreported", early.carrier, early.key
            )
            return
        self._evicted.append(early)
