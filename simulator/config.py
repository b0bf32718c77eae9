"""Configuration of the carrier simulator (``smsc carrier``); conf/carrier.example.yaml
documents every key. Decoded once, strictly, by :func:`smppcore.config.load_config`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from smppcore.accounts import AccountSettings, Password, SystemId
from smppcore.constants import CommandStatus
from smppcore.session import SessionConfig
from smppcore.tls import ServerTls

Ms = Annotated[float, Meta(ge=0, le=86_400_000)]
Share = Annotated[float, Meta(ge=0, le=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Digits = Annotated[str, Meta(pattern=r"^[0-9]*$", max_length=20)]

StatWord = Literal["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN", "ACCEPTD"]
StatusName = Literal[
    "ESME_RSYSERR",
    "ESME_RMSGQFUL",
    "ESME_RTHROTTLED",
    "ESME_RINVDSTADR",
    "ESME_RINVSRCADR",
    "ESME_RX_T_APPN",
    "ESME_RX_P_APPN",
    "ESME_RX_R_APPN",
    "ESME_RSUBMITFAIL",
    "ESME_RINVMSGLEN",
    "ESME_RBINDFAIL",
    "ESME_RINVPASWD",
    "ESME_RINVSYSID",
    "ESME_RDELIVERYFAILURE",
    "ESME_RUNKNOWNERR",
]


def status_value(name: StatusName) -> int:
    return int(CommandStatus[name])


class Dist(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A delay in milliseconds drawn from a distribution.

    ``fixed``: ``ms``. ``uniform``: ``low``..``high``. ``normal``: ``mean``, ``stddev``.
    ``exponential``: ``mean``. ``lognormal``: ``median`` and ``p99`` (the tail you want).
    Draws are clamped to 0..``max`` (when set).
    """

    kind: Literal["fixed", "uniform", "normal", "exponential", "lognormal"] = "fixed"
    ms: Ms = 0.0
    low: Ms = 0.0
    high: Ms = 0.0
    mean: Ms = 0.0
    stddev: Ms = 0.0
    median: Ms = 0.0
    p99: Ms = 0.0
    max: Ms | None = None

    def __post_init__(self) -> None:
        if self.kind == "uniform" and self.high < self.low:
            raise ValueError("uniform: high must be >= low")
        if self.kind == "lognormal" and not (0 < self.median <= self.p99):
            raise ValueError("lognormal: need 0 < median <= p99")


