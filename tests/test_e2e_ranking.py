"""End to end (issue 15): a cheaper carrier that delivers poorly loses its traffic to the
next one by cost per delivered message, once its receipts say so — and ``rank: price``
keeps it. An ESME → smsc (App) → router → carrier simulators over real SMPP binds; no
sleeps: each batch waits for its final receipts under a deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

from carrier_fixtures import Esme
from loops import Run
from smsc_fixtures import (
    FAST,
    SYSTEM_ID,
    app_config,
    bind_client,
    profile,
    running_app,
    stored,
    wait_final_receipts,
)

from smppcore.constants import CommandStatus
from smsc.app import App
from smsc.config import SmscConfig

# cheap delivers 40 %: 0.0010 / 0.4 = 0.0025 per delivered message, more than mid's 0.0015
POOR = profile(states={"DELIVRD": 0.4, "UNDELIV": 0.6})
ROUTES = [
    {
        "prefix": "",
        "carriers": [
            {"carrier": "cheap", "price": "0.0010"},
            {"carrier": "mid", "price": "0.0015"},
        ],
    }
]


async def batch(app: App, esme: Esme, n: int) -> list[str]:
    """``n`` submits, their final receipts awaited; the carrier each went to."""
    resps = await asyncio.gather(*(esme.submit("447700900001", text=b"hi") for _ in range(n)))
    assert all(r.command_status == CommandStatus.ESME_ROK for r in resps), resps
    ids = [r.message_id for r in resps]
    await wait_final_receipts(esme, ids)
    return [(await stored(app, i)).carrier for i in ids]


def test_a_poorly_delivering_cheap_carrier_loses_its_traffic_by_cost_per_delivered(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        config = app_config(tmp_path, {"cheap": POOR, "mid": FAST}, ROUTES)
        async with running_app(config) as app:
            esme = await bind_client(app)
            first = await batch(app, esme, 10)
            assert set(first) == {"cheap"}  # unmeasured: the prior (0.8) makes it cheapest
            for _ in range(6):  # its receipts come in: 40 % delivered
                last = await batch(app, esme, 10)
            assert set(last) == {"mid"}
            assert app.router is not None
            expl = app.router.explain("447700900001", SYSTEM_ID)
            assert expl.choice == "mid"
            cheap = next(c for c in expl.candidates if c.carrier == "cheap")
            assert cheap.role == "fallback"
            assert cheap.receipts >= 20
            assert cheap.delivery is not None
            assert cheap.delivery < 0.7
            assert cheap.cost_per_delivered is not None
            await esme.close()

    run1(main())


def test_rank_price_keeps_the_cheapest_whatever_it_delivers(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        config = app_config(
            tmp_path,
            {"cheap": POOR, "mid": FAST},
            ROUTES,
            router={"routing": {"rank": "price", "explore": 0}},
        )
        async with running_app(config) as app:
            esme = await bind_client(app)
            taken = [c for _ in range(7) for c in await batch(app, esme, 10)]
            assert set(taken) == {"cheap"}
            await esme.close()

    run1(main())


def test_the_cheap_carrier_wins_its_traffic_back_once_exploration_finds_it_recovered(
    run1: Run, tmp_path: Path
) -> None:
    """It loses its traffic while it delivers 40 %; then it delivers again (its simulator
    reloaded with a sound profile; its measures kept) and exploration, sending it a share
    of the messages while it has few recent receipts, measures that: it is first again."""

    def config(cheap: dict[str, object], explore: float) -> SmscConfig:
        routing = {"routing": {"explore": explore}}
        return app_config(tmp_path, {"cheap": cheap, "mid": FAST}, ROUTES, router=routing)

    now = [config(POOR, 0.0)]

    async def main() -> None:
        async with running_app(now[0], loader=lambda: now[0]) as app:
            esme = await bind_client(app)
            for _ in range(7):
                last = await batch(app, esme, 10)
            assert set(last) == {"mid"}
            now[0] = config(FAST, 0.2)
            await app.reload()
            for _ in range(100):  # each batch awaits its receipts: no sleep
                last = await batch(app, esme, 10)
                if set(last) == {"cheap"}:
                    break
            assert set(last) == {"cheap"}
            assert app.router is not None
            assert app.router.explain("447700900001", SYSTEM_ID).choice == "cheap"
            await esme.close()

    run1(main())
