"""A carrier outage with a deep queue (issue 13, section 2), end to end on loopback: ESME →
smsc (App) → router → a carrier that cannot take messages (its binds are refused, or its
breaker is open) → the carrier back.

Messages no carrier can take wait parked: each is routed once, then costs nothing. What
is counted to show it is the router's ``deferred`` event (one per message parked) and the
submits the carrier sees, never time. A wait for something that must NOT happen is closed
by a marker that must come after it (refused binds, EXPIRED receipts, trial submits).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from loops import Run
from minimal_mc import MinimalMC
from smsc_fixtures import (
    DEADLINE,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    app_config,
    assert_one_final_receipt_each,
    bind_client,
    final_receipts,
    prices,
    receipt_text,
    running_app,
    upstream,
    wait_final_receipts,
)

from smppcore.constants import CommandStatus, MessageState
from smsc.config import SmscConfig

N = 120


def outage_config(tmp_path: Path, port: int, **router: Any) -> SmscConfig:
    """One route, one carrier ("uk") at ``port`` (a MinimalMC), quick reconnects."""
    reconnect = {"min": 0.05, "max": 0.1, "jitter": 0.1}
    uk = upstream("uk", port=port, reconnect=reconnect, **router.pop("uk", {}))
    return app_config(
        tmp_path,
        {},
        [{"prefix": "", "carriers": prices(uk="0.001")}],
        router={"carriers": [uk], **router},
    )


def deferred(app: Any) -> int:
    return int(app.router.metrics.events.get(("deferred", ""), 0))


def test_a_backlog_waits_for_a_carrier_that_is_down_at_no_cost_then_drains_in_priority_order(
    run: Run, tmp_path: Path
) -> None:
    """The carrier refuses every bind (wrong password) while N messages of mixed priority
    and 3 with a 1 s validity are queued. With ``breaker_open`` 0.1 s, the old dispatcher
    routed the whole backlog again every 0.1 s; now each message is routed once, then
    parked: through a second and more of refused binds no message is looked at again, and
    the short-lived ones are reported EXPIRED on time. Then the carrier takes the bind:
    every other message is delivered once, highest priority first, in order within one."""

    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: "not-yet"}) as mc:
            config = outage_config(tmp_path, mc.port, health={"breaker_open": 0.1})
            async with running_app(config, wait_for=()) as app:
                assert app.router is not None
                router = app.router
                esme = await bind_client(app)
                resps = []
                for start in range(0, N, 40):  # within the client's window of 100
                    resps += await asyncio.gather(
                        *(
                            esme.submit(text=f"{i % 4} {i:03}".encode(), priority_flag=i % 4)
                            for i in range(start, start + 40)
                        )
                    )
                short = await asyncio.gather(
                    *(
                        esme.submit(text=b"short-lived", validity_period="000000000001000R")
                        for _ in range(3)
                    )
                )
                assert {r.command_status for r in resps + short} == {CommandStatus.ESME_ROK}
                ids = [r.message_id for r in resps]
                short_ids = [r.message_id for r in short]

                # Markers: the EXPIRED receipts (1 s on), and refused binds meanwhile.
                await wait_final_receipts(esme, short_ids)
                refused = len(mc.binds)
                await mc.wait_for(lambda: len(mc.binds) >= refused + 3, DEADLINE)
                for message_id in short_ids:
                    (pdu,) = final_receipts(esme)[message_id]
                    assert receipt_text(pdu).state == MessageState.EXPIRED
                assert router.pools["uk"].bound == 0
                assert router.queue.parked_count == N
                assert router.queue.ready_count == 0
                assert deferred(app) == N + 3, "each message routed once, then left alone"
                assert mc.submits == []

                mc.accounts[UPSTREAM_ID] = UPSTREAM_PASSWORD  # the carrier is back
                await wait_final_receipts(esme, ids)
                states = {receipt_text(p[0]).state for p in final_receipts(esme).values()}
                assert states == {MessageState.DELIVERED, MessageState.EXPIRED}
                assert_one_final_receipt_each(esme, ids + short_ids)
                texts = mc.texts()
                assert len(texts) == N, "each message sent once; the expired ones never"
                expected = sorted(texts, key=lambda t: (-int(t[0]), t))
                assert texts == expected, "priority order, FIFO within a priority"
                assert deferred(app) == N + 3
                assert (router.queue.parked_count, len(router.queue)) == (0, 0)
                await esme.close()

    run(main())


def test_an_open_breaker_lets_one_trial_message_through_per_period_not_the_backlog(
    run: Run, tmp_path: Path
) -> None:
    """The carrier is bound but stops answering (submits held): the window's submits time
    out, the breaker opens (1 failure), and the backlog parks. Every ``breaker_open``
    (0.3 s) ONE trial submit goes, times out, and the breaker opens again — the carrier
    sees one submit per trial, never the backlog. When it answers again, the next trial
    closes the breaker and everything is delivered once."""

    async def main() -> None:
        async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}) as mc:
            config = outage_config(
                tmp_path,
                mc.port,
                uk={"window": 5, "response_timeout": 0.2},
                health={"breaker_failures": 1, "breaker_open": 0.3},
                retry={"max_attempts": 20},
            )
            async with running_app(config) as app:
                assert app.router is not None
                router = app.router
                esme = await bind_client(app)
                mc.hold = True
                resps = await asyncio.gather(
                    *(esme.submit(text=f"held {i}".encode()) for i in range(40))
                )
                assert {r.command_status for r in resps} == {CommandStatus.ESME_ROK}
                ids = [r.message_id for r in resps]
                await mc.wait_for(lambda: len(mc.submits) >= 5, DEADLINE)  # the window, held
                # Three trials, one per breaker period, each timing out (1.5 s of timers
                # at least: the deadline is smsc's, not the MC's default 5 s):
                await mc.wait_for(lambda: len(mc.submits) >= 5 + 3, DEADLINE)
                assert len(mc.submits) == 5 + 3, "one submit per trial, not the backlog"
                assert router.queue.parked_count >= 40 - 1  # all but the trial in flight
                assert router.health["uk"].view(router.wall()).breaker != "closed"

                mc.hold = False
                mc.release()  # late answers to timed-out submits: ignored
                await wait_final_receipts(esme, ids)
                states = {receipt_text(p[0]).state for p in final_receipts(esme).values()}
                assert states == {MessageState.DELIVERED}
                assert_one_final_receipt_each(esme, ids)
                assert router.health["uk"].view(router.wall()).breaker == "closed"
                assert (router.queue.parked_count, len(router.queue)) == (0, 0)
                await esme.close()

    run(main())
