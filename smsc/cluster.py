"""This node's membership of the cluster: it joins at start (refused while a live node has
its id), heart-beats every ``cluster.heartbeat`` seconds (saying what it holds, renewing
its leases, learning the carrier bind slots it holds), follows the reloads the other nodes
publish, and leaves at stop. Alone (no ``cluster.redis``) it does the same against the
local coordinator, so the admin API lists the one node the same way.

When Redis does not answer, the node keeps running (its ESME sessions stay up), logs it
once, reports ``reachable: false`` and tries again at each heartbeat.

Carrier health is pooled: each heartbeat carries what this node has seen of each carrier
(decayed sums), and each node adds the other live nodes' to its own when it routes.

Carrier bind slots: a carrier's ``binds`` counts for the whole cluster. Each node asks for
its fair share, ``ceil(binds / live nodes)``, at each heartbeat, and gets what the others
leave: when a node dies its slots lapse with its lease and the others' next heartbeats
take them; when a node joins, the others' shares shrink and it takes what they free."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.cluster.config import ClusterConfig
from router.health import HealthSums
from router.ports import (
    ClusterUnavailable,
    Coordinator,
    NodeIdTaken,
    NodeReport,
    NodeState,
    ReloadNotice,
)
from smsc.config import SmscConfig
from smsc.tasks import stop_tasks

log = logging.getLogger(__name__)

#: Seconds one wait for another node's reload lasts before it is asked again.
RELOAD_POLL = 5.0
#: Seconds stop() waits for the heartbeat and reload tasks to end.
STOP_DEADLINE = 10.0


def config_hash(config: SmscConfig) -> str:
    """A digest of what every node of a cluster must agree on (accounts, routes, carriers,
    security): nodes whose hashes differ have drifted. Node-local keys (node_id, listeners,
    metrics, logging, the store's file) are left out."""
    router = msgspec.structs.replace(config.router, store=type(config.router.store)())
    shared = (
        config.system_id,
        config.accounts,
        router,
        config.simulated_carriers,
        config.security,
        config.session,
    )
    return hashlib.sha256(msgspec.json.encode(shared)).hexdigest()[:16]


class ClusterNode:
    """Owns the coordinator's life and the heartbeat and reload tasks."""

    def __init__(
        self,
        coordinator: Coordinator,
        config: ClusterConfig,
        *,
        report: Callable[[], NodeReport],
        on_reload: Callable[[ReloadNotice], Awaitable[object]],
        on_slots: Callable[[dict[str, int]], object] | None = None,
        on_peers: Callable[[dict[str, list[HealthSums]]], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_slots(bind_slots)``: after each heartbeat on a shared cluster, the carrier
        bind slots this node holds (by carrier). ``on_peers(sums)``: what the other live
        nodes have seen of each carrier (their health sums, by carrier)."""
        self.coordinator = coordinator
        self.config = config
        self._report = report
        self._on_reload = on_reload
        self._on_slots = on_slots
        self._on_peers = on_peers
        self._clock = clock
        #: carrier -> (binds for the cluster, the share asked for)
        self._carriers: dict[str, tuple[int, int]] = {}
        self._alive = 1
        #: When the last heartbeat got through (the clock's seconds).
        self._last_beat = clock()
        #: Heartbeats that did not reach the coordinator; reloads other nodes asked.
        self.heartbeat_failures = 0
        self.reloads_followed = 0
        #: The last heartbeat reached the coordinator.
        self.reachable = True
        #: Carrier bind slots this node holds (as of the last heartbeat).
        self.bind_slots: dict[str, int] = {}
        #: Carrier bind slots the other live nodes hold, by carrier; and the nodes the
        #: registry lists as dead (heartbeat older than the lease), as of the last one.
        self.elsewhere: dict[str, int] = {}
        self.dead: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by stop(): the tasks' loops end even if a cancellation is lost on the way
        #: (redis-py's read timeouts can turn one into a TimeoutError).
        self._stopping = False

    @property
    def node_id(self) -> str:
        return self.coordinator.node_id

    @property
    def shared(self) -> bool:
        """Several nodes may share the limits (Redis), not this process alone."""
        return self.config.enabled

    async def start(self) -> None:
        """Join (NodeIdTaken, ClusterUnavailable) and start heart-beating."""
        await self.coordinator.open(self._clock())
        await self.beat()
        self._tasks = [
            asyncio.create_task(self._beating(), name="cluster-heartbeat"),
            asyncio.create_task(self._following(), name="cluster-reloads"),
        ]

    async def beat(self) -> None:
        """One heartbeat now (and, shared, the carriers' shares asked again).

        Fencing: once no heartbeat has got through for ``lease`` seconds, the other nodes
        count this one dead and take its bind slots; it gives them up too (its carrier
        binds close) until a heartbeat gets through again."""
        now = self._clock()
        try:
            if self.shared and self._carriers:
                states = await self.coordinator.nodes(now)
                self._alive = max(1, sum(1 for n in states if n.alive))
                self._note_others(states)
                if self._on_peers is not None:
                    peers: dict[str, list[HealthSums]] = {}
                    for state in states:
                        if state.alive and state.node_id != self.node_id:
                            for name, sums in state.report.health.items():
                                peers.setdefault(name, []).append(sums)
                    self._on_peers(peers)
                for name, (total, want) in list(self._carriers.items()):
                    share = math.ceil(total / self._alive)
                    if share != want:
                        await self._claim(name, total, share)
            self.bind_slots = await self.coordinator.heartbeat(self._report(), now)
        except (ClusterUnavailable, NodeIdTaken) as exc:
            self.heartbeat_failures += 1
            if self.reachable:
                log.error("cluster: %s (retrying every %gs)", exc, self.config.heartbeat)
            self.reachable = False
            if self.bind_slots and now - self._last_beat > self.config.lease:
                log.error("cluster: no heartbeat for %gs: giving up the carrier bind slots",
                          self.config.lease)  # fmt: skip
                self.bind_slots = {}
                if self._on_slots is not None:
                    self._on_slots(self.slots())
            return
        self._last_beat = now
        if not self.reachable:
            log.warning("cluster: redis reachable again")
        self.reachable = True
        if self.shared and self._on_slots is not None:
            self._on_slots(self.slots())

    def _note_others(self, states: tuple[NodeState, ...]) -> None:
        """What the registry says of the other nodes: their bind slots, the dead."""
        elsewhere: dict[str, int] = {}
        dead: set[str] = set()
        for state in states:
            if state.node_id == self.node_id:
                continue
            if not state.alive:
                dead.add(state.node_id)
                continue
            for name, n in state.bind_slots.items():
                elsewhere[name] = elsewhere.get(name, 0) + n
        self.elsewhere, self.dead = elsewhere, dead

    def slots(self) -> dict[str, int]:
        """The bind slots held, by carrier (0 for one claimed and not had)."""
        return {name: self.bind_slots.get(name, 0) for name in self._carriers}

    async def _claim(self, name: str, total: int, want: int) -> None:
        held = await self.coordinator.claim_binds(name, total, want, self._clock())
        self._carriers[name] = (total, want)
        self.bind_slots[name] = held

    async def claim_binds(self, carriers: Iterable[tuple[str, int]]) -> None:
        """Ask for this node's share of each (carrier, binds) now (shared cluster only;
        alone, every carrier's binds are this node's). Redis away: logged, the carrier
        stays as it was (none held when new)."""
        if not self.shared:
            return
        try:
            states = await self.coordinator.nodes(self._clock())
            self._alive = max(1, sum(1 for n in states if n.alive))
        except ClusterUnavailable as exc:
            log.error("cluster: nodes not counted: %s", exc)
        for name, total in carriers:
            try:
                await self._claim(name, total, math.ceil(total / self._alive))
            except ClusterUnavailable as exc:
                log.error("cluster: bind slots of %s not claimed: %s", name, exc)
                self._carriers.setdefault(name, (total, 0))

    async def release_binds(self, names: Iterable[str]) -> None:
        """Give back the bind slots of carriers this node no longer binds."""
        for name in names:
            self._carriers.pop(name, None)
            self.bind_slots.pop(name, None)
            if self.shared:
                try:
                    await self.coordinator.release_binds(name)
                except ClusterUnavailable as exc:  # they lapse with the lease instead
                    log.warning("cluster: bind slots of %s not released: %s", name, exc)

    async def _beating(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.heartbeat)
            try:
                await self.beat()
            except Exception:  # a bug must not stop the heartbeats (the node would die)
                log.exception("cluster: heartbeat failed")

    async def _following(self) -> None:
        while not self._stopping:
            try:
                notice = await self.coordinator.next_reload(RELOAD_POLL)
            except ClusterUnavailable:
                await asyncio.sleep(self.config.heartbeat)
                continue
            if notice is not None:
                self.reloads_followed += 1
                log.info("cluster: node %s reloaded (%s): reloading", notice.origin, notice.reason)
                try:
                    await self._on_reload(notice)
                except Exception:  # a bad file is the reload's to report; keep following
                    log.exception("cluster: the reload asked by node %s failed", notice.origin)

    async def publish_reload(self, reason: str) -> None:
        """Tell the other nodes to reload (logged, not raised, when Redis is away)."""
        try:
            await self.coordinator.publish_reload(reason)
        except ClusterUnavailable as exc:
            log.error("cluster: the other nodes were not told to reload: %s", exc)

    async def nodes(self) -> tuple[NodeState, ...]:
        """Every node the coordinator knows (ClusterUnavailable)."""
        return await self.coordinator.nodes(self._clock())

    async def stop(self, *, leave: bool = True) -> None:
        """Stop the tasks and release what this node holds; ``leave``: as a node that
        finished cleanly (see Coordinator.close)."""
        self._stopping = True
        await stop_tasks(self._tasks, STOP_DEADLINE, "cluster")
        self._tasks = []
        with contextlib.suppress(ClusterUnavailable):
            await self.coordinator.close(leave=leave)


class ClusterCollector(Collector):
    """``smsc_cluster_*``, read at scrape time."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield GaugeMetricFamily(
            "smsc_cluster_reachable",
            "1 while the last heartbeat reached the cluster's Redis (always 1 alone)",
            value=1.0 if node.reachable else 0.0,
        )
        yield CounterMetricFamily(
            "smsc_cluster_heartbeat_failures",
            "Heartbeats that did not reach the cluster's Redis",
            value=node.heartbeat_failures,
        )
        yield CounterMetricFamily(
            "smsc_cluster_reloads_followed",
            "Reloads done because another node reloaded",
            value=node.reloads_followed,
        )
        slots = GaugeMetricFamily(
            "smsc_cluster_bind_slots",
            "Carrier bind slots this node holds (a carrier's binds count for the cluster)",
            labels=["carrier"],
        )
        for name, n in sorted(node.slots().items()):
            slots.add_metric([name], n)
        yield slots
