"""The admin API against a real App on loopback with simulated carriers: every endpoint,
each request and response checked against the OpenAPI document (tests/admin_fixtures.py),
the bearer token required."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from admin_fixtures import BASE, OPENAPI, TOKEN, Api
from loops import Run
from smsc_fixtures import (
    DEADLINE,
    SYSTEM_ID,
    app_config,
    bind_client,
    held_closed_port,
    running_app,
    stored,
)

from smppcore.constants import MessageState
from smppcore.text import decode_text
from smppcore.tlv import Tag
from smsc.admin import AdminServer
from smsc.app import App, admin_token
from smsc.openapi import SPEC


def config(tmp_path: Path, *, token: str | None = TOKEN, down: int | None = None) -> Any:
    """Two simulated carriers, cheap (MO goes to acme) and dear; with ``down`` (a port
    nothing listens on) a third, real carrier that cannot be reached (and that no route
    names)."""
    cfg = app_config(
        tmp_path,
        {"cheap": {}, "dear": {}},
        upstreams={"cheap": {"mo_account": SYSTEM_ID}},
        **({"admin": {"token": token}} if token else {}),
    )
    if down is not None:
        import msgspec

        from router.config import CarrierConfig

        extra = CarrierConfig(name="down", port=down, binds=1)
        router = msgspec.structs.replace(cfg.router, carriers=(*cfg.router.carriers, extra))
        cfg = msgspec.structs.replace(cfg, router=router)
    return cfg


def api(app: App, token: str | None = TOKEN) -> Api:
    return Api(app.http_port, token)


# --- the document ----------------------------------------------------------------------------


def test_openapi_document_is_served_and_describes_every_route(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            reply = await client.get("/openapi.json", token=None)
            assert reply.status == 200
            assert reply.body == SPEC
            assert app._http is not None
            served = {
                (r.method.lower(), r.resource.canonical.removeprefix(BASE))  # type: ignore[union-attr]
                for r in app._http._runner.app.router.routes()  # type: ignore[union-attr]
                if r.resource is not None
                and r.resource.canonical.startswith(BASE)
                and r.method != "HEAD"
            }
            documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
            assert served == documented

    run1(main())
    OPENAPI.check_spec()  # type: ignore[attr-defined]


# --- authentication ----------------------------------------------------------------------------


def test_the_token_is_required_except_for_health_ready_and_the_document(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            for token in (None, "wrong-token-0123456789"):
                reply = await client.get("/binds", token=token)
                assert reply.status == 401, reply
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                reply = await client.post("/carriers/cheap/pause", token=token)
                assert reply.status == 401, reply
            assert app.router is not None
            assert not app.router.paused
            assert (await client.get("/health", token=None)).body == {"status": "ok"}
            assert (await client.get("/ready", token=None)).status == 200
            assert (await client.get("/binds")).status == 200

    run1(main())


def test_a_token_that_is_not_utf8_is_refused_with_401_json(run1: Run, tmp_path: Path) -> None:
    """aiohttp hands octets that are not UTF-8 over as surrogates; they once made a plain
    text 500 (and a traceback in the log). Sent raw: no HTTP client would send them."""

    async def main() -> None:
        async with running_app(config(tmp_path)) as app:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
                writer.write(
                    b"GET " + BASE.encode() + b"/binds HTTP/1.1\r\nHost: smsc\r\n"
                    b"Authorization: Bearer \xff\xfe0123456789abcdef\r\n"
                    b"Connection: close\r\n\r\n"
                )
                reply = await reader.read()
                writer.close()
                await writer.wait_closed()
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401"), head
            assert b"application/json" in head
            assert json.loads(body)["error"]

    run1(main())


def test_without_a_token_the_admin_endpoints_are_off(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path, token=None)) as app, api(app, None) as client:
            for token in (None, "anything-at-all-0123"):
                reply = await client.post("/carriers/cheap/pause", token=token)
                assert reply.status == 403, reply
                assert "no admin.token" in reply.body["error"]
            assert app.router is not None
            assert not app.router.paused
            assert (await client.get("/health", token=None)).status == 200

    run1(main())


def test_unknown_paths_and_methods_answer_json_errors(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            async with client.session.get(
                client.host + BASE + "/nothing", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 404
                assert set(await response.json()) == {"error"}
            async with client.session.put(
                client.host + BASE + "/queue", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 405
                assert set(await response.json()) == {"error"}

    run1(main())


# --- health and readiness ----------------------------------------------------------------------


def test_readiness_can_wait_for_the_binds(run1: Run, tmp_path: Path) -> None:
    """``?wait=`` holds the answer until ready (here: never, a carrier is down) for at most
    that long; a bad wait is a 400 naming the parameter."""
    async def main(down: int) -> None:
        cfg = config(tmp_path, down=down)
        async with running_app(cfg, wait_for=["cheap", "dear"]) as app, api(app) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await client.get("/ready", token=None, params={"wait": "0.3"})
            assert reply.status == 503
            assert loop.time() - started >= 0.3
            for bad in ("soon", "-1", "61"):
                reply = await client.get(
                    "/ready", token=None, params={"wait": bad}, valid_request=False
                )
                assert reply.status == 400
                assert "wait" in reply.body["error"]
            await client.post("/carriers/down/drain", params={"timeout": "1"})
            reply = await client.get("/ready", token=None, params={"wait": "30"})
            assert reply.status == 200

    with held_closed_port() as down:
        run1(main(down))



def test_readiness_needs_every_carrier_bound_unless_drained(run1: Run, tmp_path: Path) -> None:
    async def main(down: int) -> None:
        cfg = config(tmp_path, down=down)
        async with running_app(cfg, wait_for=["cheap", "dear"]) as app, api(app) as client:
            reply = await client.get("/ready", token=None)
            assert reply.status == 503
            assert reply.body == {
                "ready": False,
                "store": True,
                "carriers": {"cheap": 1, "dear": 1, "down": 0},
            }
            drained = await client.post("/carriers/down/drain", params={"timeout": "1"})
            assert drained.status == 200
            assert drained.body["drained"]
            assert drained.body["paused"]
            reply = await client.get("/ready", token=None)
            assert reply.status == 200
            assert reply.body["ready"] is True

    with held_closed_port() as down:
        run1(main(down))


#: One request per documented operation (templated path → the call), for the start-up test.
DURING_START_UP: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("get", "/health"): ("/health", {}),
    ("get", "/ready"): ("/ready", {}),
    ("get", "/openapi.json"): ("/openapi.json", {}),
    ("get", "/binds"): ("/binds", {}),
    ("delete", "/binds/{id}"): ("/binds/1", {}),
    ("get", "/carriers"): ("/carriers", {}),
    ("get", "/carriers/{name}"): ("/carriers/cheap", {}),
    ("post", "/carriers/{name}/pause"): ("/carriers/cheap/pause", {}),
    ("post", "/carriers/{name}/resume"): ("/carriers/cheap/resume", {}),
    ("post", "/carriers/{name}/drain"): ("/carriers/cheap/drain", {"params": {"timeout": "1"}}),
    ("post", "/carriers/{name}/mo"): ("/carriers/cheap/mo", {"json_body": {"text": "hi"}}),
    ("get", "/routes"): ("/routes", {}),
    ("get", "/routes/explain"): (
        "/routes/explain",
        {"params": {"destination": "447700900001", "account": SYSTEM_ID}},
    ),
    ("get", "/queue"): ("/queue", {}),
    ("post", "/messages"): (
        "/messages",
        {"json_body": {"account": SYSTEM_ID, "destination": "447700900001", "text": "hi"}},
    ),
    ("post", "/reload"): ("/reload", {}),
    ("get", "/cluster"): ("/cluster", {}),
}


def test_during_start_up_every_endpoint_answers_as_the_document_says(
    run1: Run, tmp_path: Path
) -> None:
    """The admin server listens from the start of start-up (App.start starts it first).
    Until the node has started: health and the document answer, ready says not ready, and
    every other endpoint 503 (JSON, Retry-After) once the token is checked. Each request
    and response is validated against the OpenAPI document (admin_fixtures.Api)."""

    async def main() -> None:
        app = App(config(tmp_path))
        app.admin_token = admin_token(app.config)  # as App.start() has it, before the store
        admin = AdminServer(app, app.registry)
        await admin.start("127.0.0.1", 0)
        try:
            async with Api(admin.port) as client:
                documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
                assert set(DURING_START_UP) == documented
                for (method, _), (path, kw) in DURING_START_UP.items():
                    reply = await client.call(method.upper(), path, **kw)
                    if path in ("/health", "/openapi.json"):
                        assert reply.status == 200, (path, reply)
                    elif path == "/ready":
                        assert reply.status == 503
                        assert reply.body == {"ready": False, "store": False, "carriers": {}}
                    else:
                        assert reply.status == 503, (path, reply)
                        assert reply.body == {"error": "starting: not serving yet"}
                        assert reply.headers["Retry-After"] == "1"
                assert (await client.get("/carriers", token=None)).status == 401
        finally:
            await admin.stop()

    run1(main())


def test_the_node_serves_the_admin_api_once_started(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            assert app.started
            assert (await client.get("/carriers")).status == 200
            assert (await client.get("/ready", token=None)).status == 200
        assert not app.started

    run1(main())


# --- binds -------------------------------------------------------------------------------------


def test_binds_are_listed_and_one_can_be_kicked(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "trx")
            other = await bind_client(app, "rx")
            try:
                reply = await client.get("/binds")
                binds = reply.body["binds"]
                assert sorted(b["bind_type"] for b in binds) == ["receiver", "transceiver"]
                assert {b["account"] for b in binds} == {SYSTEM_ID}
                trx = next(b for b in binds if b["bind_type"] == "transceiver")
                local = esme.c.transport.get_extra_info("sockname")  # type: ignore[union-attr]
                assert trx["peer"] == f"127.0.0.1:{local[1]}"
                assert trx["in_flight"] == 0

                kicked = await client.delete(f"/binds/{trx['id']}")
                assert kicked.status == 200
                assert kicked.body == {"id": trx["id"], "unbound": True}
                await esme.c.wait_closed(DEADLINE)
                assert esme.closed_reason is not None
                left = (await client.get("/binds")).body["binds"]
                assert [b["bind_type"] for b in left] == ["receiver"]
                assert not other.c.closed
                assert (await client.delete(f"/binds/{trx['id']}")).status == 404
            finally:
                await esme.close()
                await other.close()

    run1(main())


# --- carriers ----------------------------------------------------------------------------------


def test_a_paused_carrier_gets_no_messages_until_resumed(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "trx")
            try:
                states = (await client.get("/carriers")).body["carriers"]
                assert [(c["name"], c["bound"], c["paused"]) for c in states] == [
                    ("cheap", 1, False),
                    ("dear", 1, False),
                ]
                assert [c["rate"] for c in states] == [None, None]  # none set, none met
                paused = await client.post("/carriers/cheap/pause")
                assert paused.body["paused"] is True
                assert paused.body["health"]["available"] is False
                explained = await client.get(
                    "/routes/explain", params={"destination": "447700900001", "account": SYSTEM_ID}
                )
                assert explained.body["choice"] == "dear"
                first = await esme.submit_ok()
                await esme.receipt_for(first)
                assert (await stored(app, first)).carrier == "dear"

                resumed = await client.post("/carriers/cheap/resume")
                assert resumed.body["paused"] is False
                second = await esme.submit_ok()
                await esme.receipt_for(second)
                assert (await stored(app, second)).carrier == "cheap"
                assert (await client.post("/carriers/nope/pause")).status == 404
                assert (await client.get("/carriers/nope")).status == 404
                one = await client.get("/carriers/cheap")
                assert one.body["name"] == "cheap"
            finally:
                await esme.close()

    run1(main())


def test_drain_unbinds_a_carrier_and_resume_binds_it_again(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "trx")
            try:
                drained = await client.post("/carriers/cheap/drain")
                assert drained.status == 200
                assert drained.body["drained"] is True
                assert drained.body["bound"] == 0
                message = await esme.submit_ok()
                await esme.receipt_for(message)
                assert (await stored(app, message)).carrier == "dear"
                bad = await client.post(
                    "/carriers/dear/drain", params={"timeout": "0"}, valid_request=False
                )
                assert bad.status == 400

                await client.post("/carriers/cheap/resume")
                assert app.router is not None
                await app.router.wait_carriers_bound(DEADLINE, ["cheap"])
                again = await esme.submit_ok()
                await esme.receipt_for(again)
                assert (await stored(app, again)).carrier == "cheap"
            finally:
                await esme.close()

    run1(main())


def test_mo_injected_on_a_simulated_carrier_reaches_its_account(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "rx")
            try:
                reply = await client.post(
                    "/carriers/cheap/mo",
                    json_body={
                        "text": "Hi from a phone",
                        "source": "447700900123",
                        "destination": "1234",
                    },
                )
                assert reply.status == 202
                assert reply.body == {"carrier": "cheap", "system_id": "smsc", "parts": 1}
                await esme.wait_for(lambda: bool(esme.delivered))
                (mo,) = esme.delivered
                assert decode_text(mo.short_message, mo.data_coding) == "Hi from a phone"
                assert (mo.source_addr, mo.destination_addr) == ("447700900123", "1234")

                missing = await client.post("/carriers/nope/mo", json_body={"text": "x"})
                assert missing.status == 404
                bad = await client.post(
                    "/carriers/cheap/mo", json_body={"text": "x", "data_coding": 4}
                )
                assert bad.status == 400
            finally:
                await esme.close()

    run1(main())


# --- routes and queue --------------------------------------------------------------------------


def test_routes_are_listed_and_explained(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            reply = await client.get("/routes")
            assert reply.body == {
                "routes": [
                    {
                        "prefix": "",
                        "accounts": [],
                        "carriers": [
                            {"carrier": "cheap", "price": "0.001"},
                            {"carrier": "dear", "price": "0.002"},
                        ],
                    }
                ]
            }
            explained = await client.get(
                "/routes/explain", params={"destination": "447700900001", "account": SYSTEM_ID}
            )
            assert explained.body["choice"] == "cheap"
            assert explained.body["fallbacks"] == ["dear"]
            assert explained.body["price"] == "0.001"
            missing = await client.get(
                "/routes/explain", params={"destination": "44"}, valid_request=False
            )
            assert missing.status == 400

    run1(main())


def test_queue_stats_and_submit_through_the_api(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "rx")
            try:
                empty = await client.get("/queue")
                assert empty.body == {
                    "depth": 0,
                    "ready": 0,
                    "scheduled": 0,
                    "by_priority": [0, 0, 0, 0],
                    "oldest_age": None,
                    "in_flight": 0,
                    "paced": 0,
                    "parked": 0,
                }
                for name in ("cheap", "dear"):
                    await client.post(f"/carriers/{name}/pause")
                body = {
                    "account": SYSTEM_ID,
                    "source": "MyBrand",
                    "destination": "+447700900001",
                    "text": "Hello from the API",
                    "registered_delivery": 1,
                }
                reply = await client.post("/messages", json_body=body)
                assert reply.status == 202
                message_id = reply.body["message_id"]
                queued = await client.get("/queue")
                assert queued.body["depth"] == 1
                assert queued.body["parked"] == 1, "both carriers paused: it waits, parked"
                assert queued.body["oldest_age"] is not None
                assert queued.body["oldest_age"] >= 0

                await client.post("/carriers/dear/resume")
                receipt = await esme.receipt_for(message_id)
                assert receipt.tlv(Tag.MESSAGE_STATE) == MessageState.DELIVERED
                got = await stored(app, message_id)
                assert got.carrier == "dear"
                assert got.message.destination.addr == "447700900001"
                assert got.message.source.addr == "MyBrand"
                taken = app.simulators["dear"].messages.get(got.carrier_message_id)
                assert taken is not None
                assert taken.destination == "447700900001"
                assert (await client.get("/queue")).body["depth"] == 0

                unknown = await client.post("/messages", json_body={**body, "account": "nobody"})
                assert unknown.status == 404
                bad = await client.post(
                    "/messages", json_body={**body, "destination": "abc"}, valid_request=False
                )
                assert bad.status == 400
                not_ascii = await client.post(
                    "/messages", json_body={**body, "source": "Überé"}, valid_request=False
                )
                assert not_ascii.status == 400
                assert "source" in not_ascii.body["error"]
                broken = await client.post("/messages", raw=b"{", valid_request=False)
                assert broken.status == 400
            finally:
                await esme.close()

    run1(main())


def test_reload_without_a_configuration_file_is_refused(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            reply = await client.post("/reload")
            assert reply.status == 409
            assert "nothing to reload" in reply.body["error"]

    run1(main())


# --- cluster -----------------------------------------------------------------------------------


def test_a_lone_node_lists_itself_as_the_cluster(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, api(app) as client:
            esme = await bind_client(app, "trx")
            try:
                await app.cluster.beat()
                reply = await client.get("/cluster")
            finally:
                await esme.close()
            assert reply.status == 200
            body = reply.body
            assert (body["node_id"], body["shared"], body["reachable"]) == ("0", False, True)
            (node,) = body["nodes"]
            assert node["node_id"] == "0"
            assert node["alive"]
            assert node["ports"] == [app.port, 0, app.http_port]
            assert node["esme_binds"] == 1
            assert len(node["config_hash"]) == 16

    run1(main())
