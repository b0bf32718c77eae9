"""Kannel's dlr-mask types 8 ("SMSC accepted": the carrier's submit_sm_resp said OK) and
16 ("SMSC rejected": the message ended before any carrier took it), and Jasmin's dlr-level
1 (the submit_sm_resp's status) and 3 (both levels), end to end: messages sent through
their endpoints, a simulated carrier that accepts or refuses, callbacks to a real aiohttp
receiver through the webhook outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from http_fixtures import Receiver, api_config
from loops import Run
from smsc_fixtures import DEADLINE, PASSWORD, SYSTEM_ID, profile, running_app, stored
from test_legacy_http import Http

from smsc.app import App
from smsc.http_records import part_id

AUTH = f"username={SYSTEM_ID}&password={quote(PASSWORD, safe='')}"
#: The simulated carrier refuses destinations starting 4917 for good.
REFUSING = {
    "fast": profile(
        rules=[{"match": {"destination_prefix": "4917"}, "submit_status": "ESME_RINVDSTADR"}]
    )
}
#: Every escape Kannel fills in, by name.
ESCAPES = "type=%d&answer=%A&smsc=%i&id=%I&fid=%F&to=%p&from=%P&at=%T&user=%n"


def q(value: str) -> str:
    return quote(value, safe="")


async def kannel(
    http: Http, receiver: Receiver, to: str, mask: int, path: str = "/dlr", text: str = "hi"
) -> str:
    """Send one message through Kannel's sendsms asking ``mask``; our id."""
    dlr = q(receiver.url(path) + "?" + ESCAPES)
    status, text, headers = await http.get(
        f"/cgi-bin/sendsms?{AUTH}&to={to}&from=Acme&text={q(text)}&dlr-mask={mask}&dlr-url={dlr}"
    )
    assert (status, text) == (202, "0: Accepted for delivery")
    return headers["X-Smsc-Message-Id"]


async def jasmin(http: Http, receiver: Receiver, to: str, level: int, method: str = "GET") -> str:
    form = {
        "username": SYSTEM_ID,
        "password": PASSWORD,
        "to": to,
        "content": "hi",
        "dlr": "yes",
        "dlr-url": receiver.url("/jasmin"),
        "dlr-level": str(level),
        "dlr-method": method,
    }
    status, text, _ = await http.post("/send", form)
    assert status == 200, text
    return text.removeprefix('Success "').removesuffix('"')


async def settled(app: App) -> None:
    """Until the webhook outbox holds nothing: every callback put so far was taken."""
    sender = app.web.sender
    assert sender is not None
    assert await sender.wait_for(lambda: app.web.outbox.waiting == 0, DEADLINE)


def fields(call: Any) -> dict[str, str]:
    """A Jasmin callback's fields (query of a GET, form of a POST)."""
    if call.method == "POST":
        return {k: v[0] for k, v in parse_qs(call.body.decode()).items()}
    return dict(call.query)


# --- Kannel ----------------------------------------------------------------------------------


def test_kannel_type_8_when_the_carrier_accepts_then_type_1_from_the_receipt(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            message_id = await kannel(http, receiver, "447700900001", 1 | 2 | 8 | 16)
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            calls = {call.query["type"]: call.query for call in receiver.taken()}
            assert set(calls) == {"8", "1"}
            ack, delivered = calls["8"], calls["1"]
            assert ack["answer"] == "ACK/"
            assert ack["id"] == message_id
            assert ack["smsc"] == "fast"
            assert ack["to"] == "447700900001"
            assert ack["from"] == "Acme"
            assert ack["user"] == SYSTEM_ID
            assert ack["at"].isdigit()
            found = await stored(app, message_id)
            assert ack["fid"] == found.carrier_message_id != ""  # the carrier's id
            assert delivered["fid"] == ack["fid"]
            assert "stat:DELIVRD" in delivered["answer"]

    run(main())


def test_kannel_type_8_alone_asks_the_carrier_for_no_receipt(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            message_id = await kannel(http, receiver, "447700900001", 8)
            await receiver.wait_for(lambda: bool(receiver.taken()))
            (call,) = receiver.taken()
            assert (call.query["type"], call.query["answer"]) == ("8", "ACK/")
            # no receipt was asked of the carrier: no type 1 or 2 can follow
            assert (await stored(app, message_id)).message.registered_delivery == 0

    run1(main())


def test_kannel_type_16_when_the_carrier_refuses_and_no_type_2_after_it(
    run: Run, tmp_path: Path
) -> None:
    """dlr-mask 31: the carrier's ESME_RINVDSTADR is one type-16 call with Kannel's NACK
    text, and nothing else (no type 8, and no type 2: the message never reached it). As
    Kannel, mask 3 (delivered or not) gets the type-16 call too; mask 1 gets nothing."""

    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path, REFUSING)) as app,
            Http(app) as http,
        ):
            # One bind, no latency: the carrier answers in the order they are sent, so
            # the first one is refused (and final) before the others are.
            quiet = await kannel(http, receiver, "491700000001", 1, "/quiet")
            all_of_them = await kannel(http, receiver, "491700000002", 31, "/all")
            final_only = await kannel(http, receiver, "491700000003", 3, "/final")
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            await settled(app)
            by_path = {call.path: call.query for call in receiver.calls}
            assert set(by_path) == {"/all", "/final"}  # /quiet asked for deliveries only
            for path, message_id in (("/all", all_of_them), ("/final", final_only)):
                got = by_path[path]
                assert got["type"] == "16"
                assert got["id"] == message_id
                assert got["answer"] == "NACK/0x0000000b/Invalid Destination Address"
                assert got["smsc"] == "fast"
                assert got["fid"] == ""  # no carrier took it
            assert (await stored(app, quiet)).state.name == "REJECTED"

    run(main())


