"""Configuration of the router: carriers (upstream binds), routes and prices, queue, retries,
store. Decoded once, strictly (smppcore.config.load_config); errors name the key's path."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from smppcore.accounts import Password, SystemId
from smppcore.tls import ClientTls

PriceText = Annotated[str, Meta(pattern=r"^[0-9]{1,9}(\.[0-9]{1,9})?$")]
MicroUnits = Annotated[int, Meta(ge=0, le=10**15)]
Prefix = Annotated[str, Meta(pattern=r"^[0-9]{0,15}$")]
CarrierName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
Seconds = Annotated[float, Meta(gt=0, le=86_400)]
IdFormat = Literal["as_is", "hex", "decimal", "upper", "lower", "strip_zeros"]


def price_of(value: str | int) -> Decimal:
    """A configured price: a quoted decimal string, or an integer of micro-units."""
    if isinstance(value, int):
        return Decimal(value) / Decimal(1_000_000)
    return Decimal(value)


#: A carrier's ``receipt_timeout`` unless it says otherwise; also the deadline of a
#: message recovered for a carrier no longer configured.
DEFAULT_RECEIPT_TIMEOUT: Final = 14_400.0


class Reconnect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Backoff between reconnects of one upstream bind: doubles from ``min`` to ``max``,
    each wait with up to ``jitter`` (a share) added at random."""

    min: Seconds = 0.5
    max: Seconds = 30.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.3


class AdaptiveRate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the send rate to a carrier adapts to its throttling (router/aimd.py), per bind:
    each ESME_RTHROTTLED or ESME_RMSGQFUL cuts the bind's rate to ``decrease`` times what
    it was; while that rate is used up it climbs back linearly, by ``increase`` times the
    rate at the last cut per second (faster once past it), never above the carrier's
    ``rate``. With no ``rate``, a bind has no limit until its first throttle, which starts
    it from the rate measured over the last ``window`` seconds. With the defaults a carrier
    that throttles above N msg/s is sent some 90% of N (measured: 283 of 300 msg/s), the
    rest failing over to the next carrier at once."""

    decrease: Annotated[float, Meta(gt=0, lt=1)] = 0.7
    """A throttle multiplies the bind's rate by this."""
    increase: Annotated[float, Meta(gt=0, le=10)] = 0.1
    """While the rate is used up, it grows by this share of the rate at the last cut per
    second (0.1: 30% back in 3 s)."""
    min_rate: Annotated[float, Meta(gt=0)] = 1.0
    """Messages per second per bind never cut below; a throttle there holds the bind back
    for ``throttle_pause``."""
    burst: Annotated[float, Meta(gt=0, le=10)] = 0.05
    """Seconds of the current rate that may leave at once (at least one message)."""
    window: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    """Seconds over which the send rate is measured while there is no limit yet."""


class CarrierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One upstream SMSC we bind to as an ESME."""

    name: CarrierName
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 2775
    system_id: SystemId = "smsc"
    password: Password = ""
    system_type: Annotated[str, Meta(max_length=12)] = ""
    binds: Annotated[int, Meta(ge=1, le=64)] = 2
    """Connections to keep up."""
    bind_mode: Literal["transceiver", "tx+rx"] = "transceiver"
    """One transceiver per connection, or a transmitter plus a receiver per ``binds``."""
    window: Annotated[int, Meta(ge=1, le=10_000)] = 100
    """Submits in flight per bind."""
    rate: Annotated[float, Meta(gt=0)] | None = None
    """Submits per second for the whole carrier (token bucket); null: no limit. The rate
    actually used adapts below it to the carrier's throttling (``adaptive``)."""
    burst: Annotated[int, Meta(ge=1)] | None = None
    response_timeout: Seconds = 10.0
    enquire_link_interval: Seconds = 30.0
    coalesce: Annotated[float, Meta(ge=0, le=0.1)] = 0.002
    """Seconds a submit may wait to share one write with those that follow (fewer, fuller
    writes and reads on both sides at moderate rates); 0: written at the end of the loop
    turn."""
    throttle_pause: Seconds = 1.0
    """How long a bind holds back after ESME_RTHROTTLED or ESME_RMSGQFUL once its rate is
    down to ``adaptive.min_rate`` (above it, a throttle cuts the rate instead)."""
    adaptive: AdaptiveRate = AdaptiveRate()
    """How the send rate adapts to the carrier's throttling."""
    reconnect: Reconnect = Reconnect()
    submit_id: IdFormat = "as_is"
    """How this carrier writes ids in submit_sm_resp (for receipt correlation)."""
    receipt_id: IdFormat = "as_is"
    """How it writes them in receipts (hex in one, decimal in the other is common)."""
    mo_account: SystemId | None = None
    """The account that receives mobile-originated messages arriving from this carrier."""
    receipt_timeout: Annotated[float, Meta(gt=0, le=30 * 86_400)] = DEFAULT_RECEIPT_TIMEOUT
    """Seconds after the carrier accepted a message (or after a restart found it accepted)
    to wait for its final receipt (4 h); then the message is final as
    ``receipt_timeout_state`` and the client gets that receipt. Never past the message's
    validity: at ``expires_at`` it is final as EXPIRED."""
    receipt_timeout_state: Literal["UNKNOWN", "EXPIRED", "UNDELIVERABLE"] = "UNKNOWN"
    """The final state of a message whose receipt did not come within ``receipt_timeout``."""
    tls: ClientTls | None = None
    """SMPP over TLS to this carrier (ca, cert, key, server_hostname, verify); null: TCP."""


class CarrierPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    carrier: CarrierName
    price: PriceText | MicroUnits
    """Per message part: a quoted decimal ("0.0045") or integer micro-units (4500)."""

    @property
    def amount(self) -> Decimal:
        return price_of(self.price)


Rank = Literal["price", "delivered_cost"]
Share = Annotated[float, Meta(ge=0, le=1)]


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Destinations starting with ``prefix`` (E.164 digits, MCC/MNC style) may go to these
    carriers at these prices. The longest matching prefix wins; "" matches everything."""

    prefix: Prefix
    carriers: Annotated[tuple[CarrierPrice, ...], Meta(min_length=1)]
    accounts: tuple[SystemId, ...] = ()
    """Only for these accounts (an override); empty: every account."""
    rank: Rank | None = None
    """How this route orders its carriers; null: ``routing.rank``."""
    max_latency: Seconds | None = None
    """Service level: a carrier whose measured submit_sm_resp latency is above this many
    seconds is excluded from the route (not merely ranked lower)."""
    min_delivery: Share | None = None
    """Service level: a carrier whose measured share of receipts DELIVRD is below this is
    excluded from the route."""


class RoutingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How carriers are ranked (router/routing.py)."""

    rank: Rank = "delivered_cost"
    """``delivered_cost``: by price per part ÷ the carrier's estimated delivery rate (what
    a delivered message costs); ``price``: by price alone. Per route: ``routes[].rank``."""
    explore: Annotated[float, Meta(ge=0, le=0.5)] = 0.02
    """Share of messages sent to an eligible carrier other than the first (the one with
    the fewest recent receipts), so that every carrier's delivery rate stays measured."""
    explore_until: Annotated[float, Meta(ge=0)] | None = 50.0
    """A carrier with this many recent (decayed) receipts is measured enough and is not
    explored (50: about one message every 2 s with the default 60 s window); null:
    explore whatever the receipts."""
    prior_delivery: Share = 0.8
    """The delivery rate assumed of a carrier with no receipts; measured receipts outweigh
    it as they come (and it returns as they age): nothing unmeasured is thought perfect."""
    prior_weight: Annotated[float, Meta(gt=0, le=10_000)] = 10.0
    """How many receipts ``prior_delivery`` counts for."""
    spill: Literal["now", "wait", "never"] = "now"
    """When the first choice's windows are full (or its rate used up) and another eligible
    carrier could take the message: ``now`` sends it to the next one at once; ``wait``
    holds it for a slot of the first choice until it has waited ``spill_wait`` seconds
    since it was due (submitted, or its scheduled time), then spills; ``never`` always
    waits for the first choice (others take messages only when it is unavailable or fails
    them). Counted in ``smsc_route_spill_total{carrier,reason}``."""
    spill_wait: Annotated[float, Meta(ge=0, le=3600)] = 0.05
    """Seconds a due message waits for a slot of its first choice with ``spill: wait``."""
    long_message_failure: Literal["fail_all", "resend_all"] = "fail_all"
    """When the carrier a long message's parts are pinned to fails one part for good
    (refused permanently, retries exhausted) or stays unavailable past ``pin_wait`` while
    it holds parts of it already: ``fail_all`` fails every part (a failure receipt each,
    the parts it accepted included); ``resend_all`` sends the whole message again over the
    next carrier (falling back to ``fail_all`` when there is none)."""
    pin_wait: Annotated[float, Meta(gt=0, le=3600)] = 5.0
    """Seconds a part waits for its pinned carrier while that one is unavailable (paused,
    no bind, breaker open); then the message is routed elsewhere whole (see
    ``long_message_failure``)."""
    pin_idle: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    """Seconds without any part routed or answered after which a long message's pin is
    dropped (a pin goes as soon as every part is accepted or final)."""
    max_pins: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Long messages pinned at most; beyond it the least recently used pin is dropped."""


class RateCardConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One carrier's rate card, a CSV file (router/rates.py)."""

    carrier: CarrierName
    file: Annotated[str, Meta(min_length=1)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] | None = None
    """The card's currency; null: ``rates.currency``."""


class RatesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prices from carriers' rate cards, in one currency; a card's price for a destination
    replaces the route's configured price for that carrier."""

    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] = "EUR"
    """The currency routing compares prices in (and the routes' prices are in)."""
    conversion: dict[Annotated[str, Meta(pattern=r"^[A-Z]{3}$")], PriceText] = {}
    """Units of ``currency`` per unit of another currency (USD: "0.92")."""
    cards: tuple[RateCardConfig, ...] = ()
    networks: str | None = None
    """CSV of number ranges: prefix,mccmnc (the network a number belongs to)."""
    ported: str | None = None
    """CSV of ported numbers: number,mccmnc (beats ``networks``)."""


class HealthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What makes a carrier unhealthy, and the circuit breaker."""

    window_seconds: Seconds = 60.0
    """Rates and latency are measured over roughly this long (decaying averages)."""
    min_acceptance: Annotated[float, Meta(ge=0, le=1)] = 0.5
    """Below this share of submits accepted, the carrier is skipped while others are healthy."""
    min_delivery: Annotated[float, Meta(ge=0, le=1)] = 0.3
    """Below this share of receipts DELIVRD, likewise."""
    max_latency: Seconds = 5.0
    """Above this submit_sm_resp latency, likewise."""
    breaker_failures: Annotated[int, Meta(ge=1)] = 20
    """Consecutive failures (temporary rejects, timeouts, drops) that open the breaker."""
    breaker_open: Seconds = 10.0
    """Seconds the breaker stays open before one trial message goes through."""


class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_attempts: Annotated[int, Meta(ge=1, le=20)] = 4
    """Upstream submits per message at most, over all carriers."""
    default_validity: Annotated[float, Meta(gt=0, le=30 * 86_400)] = 172_800.0
    """Validity of a message that did not set validity_period (48 h)."""


class IntakeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Intake pacing: when messages arrive faster than they leave, answer submits later
    (the clients' windows then slow them down) instead of queueing without end."""

    pace_above: Annotated[int, Meta(ge=0)] = 2000
    """Ready messages in the queue above which a new submit waits for room before it is
    queued and answered, while a carrier is bound to take them; 0 = never."""
    max_wait: Annotated[float, Meta(gt=0, le=60)] = 1.0
    """Seconds a submit waits for room at most; then it is queued anyway (``queue_max``
    still bounds the queue)."""


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "smsc.db"
    """SQLite file (WAL). ":memory:" keeps nothing across restarts."""
    batch_max: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    """Records per batch at most (SQLite: a transaction; Redis: a pipeline); None: the
    backend's own, 2,000 on SQLite, 10,000 on Redis (where a batch is not a transaction:
    its fixed cost is a script call per bucket, so larger batches cost less per record)."""
    queue_max: Annotated[int, Meta(ge=1)] = 200_000
    """Records waiting for the writer at most; beyond it, submits are refused (MSGQFUL) and
    so are held deliveries (MO or a receipt for an account with no receiver: the carrier's
    deliver_sm is answered ESME_RX_T_APPN, to be sent again later). State changes of
    messages already accepted are never refused, but count against the bound."""
    keep_days: Annotated[float, Meta(gt=0)] = 7.0
    """Final messages are kept this long for query_sm, then purged (days; fractions allowed)."""
    held_max: Annotated[int, Meta(ge=1)] = 1_000_000
    """Held receipts and MO kept per account at most, a last resort against a full disk:
    beyond it the oldest are dropped (smsc_store_held_dropped_total; logged when an
    account starts and stops dropping). Accounts refuse new work well before
    (``max_held``)."""
    commit_interval: Annotated[float, Meta(ge=0, le=1)] = 0.02
    """Seconds the writer gathers records before a transaction (group commit); it writes at
    once when an ack (``ack_after: store``) or a read waits, or a batch is full. 0: at once."""
    purge_interval: Annotated[float, Meta(ge=0, le=86_400)] = 300.0
    """Seconds between purges: final messages older than ``keep_days`` and held deliveries
    (receipts, MO) past their expiry (the account's ``receipt_ttl``) are deleted, the
    latter counted. 0: never (the file then grows without end)."""
    purge_batch: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    """Rows a purge deletes per writer transaction; its transactions alternate with the
    writer's batches, so a large purge never holds writes up for long."""
    read_timeout: Annotated[float, Meta(gt=0, le=600)] = 5.0
    """Seconds a read (query_sm, cancel_sm, replace_sm, a receipt's lookup, held deliveries,
    a flush) waits for the store at most, queued writes it must see included. Past it the
    read fails and the caller answers a temporary error (ESME_RSYSERR to the client; the
    receipt or MO is retried later)."""
    retry_max: Annotated[float, Meta(gt=0, le=600)] = 2.0
    """While the database cannot be written (disk full, read-only, I/O errors) the writer
    keeps its records and tries again, the wait doubling from 0.05 s up to this many
    seconds; meanwhile new submits and held deliveries are refused with a temporary error."""


class RouterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    carriers: tuple[CarrierConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    queue_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Messages waiting to be sent upstream at most; beyond it, ESME_RMSGQFUL."""
    ack_after: Literal["enqueue", "store"] = "enqueue"
    """When we acknowledge what we are given: ``enqueue`` answers submit_sm once the
    message is queued in memory and a carrier's deliver_sm (receipt, MO) at once; ``store``
    answers submit_sm once the message is committed, writes which carrier a message is
    handed to before its submit_sm goes out, and answers a carrier's deliver_sm ESME_ROK
    only once its effect is durable (the receipt delivered to the client or held in the
    store, and the final state committed), ESME_RX_T_APPN otherwise (the carrier resends)."""
    intake: IntakeConfig = IntakeConfig()
    retry: RetryConfig = RetryConfig()
    health: HealthConfig = HealthConfig()
    routing: RoutingConfig = RoutingConfig()
    rates: RatesConfig = RatesConfig()
    store: StoreConfig = StoreConfig()

    def __post_init__(self) -> None:
        names = [c.name for c in self.carriers]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"carriers[{i}].name: {name!r} appears twice")
        known = set(names)
        from router.routing import RouteTable  # the table checks duplicates, naming routes[i]

        RouteTable(self.routes)
        for i, route in enumerate(self.routes):
            for j, cp in enumerate(route.carriers):
                if cp.carrier not in known:
                    raise ValueError(
                        f"routes[{i}].carriers[{j}].carrier: no carrier named {cp.carrier!r}"
                    )
        for i, card in enumerate(self.rates.cards):
            if card.carrier not in known:
                raise ValueError(f"rates.cards[{i}].carrier: no carrier named {card.carrier!r}")
            currency = card.currency or self.rates.currency
            if currency != self.rates.currency and currency not in self.rates.conversion:
                raise ValueError(
                    f"rates.cards[{i}].currency: no conversion from {currency} "
                    f"to {self.rates.currency} (rates.conversion)"
                )
