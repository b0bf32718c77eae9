"""The small interfaces between the router and the rest (ARCHITECTURE.md: smsc implements
what the router needs; the router implements Intake). A multi-node deployment adds
backends for these (Redis), not a rewrite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from router.health import HealthSums
from router.model import DeliveryReport, Message, Refusal, StoredMessage

#: Called with ESME_ROK once a message is accepted (queued, or durably stored in
#: ``ack_after: store`` mode), or with the status refusing it (ESME_RMSGQFUL...).
AcceptCallback = Callable[[int], None]


class Intake(Protocol):
    """Where the ESME-facing server hands accepted messages to the router."""

    def submit(self, message: Message, done: AcceptCallback) -> None:
        """Take ``message``; call ``done(status)`` exactly once."""
        ...

    def cancel(self, message_id: str) -> bool:
        """Drop a message not yet sent upstream (scheduled or queued) and finish it as
        DELETED (stored, reported to the sink); True if it was."""
        ...

    def replace(self, message: Message) -> bool:
        """Swap a message not yet sent upstream for a new version; True if it was."""
        ...


#: Called once a delivery to a client is settled: True when the client acknowledged it,
#: or it is durably held for the account, or nothing was to be sent; False when it could
#: be neither delivered nor stored.
SettledCallback = Callable[[bool], None]


class ReportSink(Protocol):
    """Where the router sends final outcomes and MO: to the owning account's binds."""

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        """Deliver a receipt for ``stored`` (when its registered_delivery asks for one);
        ``settled(ok)`` once it is delivered, durably held, or not wanted."""
        ...

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        """Deliver an MO message that a carrier routed to ``account``: sent, or held for
        the account; ``settled(ok)`` once it is delivered or durably held. False: neither
        could be done now (the store refuses to hold more); the carrier's deliver_sm is
        then answered ESME_RX_T_APPN, to be sent again."""
        ...


class SubmitWatch(Protocol):
    """Who hears how each message's submission ends, besides its final state (smsc: the
    callbacks of Kannel's dlr-mask 8 and 16 and Jasmin's dlr-level 1). Called on the
    loop, synchronously: it must not block, and what it sends out it makes durable itself."""

    def submit_accepted(self, message: Message, carrier: str, carrier_message_id: str) -> None:
        """``carrier`` answered ``message``'s submit_sm ESME_ROK, as ``carrier_message_id``
        (its receipt is awaited now)."""
        ...

    def submit_refused(self, message: Message, refusal: Refusal) -> None:
        """``message`` ends without any carrier holding it (``refusal`` says why); called
        just before its final state goes to the :class:`ReportSink`. Not called for a
        message a carrier had accepted (a long message's part withdrawn, a receipt
        deadline): those end through their receipt."""
        ...


# -- the message store ------------------------------------------------------------------

#: Called on the event loop once per write that asks for it: True after the backend made
#: the write durable (committed), False if it could not be stored (after a retry).
DurableCallback = Callable[[bool], None]


class StoreError(RuntimeError):
    """The store cannot serve a call."""


class StoreClosed(StoreError):
    """A write to a store that is not open (misuse: the store closes last at shutdown)."""


class StoreTimeout(StoreError, TimeoutError):
    """A read (or flush) did not complete within ``read_timeout``: the database hangs or
    cannot commit what the read must see. Temporary: answer the peer a temporary error."""


