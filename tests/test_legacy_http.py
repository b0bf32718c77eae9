"""Kannel's and Jasmin's HTTP endpoints on the application API's listener, with their own
parameter names, answers and receipt callbacks (to a real aiohttp receiver), end to end
through a simulated carrier. Callbacks are retried, unlike theirs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import aiohttp
from http_fixtures import Receiver, api_config
from loops import Run
from smsc_fixtures import DEADLINE, PASSWORD, SYSTEM_ID, running_app, stored

from smppcore.constants import DataCoding, EsmClass
from smppcore.text import decode_text
from smsc.app import App


class Http:
    """A plain HTTP client for the legacy endpoints (their answers are text)."""

    def __init__(self, app: App) -> None:
        self.base = f"http://127.0.0.1:{app.api_port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def get(self, path_and_query: str) -> tuple[int, str, dict[str, str]]:
        """GET with the query exactly as written (escapes and all)."""
        url = aiohttp.client.URL(self.base + path_and_query, encoded=True)
        async with self.session.get(url) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        async with self.session.post(self.base + path, data=form) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


def q(value: str) -> str:
    return quote(value, safe="")


AUTH = f"username={SYSTEM_ID}&password={q(PASSWORD)}"


# --- Kannel --------------------------------------------------------------------------------------


def test_kannel_sendsms_answers_as_kannel_and_calls_the_dlr_url_with_its_escapes(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            Receiver(fail_first=1) as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            dlr = receiver.url("/dlr") + (
                "?type=%d&id=%I&smsc=%i&answer=%A&to=%p&from=%P&at=%T&when=%t&fid=%F"
                "&user=%n&pct=%%"
            )
            status, text, headers = await http.get(
                f"/cgi-bin/sendsms?{AUTH}&to=447700900001&from=Acme&text=Hello%20there"
                f"&dlr-mask=3&dlr-url={q(dlr)}"
            )
            assert (status, text) == (202, "0: Accepted for delivery")
            message_id = headers["X-Smsc-Message-Id"]
            msg = (await stored(app, message_id)).message
            assert decode_text(msg.short_message, msg.data_coding) == "Hello there"
            assert msg.registered_delivery & 1
            await receiver.wait_for(lambda: bool(receiver.taken()))
            # the first call failed (500): Kannel would have given up; we call again
            assert [c.status for c in receiver.calls] == [500, 204]
            call = receiver.taken()[0]
            assert call.method == "GET"
            assert call.path == "/dlr"
            got = call.query
            assert got["type"] == "1"
            assert got["id"] == message_id
            assert got["smsc"] == "fast"
            assert got["answer"].startswith(f"id:{message_id} sub:001 dlvrd:001")
            assert "stat:DELIVRD" in got["answer"]
            assert got["to"] == "447700900001"  # the handset: Kannel swaps them
            assert got["from"] == "Acme"
            assert got["at"].isdigit()
            assert len(got["when"]) == len("2026-01-01 10:00:00")
            assert got["fid"]
            assert got["user"] == SYSTEM_ID
            assert got["pct"] == "%"

    run(main())


def test_kannel_dlr_mask_picks_the_types_called(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            failed_only = q(receiver.url("/failed") + "?type=%d")
            delivered = q(receiver.url("/delivered") + "?type=%d")
            for url, mask in ((failed_only, 2), (delivered, 1)):
                status, _, _ = await http.get(
                    f"/cgi-bin/sendsms?{AUTH}&to=447700900001&text=x"
                    f"&dlr-mask={mask}&dlr-url={url}"
                )
                assert status == 202
            await receiver.wait_for(lambda: bool(receiver.taken()))
            (call,) = receiver.taken()  # the delivered one; the other asked for failures
            assert (call.path, call.query["type"]) == ("/delivered", "1")

    run1(main())


def test_kannel_charset_coding_and_udh_arrive_as_sent(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, Http(app) as http:
            # ISO-8859-1 text, sent as UCS-2
            _, _, headers = await http.get(
                f"/cgi-bin/sendsms?{AUTH}&to=4477&text=%E9t%E9&charset=ISO-8859-1&coding=2"
            )
            msg = (await stored(app, headers["X-Smsc-Message-Id"])).message
            assert msg.data_coding == DataCoding.UCS2
            assert decode_text(msg.short_message, msg.data_coding) == "été"
            # 8-bit binary with a port-addressing UDH
            _, _, headers = await http.get(
                f"/cgi-bin/sendsms?{AUTH}&to=4477&coding=1&udh=%06%05%04%0B%84%23%F0"
                "&text=%01%02%FF"
            )
            msg = (await stored(app, headers["X-Smsc-Message-Id"])).message
            assert msg.short_message == bytes.fromhex("0605040b8423f0" "0102ff")
            assert msg.esm_class & EsmClass.UDHI
            assert msg.data_coding == DataCoding.BINARY
            # several receivers, separated by spaces
            status, _, headers = await http.get(f"/cgi-bin/sendsms?{AUTH}&to=4477%204478&text=x")
            assert status == 202
            assert len(headers["X-Smsc-Message-Id"].split(",")) == 2

    run1(main())


def test_kannel_errors_are_kannels_and_change_nothing(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, Http(app) as http:
            cases: list[tuple[str, int, str]] = [
                ("username=acme&password=nope&to=4477&text=x", 403, "Authorization failed"),
                ("to=4477&text=x", 403, "Authorization failed"),
                (f"{AUTH}&text=x", 400, "Missing receiver number"),
                (f"{AUTH}&to=4477", 400, "Missing text"),
                (f"{AUTH}&to=44-77&text=x", 400, "is not a number"),
                (f"{AUTH}&to=4477&text=x&coding=9", 400, "coding"),
                (f"{AUTH}&to=4477&text=x&charset=nope", 400, "nope"),
            ]
            for query, status, text in cases:
                got_status, got_text, _ = await http.get(f"/cgi-bin/sendsms?{query}")
                assert got_status == status, (query, got_text)
                assert text in got_text, (query, got_text)
            assert app.router is not None
            assert app.router.queue_stats().depth == 0

    run1(main())


# --- Jasmin --------------------------------------------------------------------------------------


def test_jasmin_send_answers_success_and_posts_a_level_2_receipt(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            Http(app) as http,
        ):
            form: dict[str, Any] = {
                "username": SYSTEM_ID,
                "password": PASSWORD,
                "to": "447700900001",
                "from": "Acme",
                "content": "Hello Jasmin",
                "dlr": "yes",
                "dlr-url": receiver.url("/jasmin"),
                "dlr-level": "2",
                "dlr-method": "POST",
            }
            status, text, _ = await http.post("/send", form)
            assert status == 200, text
            assert re.fullmatch(r'Success "[0-9a-z-]+"', text), text
            message_id = text.removeprefix('Success "').removesuffix('"')
            await receiver.wait_for(lambda: bool(receiver.taken()))
            (call,) = receiver.taken()
            assert call.method == "POST"
            fields = {k: v[0] for k, v in parse_qs(call.body.decode()).items()}
            assert fields["id"] == message_id
            assert fields["message_status"] == "DELIVRD"
            assert fields["level"] == "2"
            assert fields["connector"] == "fast"
            assert fields["id_smsc"]
            assert fields["dlvrd"] == "001"
            assert fields["err"] == "000"
            assert fields["text"] == "Hello Jasmin"
            # GET, level 1 only: nothing is called for the receipt
            status, text, _ = await http.get(
                f"/send?{AUTH}&to=4477&content=x&dlr=yes&dlr-level=1"
                f"&dlr-url={q(receiver.url('/level1'))}"
            )
            assert status == 200

    run(main())


def test_jasmin_errors_balance_and_rate(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(api_config(tmp_path)) as app, Http(app) as http:
            status, text, _ = await http.get("/send?username=acme&password=bad&to=1&content=x")
            assert (status, text) == (403, 'Error "Authentication failure for username:acme"')
            status, text, _ = await http.get(f"/send?{AUTH}&content=x")
            assert (status, text) == (400, 'Error "Mandatory argument [to] is not found."')
            status, text, _ = await http.get(f"/send?{AUTH}&to=4477&hex-content=zz")
            assert status == 400
            assert "hex" in text
            status, text, _ = await http.get(f"/send?{AUTH}&to=4477&hex-content=0102&coding=4")
            assert status == 200
            async with http.session.get(f"{http.base}/balance?{AUTH}") as resp:
                assert await resp.json() == {"balance": "ND", "sms_count": "ND"}
            async with http.session.get(f"{http.base}/rate?{AUTH}&to=447700900001") as resp:
                body = await resp.json()
            assert body == {"submit_sm_count": 1, "unit_rate": 0.001}

    run1(main())
