"""What a load test does: ``conf/scenarios/*.yaml`` and the ``smsc load`` flags, decoded once,
strictly, into :class:`LoadConfig`. ``conf/scenarios/README.md`` documents every key.

A scenario file and the command-line flags both become plain data first; the flags are
laid over the file's data and the result is decoded by :func:`smppcore.config.load_config`,
so an error always names the key's path (``$.binds.window``) and the reason.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from smppcore.accounts import Password, SystemId
from smppcore.config import load_config
from smppcore.receipt import IdStyle

Port = Annotated[int, Meta(ge=0, le=65535)]
Octet = Annotated[int, Meta(ge=0, le=255)]
Digits = Annotated[str, Meta(pattern=r"^[0-9]*$", max_length=20)]
Seconds = Annotated[float, Meta(gt=0, le=30 * 86_400)]


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The SMPP server under test and the account to bind with."""

    host: str = "127.0.0.1"
    port: Port = 2776
    """The default is where ``smsc carrier`` listens by default (account test/test)."""
    system_id: SystemId = "test"
    password: Password = "test"
    system_type: Annotated[str, Meta(max_length=12)] = ""


BindKind = Literal["transceiver", "transmitter+receiver"]


class Binds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many binds, of which type, and the limits of each."""

    count: Annotated[int, Meta(ge=1, le=10_000)] = 4
    """Transceiver binds, or transmitter+receiver pairs."""
    type: BindKind = "transceiver"
    window: Annotated[int, Meta(ge=1, le=65_535)] = 50
    """submit_sm in flight per bind at most."""
    response_timeout: Seconds = 30.0
    """A submit unanswered this long counts as a timeout (and its slot is freed)."""
    enquire_link_interval: Seconds | None = 30.0
    """Our enquire_link when the link is idle this long; unanswered within
    response_timeout, the bind is dropped and made again."""
    connect_timeout: Seconds = 5.0
    """Connect and bind at most this long; the first bind of the run failing is fatal."""
    reconnect_delay: Seconds = 0.2
    """First delay before making a dropped bind again; it doubles up to reconnect_delay_max."""
    reconnect_delay_max: Seconds = 5.0


class Load(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much: open loop (``rate``) or closed loop (``rate: null``), and how long."""

    rate: Annotated[float, Meta(gt=0, le=10_000_000)] | None = None
    """Messages per second, sent on schedule whatever the server does (open loop);
    null: every window kept full (closed loop, the server's maximum)."""
    ramp: Annotated[float, Meta(ge=0, le=86_400)] = 0.0
    """Seconds over which the rate climbs linearly from 0 to ``rate``."""
    duration: Seconds | None = 10.0
    """Seconds of sending; the run ends at ``duration`` or ``messages``, whichever first."""
    messages: Annotated[int, Meta(ge=1)] | None = None
    """Messages to send in all (a long message counts once)."""
    workers: Annotated[int, Meta(ge=1, le=256)] | None = None
    """Worker processes; default: the cores available (never more than binds)."""

    def __post_init__(self) -> None:
        if self.duration is None and self.messages is None:
            raise ValueError("duration: give duration, messages or both (a run must end)")


class Numbers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Addresses made of ``prefix`` + ``digits`` random digits, with their TON and NPI."""

    prefix: Digits = ""
    digits: Annotated[int, Meta(ge=0, le=15)] = 0
    ton: Octet = 1
    npi: Octet = 1

    def __post_init__(self) -> None:
        if not 1 <= len(self.prefix) + self.digits <= 20:
            raise ValueError("digits: prefix and digits must make 1 to 20 characters")


Coding = Literal["gsm7", "ucs2", "latin1", "ascii"]


class MixEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One kind of message and its share of the traffic."""

    weight: Annotated[float, Meta(ge=0)] = 1.0
    coding: Coding = "gsm7"
    """gsm7 (data_coding 0), ucs2 (8; generated texts include emoji), latin1 (3), ascii (1)."""
    length: Annotated[int, Meta(ge=1, le=30_000)] = 60
    """Characters of generated text; more than one SMS holds makes a long message."""
    long: Literal["udh", "payload"] = "udh"
    """A long message goes as UDH-concatenated submit_sm parts, or whole in message_payload."""
    texts: tuple[Annotated[str, Meta(min_length=1)], ...] = ()
    """Texts to send instead of generated ones (``length`` is then ignored)."""


