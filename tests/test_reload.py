"""Live reconfiguration (smsc/reload.py, App.reload, POST /api/v1/reload, SIGHUP): routes,
prices, accounts and carriers change without dropping ESME sessions or queued messages;
a bad configuration is refused and the running one stays."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_fixtures import TOKEN, Api
from loops import LOOP_FACTORIES, Run
from smsc_fixtures import (
    DEADLINE,
    OTHER_ID,
    SYSTEM_ID,
    UPSTREAM_ID,
    accounts,
    app_config,
    bind_client,
    prices,
    running_app,
    serve_process,
    simulator,
    stored,
    upstream,
)

from smppcore.aio import BindError
from smppcore.config import ConfigError
from smsc.config import SmscConfig

ADMIN = {"admin": {"token": TOKEN}}


class Source:
    """What ``App.reload`` reads: the latest config a test wrote (or the error it raises)."""

    def __init__(self, make: Callable[[], SmscConfig]) -> None:
        self.make = make

    def __call__(self) -> SmscConfig:
        return self.make()


def route(*carriers: tuple[str, str], prefix: str = "") -> dict[str, Any]:
    return {"prefix": prefix, "carriers": prices(**dict(carriers))}


def test_a_price_change_changes_the_decision_and_sessions_stay_bound(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sims = {"a": {}, "b": {}}
        first = app_config(tmp_path, sims, [route(("a", "0.001"), ("b", "0.002"))], **ADMIN)
        second = app_config(tmp_path, sims, [route(("a", "0.003"), ("b", "0.002"))], **ADMIN)
        source = Source(lambda: second)
        async with running_app(first, loader=source) as app:
            assert app.router is not None
            esme = await bind_client(app, "trx")
            try:
                before = await esme.submit_ok()
                await esme.receipt_for(before)
                assert (await stored(app, before)).carrier == "a"

                async with Api(app.http_port) as client:
                    reply = await client.post("/reload")
                assert reply.status == 200
                assert reply.body == {"applied": ["routes changed"], "requires_restart": []}
                assert app.router.explain("447700900001", SYSTEM_ID).choice == "b"

                after = await esme.submit_ok()  # the same session, still bound
                await esme.receipt_for(after)
                assert (await stored(app, after)).carrier == "b"
                assert not esme.c.closed
            finally:
                await esme.close()

    run1(main())


def test_an_added_account_can_bind_and_a_removed_one_is_unbound(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        sims = {"a": {}}
        first = app_config(tmp_path, sims)
        newcomer = {"system_id": "initech", "password": "tps"}
        only_acme = [a for a in accounts() if a["system_id"] == SYSTEM_ID]
        second = app_config(tmp_path, sims, accounts=[*only_acme, newcomer])
        async with running_app(first) as app:
            with pytest.raises(BindError):
                await bind_client(app, "trx", "initech", "tps")
            acme = await bind_client(app, "trx")
            globex = await bind_client(app, "trx", OTHER_ID, "globex")
            try:
                plan = await app.reload(second)
                assert plan.accounts_added == ("initech",)
                assert plan.accounts_removed == (OTHER_ID,)
                await globex.c.wait_closed(DEADLINE)
                assert not acme.c.closed

                initech = await bind_client(app, "trx", "initech", "tps")
                try:
                    message = await initech.submit_ok()
                    await initech.receipt_for(message)
                finally:
                    await initech.close()
                with pytest.raises(BindError):
                    await bind_client(app, "trx", OTHER_ID, "globex")
                still = await acme.submit_ok()
                await acme.receipt_for(still)
            finally:
                await acme.close()
                await globex.close()

    run1(main())


def test_an_added_carrier_gets_traffic(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        first = app_config(tmp_path, {"a": {}}, [route(("a", "0.002"))])
        second = app_config(
            tmp_path, {"a": {}, "new": {}}, [route(("a", "0.002"), ("new", "0.001"))]
        )
        async with running_app(first) as app:
            assert app.router is not None
            esme = await bind_client(app, "trx")
            try:
                plan = await app.reload(second)
                assert plan.carriers_added == ("new",)
                assert plan.routes_changed
                await app.router.wait_carriers_bound(DEADLINE, ["new"])
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "new"
                assert "new" in app.simulators
            finally:
                await esme.close()

    run1(main())


def test_a_removed_carriers_queued_messages_go_elsewhere(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        first = app_config(tmp_path, {"old": {}, "other": {}}, [route(("old", "0.001"))])
        second = app_config(tmp_path, {"other": {}}, [route(("other", "0.002"))])
        async with running_app(first) as app:
            assert app.router is not None
            esme = await bind_client(app, "trx")
            try:
                app.router.pause("old")  # the only carrier of the route: messages wait
                ids = [await esme.submit_ok() for _ in range(3)]
                assert app.router.queue_stats().depth == 3
                plan = await app.reload(second)
                assert plan.carriers_removed == ("old",)
                for message_id in ids:
                    await esme.receipt_for(message_id)
                    assert (await stored(app, message_id)).carrier == "other"
                assert "old" not in app.router.pools
                assert "old" not in app.simulators
            finally:
                await esme.close()

    run1(main())


def test_an_invalid_configuration_is_refused_and_the_old_one_keeps_running(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        sims = {"a": {}, "b": {}}
        good = app_config(tmp_path, sims, [route(("a", "0.001"), ("b", "0.002"))], **ADMIN)

        def bad() -> SmscConfig:
            return app_config(tmp_path, sims, [route(("a", "0.001"), ("nope", "0.002"))])

        async with running_app(good, loader=Source(bad)) as app:
            assert app.router is not None
            esme = await bind_client(app, "trx")
            try:
                with pytest.raises(ConfigError, match="no carrier named 'nope'"):
                    await app.reload()
                async with Api(app.http_port) as client:
                    reply = await client.post("/reload")
                assert reply.status == 400
                assert "routes[0].carriers[1].carrier: no carrier named" in reply.body["error"]
                assert app.config is good
                assert app.router.explain("447700900001", SYSTEM_ID).choice == "a"
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "a"
            finally:
                await esme.close()

    run1(main())


def test_changes_that_need_a_restart_are_reported_not_applied(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        first = app_config(tmp_path, {"a": {}})
        second = app_config(
            tmp_path,
            {"a": {}},
            node_id=7,
            listen={"host": "127.0.0.1", "port": 1},
            router={"ack_after": "store"},
        )
        async with running_app(first) as app:
            plan = await app.reload(second)
            assert set(plan.requires_restart) == {"node_id", "listen", "router.ack_after"}
            assert plan.applied() == []
            assert app.config.node_id == first.node_id
            assert app.config.listen == first.listen
            assert app.config.router.ack_after == "enqueue"
            esme = await bind_client(app, "trx")  # still on the port it had
            await esme.close()

    run1(main())


# --- carrier control and reloads, one at a time; all or nothing ----------------------------


class LogLines(logging.Handler):
    """INFO lines of one logger; ``wait(text)`` returns the first line holding ``text``."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.logger = logging.getLogger(name)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    def __enter__(self) -> LogLines:
        self._level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    async def wait(self, text: str) -> str:
        async with asyncio.timeout(DEADLINE):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()


