"""Callback URLs given by applications (a message's callback_url, Kannel's and Jasmin's
dlr-url) reach only ``webhooks.callback_networks``: an address literal outside them is
refused when the message is sent (422 naming the field), a name is judged by the address
it resolves to when the callback connects (then the event is dead at once, with why); the
operator's own webhook URLs are not restricted. Real receivers on loopback, a real App."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from http_fixtures import SECRET, Client, Receiver, api_config
from loops import Run
from smsc_fixtures import DEADLINE, PASSWORD, SYSTEM_ID, running_app
from test_legacy_http import Http

from smppcore.config import ConfigError, load_config
from smsc.callback_guard import LOCAL_NETWORKS, CallbackGuard, CallbackRefused
from smsc.config import SmscConfig
from smsc.defaults import DEFAULT
from smsc.webhook_client import WebhookClient

#: What a production config file gets when it says nothing.
PUBLIC_ONLY = {"callback_networks": ["public"]}


# --- the guard's decisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.9", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # shared (CGNAT) space
        ("169.254.169.254", False),  # the cloud metadata service
        ("fd00:ec2::254", False),  # AWS's, over IPv6
        ("fe80::1", False),
        ("fc00::1", False),
        ("0.0.0.0", False),  # connecting to it reaches this machine
        ("224.0.0.1", False),
        ("::ffff:127.0.0.1", False),  # an IPv4-mapped address is judged as IPv4
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("::7f00:1", False),  # IPv4-compatible (::/96) 127.0.0.1
        ("::a00:1", False),  # IPv4-compatible 10.0.0.1
        ("::808:808", True),  # IPv4-compatible 8.8.8.8
        ("64:ff9b:1::7f00:1", False),  # local-use NAT64 (RFC 8215) of 127.0.0.1
        ("64:ff9b:1::808:808", True),  # local-use NAT64 of 8.8.8.8
        ("64:ff9b:1:7f00:1::", False),  # local-use NAT64 not in its /96 form: reserved
        ("::ffff:0:7f00:1", False),  # SIIT (::ffff:0:0:0/96) of 127.0.0.1
        ("::ffff:0:a9fe:a9fe", False),  # SIIT of the metadata service
        ("::ffff:0:808:808", True),  # SIIT of 8.8.8.8
        ("fec0::1", False),  # deprecated site-local (fec0::/10)
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("not an address", False),
    ],
)
def test_public_allows_globally_routable_addresses_only(address: str, allowed: bool) -> None:
    assert CallbackGuard(["public"]).allows(address) is allowed


def test_metadata_and_unspecified_addresses_need_a_network_inside_their_range() -> None:
    everything = CallbackGuard(["0.0.0.0/0", "::/0"])
    assert everything.allows("10.0.0.1")
    assert everything.allows("127.0.0.1")
    for never in ("169.254.169.254", "100.100.100.200", "0.0.0.0", "fe80::1", "::"):
        assert not everything.allows(never), never
    named = CallbackGuard(["169.254.169.254/32"])
    assert named.allows("169.254.169.254")
    assert not named.allows("169.254.169.253")
    assert not named.allows("8.8.8.8")  # (public not listed)


def test_a_literal_url_is_checked_and_a_name_is_left_for_connect_time() -> None:
    guard = CallbackGuard(["public", "10.20.0.0/16"])
    guard.check_url("http://10.20.3.4:8080/hook")
    guard.check_url("http://internal.example/hook")  # a name: judged when resolved
    with pytest.raises(CallbackRefused, match=re.escape("169.254.169.254 is outside")):
        guard.check_url("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(CallbackRefused):
        guard.check_url("http://[::1]:9775/api/v1/carriers")


# --- configuration --------------------------------------------------------------------------


def test_the_config_files_default_is_public_and_the_embedded_default_adds_loopback() -> None:
    assert load_config({}, SmscConfig).webhooks.callback_networks == ("public",)
    assert DEFAULT.webhooks.callback_networks == LOCAL_NETWORKS
    embedded = CallbackGuard(DEFAULT.webhooks.callback_networks)
    assert embedded.allows("127.0.0.1")
    assert not embedded.allows("169.254.169.254")
    assert not embedded.allows("192.168.0.10")


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "everything", "::1/129"])
def test_a_bad_network_names_its_path(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"webhooks": {"callback_networks": ["public", bad]}}, SmscConfig)
    assert err.value.path == "$.webhooks.callback_networks[1]", err.value
    assert repr(bad) in err.value.reason


# --- refused when the message is sent -------------------------------------------------------


def test_a_callback_url_to_a_refused_literal_is_422_naming_the_field(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        config = api_config(tmp_path, webhooks=PUBLIC_ONLY)
        async with running_app(config) as app, Client(app.api_port) as c:
            for url in (
                "http://169.254.169.254/latest/meta-data/iam/",
                "http://127.0.0.1:9775/api/v1/carriers",
                "http://[::1]/x",
                "http://10.0.0.7/hook",
            ):
                reply = await c.post(
                    "/v1/messages",
                    json_body={"to": "447700900001", "text": "hi", "callback_url": url},
                )
                assert reply.status == 422, (url, reply.body)
                assert reply.body["field"] == "callback_url"
                assert "callback_networks" in reply.body["detail"]
            assert app.router is not None
            assert app.router.queue_stats().depth == 0  # nothing was taken

    run1(main())


def test_kannel_and_jasmin_dlr_urls_to_a_refused_literal_are_422(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        metadata = quote("http://169.254.169.254/latest?type=%d", safe="")
        auth = f"username={SYSTEM_ID}&password={quote(PASSWORD, safe='')}"
        config = api_config(tmp_path, webhooks=PUBLIC_ONLY)
        async with running_app(config) as app, Http(app) as http:
            status, text, _ = await http.get(
                f"/cgi-bin/sendsms?{auth}&to=4477&text=x&dlr-mask=31&dlr-url={metadata}"
            )
            assert status == 422
            assert text.startswith("dlr-url: 169.254.169.254 is outside"), text
            status, text, _ = await http.get(
                f"/send?{auth}&to=4477&content=x&dlr=yes&dlr-level=3&dlr-url={metadata}"
            )
            assert status == 422
            assert text.startswith('Error "dlr-url: 169.254.169.254 is outside'), text
            # not a URL smsc can call at all
            status, text, _ = await http.get(
                f"/cgi-bin/sendsms?{auth}&to=4477&text=x&dlr-mask=1&dlr-url=ftp%3A%2F%2Fx%2Fy"
            )
            assert status == 422
            assert text.startswith("dlr-url: 'ftp://x/y' is not an absolute http(s) URL"), text
            # without a dlr-mask Kannel calls nothing: the URL is not looked at
            status, _, _ = await http.get(
                f"/cgi-bin/sendsms?{auth}&to=4477&text=x&dlr-url={metadata}"
            )
            assert status == 202

    run1(main())


# --- refused when the callback connects -----------------------------------------------------


async def failures(c: Client) -> list[dict[str, Any]]:
    reply = await c.get("/v1/webhooks/failures")
    assert reply.status == 200
    found: list[dict[str, Any]] = reply.body["failures"]
    return found


def test_a_name_resolving_to_a_refused_address_is_dead_at_once_and_the_operators_url_is_not(
    run1: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``localhost`` passes when the message is sent (a name) and resolves to loopback when
    the callback connects: outside [public], the event is dead-lettered on its first try,
    nothing reaches the receiver, and the log says why. The account's own status_url (the
    operator's, in the config) on the same loopback receiver is delivered."""

    async def main() -> None:
        async with Receiver() as receiver:
            account = {"webhooks": {"status_url": receiver.url("/operator"), "secret": SECRET}}
            config = api_config(tmp_path, account=account, webhooks=PUBLIC_ONLY)
            async with running_app(config) as app, Client(app.api_port) as c:
                sneaky = f"http://localhost:{receiver.port}/sneaky"
                body = {"to": "447700900001", "text": "hi", "callback_url": sneaky}
                reply = await c.post("/v1/messages", json_body=body)
                assert reply.status == 202, reply.body
                message_id = reply.body["messages"][0]["id"]
                body = {"to": "447700900001", "text": "hi"}
                assert (await c.post("/v1/messages", json_body=body)).status == 202
                sender = app.web.sender
                assert sender is not None
                assert await sender.wait_for(
                    lambda: sender.metrics.outcomes.get((SYSTEM_ID, "dead"), 0) == 1, DEADLINE
                )
                await receiver.wait_for(lambda: bool(receiver.taken()))
                (failure,) = await failures(c)
                assert failure["event"]["data"]["message_id"] == message_id
                assert failure["attempts"] == 1  # never retried
                error = failure["last_error"]
                assert error.startswith("refused: localhost resolves to "), failure
                assert "127.0.0.1" in error
                assert "outside webhooks.callback_networks (public)" in error
                assert [call.path for call in receiver.calls] == ["/operator"]
        assert any(
            "dead-lettered" in r.getMessage() and "refused" in r.getMessage()
            for r in caplog.records
        )

    with caplog.at_level(logging.WARNING, logger="smsc.webhooks"):
        run1(main())


