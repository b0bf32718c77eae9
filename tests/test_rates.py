"""Rate cards (issue 15): prices per carrier by E.164 prefix or MCC/MNC with effective dates
(the newest in effect applies; a future price takes effect at its time without a reload), a
currency per card converted once, CSV import that reports every bad row by its line and uses
nothing of a bad card, and a number-to-network map (ranges, ported numbers). Time is a
parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from router.config import (
    CarrierConfig,
    CarrierPrice,
    RateCardConfig,
    RatesConfig,
    Route,
    RouterConfig,
)
from router.health import HealthView
from router.model import Address, Message, RouteDecision
from router.rates import (
    NetworkMap,
    PriceBook,
    RateCardError,
    load_prices,
    parse_card,
)
from router.routing import AccountPolicy, Chooser, RouteTable, choose, explain
from smppcore.config import ConfigError, load_config

DEC_7 = datetime(2026, 12, 7, tzinfo=UTC).timestamp()


def test_the_longest_prefix_with_a_price_in_effect_applies() -> None:
    c = parse_card(
        [
            "prefix,price,valid_from\n",
            "44,0.0300,\n",
            "4477,0.0100,\n",
            "447712,0.0090,2030-01-01\n",
        ]
    )
    assert c.price("447700900001", DEC_7) == Decimal("0.0100")
    assert c.price("441234567", DEC_7) == Decimal("0.0300")
    # 447712's price is not in effect yet: the next longest prefix's is
    assert c.price("447712000000", DEC_7) == Decimal("0.0100")
    assert c.price("33123", DEC_7) is None


def test_a_future_dated_price_takes_effect_at_its_time() -> None:
    c = parse_card(
        [
            "prefix,price,valid_from\n",
            "4477,0.0100,2026-01-01\n",
            "4477,0.0080,2026-12-07T00:00:00Z\n",
            "4477,0.0120,1799193600\n",  # Unix seconds: 2026-12-07T00:00 + 30 days
        ]
    )
    assert c.price("447700900001", DEC_7 - 0.001) == Decimal("0.0100")
    assert c.price("447700900001", DEC_7) == Decimal("0.0080")
    assert c.price("447700900001", 1799193600 - 1) == Decimal("0.0080")
    assert c.price("447700900001", 1799193600) == Decimal("0.0120")
    assert c.price("447700900001", datetime(2025, 1, 1, tzinfo=UTC).timestamp()) is None


def test_routing_picks_up_a_future_price_without_a_reload() -> None:
    """One price book, asked at two instants: before Dec 7 mid is cheaper, from then cheap."""
    book = PriceBook(
        {
            "cheap": parse_card(
                ["prefix,price,valid_from\n", "44,0.0300,\n", "44,0.0050,2026-12-07\n"]
            ),
        }
    )
    table = RouteTable(
        [
            Route(
                prefix="44",
                carriers=(
                    CarrierPrice(carrier="cheap", price="0.0200"),  # the card's price wins
                    CarrierPrice(carrier="mid", price="0.0100"),
                ),
            )
        ]
    )
    views = {n: HealthView(carrier=n) for n in ("cheap", "mid")}
    m = Message(
        id="m", account="a", source=Address(5, 0, "S"), destination=Address(1, 1, "447700900001")
    )

    def at(now: float) -> object:
        return choose(
            m, table=table, policy=AccountPolicy(), health=views, pinned=None, now=now, prices=book
        )

    assert at(DEC_7 - 1) == RouteDecision("mid", Decimal("0.0100"), ("cheap",))
    assert at(DEC_7) == RouteDecision("cheap", Decimal("0.0050"), ("mid",))
    assert Chooser(table, views, {}, prices=book, now=DEC_7).choose(m, None) == at(DEC_7)
    expl = explain(
        "447700900001",
        "a",
        table=table,
        policy=AccountPolicy(),
        health=views,
        now=DEC_7,
        prices=book,
    )
    cheap = next(c for c in expl.candidates if c.carrier == "cheap")
    assert (cheap.price, cheap.price_source) == (Decimal("0.0050"), "card")


def test_mccmnc_prices_apply_through_the_network_map_ported_numbers_first() -> None:
    c = parse_card(["mccmnc,prefix,price\n", "23415,,0.0070\n", ",44,0.0300\n"])
    networks = NetworkMap({"447700": "23415", "447800": "23410"}, {"447800123456": "23415"})
    book = PriceBook({"cheap": c}, networks)
    assert book.prices(["cheap", "other"], "447700900001", 0) == (Decimal("0.0070"), None)
    assert book.prices(["cheap"], "447800000001", 0) == (Decimal("0.0300"),)  # 23410: no price
    assert book.prices(["cheap"], "447800123456", 0) == (Decimal("0.0070"),)  # ported to 23415


def test_a_card_in_another_currency_is_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "cheap.csv"
    path.write_text("prefix,price\n44,0.0100\n")
    cfg = RatesConfig(
        currency="EUR",
        conversion={"USD": "0.92"},
        cards=(RateCardConfig(carrier="cheap", file=str(path), currency="USD"),),
    )
    book = load_prices(cfg)
    assert book is not None
    assert book.prices(["cheap"], "4477", 0) == (Decimal("0.009200"),)


def test_a_bad_card_is_refused_with_the_line_of_every_bad_row() -> None:
    with pytest.raises(RateCardError) as caught:
        parse_card(
            [
                "prefix,price,valid_from\n",
                "44,0.0300,\n",
                "44x,0.0100,\n",
                "4477,cheap,\n",
                "\n",
                "4478,0.0100,next tuesday\n",
                "44,0.0400,\n",
                "4479,-1,\n",
                "4470,0.01\n",
            ],
            source="cheap.csv",
        )
    assert caught.value.errors == [
        (3, "prefix '44x' is not 1-15 digits"),
        (4, "price 'cheap' is not a decimal"),
        (6, "valid_from 'next tuesday' is not an ISO-8601 date/time or Unix seconds"),
        (7, "prefix 44 at this valid_from is already priced on line 2"),
        (8, "price '-1' is not a decimal of 0 or more"),
        (9, "2 fields, the header has 3"),
    ]
    assert str(caught.value).splitlines()[0] == "cheap.csv:3: prefix '44x' is not 1-15 digits"


def test_a_card_without_a_price_column_is_refused_at_its_header() -> None:
    with pytest.raises(RateCardError) as caught:
        parse_card(["prefix,cost\n", "44,1\n"], source="c.csv")
    assert caught.value.errors == [
        (1, "unknown column 'cost' (prefix, mccmnc, price, valid_from)"),
        (1, "no price column"),
    ]


def test_a_config_naming_a_bad_card_is_a_config_error_and_nothing_is_half_applied(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("prefix,price\n44,0.0100\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("prefix,price\n44,0.0100\n45,abc\n")
    data = {
        "carriers": [{"name": "a"}, {"name": "b"}],
        "routes": [{"prefix": "", "carriers": [{"carrier": "a", "price": "0.01"}]}],
        "rates": {
            "cards": [{"carrier": "a", "file": str(good)}, {"carrier": "b", "file": str(bad)}]
        },
    }
    cfg = load_config(data, RouterConfig)
    with pytest.raises(ConfigError) as caught:
        load_prices(cfg.rates)
    assert caught.value.path == "$.router.rates.cards[1].file"
    assert f"{bad}:3: price 'abc' is not a decimal" in caught.value.reason
    missing = {**data, "rates": {"cards": [{"carrier": "a", "file": str(tmp_path / "no.csv")}]}}
    with pytest.raises(ConfigError, match=r"cards\[0\]\.file: .*no\.csv: No such file"):
        load_prices(load_config(missing, RouterConfig).rates)


def test_the_config_refuses_a_card_of_an_unknown_carrier_or_currency() -> None:
    base = {"carriers": [{"name": "a"}]}
    with pytest.raises(ConfigError, match=r"rates\.cards\[0\]\.carrier: no carrier named 'z'"):
        load_config({**base, "rates": {"cards": [{"carrier": "z", "file": "x"}]}}, RouterConfig)
    with pytest.raises(ConfigError, match=r"no conversion from USD to EUR"):
        load_config(
            {**base, "rates": {"cards": [{"carrier": "a", "file": "x", "currency": "USD"}]}},
            RouterConfig,
        )
    assert CarrierConfig(name="a")  # carriers themselves are unchanged by rate cards


def test_a_card_of_100000_rows_imports(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = ["prefix,price,valid_from"]
    rows += [f"{4470000000 + k * 7},0.{k % 9000 + 1000:04d},2026-01-01" for k in range(100_000)]
    path.write_text("\n".join(rows) + "\n")
    book = load_prices(RatesConfig(cards=(RateCardConfig(carrier="a", file=str(path)),)))
    assert book is not None
    assert book.cards["a"].rows == 100_000
    last = Decimal(f"0.{99_999 % 9000 + 1000:04d}")
    assert book.prices(["a"], str(4470000000 + 99_999 * 7) + "55", DEC_7) == (last,)
    assert book.prices(["a"], "4470000001", DEC_7) == (None,)
