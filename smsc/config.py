"""Configuration of ``smsc serve``; conf/smsc.example.yaml documents every key.

Decoded once, strictly, at the edge. The defaults are the embedded default that
``smsc serve`` runs without a file (the simulated carriers are filled in by smsc.app).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from router.config import CarrierName, MicroUnits, PriceText, RouterConfig, price_of
from smppcore.accounts import Account, BindType, Password, SystemId
from smppcore.session import SessionConfig

Port = Annotated[int, Meta(ge=0, le=65535)]


class SmscAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An ESME account: who may bind, how much it may send, where its traffic may go."""

    system_id: SystemId
    password: Password = ""
    bind_types: tuple[BindType, ...] = (
        BindType.TRANSMITTER,
        BindType.RECEIVER,
        BindType.TRANSCEIVER,
    )
    max_sessions: Annotated[int, Meta(ge=1, le=100_000)] = 100
    allow_cidrs: tuple[str, ...] = ()
    """Peers allowed to bind (``10.0.0.0/8``, ``127.0.0.1``); empty: any."""
    throughput: Annotated[float, Meta(gt=0)] | None = None
    """Submits per second over all the account's sessions (token bucket); over it,
    ESME_RTHROTTLED. null: no limit."""
    burst: Annotated[int, Meta(ge=1)] | None = None
    """Bucket size; default one second of throughput."""
    max_window: Annotated[int, Meta(ge=1, le=10_000)] = 100
    """Requests a session may have unanswered; beyond it, ESME_RTHROTTLED."""
    default_priority: Annotated[int, Meta(ge=0, le=3)] = 0
    """Added to the submit's priority_flag (capped at 3)."""
    max_price: PriceText | MicroUnits | None = None
    """Never route over a carrier dearer than this (per part)."""
    allowed_carriers: tuple[CarrierName, ...] | None = None
    """Only these carriers; null: any."""
    receipt_ttl: Annotated[float, Meta(gt=0)] = 172_800.0
    """Seconds a receipt or MO waits for a receive-capable bind before it is dropped."""

    def __post_init__(self) -> None:
        self.auth()

    def __repr__(self) -> str:  # never show the password
        return f"SmscAccount(system_id={self.system_id!r})"

    def auth(self) -> Account:
        return Account(
            system_id=self.system_id,
            password=self.password,
            bind_types=self.bind_types,
            max_sessions=self.max_sessions,
            allow_cidrs=self.allow_cidrs,
        )

    @property
    def price_ceiling(self) -> Decimal | None:
        return None if self.max_price is None else price_of(self.max_price)


class Listener(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 2775


class SimulatedCarrier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A carrier simulator started in-process on loopback and reached through real SMPP
    binds, like any carrier. ``config`` is a carrier simulator config (see
    conf/carrier.example.yaml); its host/port are chosen by smsc (127.0.0.1, a free port)
    and written into the router carrier of the same name."""

    name: CarrierName
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port | None = 9775
    """HTTP port for /metrics and /route (route explanations); null: off."""


class SmscConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: Annotated[int, Meta(ge=0, le=35)] = 0
    """This node's number, the first character of every message id (base 36)."""
    system_id: SystemId = "smsc"
    """Our system_id in bind responses."""
    listen: Listener = Listener()
    session: SessionConfig = SessionConfig(window=100, inbound_window=100)
    accounts: tuple[SmscAccount, ...] = (SmscAccount(system_id="test", password="test"),)
    router: RouterConfig = RouterConfig()
    simulated_carriers: tuple[SimulatedCarrier, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, acct in enumerate(self.accounts):
            if acct.system_id in seen:
                raise ValueError(f"accounts[{i}].system_id: {acct.system_id!r} appears twice")
            seen.add(acct.system_id)
            for name in acct.allowed_carriers or ():
                if name not in {c.name for c in self.router.carriers}:
                    raise ValueError(f"accounts[{i}].allowed_carriers: no carrier named {name!r}")
        sim_names = [s.name for s in self.simulated_carriers]
        for i, name in enumerate(sim_names):
            if name in sim_names[:i]:
                raise ValueError(f"simulated_carriers[{i}].name: {name!r} appears twice")
            if name not in {c.name for c in self.router.carriers}:
                raise ValueError(
                    f"simulated_carriers[{i}].name: no router carrier named {name!r} to "
                    "reach it (add one under router.carriers)"
                )