def test_a_drained_and_a_paused_carrier_stay_so_through_a_reload_that_changes_them(
    run1: Run, tmp_path: Path
) -> None:
    """The reload does not bind the drained carrier again (its new config waits for the
    resume) nor route to the paused one; each runs with its new config."""

    async def main() -> None:
        sims = {"a": {}, "b": {}}
        routes = [route(("a", "0.001"), ("b", "0.002"))]
        first = app_config(tmp_path, sims, routes)
        wider = {"window": 40}
        second = app_config(tmp_path, sims, routes, upstreams={"a": wider, "b": wider})
        async with running_app(first) as app:
            router = app.router
            assert router is not None
            await router.drain("a", DEADLINE)
            router.pause("b")
            plan = await app.reload(second)
            assert plan.carriers_changed == ("a", "b")
            states = {s.name: s for s in router.carrier_states()}
            assert (states["a"].paused, states["a"].drained) == (True, True)
            assert (states["b"].paused, states["b"].drained) == (True, False)
            assert router.pools["a"].config.window == router.pools["b"].config.window == 40
            await router.wait_carriers_bound(DEADLINE, ["b"])  # paused: still bound
            new_a = app.simulators["a"]
            assert router.pools["a"].config.port == new_a.port
            upstream_account = new_a.account(UPSTREAM_ID)
            assert upstream_account is not None
            assert not upstream_account.sessions  # drained: not bound again

            await app.resume_carrier("a")
            await router.wait_carriers_bound(DEADLINE, ["a"])
            assert router.pools["a"].config.window == 40
            assert upstream_account.sessions
            esme = await bind_client(app, "trx")
            try:
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "a"
            finally:
                await esme.close()

    run1(main())