class MessageStore(Protocol):
    """Accepted messages: where each went and what became of it. Writes are queued (the
    backend makes them durable behind the caller: ``on_durable`` says when); reads see the
    caller's own queued writes.

    Every message has an owner: the node that accepted it (or took it over from a node
    that died). ``unfinished`` returns this node's messages only; a node whose peer died
    calls ``take_over`` once the peer's lease has run out. One SQLite file belongs to one
    node; on Redis every node reads and finishes any message (``claim_final`` is a
    compare-and-set: the first final state wins)."""

    def add(self, message: Message, on_durable: DurableCallback | None = None) -> bool:
        """Queue a new message; False (nothing queued, no callback) when the queue is full."""
        ...

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None:
        """The carrier accepted the message with its id; ``key`` is that id normalised for
        receipt correlation (``find_sent``), the id itself when None."""
        ...

    def set_sending(
        self, message_id: str, carrier: str, on_durable: DurableCallback | None = None
    ) -> None:
        """The message is being handed to ``carrier`` (no carrier id yet): written before
        the submit_sm goes out (``ack_after: store``), so that a restart knows which
        messages a carrier may have taken without our hearing of it (``unfinished``:
        ``carrier`` set, ``carrier_message_id`` empty)."""
        ...

    def set_final(
        self,
        message_id: str,
        report: DeliveryReport,
        on_durable: DurableCallback | None = None,
    ) -> None:
        """Record an outcome (a final one sets ``done_at``; an intermediate one only the
        state); ``on_durable(ok)`` once it is committed (or failed)."""
        ...

    async def claim_final(self, message_id: str, report: DeliveryReport) -> bool:
        """A final state as a compare-and-set, written now (not queued): True if this call
        gave the message its final state, False if it had one already (another node, or
        an earlier call, won) or is not stored. Of several nodes finishing one message at
        once exactly one wins: the one that may deliver its receipt.

        On a store shared by nodes the winner holds a report lease until
        :meth:`settle_final`: meanwhile another claim raises StoreError (the carrier is
        asked to send the receipt again later); once the lease lapses unsettled (the
        winner died before its receipt was delivered or held) the next claim wins again."""
        ...

    def claim_soon(self, message_id: str, report: DeliveryReport) -> asyncio.Future[int]:
        """:meth:`claim_final` without a coroutine to wait in: the claim is queued (or
        started) by the call, and the future is done with the store's answer, which
        :meth:`claim_won` reads (or fails as ``claim_final`` would raise; ValueError, or
        StoreError when the store cannot take it now, at once). For a caller with
        thousands of claims waiting at once: a done callback on the future, no frame kept
        per claim."""
        ...

    def claim_won(self, message_id: str, answer: int) -> bool:
        """What :meth:`claim_soon`'s answer says: as :meth:`claim_final` returns (or
        raises StoreError: another node's claim of ``message_id`` is live)."""
        ...

    def settle_final(self, message_id: str) -> asyncio.Future[None]:
        """The receipt of a final state this node claimed is delivered or held: later
        claims are duplicates (a no-op where one node owns the store). Queued by the call
        itself (a write behind, like ``set_final``); the future is done once it is written,
        or failed (StoreError: not written, the lease lapses after its time instead). The
        settles a store writes in one batch may share one future."""
        ...

    def update_message(self, message: Message) -> None:
        """Replace the stored message (replace_sm, retry attempts and tried carriers)."""
        ...

    def mark_cancelled(self, message_id: str, done_at: float) -> None:
        """cancel_sm: the message becomes DELETED, if it had no final state yet."""
        ...

    async def get(self, message_id: str) -> StoredMessage | None: ...

    async def find_sent(self, carrier: str, key: str) -> str | None:
        """Our id of the message ``carrier`` accepted under the normalised id ``key``."""
        ...

    async def unfinished(self) -> list[StoredMessage]:
        """This node's messages with no final state, oldest first (restart recovery)."""
        ...

    async def take_over(self, node_id: str) -> int:
        """Make this node the owner of every unfinished message of ``node_id`` (a node
        that died: its lease ran out); how many. Atomic per message: a message is taken
        over once, by one node. The caller then reads them with ``unfinished``."""
        ...

    async def take_over_messages(self, node_id: str) -> list[StoredMessage]:
        """:meth:`take_over`, returning exactly the messages this call took (oldest
        first): what a running node adopts (``Router.take_over``) while its own are in
        memory already."""
        ...


class HandedOver(msgspec.Struct, frozen=True, kw_only=True):
    """A message another node handed over to this one (it holds a bind of ``carrier``)."""

    carrier: str
    stored: StoredMessage


