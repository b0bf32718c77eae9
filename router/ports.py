"""The small interfaces between the router and the rest (ARCHITECTURE.md: smsc implements
what the router needs; the router implements Intake). A multi-node deployment adds
backends for these (Redis), not a rewrite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from router.model import DeliveryReport, Message, StoredMessage

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
    """Its heartbeat is at most ``lease`` seconds old."""


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

    async def close(self) -> None:
        """Leave: release every slot this node holds and drop it from the registry."""
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