class Match(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a rule matches; every condition given must hold."""

    destination_prefix: Digits | None = None
    source_prefix: Annotated[str, Meta(max_length=20)] | None = None
    source: Annotated[str, Meta(max_length=20)] | None = None
    text_contains: Annotated[str, Meta(min_length=1)] | None = None


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A deterministic outcome for matching messages (first matching rule wins)."""

    match: Match
    submit_status: StatusName | None = None
    """Refuse the submit with this status (no message is created)."""
    state: StatWord | None = None
    """Final state of the receipt."""
    error: Annotated[int, Meta(ge=0, le=999)] | None = None
    receipt_delay: Dist | None = None


class NumberRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Numbers made of ``prefix`` + ``digits`` random digits."""

    prefix: Digits = ""
    digits: Annotated[int, Meta(ge=0, le=15)] = 0


class MoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Mobile-originated traffic generated toward each bound receiver of the account."""

    rate: Annotated[float, Meta(ge=0, le=100_000)] = 0.0
    """Messages per second per account (0: only on demand)."""
    sources: NumberRange = NumberRange("4477009", 5)
    destinations: NumberRange = NumberRange("1234", 0)
    texts: tuple[str, ...] = ("Hello from the simulator", "STOP", "Καλημέρα", "Ok 👍")
    ucs2_share: Share = 0.2
    """Share of generated MO sent in UCS-2 even when GSM would carry it."""
    long_share: Share = 0.05
    """Share sent as a long (concatenated, UDH) message."""


class Misbehaviour(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Faults for resilience tests; all off by default."""

    drop_after_pdus: Annotated[int, Meta(ge=1)] | None = None
    """Close the connection abruptly after this many PDUs received."""
    black_hole_after_pdus: Annotated[int, Meta(ge=0)] | None = None
    """Stop reading and answering anything (enquire_link too) after this many PDUs."""
    refuse_binds: StatusName | None = None
    """Refuse every bind with this status."""


class Throttle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Throttling above a rate, as real carriers do: a token bucket of ``rate`` submits
    per second holding at most ``burst``; a submit finding it empty is answered
    ESME_RTHROTTLED (submit_sm, data_sm and submit_multi alike)."""

    rate: Annotated[float, Meta(gt=0, le=10_000_000)]
    """Submits per second taken."""
    burst: Annotated[int, Meta(ge=1)] | None = None
    """Submits that may come at once; null: a tenth of a second of ``rate`` (at least 1)."""
    per: Literal["bind", "account"] = "bind"
    """One bucket per bind (each connection gets ``rate``), or one for all the account's
    binds together."""

    @property
    def size(self) -> float:
        return float(self.burst) if self.burst is not None else max(1.0, self.rate / 10)


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a carrier behaves toward one account. Seeded: runs repeat."""

    seed: int = 1
    submit_latency: Dist = Dist("lognormal", median=1.0, p99=8.0, max=1000.0)
    """Delay before submit_sm_resp."""
    receipt_delay: Dist = Dist("lognormal", median=300.0, p99=4000.0, max=60_000.0)
    """Delay from submit to the final receipt."""
    enroute_delay: Dist = Dist("fixed", ms=50.0)
    """Delay of the ENROUTE intermediate notification (registered_delivery 0x10)."""
    states: dict[StatWord, Annotated[float, Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: {
            "DELIVRD": 0.92,
            "UNDELIV": 0.04,
            "EXPIRED": 0.02,
            "REJECTD": 0.01,
            "DELETED": 0.005,
            "UNKNOWN": 0.005,
        }
    )
    """Final state mix (weights, normalised)."""
    errors: dict[StatWord, Annotated[int, Meta(ge=0, le=999)]] = msgspec.field(
        default_factory=lambda: {"UNDELIV": 1, "EXPIRED": 27, "REJECTD": 11, "UNKNOWN": 34}
    )
    """err: code reported with each final state (DELIVRD reports 0)."""
    rules: tuple[Rule, ...] = ()
    submit_errors: dict[StatusName, Share] = msgspec.field(default_factory=dict)
    """Probability of refusing a submit with each status (at random, whatever the rate)."""
    throttle: Throttle | None = None
    """ESME_RTHROTTLED above a rate (per bind or per account); null: no such limit."""
    max_pending: Annotated[int, Meta(ge=1)] = 1_000_000
    """Messages awaiting their final state at most; beyond it, ESME_RMSGQFUL."""
    message_id: Literal["decimal", "hex", "uuid"] = "hex"
    misbehave: Misbehaviour = Misbehaviour()
    mo: MoConfig = MoConfig()

    def __post_init__(self) -> None:
        if sum(self.states.values()) <= 0:
            raise ValueError("states: at least one weight must be > 0")
        if sum(self.submit_errors.values()) > 1:
            raise ValueError("submit_errors: probabilities add up to more than 1")


class CarrierAccount(AccountSettings, frozen=True, forbid_unknown_fields=True):
    """An ESME account on the simulator."""

    profile: str = "default"


class HeldReceipts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Receipts and MO kept while an account has no receive-capable bind."""

    max: Annotated[int, Meta(ge=0)] = 100_000
    """Per account; the oldest is dropped beyond it."""
    ttl: Annotated[float, Meta(gt=0)] = 86_400.0
    """Seconds a held item is kept."""


class OutbindTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An ESME we connect to and send outbind (§2.2.1); it then binds as receiver."""

    host: str
    port: Port
    system_id: SystemId
    password: Password = ""
    retry_seconds: Annotated[float, Meta(gt=0)] = 5.0


class CarrierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything ``smsc carrier`` needs. The defaults are the embedded default."""

    host: str = "127.0.0.1"
    port: Port = 2776
    system_id: SystemId = "smscsim"
    """Our system_id in bind responses."""
    session: SessionConfig = SessionConfig(window=200, inbound_window=1000)
    accounts: tuple[CarrierAccount, ...] = (CarrierAccount(system_id="test", password="test"),)
    profiles: dict[str, Profile] = msgspec.field(default_factory=lambda: {"default": Profile()})
    held: HeldReceipts = HeldReceipts()
    max_messages: Annotated[int, Meta(ge=1)] = 1_000_000
    """Messages kept for query_sm / cancel_sm / replace_sm (oldest final ones dropped)."""
    admin_host: str = "127.0.0.1"
    admin_port: Port | None = None
    """HTTP port for /metrics and MO injection (POST /mo); off when null."""
    outbind: tuple[OutbindTarget, ...] = ()
    tls: ServerTls | None = None
    """SMPP over TLS on the listener (cert, key, client_ca); null: plain TCP."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, acct in enumerate(self.accounts):
            if acct.system_id in seen:
                raise ValueError(f"accounts[{i}]: system_id {acct.system_id!r} appears twice")
            seen.add(acct.system_id)
            if acct.profile not in self.profiles:
                raise ValueError(
                    f"accounts[{i}].profile: no profile named {acct.profile!r} "
                    f"(have: {', '.join(sorted(self.profiles))})"
                )
        for i, target in enumerate(self.outbind):
            if target.system_id not in seen:
                raise ValueError(f"outbind[{i}].system_id: no account {target.system_id!r}")