def test_pause_drain_resume_and_reload_run_one_at_a_time_in_order(
    run1: Run, tmp_path: Path
) -> None:
    """A drain under way holds a reload back (the reload does not rebind the carrier being
    drained); a pause and a resume that come meanwhile wait their turn after it."""

    async def main() -> None:
        sims = {"a": {}, "b": {}}
        routes = [route(("a", "0.001"), ("b", "0.002"))]
        first = app_config(tmp_path, sims, routes)
        second = app_config(tmp_path, sims, routes, upstreams={"a": {"window": 40}})
        async with running_app(first) as app:
            router = app.router
            assert router is not None
            done: list[str] = []

            def step(name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
                task = asyncio.create_task(coro)
                task.add_done_callback(lambda _: done.append(name))
                return task

            tasks = [
                step("drain a", app.drain_carrier("a", DEADLINE)),
                step("reload", app.reload(second)),
                step("pause b", app.pause_carrier("b")),
                step("resume b", app.resume_carrier("b")),
            ]
            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(*tasks)
            assert done == ["drain a", "reload", "pause b", "resume b"]
            states = {s.name: s for s in router.carrier_states()}
            assert states["a"].drained
            assert router.pools["a"].config.window == 40
            assert not states["b"].paused
            await router.wait_carriers_bound(DEADLINE, ["b"])
            upstream_account = app.simulators["a"].account(UPSTREAM_ID)
            assert upstream_account is not None
            assert not upstream_account.sessions

    run1(main())


def test_a_reload_interrupted_half_way_leaves_the_running_configuration_whole(
    run1: Run, tmp_path: Path
) -> None:
    """A reload cancelled while it starts its simulated carriers (as at shutdown, or when
    the caller goes away) has changed nothing: no new carrier, no replaced one, the same
    routes; what it had started is stopped; a later reload applies in full."""

    async def main() -> None:
        first = app_config(tmp_path, {"a": {}}, [route(("a", "0.002"))])
        second = app_config(
            tmp_path,
            {"new": {}, "a": {}},
            [route(("new", "0.001"), ("a", "0.002"))],
            upstreams={"a": {"window": 40}},
        )
        async with running_app(first) as app:
            router = app.router
            assert router is not None
            old_sim, old_pool = app.simulators["a"], router.pools["a"]
            with LogLines("smsc.app") as log_lines:
                reload = asyncio.create_task(app.reload(second))
                started = await log_lines.wait("simulated carrier new on 127.0.0.1:")
                reload.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reload
            assert app.config is first
            assert set(router.pools) == {"a"}
            assert router.pools["a"] is old_pool
            assert app.simulators == {"a": old_sim}
            assert router.table.routes == first.router.routes
            assert router.explain("447700900001", SYSTEM_ID).choice == "a"
            port = int(started.rsplit(":", 1)[1])
            with pytest.raises(ConnectionRefusedError):  # the simulator it had started is gone
                await asyncio.open_connection("127.0.0.1", port)
            esme = await bind_client(app, "trx")
            try:
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "a"

                plan = await app.reload(second)
                assert plan.carriers_added == ("new",)
                assert plan.carriers_changed == ("a",)
                await router.wait_carriers_bound(DEADLINE, ["new", "a"])
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "new"
            finally:
                await esme.close()

    run1(main())


def test_a_reload_interrupted_while_it_winds_down_has_applied_all_of_it(
    run1: Run, tmp_path: Path
) -> None:
    """Once applied, a reload stands whole even if its caller goes away while what it
    replaced is wound down (here a removed account's session that does not answer its
    unbind): the wind-down goes on by itself, and the next carrier change need not wait."""

    async def main() -> None:
        first = app_config(tmp_path, {"a": {}}, [route(("a", "0.002"))])
        only_acme = [a for a in accounts() if a["system_id"] == SYSTEM_ID]
        second = app_config(
            tmp_path,
            {"a": {}, "new": {}},
            [route(("new", "0.001"), ("a", "0.002"))],
            accounts=only_acme,
        )
        async with running_app(first, stop_timeout=DEADLINE / 2) as app:
            router = app.router
            assert router is not None
            globex = await bind_client(app, "trx", OTHER_ID, "globex")
            globex.c.stall()  # will not answer the unbind of its removed account
            try:
                with LogLines("smsc.app") as log_lines:
                    reload = asyncio.create_task(app.reload(second))
                    await log_lines.wait("configuration reloaded")
                    assert not reload.done()  # winding down: the unbind is unanswered
                    reload.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await reload
                assert app.config.router.routes == second.router.routes
                assert set(router.pools) == set(app.simulators) == {"a", "new"}
                assert app.server is not None
                assert set(app.server.accounts) == {SYSTEM_ID}
                async with asyncio.timeout(DEADLINE / 2):  # the lock is free again
                    await app.pause_carrier("new")
                assert "new" in router.paused
            finally:
                await globex.close()

    run1(main())


# --- SIGHUP on a real `smsc serve` ---------------------------------------------------------------


def serve_yaml(path: Path, store: Path, a_price: str) -> None:
    data = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "admin": {"token": TOKEN},
        "accounts": accounts(),
        "router": {
            "carriers": [upstream("a"), upstream("b")],
            "routes": [route(("a", a_price), ("b", "0.002"))],
            "store": {"path": str(store)},
        },
        "simulated_carriers": [{"name": n, "config": simulator()} for n in ("a", "b")],
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_sighup_reloads_a_running_serve_and_refuses_a_bad_file(tmp_path: Path) -> None:
    async def main() -> None:
        conf = tmp_path / "smsc.yaml"
        serve_yaml(conf, tmp_path / "smsc.db", "0.001")
        async with serve_process(tmp_path, "--config", str(conf)) as serve:
            assert serve.http_port is not None
            assert serve.proc.stdout is not None

            async def line() -> str:
                async with asyncio.timeout(DEADLINE):
                    return (await serve.proc.stdout.readline()).decode()  # type: ignore[union-attr]

            query = {"destination": "447700900001", "account": SYSTEM_ID}

            async def prices() -> dict[str, str]:
                """The route's prices as the running serve has them (whether its carriers
                are bound yet or not: "listening" does not wait for them)."""
                body = (await client.get("/routes/explain", params=query)).body
                return {c["carrier"]: c["price"] for c in body["candidates"]}

            async with Api(serve.http_port) as client:
                assert await prices() == {"a": "0.001", "b": "0.002"}

                serve_yaml(conf, tmp_path / "smsc.db", "0.003")
                serve.proc.send_signal(signal.SIGHUP)
                assert "configuration reloaded: routes changed" in await line()
                assert await prices() == {"a": "0.003", "b": "0.002"}

                conf.write_text("router:\n  routes: [{prefix: 44}]\n", encoding="utf-8")
                serve.proc.send_signal(signal.SIGHUP)
                refused = await line()
                assert "reload refused" in refused
                assert "routes[0]" in refused
                assert await prices() == {"a": "0.003", "b": "0.002"}

            serve.proc.send_signal(signal.SIGTERM)
            assert await serve.exit_code() == 0

    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        runner.run(main())
