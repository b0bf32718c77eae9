"""Rate cards on a running node: a reload reads the cards again (a card replaced by
``smsc rates import`` applies); a bad card refuses the whole reload, naming its line, and
the running prices stay."""

from __future__ import annotations

from pathlib import Path

import pytest
from loops import Run
from smsc_fixtures import SYSTEM_ID, app_config, running_app

from smppcore.config import ConfigError
from smsc.config import SmscConfig

ROUTES = [
    {
        "prefix": "",
        "carriers": [{"carrier": "a", "price": "0.0010"}, {"carrier": "b", "price": "0.0020"}],
    }
]


def test_a_reload_reads_the_cards_again_and_a_bad_card_refuses_it(
    run1: Run, tmp_path: Path
) -> None:
    card = tmp_path / "b.csv"
    card.write_text("prefix,price\n44,0.0015\n")
    rates = {"rates": {"cards": [{"carrier": "b", "file": str(card)}]}}

    def config() -> SmscConfig:
        return app_config(tmp_path, {"a": {}, "b": {}}, ROUTES, router=rates)

    async def main() -> None:
        async with running_app(config(), loader=config) as app:
            assert app.router is not None

            def price_of_b() -> tuple[str, str]:
                assert app.router is not None
                expl = app.router.explain("447700900001", SYSTEM_ID)
                b = next(c for c in expl.candidates if c.carrier == "b")
                return str(b.price), b.price_source

            assert price_of_b() == ("0.0015", "card")
            assert app.router.explain("447700900001", SYSTEM_ID).choice == "a"

            card.write_text("prefix,price\n44,0.0005\n")  # the carrier's new card
            await app.reload()
            assert price_of_b() == ("0.0005", "card")
            assert app.router.explain("447700900001", SYSTEM_ID).choice == "b"

            card.write_text("prefix,price\n44,0.0001\n4477,free\n")
            with pytest.raises(ConfigError, match=rf"{card}:3: price 'free' is not a decimal"):
                await app.reload()
            assert price_of_b() == ("0.0005", "card")  # nothing of the bad card

    run1(main())