def test_kannel_type_16_for_a_message_no_route_takes_says_why(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        routes = [{"prefix": "44", "carriers": [{"carrier": "fast", "price": "0.001"}]}]
        config = api_config(tmp_path, routes=routes)
        async with Receiver() as receiver, running_app(config) as app, Http(app) as http:
            message_id = await kannel(http, receiver, "33600000001", 16)
            await receiver.wait_for(lambda: bool(receiver.taken()))
            (call,) = receiver.taken()
            assert call.query["type"] == "16"
            assert call.query["id"] == message_id
            assert call.query["answer"] == "NACK/no route"
            assert call.query["smsc"] == ""

    run1(main())


# --- Jasmin ----------------------------------------------------------------------------------


def test_jasmin_level_1_reports_the_carriers_esme_rok(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            message_id = await jasmin(http, receiver, "447700900001", 1)
            await receiver.wait_for(lambda: bool(receiver.taken()))
            (call,) = receiver.taken()
            assert call.method == "GET"
            assert call.path == "/jasmin"
            assert fields(call) == {
                "id": message_id,
                "message_status": "ESME_ROK",
                "level": "1",
                "connector": "fast",
            }
            # level 1 only: no receipt is asked of the carrier, no level 2 follows
            assert (await stored(app, message_id)).message.registered_delivery == 0

    run1(main())


def test_jasmin_level_3_posts_level_1_then_level_2(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            message_id = await jasmin(http, receiver, "447700900001", 3, method="POST")
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            got = {f["level"]: f for f in map(fields, receiver.taken())}
            assert set(got) == {"1", "2"}
            assert all(call.method == "POST" for call in receiver.taken())
            assert got["1"]["message_status"] == "ESME_ROK"
            assert got["1"]["id"] == got["2"]["id"] == message_id
            assert got["2"]["message_status"] == "DELIVRD"
            assert got["2"]["id_smsc"] == (await stored(app, message_id)).carrier_message_id

    run(main())


def test_jasmin_level_1_names_the_carriers_refusal_and_no_level_2_follows(
    run1: Run, tmp_path: Path
) -> None:
    """dlr-level 3 and a refusal for good: one level-1 call with the refusal's name (as
    Jasmin: the receipt it waited for will never come). A message no route takes is
    refused with ESME_RSUBMITFAIL and no connector."""

    async def main() -> None:
        routes = [
            {"prefix": "49", "carriers": [{"carrier": "fast", "price": "0.001"}]},
        ]
        config = api_config(tmp_path, REFUSING, routes=routes)
        async with Receiver() as receiver, running_app(config) as app, Http(app) as http:
            refused = await jasmin(http, receiver, "491700000001", 3)
            unrouted = await jasmin(http, receiver, "33600000001", 1)
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            await settled(app)
            got = {f["id"]: f for f in map(fields, receiver.calls)}
            assert got == {
                refused: {
                    "id": refused,
                    "message_status": "ESME_RINVDSTADR",
                    "level": "1",
                    "connector": "fast",
                },
                unrouted: {
                    "id": unrouted,
                    "message_status": "ESME_RSUBMITFAIL",
                    "level": "1",
                    "connector": "",
                },
            }

    run1(main())


def test_kannel_type_8_once_for_a_long_message_when_every_part_is_accepted(
    run1: Run, tmp_path: Path
) -> None:
    """A three-part message asking dlr-mask 8: one type-8 call for the whole message (as
    Kannel's handle_split), made once the carrier accepted every part — not one per part."""

    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            message_id = await kannel(http, receiver, "447700900001", 8, text="x" * 400)
            await receiver.wait_for(lambda: bool(receiver.taken()))
            for n in (1, 2, 3):  # every part accepted by now
                assert (await stored(app, part_id(message_id, n))).carrier_message_id
            await settled(app)
            (call,) = receiver.calls
            assert (call.query["type"], call.query["answer"]) == ("8", "ACK/")
            assert call.query["id"] == message_id

    run1(main())


def test_jasmin_level_2_alone_calls_nothing_for_a_message_no_carrier_took(
    run1: Run, tmp_path: Path
) -> None:
    """As Jasmin: a terminal (level-2) receipt comes only from the carrier, for a message
    it accepted; one refused at the submit gets no call at all. The one delivered after it
    does (and shows the refused one had its chance)."""

    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path, REFUSING)) as app,
            Http(app) as http,
        ):
            refused = await jasmin(http, receiver, "491700000001", 2)
            delivered = await jasmin(http, receiver, "447700900001", 2)
            await receiver.wait_for(lambda: bool(receiver.taken()))
            assert (await stored(app, refused)).state.name == "REJECTED"
            await settled(app)
            (call,) = receiver.calls
            assert fields(call)["id"] == delivered
            assert fields(call)["message_status"] == "DELIVRD"

    run1(main())
