"""Configuration of ``smsc serve``; conf/smsc.example.yaml documents every key.

Decoded once, strictly, at the edge. The defaults are the embedded default that
``smsc serve`` runs without a file (the simulated carriers are filled in by smsc.app).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from router.cluster.config import ClusterConfig
from router.config import CarrierName, MicroUnits, PriceText, RouterConfig, price_of
from smppcore.accounts import AccountSettings, SystemId
from smppcore.session import SessionConfig
from smppcore.tls import FilePath, ServerTls
from smsc.http_config import AccountWebhooks, ApiKeyHash, HttpApiConfig, WebhooksConfig
from smsc.logs import LogFormat, LogLevel

Port = Annotated[int, Meta(ge=0, le=65535)]


class SmscAccount(AccountSettings, frozen=True, forbid_unknown_fields=True):
    """An ESME account: who may bind, how much it may send, where its traffic may go."""

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
    max_held: Annotated[int, Meta(ge=1, le=100_000_000)] = 100_000
    """Receipts and MO held for the account (no receive-capable bind, or one too slow)
    at most: from there on its submits that ask for a receipt are refused
    (ESME_RMSGQFUL) until a receiver takes some — the receipts already promised are all
    kept. Counted since start (a restart counts from zero until a drain empties the
    account's held items). Below ``router.store.held_max``."""
    api_keys: tuple[ApiKeyHash, ...] = ()
    """Hashes of the account's HTTP API keys (``smsc api-key`` makes one)."""
    webhooks: AccountWebhooks | None = None
    """Its receipts and MO as webhook calls instead of deliver_sm; null: over SMPP."""

    @property
    def price_ceiling(self) -> Decimal | None:
        return None if self.max_price is None else price_of(self.max_price)


class Listener(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 2775
    max_connections: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    """ESME connections open at once, bound or not. At the limit a new connection closes
    the oldest one that has not bound yet (or is closed itself when every one is bound)."""


class TlsListener(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A second ESME listener speaking SMPP over TLS (1.2 or later)."""

    host: str = "127.0.0.1"
    port: Port = 3550
    """3550 is the port IANA lists for SMPP over TLS (ssmpp)."""
    cert: FilePath
    """Our certificate chain, PEM."""
    key: FilePath
    """Its private key, PEM, not encrypted."""
    client_ca: FilePath | None = None
    """CA certificates, PEM: when set, clients must present a certificate they sign."""

    def server_tls(self) -> ServerTls:
        return ServerTls(cert=self.cert, key=self.key, client_ca=self.client_ca)


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bind-rate limiting per source address (see smsc/security.py)."""

    failed_binds: Annotated[int, Meta(ge=1, le=1000)] | None = 5
    """Failed binds (wrong password, unknown system_id) from one IP address that start a
    cool-down; null: no limit."""
    failed_bind_window: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    """... counted over this many seconds."""
    bind_cooldown: Annotated[float, Meta(gt=0, le=86_400)] = 300.0
    """Seconds every bind from that address is refused (ESME_RBINDFAIL) once it is."""
    max_tracked_peers: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    """Addresses remembered at most (the least recently seen are forgotten first)."""


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


class AdminConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The admin API (/api/v1 on the metrics port; see smsc/admin.py). Every endpoint but
    health, readiness and the OpenAPI document needs ``Authorization: Bearer <token>``;
    with no token configured those endpoints are off (403)."""

    token: Annotated[str, Meta(min_length=16, max_length=512)] | None = None
    """The bearer token (at least 16 characters); null: see token_file."""
    token_file: Annotated[str, Meta(min_length=1)] | None = None
    """A file whose first line is the token (read at start and at each reload)."""

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ValueError("token, token_file: give one or the other")

    def __repr__(self) -> str:  # never show the token
        return f"AdminConfig(token_file={self.token_file!r})"


LoggerName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")]


class LoggingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Log level, format and per-component levels (see smsc/logs.py)."""

    level: LogLevel = "info"
    """The root level; --log-level overrides."""
    format: LogFormat = "auto"
    """json (one object per line), text, or auto: text on a terminal, JSON otherwise."""
    components: dict[LoggerName, LogLevel] = msgspec.field(default_factory=dict)
    """Levels of named loggers (``router.upstream: debug``, ``router.messages:
    warning`` silences the per-message summary line)."""


class SmscConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: Annotated[int, Meta(ge=0, le=35)] = 0
    """This node's number, the first character of every message id (base 36); in a
    cluster, its id (unique: a node refuses to start while a live one has it)."""
    system_id: SystemId = "smsc"
    """Our system_id in bind responses."""
    listen: Listener = Listener()
    listen_tls: TlsListener | None = None
    """An SMPP-over-TLS listener next to ``listen``; null: none."""
    security: SecurityConfig = SecurityConfig()
    session: SessionConfig = SessionConfig(window=100, inbound_window=100, coalesce=0.002)
    accounts: tuple[SmscAccount, ...] = (SmscAccount(system_id="test", password="test"),)
    router: RouterConfig = RouterConfig()
    simulated_carriers: tuple[SimulatedCarrier, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()
    http_api: HttpApiConfig | None = None
    """The application HTTP API (smsc/http_api.py); null: off (on in the embedded default)."""
    webhooks: WebhooksConfig = WebhooksConfig()
    cluster: ClusterConfig = ClusterConfig()
    """Several nodes sharing Redis; default: this node alone."""
    shutdown_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    """Seconds a graceful shutdown may take overall; then what is left is abandoned (the
    store is still closed: queued messages are kept)."""
    logging: LoggingConfig = LoggingConfig()
    log_level: LogLevel | None = None
    """Deprecated spelling of ``logging.level`` (wins over it when set)."""

    @property
    def log_settings(self) -> LoggingConfig:
        """``logging`` with the deprecated ``log_level`` folded in."""
        if self.log_level is None:
            return self.logging
        return msgspec.structs.replace(self.logging, level=self.log_level)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, acct in enumerate(self.accounts):
            if acct.system_id in seen:
                raise ValueError(f"accounts[{i}].system_id: {acct.system_id!r} appears twice")
            seen.add(acct.system_id)
            if acct.max_held >= self.router.store.held_max:
                raise ValueError(
                    f"accounts[{i}].max_held: {acct.max_held} must be below"
                    f" router.store.held_max ({self.router.store.held_max})"
                )
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
