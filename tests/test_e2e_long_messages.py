"""End to end (issue 15): long messages and spill-over, through an ESME → smsc (App) →
router → carrier simulators over real SMPP binds. No sleeps: each step awaits the
receipts it expects under a deadline; assertions are on counts, never on timings.

- a long message's pin goes once its parts are settled: the next message with the same
  UDH reference (a client's 257th to a number: references are 8 bits) is routed afresh;
- with the carrier a message's first part took paused, its other parts do not wait for
  it past ``pin_wait``: ``resend_all`` sends the whole message over the other carrier,
  ``fail_all`` gives a failure receipt for each part;
- a burst larger than the cheapest carrier's window: ``spill: wait`` keeps more of it on
  that carrier than ``spill: now``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from carrier_fixtures import Esme
from loops import Run
from prometheus_client.parser import text_string_to_metric_families
from smsc_fixtures import (
    FAST,
    app_config,
    bind_client,
    final_receipts,
    profile,
    receipt_text,
    running_app,
    stored,
    wait_final_receipts,
)

from smppcore.constants import CommandStatus, MessageState
from smsc.app import App

NUMBER = "447700900001"
#: A carrier whose receipts come late: its parts stay accepted, not final, meanwhile.
LATE = profile(receipt_delay={"kind": "fixed", "ms": 30_000})


def udh_part(ref: int, total: int, seq: int) -> bytes:
    return bytes((5, 0, 3, ref, total, seq)) + f"part {seq} of {total}".encode()


async def send_part(esme: Esme, ref: int, total: int, seq: int, **kw: Any) -> str:
    return await esme.submit_ok(NUMBER, text=udh_part(ref, total, seq), esm_class=0x40, **kw)


async def send_long(esme: Esme, ref: int, total: int) -> list[str]:
    return [await send_part(esme, ref, total, seq) for seq in range(1, total + 1)]


async def carriers_of(app: App, ids: list[str]) -> list[str]:
    return [(await stored(app, i)).carrier for i in ids]


async def scrape(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``GET /metrics``: each sample by name and labels."""
    url = f"http://127.0.0.1:{app.http_port}/metrics"
    async with aiohttp.ClientSession() as http, asyncio.timeout(5.0), http.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def router_of(app: App) -> Any:
    assert app.router is not None
    return app.router


