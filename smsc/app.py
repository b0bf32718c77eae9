"""The composition root of ``smsc serve``: builds every part, starts them in order and
stops them in the reverse order ARCHITECTURE.md gives.

Start: HTTP (metrics, route explanations, admin API: smsc/admin.py; until the end of
start-up only health, readiness and the OpenAPI document answer, the rest 503) → store →
id blocks → simulated carriers (loopback) → router (carrier binds) → ESME listener.
Stop, within ``shutdown_timeout`` overall: close the listeners (SMPP and HTTP) → stop
intake → unbind ESMEs → stop dispatching (queued messages stay in the store — every
accepted message is written there at intake — and resume at the next start) → await
upstream windows and unbind carriers → stop simulators → flush and close the store.
Live reconfiguration (:meth:`App.reload`, SIGHUP, ``POST /api/v1/reload``): smsc/reload.py.
Cluster membership (smsc/cluster.py) is joined after the store opens (a node whose id a
live node has stops there) and left after the carriers are unbound; a reload here is
published to the other nodes, and theirs are applied here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from router.cluster import coordinator
from router.cluster.tokens import LeasedBucket
from router.config import CarrierConfig as RouterCarrier
from router.config import RouterConfig
from router.health import HealthSums
from router.ports import NodeReport, ReloadNotice, StoreError
from router.rates import load_prices
from router.router import Router
from router.stores import create_handover, create_store
from router.stores.writebehind import run_purges
from router.upstream import CarrierPool
from simulator.carrier import Carrier
from simulator.config import CarrierConfig as SimulatorConfig
from simulator.console import snapshot as simulator_snapshot
from simulator.mo import build_mo
from smppcore import aio
from smppcore.config import ConfigError, load_config
from smppcore.tls import TlsError, client_context, config_error, server_context
from smsc.accounts import AccountState, SharedThrottle
from smsc.admin import AdminServer, resolve_token
from smsc.cluster import ClusterCollector, ClusterNode, config_hash
from smsc.config import SmscConfig
from smsc.control import CONTROL_WAIT, CarrierControl
from smsc.delivery import Delivery
from smsc.http_node import HttpNode
from smsc.ids import IdAllocator
from smsc.metrics import SmscCollector
from smsc.peers import Peers
from smsc.reload import ReloadPlan
from smsc.reload import plan as reload_plan
from smsc.security import BindGuard
from smsc.server import Server

log = logging.getLogger(__name__)


def simulator_configs(config: SmscConfig, *, source: str = "") -> list[tuple[str, SimulatorConfig]]:
    """Decode each simulated carrier's config. Errors name the key under the smsc file
    (``source``, the file's path, when there is one) as a file's own errors do."""
    out = []
    for i, sim in enumerate(config.simulated_carriers):
        data: dict[str, Any] = {**sim.config, "host": "127.0.0.1", "port": 0}
        try:
            out.append((sim.name, load_config(data, SimulatorConfig)))
        except ConfigError as err:
            raise ConfigError(
                f"$.simulated_carriers[{i}].config{err.path[1:]}", err.reason, source=source
            ) from None
    return out


def check_tls(config: SmscConfig, *, source: str = "") -> None:
    """Load every certificate, key and CA file the config names (the TLS listener, TLS
    toward carriers, simulated carriers' TLS listeners): a file that cannot be used is a
    ConfigError naming the key and the file. Run before starting anything."""
    checks: list[tuple[str, Callable[[], object]]] = []
    if config.listen_tls is not None:
        checks.append(("$.listen_tls", partial(server_context, config.listen_tls.server_tls())))
    if config.http_api is not None and config.http_api.tls is not None:
        tls = config.http_api.tls.server_tls()
        checks.append(("$.http_api.tls", partial(server_context, tls)))
    for i, carrier in enumerate(config.router.carriers):
        if carrier.tls is not None:
            checks.append((f"$.router.carriers[{i}].tls", partial(client_context, carrier.tls)))
    names = [s.name for s in config.simulated_carriers]
    for name, sim in simulator_configs(config, source=source):
        if sim.tls is not None:
            prefix = f"$.simulated_carriers[{names.index(name)}].config.tls"
            checks.append((prefix, partial(server_context, sim.tls)))
    for prefix, build in checks:
        try:
            build()
        except TlsError as err:
            raise config_error(err, prefix, source=source) from None


def admin_token(config: SmscConfig, *, source: str = "") -> str | None:
    """The admin API's bearer token, read from ``admin.token_file`` when that is set; a file
    that cannot be read or holds too short a token is a ConfigError naming the key."""
    try:
        return resolve_token(config.admin)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            "$.admin.token_file", f"{config.admin.token_file}: {reason}", source=source
        ) from None


class _Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """What a reload made ready before changing anything (see App._prepare)."""

    simulators: dict[str, Carrier]
    pools: dict[str, CarrierPool]
    router: RouterConfig
    accounts: dict[str, AccountState]


class App:
    """One smsc node."""

    def __init__(
        self,
        config: SmscConfig,
        *,
        registry: CollectorRegistry | None = None,
        loader: Callable[[], SmscConfig] | None = None,
    ) -> None:
        """``loader`` reads the configuration again for :meth:`reload` (the file with the
        command line's overrides); None: nothing to reload (the embedded default)."""
        self.config = config
        self._loader = loader
        #: The admin API's bearer token (admin.token or admin.token_file); None: API off.
        self.admin_token: str | None = None
        #: The one lock of carrier control: reload, pause, drain, resume.
        self.control = CarrierControl()
        #: What reloads replaced, being wound down (awaited by stop()).
        self._winding: set[asyncio.Task[None]] = set()
        self._mo_rng = random.Random("smsc-admin-mo")
        self.registry = registry or CollectorRegistry()
        self.simulators: dict[str, Carrier] = {}
        #: SQLite alone; in a cluster (cluster.redis) the nodes' shared Redis store.
        self.store = create_store(
            config.router.store,
            redis_url=config.cluster.url_with_credentials(),
            # Alone, the owner SQLite files have always had (""): their messages recover.
            node_id=str(config.node_id) if config.cluster.enabled else "",
            claim_seconds=config.cluster.lease,
            prefix=config.cluster.key_prefix,
            wait_replicas=config.cluster.wait_replicas,
            wait_timeout=config.cluster.wait_timeout,
        )
        #: Purges the store every ``store.purge_interval`` (cancelled before it closes).
        self._purger: asyncio.Task[None] | None = None
        #: Dead nodes whose messages this node has taken over (or another node did: the
        #: store's lock); a node seen alive again leaves it. The take-overs running.
        self._taken: set[str] = set()
        self._taking_over: set[asyncio.Task[None]] = set()
        self.router: Router | None = None
        self.server: Server | None = None
        self.delivery: Delivery | None = None
        #: In a cluster: the signals between nodes (smsc/peers.py).
        self.peers: Peers | None = None
        self._listener: aio.Listener | None = None
        self._tls_listener: aio.Listener | None = None
        self._http: AdminServer | None = None
        self.port = 0
        #: The SMPP-over-TLS listener's port (0: none).
        self.tls_port = 0
        self.http_port = 0
        #: The application HTTP API and webhooks (smsc/http_node.py).
        self.web = HttpNode(config)
        #: The application HTTP API's port (0: off).
        self.api_port = 0
        #: This node's membership of the cluster (alone: the local coordinator).
        self.cluster = ClusterNode(
            coordinator(config.cluster, str(config.node_id)),
            config.cluster,
            report=self._node_report,
            on_reload=self._reload_asked,
            on_slots=self._apply_slots,
            on_peers=self._apply_peers,
        )
        self._started = asyncio.Event()

    async def start(self) -> None:
        config = self.config
        self.admin_token = admin_token(config)
        if config.metrics.port is not None:
            # First: liveness and metrics answer during a long start-up (a big store to
            # recover); the rest of the admin API answers 503 until :attr:`started`.
            await self._start_http(config.metrics.host, config.metrics.port)
        await self.store.open()
        store_config = config.router.store
        if store_config.purge_interval > 0:
            self._purger = asyncio.create_task(
                run_purges(self.store, store_config.purge_interval, time.time), name="store-purge"
            )
        ids = IdAllocator(config.node_id, self.store.reserve_ids)
        await ids.start()
        await self.web.open()
        await self.cluster.start()  # NodeIdTaken, ClusterUnavailable: nothing bound yet
        await self.cluster.claim_binds((c.name, c.binds) for c in config.router.carriers)

        router_config = config.router
        for name, sim_config in simulator_configs(config):
            await self._start_simulator(name, sim_config)
        router_config = self._upstream_config(router_config)

        now = time.monotonic()
        accounts = {
            a.system_id: AccountState(a, now, shared=self._shared_throttle())
            for a in config.accounts
        }
        self.delivery = Delivery(
            accounts, self.store, senders_wait=config.router.ack_after == "store"
        )
        # What was held before a restart counts toward each account's max_held at once.
        try:
            found = await self.store.held_counts()
        except StoreError as exc:
            log.warning("held items not counted at start (max_held counts from 0): %s", exc)
            found = {}
        for account, n in found.items():
            self.delivery.found_held(account, n)
        sink = self.web.sink(self.delivery, accounts)
        self.router = Router(
            router_config,
            handover=(
                create_handover(self.store, lease=config.cluster.lease)
                if self.cluster.shared
                else None
            ),
            store=self.store,
            sink=sink,
            # Kannel's dlr-mask 8/16, Jasmin's dlr-level 1: only messages sent through the
            # HTTP API ask for them (none without it: nothing to call per message then).
            watch=sink if config.http_api is not None else None,
            policies={name: state.policy for name, state in accounts.items()},
            bind_slots=self._slots_for if self.cluster.shared else None,
        )
        await self.router.start()
        if self.cluster.shared:
            await self._start_peers(self.router, self.delivery)
        self.server = Server(
            system_id=config.system_id,
            accounts=accounts,
            intake=self.router,
            store=self.store,
            delivery=self.delivery,
            ids=ids,
            default_validity=router_config.retry.default_validity,
            max_connections=config.listen.max_connections,
            guard=BindGuard(config.security),
            sessions=self.cluster.coordinator if self.cluster.shared else None,
            peers=self.peers,
        )
        SmscCollector(self.server, self.router, self.delivery).register(self.registry)
        ClusterCollector(self.cluster).register(self.registry)
        self._listener = await aio.start_server(
            self.server.handler, config.listen.host, config.listen.port, config=config.session
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        if config.listen_tls is not None:
            tls = config.listen_tls
            self._tls_listener = await aio.start_server(
                self.server.handler,
                tls.host,
                tls.port,
                config=config.session,
                ssl=server_context(tls.server_tls()),
            )
            self.tls_port = self._tls_listener.sockets[0].getsockname()[1]
        await self.web.start(self.server, self.router, self.registry)
        self.api_port = self.web.port
        self._started.set()

    async def _start_peers(self, router: Router, delivery: Delivery) -> None:
        """In a cluster: the signals between nodes (held deliveries announced to the nodes
        that have a receiver of the account; cancel and replace asked of the node that
        queues the message)."""
        from router.cluster.signals import RedisSignals

        cluster = self.config.cluster
        signals = RedisSignals.from_config(cluster, str(self.config.node_id))
        try:
            await signals.open()
        except BaseException:
            await signals.close()
            raise
        self.peers = Peers(
            signals,
            intake=router,
            woken=delivery.woken,
            sweep=delivery.sweep,
            # Signals are rarely missed (a stream, read on from the last entry): a sweep
            # per lease (when another node's claims lapse) is enough.
            sweep_interval=max(cluster.lease, 1.0),
            timeout=cluster.timeout,
            flush=self.store.flush,
        )
        delivery.held_elsewhere = self.peers.held
        self.peers.start()

    @property
    def started(self) -> bool:
        """start() has finished (and stop() not begun): the admin API serves."""
        return self._started.is_set()

    async def wait_started(self, timeout: float) -> bool:
        """Wait until :attr:`started`; False once ``timeout`` passed."""
        try:
            async with asyncio.timeout(timeout):
                await self._started.wait()
        except TimeoutError:
            return False
        return True

    def console_url(self, base: str) -> str | None:
        """The browser console's login URL under ``base`` (``http://host:port``): with a
        random one-time token when no admin token is configured; None: no HTTP port."""
        return None if self._http is None else self._http.console.login_url(base)

    def _node_report(self) -> NodeReport:
        """What this node says about itself at each heartbeat."""
        server, router = self.server, self.router
        return NodeReport(
            address=self.config.listen.host,
            ports=(self.port, self.tls_port, self.http_port),
            config_hash=config_hash(self.config),
            esme_binds=0 if server is None else len(server.binds),
            queue_share=0 if router is None else len(router.queue),
            health=(
                {}
                if router is None or not self.cluster.shared
                else {name: h.sums(router.wall()) for name, h in router.carriers.health.items()}
            ),
        )

    def _shared_throttle(self) -> SharedThrottle | None:
        """In a cluster, an account's throughput bucket is shared by the nodes (each takes
        tokens in batches: router/cluster/tokens.py); alone, None (its own bucket)."""
        if not self.cluster.shared:
            return None
        coordinator = self.cluster.coordinator

        def shared(account: str, rate: float, burst: float) -> LeasedBucket:
            bucket = LeasedBucket(coordinator, f"acct:{account}", rate, burst)
            bucket.prime()
            return bucket

        return shared

    def _slots_for(self, carrier: str) -> int:
        """The bind slots of ``carrier`` this node holds (a pool opens that many)."""
        return self.cluster.bind_slots.get(carrier, 0)

    def _apply_slots(self, slots: dict[str, int]) -> None:
        """After a heartbeat: each carrier's pool keeps as many binds as slots held."""
        if self.router is not None:
            for name, pool in self.router.pools.items():
                if name in slots:
                    pool.allow(slots[name])
            self.router.set_elsewhere(self.cluster.elsewhere)
            if not self._started.is_set():
                return  # starting, or stopping: no take-over begins
            dead = self.cluster.dead
            self._taken &= dead  # a node back alive may die again: taken over again then
            for node_id in sorted(dead - self._taken):
                self._taken.add(node_id)
                task = asyncio.create_task(self._take_over(node_id), name="cluster-take-over")
                self._taking_over.add(task)
                task.add_done_callback(self._taking_over.discard)

    async def _take_over(self, node_id: str) -> None:
        """Take over the unfinished messages of ``node_id`` (dead); tried again at the
        next heartbeat when the store cannot do it now."""
        if self.router is None:
            return
        try:
            await self.router.take_over(node_id)
        except StoreError as exc:
            log.error("cluster: messages of dead node %s not taken over: %s", node_id, exc)
            self._taken.discard(node_id)

    def _apply_peers(self, peers: dict[str, list[HealthSums]]) -> None:
        """After a heartbeat: what the other nodes have seen of each carrier, pooled into
        this node's health (a carrier they have not reported: nothing from them)."""
        if self.router is None:
            return
        half_life = self.config.router.health.window_seconds
        for name, health in self.router.carriers.health.items():
            pooled = HealthSums(at=self.router.wall())
            for sums in peers.get(name, ()):
                pooled = pooled.plus(sums, half_life)
            health.set_peers(pooled)

    def carriers_elsewhere(self) -> set[str]:
        """Carriers whose every bind slot other nodes hold (none bound here by design)."""
        if not self.cluster.shared:
            return set()
        return {name for name, n in self.cluster.slots().items() if n == 0}

    async def _reload_asked(self, notice: ReloadNotice) -> None:
        """Another node reloaded: reload here too (not published again)."""
        try:
            await self.reload(publish=False)
        except LookupError as exc:
            log.warning("reload asked by node %s not done: %s", notice.origin, exc.args[0])

    async def _start_http(self, host: str, port: int) -> None:
        self._http = AdminServer(self, self.registry)
        await self._http.start(host, port)
        self.http_port = self._http.port

    async def _start_simulator(self, name: str, config: SimulatorConfig) -> Carrier:
        carrier = Carrier(config)
        await carrier.start()
        self.simulators[name] = carrier
        log.info("simulated carrier %s on 127.0.0.1:%d", name, carrier.port)
        return carrier

    def _upstream(
        self, carrier: RouterCarrier, simulated: Mapping[str, Carrier] | None = None
    ) -> RouterCarrier:
        """A router carrier as the router binds to it: a simulated one on its loopback port
        (``simulated``: the simulators by carrier, default: those running now)."""
        sim = (self.simulators if simulated is None else simulated).get(carrier.name)
        if sim is None:
            return carrier
        return msgspec.structs.replace(carrier, host="127.0.0.1", port=sim.port)

    def _upstream_config(
        self, config: RouterConfig, simulated: Mapping[str, Carrier] | None = None
    ) -> RouterConfig:
        carriers = tuple(self._upstream(c, simulated) for c in config.carriers)
        return msgspec.structs.replace(config, carriers=carriers)

    # --- control plane ------------------------------------------------------------------

    async def pause_carrier(self, name: str, *, wait: float = CONTROL_WAIT) -> None:
        """No new messages go to carrier ``name`` (KeyError: no such carrier)."""
        async with self.control.turn(wait):
            self._running_router().pause(name)

    async def resume_carrier(self, name: str, *, wait: float = CONTROL_WAIT) -> None:
        """Undo a pause or a drain (a drained carrier binds again, with its current config)."""
        async with self.control.turn(wait):
            router = self._running_router()
            if name not in router.pools:
                raise KeyError(name)
            await router.resume(name)

    async def drain_carrier(self, name: str, timeout: float, *, wait: float = CONTROL_WAIT) -> None:
        """Pause ``name``, wait (at most ``timeout``) for its submits in flight, unbind it."""
        async with self.control.turn(wait):
            router = self._running_router()
            if name not in router.pools:
                raise KeyError(name)
            await router.drain(name, timeout)

    def _running_router(self) -> Router:
        if self.router is None:
            raise LookupError("not running")
        return self.router

    async def reload(
        self, new: SmscConfig | None = None, *, wait: float = CONTROL_WAIT, publish: bool = True
    ) -> ReloadPlan:
        """Apply ``new`` (default: what the loader reads now) to the running node; see
        smsc/reload.py for what applies live. Returns what was done.

        All or nothing: everything that can fail is checked and prepared first (the new
        configuration decoded and checked, TLS files loaded, new simulated carriers
        started, new carrier pools built) while the running configuration is untouched;
        a failure there (ConfigError, OSError, ValueError; LookupError when there is
        nothing to reload from; ControlBusy) stops what was prepared and raises. Then the
        change is applied at once, without yielding to the loop; what it replaced (old
        binds, simulators, removed accounts' sessions) is wound down after. Holds the lock
        of carrier control throughout: a pause, drain or resume waits for it, and it for
        them; a paused or drained carrier stays so. In a cluster, a reload that worked is
        published (``publish``): every other node reloads its file too."""
        async with self.control.turn(wait):
            if new is None:
                if self._loader is None:
                    raise LookupError("started without a configuration file: nothing to reload")
                new = self._loader()
            router, server = self.router, self.server
            if router is None or server is None:
                raise LookupError("not running")
            sims = dict(simulator_configs(new))  # refuse a bad simulated carrier up front
            check_tls(new)
            load_prices(new.router.rates)  # a bad rate card refuses the reload up front
            plan = reload_plan(self.config, new)
            config = plan.config
            token = admin_token(config)
            log.info("reloading the configuration")
            changed = {*plan.carriers_added, *plan.carriers_changed}
            await self.cluster.claim_binds(
                (c.name, c.binds) for c in config.router.carriers if c.name in changed
            )
            ready = await self._prepare(plan, sims, router)

            # --- applied at once: no await until the configuration is the new one ------
            now = time.monotonic()
            accounts = server.accounts  # the one dict Server and Delivery share
            for account in config.accounts:
                state = accounts.get(account.system_id)
                if state is None:
                    accounts[account.system_id] = ready.accounts[account.system_id]
                elif state.account != account:
                    state.reconfigure(account, now)
            for name in plan.accounts_removed:
                del accounts[name]
            retired = router.reconfigure(
                ready.router,
                {name: state.policy for name, state in accounts.items()},
                ready.pools,
            )
            server.default_validity = config.router.retry.default_validity
            old_sims = [
                self.simulators.pop(name)
                for name in (*plan.carriers_changed, *plan.carriers_removed)
                if name in self.simulators
            ]
            self.simulators.update(ready.simulators)
            self.admin_token = token
            self.config = config
            log.info(
                "configuration reloaded: %s%s",
                "; ".join(plan.applied()) or "no change",
                f" (requires restart, not applied: {', '.join(plan.requires_restart)})"
                if plan.requires_restart
                else "",
            )
            # --- what it replaced is wound down (on its own if this caller goes away) ---
            winding = asyncio.create_task(
                self._wind_down(router, retired, old_sims, server, plan.accounts_removed)
            )
            self._winding.add(winding)
            winding.add_done_callback(self._winding.discard)
            await asyncio.shield(winding)
            await self.cluster.release_binds(plan.carriers_removed)
        if publish and self.cluster.shared:
            await self.cluster.publish_reload("reload")
        return plan

    async def _prepare(
        self, plan: ReloadPlan, sims: dict[str, SimulatorConfig], router: Router
    ) -> _Prepared:
        """Everything a reload needs that can fail, made while nothing running changes:
        new simulated carriers started (stopped again when a later step fails), pools
        built for the carriers added or changed, the router's config with their ports,
        the added accounts' state."""
        config = plan.config
        started: dict[str, Carrier] = {}
        try:
            for name in (*plan.carriers_added, *plan.carriers_changed):
                if name in sims:
                    started[name] = carrier = Carrier(sims[name])
                    await carrier.start()
                    log.info("simulated carrier %s on 127.0.0.1:%d", name, carrier.port)
            # The simulators of the new configuration: those started, the others kept.
            simulated = {
                name: started[name] if name in started else self.simulators[name]
                for name in sims
                if name in started or name in self.simulators
            }
            by_name = {c.name: c for c in config.router.carriers}
            pools = {
                name: router.new_pool(self._upstream(by_name[name], simulated))
                for name in (*plan.carriers_added, *plan.carriers_changed)
            }
            now = time.monotonic()
            return _Prepared(
                simulators=started,
                pools=pools,
                router=self._upstream_config(config.router, simulated),
                accounts={
                    a.system_id: AccountState(a, now, shared=self._shared_throttle())
                    for a in config.accounts
                    if a.system_id in plan.accounts_added
                },
            )
        except BaseException:
            for carrier in started.values():
                await carrier.stop(5.0)
            raise

    async def _wind_down(
        self,
        router: Router,
        pools: list[CarrierPool],
        simulators: list[Carrier],
        server: Server,
        accounts_removed: tuple[str, ...],
    ) -> None:
        await router.retire(pools)
        for carrier in simulators:
            await carrier.stop(5.0)
        for name in accounts_removed:
            await server.unbind_account(name, 5.0)

    def simulator_snapshots(self) -> dict[str, dict[str, Any]]:
        """Each simulated carrier as its own page shows it (the console's Simulators page)."""
        return {name: simulator_snapshot(sim) for name, sim in self.simulators.items()}

    def inject_mo(
        self,
        carrier: str,
        *,
        text: str,
        system_id: str | None = None,
        source: str | None = None,
        destination: str | None = None,
        data_coding: int | None = None,
    ) -> tuple[str, int]:
        """Have simulated carrier ``carrier`` send an MO to its account ``system_id``
        (default: the one we bind with). Returns (account, parts). LookupError: no such
        simulated carrier or account; ValueError: an MO that cannot be built."""
        sim = self.simulators.get(carrier)
        if sim is None:
            raise LookupError(f"no simulated carrier {carrier!r}")
        if system_id is None:
            upstream = {c.name: c for c in self.config.router.carriers}[carrier]
            system_id = upstream.system_id
        state = sim.account(system_id)
        if state is None:
            raise LookupError(f"simulated carrier {carrier!r} has no account {system_id!r}")
        pdus = build_mo(
            self._mo_rng,
            state.profile.mo,
            text=text,
            source=source,
            destination=destination,
            data_coding=data_coding,
        )
        sim.inject(system_id, pdus)
        log.info("MO injected at %s for %s: %d part(s)", carrier, system_id, len(pdus))
        return system_id, len(pdus)

    async def stop(self, timeout: float | None = None) -> None:
        """Shut down in order within ``timeout`` seconds overall (default: the config's
        ``shutdown_timeout``): each stage gets what is left. The store is closed last in
        any case (queued records are committed: nothing accepted is lost — unless the
        database cannot take them before the deadline, disk full say: then the store logs
        what it gives up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_timeout if timeout is None else timeout)

        def left(cap: float = 3600.0) -> float:
            return max(0.05, min(cap, deadline - loop.time()))

        self._started.clear()
        closed = False

        if self._listener is not None:
            self._listener.close()
        if self._tls_listener is not None:
            self._tls_listener.close()
        if self._http is not None:
            await self._http.stop()
        await self.web.close_listener()
        if self._winding:  # what reloads replaced, still being wound down
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left()):
                    await asyncio.gather(*self._winding, return_exceptions=True)
        if self.server is not None:
            self.server.accepting = False
            if self.router is not None:  # the submits still waiting get their answers first
                await self.router.close_intake(left(5.0))
            await self.server.unbind_all(left(5.0))
            await self.server.stop()
        for task in self._taking_over:
            task.cancel()
        await asyncio.gather(*self._taking_over, return_exceptions=True)
        if self.router is not None:
            await self.router.stop(left())
            # Its carriers are unbound: their slots go to the other nodes now, not once
            # this node has left (the store's close may take the rest of the deadline).
            await self.cluster.release_binds(list(self.router.pools))
        if self.peers is not None:
            await self.peers.stop()
            self.peers = None
        if self.delivery is not None:
            await self.delivery.stop()
        await self.web.stop(left(5.0))
        for carrier in self.simulators.values():
            await carrier.stop(left(5.0))
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
            self._purger = None
        try:
            await self.store.close(left())
            closed = True
        finally:
            # Last: after the store has every record, the node leaves; the other nodes
            # take over, at once, what it leaves unfinished, so all of it must be written
            # by then. If the store could not close cleanly the node only goes: it is
            # taken over once its lease has run out, as a dead node is.
            await self.cluster.stop(leave=closed)
        if self._listener is not None:
            await self._listener.wait_closed()
        if self._tls_listener is not None:
            await self._tls_listener.wait_closed()
