"""Redis itself fails under a two-node cluster: killed (SIGKILL) in the middle of the load
and started again on the same port and data (AOF, ``appendfsync always``). With
``ack_after: store`` what a node acknowledged was in Redis's append-only file before its
submit_sm_resp: nothing acknowledged is lost — every acknowledged message reaches a final
state and its one receipt; submits while Redis is away are refused ESME_RSYSERR (never
acknowledged, never sent), the ESMEs' sessions stay up, and the nodes recover by themselves
(nobody tells them Redis is back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from carrier_fixtures import Esme
from cluster_fixtures import node_config, running_carrier, two_nodes
from loops import Run
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401
from smsc_fixtures import DEADLINE, bind_client, final_receipts, receipt_text, running_app

from smppcore.constants import CommandStatus, MessageState
from smsc.app import App
from smsc.config import SmscConfig

#: Concurrent submitters per ESME: a window of this many submits in flight.
WINDOW = 4
#: Acks each ESME must have before Redis is killed, and again after it is back.
ACKS = 30


@dataclass
class Load:
    """One ESME's submits: what was acknowledged, what refused, and with which status."""

    esme: Esme
    acked: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False

    async def submitter(self) -> None:
        while not self.stop:
            resp = await self.esme.submit()
            if resp.command_status == CommandStatus.ESME_ROK:
                self.acked.append(resp.message_id)
            else:
                status = int(resp.command_status)
                self.refused[status] = self.refused.get(status, 0) + 1
            self.changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def test_redis_killed_and_restarted_mid_load_loses_nothing_acknowledged(
    run1: Run, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", aof=True, appendfsync="always")
    server.start()

    async def main() -> None:
        async with running_carrier() as carrier:

            def config(node_id: int) -> SmscConfig:
                return node_config(
                    tmp_path, server.url, node_id, carrier.port, router={"ack_after": "store"}
                )

            async with two_nodes(config(1), config(2)) as (a, b):
                await load_through_an_outage(server, a, b)

    try:
        run1(main())
    finally:
        server.stop()


async def load_through_an_outage(server: RedisServer, a: App, b: App) -> None:
    esmes = [await bind_client(a, "trx"), await bind_client(b, "trx")]
    loads = [Load(esme) for esme in esmes]
    tasks = [asyncio.create_task(load.submitter()) for load in loads for _ in range(WINDOW)]
    try:
        for load in loads:
            await load.until(lambda load=load: len(load.acked) >= ACKS)
        server.kill()
        for load in loads:  # each node refuses what it cannot store
            await load.until(lambda load=load: CommandStatus.ESME_RSYSERR in load.refused)
        before = [len(load.acked) for load in loads]
        server.start()  # same port, the AOF replayed; the nodes are not told
        for load, n in zip(loads, before, strict=True):
            await load.until(lambda load=load, n=n: len(load.acked) >= n + ACKS, 3 * DEADLINE)
    finally:
        for load in loads:
            load.stop = True
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*tasks)
    try:
        acked = [message_id for load in loads for message_id in load.acked]
        assert len(set(acked)) == len(acked)
        for load in loads:  # refused with the one status that says "not stored"
            assert set(load.refused) == {CommandStatus.ESME_RSYSERR}
        # The sessions stayed up through it all.
        assert [esme.closed_reason for esme in esmes] == [None, None]
        assert not any(esme.c.closed for esme in esmes)

        # Every acknowledged message: its one final receipt (to the account: on either
        # node's bind of it), and a final state in the store; nothing else was sent.
        def receipts() -> dict[str, int]:
            out: dict[str, int] = {}
            for esme in esmes:
                for message_id, got in final_receipts(esme).items():
                    out[message_id] = out.get(message_id, 0) + len(got)
            return out

        def all_in() -> bool:
            return set(acked) <= receipts().keys()

        # Whichever ESME gets the last receipt sees the condition hold.
        waits = [asyncio.create_task(esme.wait_for(all_in, 3 * DEADLINE)) for esme in esmes]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # TimeoutError: some acknowledged message never got its receipt
        assert receipts() == dict.fromkeys(acked, 1)
        for esme in esmes:
            for pdus in final_receipts(esme).values():
                assert receipt_text(pdus[0]).state == MessageState.DELIVERED
        for message_id in acked:
            found = await a.store.get(message_id)
            assert found is not None, message_id
            assert found.state == MessageState.DELIVERED, found
    finally:
        for esme in esmes:
            with contextlib.suppress(Exception):
                await esme.close()


def test_with_wait_replicas_and_no_replica_nothing_is_acknowledged(
    run1: Run,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    """``cluster.wait_replicas: 1`` on a Redis that has no replica: WAIT comes back short,
    so a write never counts as stored, and with ``ack_after: store`` a submit is refused
    ESME_RSYSERR, not acknowledged; the session stays up."""

    async def main() -> None:
        async with running_carrier() as carrier:
            config = node_config(
                tmp_path,
                redis_url,
                1,
                carrier.port,
                router={"ack_after": "store"},
            )
            cluster = msgspec.structs.replace(config.cluster, wait_replicas=1, wait_timeout=0.1)
            config = msgspec.structs.replace(config, cluster=cluster)
            async with running_app(config) as node:
                esme = await bind_client(node, "trx")
                try:
                    refused = await esme.submit()
                    assert refused.command_status == CommandStatus.ESME_RSYSERR
                    assert not esme.c.closed
                    assert node.store.unwritable == "replicas"
                finally:
                    await esme.close()

    run1(main())