def test_a_kannel_dlr_url_by_name_is_judged_when_it_connects(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as receiver:
            auth = f"username={SYSTEM_ID}&password={quote(PASSWORD, safe='')}"
            dlr = quote(f"http://localhost:{receiver.port}/dlr?type=%d", safe="")
            config = api_config(tmp_path, webhooks=PUBLIC_ONLY)
            async with running_app(config) as app, Http(app) as http, Client(app.api_port) as c:
                status, _, _ = await http.get(
                    f"/cgi-bin/sendsms?{auth}&to=4477&text=x&dlr-mask=3&dlr-url={dlr}"
                )
                assert status == 202
                sender = app.web.sender
                assert sender is not None
                assert await sender.wait_for(
                    lambda: sender.metrics.outcomes.get((SYSTEM_ID, "dead"), 0) == 1, DEADLINE
                )
                (failure,) = await failures(c)
                assert failure["event"] == {"method": "GET"}
                assert failure["url"].startswith(f"http://localhost:{receiver.port}/dlr?type=")
                assert failure["last_error"].startswith("refused: ")
            assert receiver.calls == []

    run1(main())


# --- the client: what it connects to --------------------------------------------------------


def test_a_guarded_request_never_reuses_a_connection_opened_for_a_trusted_one(
    run1: Run,
) -> None:
    """The operator's URL on loopback opens a kept-alive connection; a guarded request to
    the same host and port must not ride on it (it is refused before anything is sent)."""

    async def main() -> None:
        async with Receiver() as receiver:
            client = WebhookClient(timeout=DEADLINE, max_idle=4, guard=CallbackGuard(["public"]))
            try:
                resp = await client.request("POST", receiver.url("/trusted"), b"{}")
                assert resp.status == 204
                with pytest.raises(CallbackRefused, match=re.escape("127.0.0.1 is outside")):
                    await client.request("POST", receiver.url("/guarded"), b"{}", guarded=True)
                assert [call.path for call in receiver.calls] == ["/trusted"]
                loopback = WebhookClient(
                    timeout=DEADLINE, max_idle=4, guard=CallbackGuard(LOCAL_NETWORKS)
                )
                try:
                    url = f"http://localhost:{receiver.port}/allowed"
                    resp = await loopback.request("POST", url, b"{}", guarded=True)
                    assert resp.status == 204
                finally:
                    await loopback.close()
                assert receiver.calls[-1].path == "/allowed"
            finally:
                await client.close()

    run1(main())


def test_an_app_started_from_the_embedded_default_takes_loopback_callbacks(
    run1: Run, tmp_path: Path
) -> None:
    """What ``make run`` decodes: a config with the embedded default's networks lets a
    message's callback reach a receiver on this machine."""

    async def main() -> None:
        async with Receiver() as receiver:
            config = api_config(tmp_path, webhooks={"callback_networks": list(LOCAL_NETWORKS)})
            async with running_app(config) as app, Client(app.api_port) as c:
                url = f"http://localhost:{receiver.port}/mine"
                body = {"to": "447700900001", "text": "hi", "callback_url": url}
                assert (await c.post("/v1/messages", json_body=body)).status == 202
                await receiver.wait_for(lambda: bool(receiver.taken()))
                assert receiver.taken()[0].path == "/mine"

    run1(main())
