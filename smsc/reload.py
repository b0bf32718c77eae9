"""Live reconfiguration: what a new configuration changes, and what it cannot change live.

:func:`plan` compares the running configuration with a new one (already decoded and
checked) and says what to do; :meth:`smsc.app.App.reload` does it. Pure: no I/O.

Applied live:

- ``accounts``: added ones may bind at once; changed ones keep their bound sessions and
  take the new limits (throughput, price ceiling, allowed carriers, ... — ``max_window``
  and ``max_sessions`` at the next bind); removed ones have their sessions unbound.
- ``router.routes`` (prefixes and prices) and ``router.retry``: the route table is swapped.
- ``router.routing`` (ranking, exploration) and ``router.rates``: the rate card files are
  read again on every reload (a card replaced by ``smsc rates import`` applies), all or
  nothing: a bad card refuses the reload.
- ``router.carriers`` and ``simulated_carriers``: a new carrier is bound (a new simulated
  one started first); a removed one is taken out of routing, its submits in flight are
  awaited (bounded), then it is unbound (and its simulator stopped); a changed one is
  bound again with its new config, its old binds wound down the same way. A carrier an
  operator paused stays paused; one drained stays drained and unbound (its new config is
  used when it is resumed). Queued messages are never tied to a carrier: they go on over
  the carriers of the new table.
- ``admin`` (the token) and ``shutdown_timeout``.

All or nothing (:meth:`smsc.app.App.reload`): everything that can fail — decoding and
cross-checks, TLS files, admin.token_file, starting new simulated carriers, building the new
carrier binds — is done before anything running changes, and undone when a later step fails
(or the reload is cancelled); the change itself is then applied without yielding to the
event loop, and what it replaced is wound down after. A reload and the admin API's pause,
drain and resume of carriers take one lock (smsc/control.py): each waits for the one under
way.

Everything else (``node_id``, ``system_id``, listeners, ``session``, ``security``,
``metrics``, ``log_level``, ``router.queue_max``, ``router.ack_after``, ``router.health``,
``router.store``, ...) needs a restart: such a change is reported as ``requires_restart``
with its key, and the running value is kept.
"""

from __future__ import annotations

from typing import Any

import msgspec

from smsc.config import SmscConfig

#: Top-level keys applied live; every other one needs a restart.
LIVE = frozenset({"accounts", "router", "simulated_carriers", "admin", "shutdown_timeout"})
#: Keys under ``router`` applied live.
LIVE_ROUTER = frozenset({"carriers", "routes", "retry", "routing", "rates"})


class ReloadPlan(msgspec.Struct, frozen=True, kw_only=True):
    config: SmscConfig
    """What runs after the reload: the new config, restart-only keys kept as they were."""
    accounts_added: tuple[str, ...] = ()
    accounts_removed: tuple[str, ...] = ()
    accounts_changed: tuple[str, ...] = ()
    carriers_added: tuple[str, ...] = ()
    carriers_removed: tuple[str, ...] = ()
    carriers_changed: tuple[str, ...] = ()
    routes_changed: bool = False
    other_changed: tuple[str, ...] = ()
    """Live keys changed besides accounts, carriers and routes (``router.retry``, ...)."""
    requires_restart: tuple[str, ...] = ()
    """Keys whose change was not applied (``listen``, ``router.store``, ...)."""

    def applied(self) -> list[str]:
        """What changes, one line each, for the log and the API."""
        out = [f"account {name} added" for name in self.accounts_added]
        out += [f"account {name} changed" for name in self.accounts_changed]
        out += [f"account {name} removed" for name in self.accounts_removed]
        out += [f"carrier {name} added" for name in self.carriers_added]
        out += [f"carrier {name} changed" for name in self.carriers_changed]
        out += [f"carrier {name} removed" for name in self.carriers_removed]
        if self.routes_changed:
            out.append("routes changed")
        out += [f"{key} changed" for key in self.other_changed]
        return out


def _fields(struct: msgspec.Struct) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def _carrier_key(config: SmscConfig) -> dict[str, tuple[Any, Any]]:
    """Each carrier's router config and simulated config (None when it is a real one)."""
    sims = {s.name: s.config for s in config.simulated_carriers}
    return {c.name: (c, sims.get(c.name)) for c in config.router.carriers}


def plan(old: SmscConfig, new: SmscConfig) -> ReloadPlan:
    restart: list[str] = []
    keep: dict[str, Any] = {}
    for name, value in _fields(new).items():
        if name not in LIVE and value != getattr(old, name):
            restart.append(name)
            keep[name] = getattr(old, name)
    router_keep: dict[str, Any] = {}
    for name, value in _fields(new.router).items():
        if name not in LIVE_ROUTER and value != getattr(old.router, name):
            restart.append(f"router.{name}")
            router_keep[name] = getattr(old.router, name)
    if router_keep:
        keep["router"] = msgspec.structs.replace(new.router, **router_keep)
    effective = msgspec.structs.replace(new, **keep) if keep else new

    old_accounts = {a.system_id: a for a in old.accounts}
    new_accounts = {a.system_id: a for a in new.accounts}
    old_carriers = _carrier_key(old)
    new_carriers = _carrier_key(new)
    other = [
        key
        for key, changed in (
            ("router.retry", old.router.retry != new.router.retry),
            ("router.routing", old.router.routing != new.router.routing),
            ("router.rates", old.router.rates != new.router.rates),
            ("admin", old.admin != new.admin),
            ("shutdown_timeout", old.shutdown_timeout != new.shutdown_timeout),
        )
        if changed
    ]
    return ReloadPlan(
        config=effective,
        accounts_added=tuple(n for n in new_accounts if n not in old_accounts),
        accounts_removed=tuple(n for n in old_accounts if n not in new_accounts),
        accounts_changed=tuple(
            n for n, a in new_accounts.items() if n in old_accounts and old_accounts[n] != a
        ),
        carriers_added=tuple(n for n in new_carriers if n not in old_carriers),
        carriers_removed=tuple(n for n in old_carriers if n not in new_carriers),
        carriers_changed=tuple(
            n for n, c in new_carriers.items() if n in old_carriers and old_carriers[n] != c
        ),
        routes_changed=old.router.routes != new.router.routes,
        other_changed=tuple(other),
        requires_restart=tuple(restart),
    )