class Handover(Protocol):
    """Messages routed on one node to a carrier whose binds other nodes hold: handed over
    through the shared store to a node that holds one (at least once: a node that reads one
    and dies before it adopted it leaves it to another after the lease). Adopting is a
    compare-and-set on the message's owner: one node takes each message."""

    def offer(self, carrier: str, message: Message) -> bool:
        """Hand ``message`` (stored, owned by this node) over to the nodes holding binds of
        ``carrier``; False (nothing done) when the hand-over buffer is full."""
        ...

    @property
    def pending(self) -> int:
        """Messages offered and not yet handed over (in this node's buffer)."""
        ...

    async def take(self, carriers: Sequence[str], count: int, timeout: float) -> list[HandedOver]:
        """Up to ``count`` messages handed over for ``carriers`` (whose binds this node
        holds), now owned by this node; waits up to ``timeout`` seconds for some."""
        ...

    async def close(self, timeout: float) -> None:
        """Hand over what is buffered (at most ``timeout`` seconds), then stop; what is
        left stays this node's (its restart recovers it)."""
        ...


class HeldDeliveries(Protocol):
    """Receipts and MO kept for accounts that have no receive-capable bind, in order, until
    delivered or expired. Held items are claimed by the node that reads them (``held``)
    until it releases them or its claim lapses: two nodes never drain the same items."""

    def hold(
        self,
        account: str,
        item: bytes,
        expires_at: float,
        on_durable: DurableCallback | None = None,
    ) -> bool:
        """Keep an opaque delivery (receipt or MO) for ``account`` until it binds to
        receive; ``on_durable(ok)`` once it is committed (or failed). False (nothing kept,
        ``on_durable`` not called) when the store cannot take it now (its queue is full,
        or the database cannot be written): answer the sender a temporary error."""
        ...

    async def held(self, account: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` unexpired held items of ``account``, oldest first, with their ids,
        claimed for this node until released (another node skips them while the claim
        lasts; this node sees them again until it releases them)."""
        ...

    def release(self, ids: Sequence[int]) -> None:
        """Forget held items (delivered)."""
        ...

    async def held_counts(self) -> dict[str, int]:
        """Unexpired held items per account (what a restart finds waiting)."""
        ...


class IdReserve(Protocol):
    """Blocks of message ids that no node and no restart hands out twice."""

    async def reserve_ids(self, n: int) -> int:
        """Durably reserve ``n`` message ids; the first of them (the next call starts after
        the last). Committed before it returns, so no id repeats even after kill -9."""
        ...


class Store(MessageStore, HeldDeliveries, IdReserve, Protocol):
    """The whole store one backend provides (SQLite, Redis: ``router.stores``), with its
    life cycle and upkeep."""

    async def open(self) -> None: ...

    @property
    def node_id(self) -> str:
        """The owner this store writes into the messages it adds."""
        ...

    @property
    def unwritable(self) -> str | None:
        """Why the store cannot write now (a reason word); None while it can."""
        ...

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, then close; after ``timeout`` seconds (None: no limit)
        give up on what is still queued (logged) and close anyway."""
        ...

    async def flush(self, timeout: float | None = None) -> None:
        """Return once everything queued before the call is committed (or failed);
        StoreTimeout after ``timeout`` seconds (None: the store's ``read_timeout``)."""
        ...

    async def purge(self, now: float) -> int:
        """Delete expired held items and final messages older than ``keep_days``; the count."""
        ...


# --- cluster coordination (router/cluster/: local and Redis backends) --------------------


class ClusterUnavailable(ConnectionError):
    """The shared coordination store (Redis) did not answer within its timeout."""


class NodeIdTaken(RuntimeError):
    """A live node already runs with this node id."""


class NodeReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a node says about itself at each heartbeat."""

    address: str = ""
    """Where its ESME listener is (host)."""
    ports: tuple[int, ...] = ()
    """Its ESME (then TLS, then HTTP) ports; 0: that one is off."""
    config_hash: str = ""
    """A digest of the shared part of its configuration: nodes that differ drift."""
    esme_binds: int = 0
    """ESME sessions bound to it."""
    queue_share: int = 0
    """Messages it holds in its queue."""
    health: dict[str, HealthSums] = msgspec.field(default_factory=dict)
    """What it has seen of each carrier (decayed sums): pooled by the others' routing."""


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """A node as the cluster sees it."""

    node_id: str
    report: NodeReport
    bind_slots: dict[str, int]
    """Carrier bind slots it holds, by carrier."""
    heartbeat_at: float
    """Wall-clock seconds of its last heartbeat."""
    age: float
    """Seconds since then (at the ``now`` asked about)."""
    alive: bool
    """Its heartbeat is at most ``lease`` seconds old, and it has not left."""
    left: bool = False
    """It stopped cleanly (the others took over what it had not finished)."""


class ReloadNotice(msgspec.Struct, frozen=True, kw_only=True):
    """Another node reloaded its configuration: this one should too."""

    origin: str
    """The node that reloaded."""
    reason: str = ""


class Coordinator(Protocol):
    """What the nodes of one deployment share that is not a message: who is alive, and
    limits that hold for all of them together. Every ``now`` is wall-clock seconds
    (time.time()) on the caller's clock; a lease taken at ``now`` lasts until ``now +
    lease``, and is renewed by :meth:`heartbeat`. Methods of the Redis backend raise
    ClusterUnavailable when Redis does not answer in time."""

    node_id: str
    lease: float

    async def open(self, now: float) -> None:
        """Join: NodeIdTaken when a live node has this id."""
        ...

    async def close(self, *, leave: bool = True) -> None:
        """Release every slot this node holds; with ``leave`` mark it as left in the
        registry (the other nodes take over what it has not finished at their next
        heartbeat), else it stays as it was (taken over once its lease has run out, unless
        it comes back first)."""
        ...

    async def heartbeat(self, report: NodeReport, now: float) -> dict[str, int]:
        """Say this node is alive, renew its session and bind slots (claiming again, up
        to what it asked, the bind slots other nodes let lapse). Returns the bind slots it
        holds now, by carrier."""
        ...

    async def nodes(self, now: float) -> tuple[NodeState, ...]:
        """Every node known, alive or lately dead, by node id."""
        ...

    async def acquire_session(self, account: str, limit: int, now: float) -> str | None:
        """A session slot of ``account`` (at most ``limit`` live across the cluster): its
        token, or None when all are taken."""
        ...

    async def release_session(self, account: str, slot: str) -> None: ...

    async def sessions(self, account: str, now: float) -> int:
        """Live session slots of ``account`` across the cluster."""
        ...

    async def take_tokens(
        self, bucket: str, rate: float, burst: float, want: int, now: float
    ) -> int:
        """Up to ``want`` tokens of the shared token bucket ``bucket`` (``rate`` per
        second, at most ``burst`` banked): how many were granted (0..want)."""
        ...

    async def claim_binds(self, carrier: str, total: int, want: int, now: float) -> int:
        """Hold up to ``want`` of ``carrier``'s ``total`` bind slots (what other live
        nodes hold is not free): how many this node holds now. Renewed, and claimed again,
        at each heartbeat with the same ``total`` and ``want``."""
        ...

    async def release_binds(self, carrier: str) -> None:
        """Give back every bind slot of ``carrier`` and stop claiming it."""
        ...

    async def publish_reload(self, reason: str) -> None:
        """Ask every other node to reload its configuration."""
        ...

    async def next_reload(self, timeout: float) -> ReloadNotice | None:
        """The next reload another node published since the last one returned (or since
        :meth:`open`); None when none came within ``timeout`` seconds."""
        ...


# --- signals between nodes (router/cluster/signals.py) ----------------------------------


class Signal(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A notice from one node to the others (or to one of them).

    ``held``: deliveries were held for ``account`` (nodes with one of its receivers drain
    them). ``cancel`` / ``replace``: the node ``to`` holds message ``message_id`` in its
    queue; it answers with ``answer`` (``token`` repeated, ``ok``). ``body`` is the new
    message of a replace (msgpack of router.model.Message)."""

    kind: str
    origin: str
    to: str = ""
    """The node it is for; "" for every node."""
    account: str = ""
    message_id: str = ""
    token: str = ""
    ok: bool = False
    body: bytes = b""


class Signals(Protocol):
    """Notices between the nodes of a cluster, in order, each seen by every live node that
    reads after it was sent (what a node misses while away it learns otherwise: a drain
    at bind, a query of the store)."""

    node_id: str

    async def send(self, signals: Sequence[Signal]) -> None:
        """Send ``signals`` (one round trip); ClusterUnavailable when Redis is away."""
        ...

    async def next(self, timeout: float) -> list[Signal]:
        """The signals the other nodes sent (for this node or every node) since the last
        call; [] when none came within ``timeout`` seconds. ClusterUnavailable."""
        ...

    async def close(self) -> None: ...
