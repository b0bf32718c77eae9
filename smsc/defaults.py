"""The embedded default that ``smsc serve`` runs without a file (and ``make run`` starts).

Three simulated carriers on loopback, reached through real SMPP binds, whose prices and
behaviour make least-cost choice and failover visible:

- ``cheap``: cheapest, flaky and limited — takes 300 submits a second (over both our
  binds; above that, ESME_RTHROTTLED, as real carriers throttle), refuses 4% at random
  with a temporary error, 12% of its messages end UNDELIV, and it refuses every
  destination starting 4917. The router finds its rate (router/aimd.py) and sends it
  about that much; the rest fails over to ``mid``;
- ``mid``: mid price, sound;
- ``premium``: dearest, reliable (99.5% DELIVRD), the last resort.

Routes: "44" (UK) and "49" (Germany) have their own prices; "" (everything else) too.
``smsc route --destination 4477009001 --account test`` (or GET /route) explains a choice.

Callback URLs given with a message (``callback_url``, Kannel's and Jasmin's ``dlr-url``)
may reach public addresses and this machine's loopback (``webhooks.callback_networks``);
a config file's default leaves loopback out (smsc/callback_guard.py).
"""

from __future__ import annotations

from typing import Any

from router.config import CarrierConfig, CarrierPrice, Route, RouterConfig
from smsc.callback_guard import LOCAL_NETWORKS
from smsc.config import SimulatedCarrier, SmscAccount, SmscConfig
from smsc.http_config import HttpApiConfig, WebhooksConfig


def _sim(system_id: str, profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "system_id": "sim",
        "accounts": [{"system_id": system_id, "password": "secret", "max_sessions": 16}],
        "profiles": {"default": profile},
        "session": {"window": 1000, "inbound_window": 1000},
    }


_FAST = {"kind": "lognormal", "median": 1.0, "p99": 6.0, "max": 500.0}
_RECEIPTS = {"kind": "lognormal", "median": 150.0, "p99": 1500.0, "max": 30_000.0}

SIMULATED = (
    SimulatedCarrier(
        "cheap",
        _sim(
            "smsc",
            {
                "seed": 11,
                "submit_latency": _FAST,
                "receipt_delay": _RECEIPTS,
                "states": {"DELIVRD": 0.85, "UNDELIV": 0.12, "EXPIRED": 0.03},
                "submit_errors": {"ESME_RSYSERR": 0.04},
                "throttle": {"rate": 300.0, "burst": 30, "per": "account"},
                "rules": [
                    {"match": {"destination_prefix": "4917"}, "submit_status": "ESME_RINVDSTADR"}
                ],
                "message_id": "decimal",
            },
        ),
    ),
    SimulatedCarrier(
        "mid",
        _sim(
            "smsc",
            {
                "seed": 12,
                "submit_latency": _FAST,
                "receipt_delay": _RECEIPTS,
                "states": {"DELIVRD": 0.95, "UNDELIV": 0.03, "EXPIRED": 0.02},
                "message_id": "hex",
            },
        ),
    ),
    SimulatedCarrier(
        "premium",
        _sim(
            "smsc",
            {
                "seed": 13,
                "submit_latency": _FAST,
                "receipt_delay": _RECEIPTS,
                "states": {"DELIVRD": 0.995, "UNDELIV": 0.005},
                "message_id": "uuid",
            },
        ),
    ),
)


def _carrier(name: str, submit_id: str = "as_is") -> CarrierConfig:
    return CarrierConfig(
        name=name,
        system_id="smsc",
        password="secret",
        binds=2,
        window=200,
        submit_id=submit_id,  # type: ignore[arg-type]
        receipt_id=submit_id,  # type: ignore[arg-type]
    )


def _prices(**prices: str) -> tuple[CarrierPrice, ...]:
    return tuple(CarrierPrice(carrier=c, price=p) for c, p in prices.items())


DEFAULT = SmscConfig(
    accounts=(SmscAccount(system_id="test", password="test", max_sessions=200),),
    router=RouterConfig(
        carriers=(_carrier("cheap"), _carrier("mid", "hex"), _carrier("premium")),
        routes=(
            Route(prefix="", carriers=_prices(cheap="0.0030", mid="0.0050", premium="0.0080")),
            Route(prefix="44", carriers=_prices(cheap="0.0025", mid="0.0040", premium="0.0070")),
            Route(prefix="49", carriers=_prices(cheap="0.0035", mid="0.0045", premium="0.0060")),
        ),
    ),
    simulated_carriers=SIMULATED,
    http_api=HttpApiConfig(),
    # Callback URLs given with a message may reach this machine's loopback too (a receiver
    # started next to `make run`); a config file's default is public addresses only.
    webhooks=WebhooksConfig(callback_networks=LOCAL_NETWORKS),
)
