"""The application HTTP API end to end: a real App on loopback with simulated carriers, an
aiohttp client whose every request and answer is checked against the API's OpenAPI
document (tests/http_fixtures.py), webhooks to a real aiohttp receiver."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import trustme
from http_fixtures import (
    KEY,
    OPENAPI,
    OTHER_KEY,
    SECRET,
    Client,
    Receiver,
    api_config,
    api_port,
    basic,
)
from loops import Run
from smsc_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    bind_client,
    running_app,
    serve_process,
    stored,
)

from smppcore.config import ConfigError, load_config
from smppcore.constants import CommandStatus, DataCoding, EsmClass
from smppcore.pdu import SubmitSm
from smppcore.segment import parse_udh
from smppcore.text import decode_text
from smsc.apikeys import key_hash, new_key
from smsc.app import App
from smsc.cli import main
from smsc.config import SmscConfig
from smsc.http_config import HttpTls
from smsc.http_openapi import SPEC


def client(app: App, auth: str | None = None) -> Client:
    return Client(app.api_port, auth)


async def send(c: Client, body: dict[str, Any], **kw: Any) -> Any:
    reply = await c.post("/v1/messages", json_body=body, **kw)
    assert reply.status == 202, reply
    return reply.body


def hooks(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"webhooks": {"status_url": receiver.url("/status"), "secret": SECRET, **extra}}


async def final_event(receiver: Receiver, message_id: str) -> dict[str, Any]:
    def found() -> bool:
        return any(
            c.event["data"]["message_id"] == message_id and c.event["type"] != "message.enroute"
            for c in receiver.taken()
        )

    await receiver.wait_for(found)
    return next(c.event for c in receiver.taken() if c.event["data"]["message_id"] == message_id)


# --- the document ----------------------------------------------------------------------------


def test_the_document_is_served_and_describes_every_route(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            reply = await c.get("/v1/openapi.json", auth=None)
            assert reply.body == SPEC
            api = app.web.api
            assert api is not None
            served = {
                (r.method.lower(), r.resource.canonical)  # type: ignore[union-attr]
                for r in api._runner.app.router.routes()  # type: ignore[union-attr]
                if r.resource is not None and r.method != "HEAD"
            }
            documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
            assert served == documented

    run1(main())
    OPENAPI.check_spec()  # type: ignore[attr-defined]


# --- sending and following ---------------------------------------------------------------------


def test_a_message_sent_with_a_key_is_delivered_and_shows_its_timeline(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with Receiver() as receiver:
            config = api_config(tmp_path, {"cheap": {}, "dear": {}}, account=hooks(receiver))
            async with running_app(config) as app, client(app) as c:
                body = await send(
                    c, {"from": "Acme", "to": "+447700900001", "text": "hello", "reference": "r1"}
                )
                (item,) = body["messages"]
                assert item["status"] == "accepted"
                assert item["parts"] == 1
                assert body["reference"] == "r1"
                event = await final_event(receiver, item["id"])
                assert event["type"] == "message.delivered"
                assert event["data"]["reference"] == "r1"
                reply = await c.get(f"/v1/messages/{item['id']}")
                view = reply.body
                assert view["state"] == "delivered"
                assert view["carrier"] == "cheap"
                assert view["price"] == "0.001"
                assert view["to"] == "447700900001"
                assert [e["event"] for e in view["timeline"]] == [
                    "accepted",
                    "routed",
                    "carrier_accepted",
                    "delivered",
                ]
                found = await stored(app, item["id"])
                msg = found.message
                assert decode_text(msg.short_message, msg.data_coding) == "hello"
                assert found.message.source.ton == 5  # alphanumeric

    run(main())


def test_basic_auth_with_the_smpp_credentials_works_and_wrong_ones_get_401(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            running_app(api_config(tmp_path)) as app,
            client(app, basic(SYSTEM_ID, PASSWORD)) as c,
        ):
            await send(c, {"to": "447700900001", "text": "hi"})
            for auth in (basic(SYSTEM_ID, "wrong"), "Bearer smsc_nope", None):
                reply = await c.get("/v1/account", auth=auth)
                assert reply.status == 401, reply
                assert "Bearer" in reply.headers["WWW-Authenticate"]
            reply = await c.post("/v1/messages", json_body={"to": "1234", "text": "x"}, auth=None)
            assert reply.status == 401
            account = (await c.get("/v1/account")).body
            assert account["system_id"] == SYSTEM_ID

    run1(main())


def test_a_long_unicode_text_is_split_with_udh_and_every_part_takes_one_carrier(
    run1: Run, tmp_path: Path
) -> None:
    text = "Grüße 🌍 " * 30  # UCS-2, 300 characters: 5 parts of 67

    async def main() -> None:
        config = api_config(tmp_path, {"cheap": {}, "dear": {}})
        async with running_app(config) as app, client(app) as c:
            (item,) = (await send(c, {"to": "447700900001", "text": text}))["messages"]
            assert item["parts"] == 5
            ids = [item["id"], *(f"{item['id']}-{n}" for n in range(2, 6))]
            joined = b""
            carriers = set()
            for n, message_id in enumerate(ids, 1):
                msg = (await stored(app, message_id)).message
                assert msg.data_coding == DataCoding.UCS2
                assert msg.esm_class & EsmClass.UDHI
                info, payload, _ = parse_udh(msg.short_message)
                assert info is not None
                assert (info.total, info.seq) == (5, n)
                joined += payload
                assert msg.concat is not None
                carriers.add(msg.concat.group)
            assert decode_text(joined, DataCoding.UCS2) == text
            assert len(carriers) == 1
            view = await c.get(f"/v1/messages/{item['id']}")
            assert len(view.body["part_states"]) == 5
            assert {p["carrier"] for p in view.body["part_states"]} <= {"cheap", None}

    run1(main())


def test_a_long_message_is_taken_whole_or_not_at_all(run1: Run, tmp_path: Path) -> None:
    """The queue has room for three parts of a five-part message (its carrier paused, so
    they wait): the fourth is refused, the three already taken are cancelled, and the
    answer says the message was not taken — no partial message reaches the handset."""
    text = "Grüße 🌍 " * 30  # UCS-2, 300 characters: 5 parts

    async def main() -> None:
        config = api_config(tmp_path, router={"queue_max": 3})
        async with running_app(config) as app, client(app) as c:
            assert app.router is not None
            app.router.pause("fast")
            reply = await c.post("/v1/messages", json_body={"to": "447700900001", "text": text})
            assert reply.status != 202, reply.body
            stats = app.router.stats()
            assert (stats.queued, stats.parked, stats.scheduled) == (0, 0, 0)
            # Room again: the next one is taken whole.
            short = await c.post("/v1/messages", json_body={"to": "447700900001", "text": "hi"})
            assert short.status == 202

    run1(main())


def test_a_thousand_destinations_in_one_request_each_get_an_id(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            numbers = [f"4477009{n:05d}" for n in range(1000)]
            body = await send(c, {"to": numbers, "text": "bulk"})
            assert [m["to"] for m in body["messages"]] == numbers
            assert {m["status"] for m in body["messages"]} == {"accepted"}
            assert len({m["id"] for m in body["messages"]}) == 1000
            reply = await c.post(
                "/v1/messages",
                json_body={"to": [*numbers, "447700999999"], "text": "too many"},
                valid_request=False,
            )
            assert reply.status == 422
            assert reply.body["field"] == "to"

    run1(main())


def test_the_same_idempotency_key_replays_the_answer_and_another_body_is_422(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            body = {"to": "447700900001", "text": "once"}
            key = {"Idempotency-Key": "k-1"}
            first = await c.post("/v1/messages", json_body=body, headers=key)
            again = await c.post("/v1/messages", json_body=body, headers=key)
            assert first.status == again.status == 202
            assert again.body == first.body
            assert again.headers.get("Idempotent-Replayed") == "true"
            other = await c.post("/v1/messages", json_body={**body, "text": "twice"}, headers=key)
            assert other.status == 422
            assert other.body["field"] == "Idempotency-Key"
            listed = (await c.get("/v1/messages")).body["messages"]
            assert [m["id"] for m in listed] == [first.body["messages"][0]["id"]]
            # another account's key of the same name is its own
            async with client(app, f"Bearer {OTHER_KEY}") as other_client:
                theirs = await other_client.post("/v1/messages", json_body=body, headers=key)
                assert theirs.status == 202
                assert theirs.body != first.body

    run1(main())


_X = b'{"to": "4477", "text": "x", '
BAD: list[tuple[str, bytes, int, str | None]] = [
    ("malformed JSON", b'{"to": ', 400, None),
    ("not an object", b"[1]", 422, None),
    ("unknown field", b'{"to": "4477", "text": "x", "colour": "red"}', 422, "colour"),
    ("bad number", b'{"to": "44-77", "text": "x"}', 422, "to"),
    ("bad number in a list", b'{"to": ["4477", "x"], "text": "x"}', 422, "to"),
    ("no text nor binary", b'{"to": "4477"}', 422, "text"),
    ("text and binary", b'{"to": "4477", "text": "x", "binary": "AA=="}', 422, "binary"),
    ("too long", b'{"to": "4477", "text": "' + b"x" * 40_001 + b'"}', 422, "text"),
    ("too many parts", b'{"to": "4477", "text": "' + b"x" * 39_500 + b'"}', 422, "text"),
    ("bad send_at", b'{"to": "4477", "text": "x", "send_at": "tomorrow"}', 422, "send_at"),
    ("send_at without zone", _X + b'"send_at": "2030-01-01T10:00"}', 422, "send_at"),
    ("bad validity", b'{"to": "4477", "text": "x", "validity": "PT"}', 422, "validity"),
    ("validity past", _X + b'"validity": "2001-01-01T00:00Z"}', 422, "validity"),
    ("priority", b'{"to": "4477", "text": "x", "priority": 7}', 422, "priority"),
    ("bad base64", b'{"to": "4477", "binary": "***"}', 422, "binary"),
    ("udh with text", b'{"to": "4477", "text": "x", "udh": "BQADAQIB"}', 422, "udh"),
    ("bad callback", _X + b'"callback_url": "ftp://x"}', 422, "callback_url"),
]


def test_every_bad_input_gets_a_problem_naming_the_field_and_changes_nothing(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            for what, raw, status, field in BAD:
                reply = await c.post("/v1/messages", raw=raw, valid_request=False)
                assert reply.status == status, (what, reply)
                assert reply.body.get("field") == field, (what, reply)
                assert reply.body["detail"], what
            for params, field in (
                ({"limit": "0"}, "limit"),
                ({"since": "yesterday"}, "since"),
                ({"state": "lost"}, "state"),
                ({"cursor": "!!"}, "cursor"),
            ):
                reply = await c.get("/v1/messages", params=params)
                assert reply.status == 400, reply
                assert reply.body["field"] == field
            assert (await c.get("/v1/messages")).body["messages"] == []
            assert app.router is not None
            assert app.router.queue_stats().depth == 0
            reply = await c.get("/v1/messages/nope")
            assert reply.status == 404

    run1(main())


def test_binary_with_udh_and_data_coding_goes_as_given(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            body = {"to": "4477009", "binary": "AQID", "udh": "BQADBwIB", "data_coding": 245}
            (item,) = (await send(c, body))["messages"]
            msg = (await stored(app, item["id"])).message
            assert msg.short_message == bytes.fromhex("0500030702 01 010203".replace(" ", ""))
            assert msg.data_coding == 245
            assert msg.esm_class & EsmClass.UDHI

    run1(main())


# --- account policies ----------------------------------------------------------------------------


def test_the_throughput_bucket_is_shared_with_the_accounts_smpp_binds(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        config = api_config(tmp_path, account={"throughput": 0.1, "burst": 2})
        async with running_app(config) as app, client(app) as c:
            await send(c, {"to": "447700900001", "text": "one"})
            esme = await bind_client(app)
            try:
                resp = await esme.request(
                    SubmitSm(destination_addr="447700900002", short_message=b"two")
                )
                assert resp.command_status == CommandStatus.ESME_ROK
                resp = await esme.request(
                    SubmitSm(destination_addr="447700900003", short_message=b"three")
                )
                assert resp.command_status == CommandStatus.ESME_RTHROTTLED
            finally:
                await esme.close()
            reply = await c.post("/v1/messages", json_body={"to": "4477", "text": "four"})
            assert reply.status == 429
            assert int(reply.headers["Retry-After"]) >= 1

    run1(main())


def test_allowed_carriers_apply_to_messages_sent_over_http(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        config = api_config(
            tmp_path, {"cheap": {}, "dear": {}}, account={"allowed_carriers": ["dear"]}
        )
        async with running_app(config) as app, client(app) as c:
            (item,) = (await send(c, {"to": "447700900001", "text": "x"}))["messages"]

            async def carrier() -> str:
                return (await stored(app, item["id"])).carrier

            async with asyncio.timeout(DEADLINE):
                while not await carrier():
                    await app.store.flush()
            assert await carrier() == "dear"

    run1(main())


# --- scheduling, cancelling, listing ------------------------------------------------------------


def test_a_scheduled_message_can_be_cancelled_once(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            body = {
                "to": "447700900001",
                "text": "later",
                "send_at": "2099-01-01T00:00:00Z",
                "validity": "P100000D",
            }
            (item,) = (await send(c, body))["messages"]
            assert item["status"] == "scheduled"
            view = (await c.get(f"/v1/messages/{item['id']}")).body
            assert view["state"] == "scheduled"
            reply = await c.delete(f"/v1/messages/{item['id']}")
            assert reply.status == 200
            assert reply.body["state"] == "deleted"
            await app.store.flush()
            view = (await c.get(f"/v1/messages/{item['id']}")).body
            assert view["state"] == "deleted"
            assert (await c.delete(f"/v1/messages/{item['id']}")).status == 409
            # another account cannot see it
            async with client(app, f"Bearer {OTHER_KEY}") as other:
                assert (await other.get(f"/v1/messages/{item['id']}")).status == 404

    run1(main())


def test_messages_are_listed_newest_first_with_filters_and_a_cursor(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, client(app) as c:
            ids = []
            for n in range(5):
                (item,) = (await send(c, {"to": f"44770090000{n % 2}", "text": str(n)}))["messages"]
                ids.append(item["id"])
            first = (await c.get("/v1/messages", params={"limit": "2"})).body
            assert [m["id"] for m in first["messages"]] == ids[::-1][:2]
            rest = (
                await c.get("/v1/messages", params={"limit": "10", "cursor": first["next_cursor"]})
            ).body
            assert [m["id"] for m in rest["messages"]] == ids[::-1][2:]
            assert rest["next_cursor"] is None
            to_one = (await c.get("/v1/messages", params={"to": "+447700900001"})).body
            assert [m["id"] for m in to_one["messages"]] == [ids[3], ids[1]]
            async with client(app, f"Bearer {OTHER_KEY}") as other:
                assert (await other.get("/v1/messages")).body["messages"] == []

    run1(main())


def test_the_account_endpoint_shows_limits_and_sessions(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        config = api_config(tmp_path, account={"throughput": 50.0, "max_price": "0.01"})
        async with running_app(config) as app, client(app) as c:
            esme = await bind_client(app)
            try:
                body = (await c.get("/v1/account", headers={})).body
            finally:
                await esme.close()
            assert body["system_id"] == SYSTEM_ID
            assert body["throughput"] == 50.0
            assert body["sessions_bound"] == 1
            assert body["max_price"] == "0.01"
            assert KEY not in str(body)

    run1(main())


def test_the_embedded_default_takes_a_message_from_one_request(run1: Run, tmp_path: Path) -> None:
    """``make run`` then one curl line: Basic auth with the default account test:test."""

    async def main() -> None:
        args = ("--port", "0", "--metrics-port", "0", "--api-port", "0")
        async with (
            serve_process(tmp_path, *args) as serve,
            Client(api_port(serve.lines), basic("test", "test")) as c,
        ):
            body = await send(c, {"to": "447700900001", "text": "hello from curl"})
            assert body["messages"][0]["status"] == "accepted"

    run1(main())


# --- configuration, keys, TLS, reload ------------------------------------------------------------


def test_smsc_api_key_prints_a_key_and_the_hash_the_config_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["api-key"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, re.M)
    digest = re.search(r"^hash:\s+(\S+)$", out, re.M)
    assert key is not None
    assert digest is not None
    assert key_hash(key.group(1)) == digest.group(1)
    account = {"system_id": "a", "api_keys": [digest.group(1)]}
    config = load_config({"accounts": [account]}, SmscConfig)
    assert config.accounts[0].api_keys == (digest.group(1),)
    assert main(["api-key"]) == 0
    assert capsys.readouterr().out != out  # a new key each time


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"accounts": [{"system_id": "a", "api_keys": ["md5$00"]}]}, "$.accounts[0].api_keys[0]"),
        (
            {"accounts": [{"system_id": "a", "webhooks": {"secret": "short"}}]},
            "$.accounts[0].webhooks.secret",
        ),
        (
            {
                "accounts": [
                    {"system_id": "a", "webhooks": {"secret": SECRET, "status_url": "ftp://x"}}
                ]
            },
            "$.accounts[0].webhooks.status_url",
        ),
        ({"http_api": {"port": 70000}}, "$.http_api.port"),
        ({"http_api": {"colour": "red"}}, "$.http_api.colour"),
        ({"webhooks": {"max_age": 0}}, "$.webhooks.max_age"),
    ],
)
def test_a_bad_api_or_webhook_setting_names_its_path(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(data, SmscConfig)
    assert err.value.path == path, err.value


async def plaintext(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with session.get(url, headers=headers) as resp:
        await resp.read()


def test_the_api_speaks_https_when_tls_is_configured(run1: Run, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "api.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "api.key"))
    tls = {"cert": str(tmp_path / "api.pem"), "key": str(tmp_path / "api.key")}

    async def main_() -> None:
        config = api_config(tmp_path)
        api = msgspec.structs.replace(config.http_api, tls=HttpTls(**tls))
        config = msgspec.structs.replace(config, http_api=api)
        async with running_app(config) as app:
            ctx = ssl.create_default_context(cafile=None)
            ca.configure_trust(ctx)
            url = f"https://127.0.0.1:{app.api_port}/v1/account"
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=DEADLINE)
            ) as session:
                headers = {"Authorization": f"Bearer {KEY}"}
                async with session.get(url, ssl=ctx, headers=headers) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["system_id"] == SYSTEM_ID
                plain = url.replace("https://", "http://")
                with pytest.raises(aiohttp.ClientError):
                    await plaintext(session, plain, headers)

    run1(main_())


def test_a_reload_that_adds_a_key_lets_it_in_at_once(run1: Run, tmp_path: Path) -> None:
    new_key_, new_hash = new_key(bytes(range(2, 34)))

    async def main_() -> None:
        config = api_config(tmp_path)
        async with running_app(config) as app, client(app, f"Bearer {new_key_}") as c:
            assert (await c.get("/v1/account")).status == 401
            acme = msgspec.structs.replace(
                config.accounts[0], api_keys=(*config.accounts[0].api_keys, new_hash)
            )
            await app.reload(msgspec.structs.replace(config, accounts=(acme, *config.accounts[1:])))
            assert (await c.get("/v1/account")).status == 200
            async with client(app) as old:  # the first key still works
                assert (await old.get("/v1/account")).status == 200

    run1(main_())


def test_a_reload_that_drops_a_key_shuts_it_out_at_once(run1: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        config = api_config(tmp_path)
        async with running_app(config) as app, client(app) as c:
            assert (await c.get("/v1/account")).status == 200
            assert (await c.get("/v1/account")).status == 200  # (known by now)
            acme = msgspec.structs.replace(config.accounts[0], api_keys=())
            await app.reload(msgspec.structs.replace(config, accounts=(acme, *config.accounts[1:])))
            assert (await c.get("/v1/account")).status == 401

    run1(main_())