def test_the_257th_long_message_to_a_number_does_not_inherit_an_old_pin(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        config = app_config(tmp_path, {"cheap": FAST, "mid": FAST})
        async with running_app(config) as app:
            esme = await bind_client(app)
            first = await send_long(esme, ref=7, total=2)
            await wait_final_receipts(esme, first)
            assert await carriers_of(app, first) == ["cheap", "cheap"]
            router = router_of(app)
            assert len(router.dispatcher.pins) == 0  # every part final: the pin went
            router.pause("cheap")
            again = await send_long(esme, ref=7, total=2)  # the same reference, wrapped
            await wait_final_receipts(esme, again)
            assert await carriers_of(app, again) == ["mid", "mid"]
            await esme.close()

    run1(main())


def test_with_the_carrier_paused_new_3_part_messages_go_over_the_other(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        config = app_config(tmp_path, {"cheap": FAST, "mid": FAST})
        async with running_app(config) as app:
            esme = await bind_client(app)
            warmup = await send_long(esme, ref=1, total=3)
            await wait_final_receipts(esme, warmup)
            router_of(app).pause("cheap")
            ids = [i for ref in range(10) for i in await send_long(esme, ref=ref, total=3)]
            await wait_final_receipts(esme, ids)
            assert set(await carriers_of(app, ids)) == {"mid"}
            assert router_of(app).queue.parked_count == 0
            await esme.close()

    run1(main())


@pytest.mark.parametrize("ack_after", ["enqueue", "store"])
def test_resend_all_a_message_whose_carrier_is_paused_midway_goes_whole_over_the_other(
    run1: Run, tmp_path: Path, ack_after: str
) -> None:
    async def main() -> None:
        routing = {
            "routing": {"explore": 0, "pin_wait": 0.2, "long_message_failure": "resend_all"},
            "ack_after": ack_after,
        }
        config = app_config(tmp_path, {"cheap": LATE, "mid": FAST}, router=routing)
        async with running_app(config) as app:
            esme = await bind_client(app)
            router = router_of(app)
            first = await send_part(esme, ref=9, total=3, seq=1, registered_delivery=0x11)
            await esme.receipt_for(first, final=False)  # ENROUTE: cheap accepted it
            router.pause("cheap")
            rest = [await send_part(esme, ref=9, total=3, seq=s) for s in (2, 3)]
            ids = [first, *rest]
            await wait_final_receipts(esme, ids)
            assert await carriers_of(app, ids) == ["mid", "mid", "mid"]
            receipts = final_receipts(esme)
            assert [receipt_text(receipts[i][0]).state for i in ids] == [MessageState.DELIVERED] * 3
            assert router.metrics.long_messages == {("cheap", "resent"): 1}
            await esme.close()

    run1(main())


def test_fail_all_a_message_whose_carrier_is_paused_midway_fails_with_a_receipt_each(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        routing = {"routing": {"explore": 0, "pin_wait": 0.2, "long_message_failure": "fail_all"}}
        config = app_config(tmp_path, {"cheap": LATE, "mid": FAST}, router=routing)
        async with running_app(config) as app:
            esme = await bind_client(app)
            router = router_of(app)
            first = await send_part(esme, ref=9, total=3, seq=1, registered_delivery=0x11)
            await esme.receipt_for(first, final=False)  # ENROUTE: cheap accepted it
            router.pause("cheap")
            rest = [await send_part(esme, ref=9, total=3, seq=s) for s in (2, 3)]
            ids = [first, *rest]
            await wait_final_receipts(esme, ids)
            receipts = final_receipts(esme)
            assert [len(receipts[i]) for i in ids] == [1, 1, 1]
            assert {receipt_text(receipts[i][0]).state for i in ids} == {MessageState.UNDELIVERABLE}
            assert router.metrics.carrier("mid").decisions == 0
            assert router.metrics.long_messages == {("cheap", "failed_all"): 1}
            samples = await scrape(app)
            failed = frozenset({("carrier", "cheap"), ("action", "failed_all")})
            assert samples[("smsc_route_long_messages_total", failed)] == 1
            assert samples[("smsc_route_pinned_long_messages", frozenset())] == 0
            await esme.close()

    run1(main())


# --- spill-over -------------------------------------------------------------------------

#: cheap answers each submit after 50 ms, with one bind of window 4: a burst overflows it.
SLOW = profile(submit_latency={"kind": "fixed", "ms": 50})


async def burst(spill: str, tmp_path: Path) -> tuple[int, int, dict[tuple[str, str], int]]:
    """40 messages at once: how many went over cheap, over mid, and the spills counted."""
    routing = {"routing": {"explore": 0, "spill": spill, "spill_wait": 30.0}}
    config = app_config(
        tmp_path / spill,
        {"cheap": SLOW, "mid": FAST},
        upstreams={"cheap": {"window": 4}},
        router=routing,
    )
    async with running_app(config) as app:
        esme = await bind_client(app)
        resps = await asyncio.gather(*(esme.submit(NUMBER, text=b"hi") for _ in range(40)))
        assert all(r.command_status == CommandStatus.ESME_ROK for r in resps)
        ids = [r.message_id for r in resps]
        await wait_final_receipts(esme, ids)
        taken = await carriers_of(app, ids)
        samples = await scrape(app)
        await esme.close()
        spills = {
            (dict(labels)["carrier"], dict(labels)["reason"]): int(value)
            for (name, labels), value in samples.items()
            if name == "smsc_route_spill_total"
        }
        return taken.count("cheap"), taken.count("mid"), spills


def test_a_burst_with_spill_wait_keeps_more_on_the_cheapest_than_spill_now(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        (tmp_path / "now").mkdir()
        (tmp_path / "wait").mkdir()
        now_cheap, now_mid, now_spills = await burst("now", tmp_path)
        wait_cheap, wait_mid, wait_spills = await burst("wait", tmp_path)
        assert now_cheap + now_mid == wait_cheap + wait_mid == 40
        assert wait_cheap > now_cheap
        assert (wait_cheap, wait_mid, wait_spills) == (40, 0, {})
        assert now_spills.get(("cheap", "window"), 0) == now_mid > 0

    run1(main())