def _default_mix() -> tuple[MixEntry, ...]:
    return (MixEntry(),)


class Traffic(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What each message looks like."""

    source: Numbers = Numbers(prefix="44770090", digits=4)
    destination: Numbers = Numbers(prefix="4479", digits=8)
    mix: tuple[MixEntry, ...] = msgspec.field(default_factory=_default_mix)
    registered_delivery: bool = True
    """Ask for a final delivery receipt (registered_delivery 1) and measure receipts."""
    priority: Annotated[int, Meta(ge=0, le=3)] = 0
    service_type: Annotated[str, Meta(max_length=5)] = ""
    variants: Annotated[int, Meta(ge=1, le=1000)] = 8
    """Different generated texts per mix entry."""

    def __post_init__(self) -> None:
        if not self.mix:
            raise ValueError("mix: at least one entry")
        if sum(e.weight for e in self.mix) <= 0:
            raise ValueError("mix: at least one weight must be > 0")


class Throttling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to do with ESME_RTHROTTLED and ESME_RMSGQFUL: back off the bind, and retry."""

    retry: bool = True
    """Send the refused submit again after the back-off (its latency keeps counting)."""
    max_retries: Annotated[int, Meta(ge=0, le=1000)] = 10
    backoff: Seconds = 0.05
    """First pause of the bind; doubles while refusals continue, up to backoff_max."""
    backoff_max: Seconds = 2.0


class Receipts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Receipt correlation."""

    grace: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    """Seconds after its submit within which a receipt must arrive, else it is missing.
    After the last submit the run waits at most this long for outstanding receipts."""
    max_tracked: Annotated[int, Meta(ge=0)] = 2_000_000
    """Messages awaiting a receipt at most (per worker); beyond it, counted as untracked."""
    submit_id: IdStyle = "as_is"
    """How to read the id of submit_sm_resp for matching (as_is, hex, decimal, upper,
    lower, strip_zeros)."""
    receipt_id: IdStyle = "as_is"
    """How to read the id in a receipt (receipted_message_id TLV, else the text's id:)."""


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the results go."""

    json: str | None = None
    """Write the full JSON report (figures, time series, parameters) here."""
    html: str | None = None
    """Write a self-contained HTML report with charts here (needs the ``report`` extra)."""
    png: str | None = None
    """Write the four charts as one PNG picture here (needs the ``report`` extra)."""
    progress: Literal["auto", "always", "never"] = "auto"
    """The live progress line on stderr: auto shows it only on a terminal."""
    title: Annotated[str, Meta(max_length=200)] = ""


class LoadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything ``smsc load`` needs."""

    target: Target = Target()
    binds: Binds = Binds()
    load: Load = Load()
    traffic: Traffic = Traffic()
    throttling: Throttling = Throttling()
    receipts: Receipts = Receipts()
    report: Report = Report()
    seed: int = 1
    """Seeds addresses, texts and the mix: two runs send the same traffic."""

    def __post_init__(self) -> None:
        if self.throttling.backoff_max < self.throttling.backoff:
            raise ValueError("throttling.backoff_max: must be >= throttling.backoff")
        if self.binds.reconnect_delay_max < self.binds.reconnect_delay:
            raise ValueError("binds.reconnect_delay_max: must be >= binds.reconnect_delay")


# --- reading ----------------------------------------------------------------------------


def decode_config(data: dict[str, Any], *, source: str = "") -> LoadConfig:
    """Decode plain data into a LoadConfig; errors name the key path."""
    return load_config(data, LoadConfig, source=source)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, making the missing levels (a flag over a file)."""
    *parents, last = path.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[last] = value
