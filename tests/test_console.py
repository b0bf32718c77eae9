# ruff: noqa: F811 (the browser fixtures, imported, are the tests' arguments)
"""The console in a real browser (Debian's chromium through Playwright; tests/browser.py)
against ``smsc serve`` and ``smsc carrier`` run as a person runs them: log in with the URL
``smsc serve`` prints; every page needs that login; the overview's charts move under load
and its numbers are /metrics' numbers; a kick unbinds an smpplib client; a pause moves
explain to the next carrier; a message found by destination shows its receipt in its
timeline; an MO injected in the simulator's page reaches an smpplib receiver; a request
without the CSRF token or the cookie changes nothing. Every page is saved as a screenshot
(tests/artifacts/console/), wide and narrow, and used with the keyboard alone.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
from browser import (  # noqa: F401 (the fixtures: playwright, browser, context, page)
    DEADLINE,
    NARROW,
    WIDE,
    Child,
    browser,
    context,
    page,
    playwright,
    screenshot,
    write_yaml,
)
from interop_clients import SmpplibPeer
from playwright.sync_api import BrowserContext, Page, expect
from smsc_fixtures import (
    OTHER_ID,
    PASSWORD,
    SYSTEM_ID,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    accounts,
    simulator,
    upstream,
)

expect.set_options(timeout=DEADLINE)
PAGES = (
    "overview",
    "sessions",
    "carriers",
    "routes",
    "messages",
    "send",
    "simulators",
    "cluster",
)
#: Seconds an smpplib client waits at most for what a test expects of it.
WAIT = DEADLINE / 1000


class Smsc:
    def __init__(self, child: Child, url: str, http: int, port: int) -> None:
        self.child = child
        self.url = url
        self.base = f"http://127.0.0.1:{http}"
        self.port = port


@pytest.fixture(scope="module")
def smsc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smsc]:
    """``smsc serve`` with two simulated carriers, cheap and dear (cheap sends MO to acme),
    no admin token: it prints a login URL with a random token."""
    tmp = tmp_path_factory.mktemp("console")
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "accounts": accounts(),
        "router": {
            "carriers": [upstream("cheap", mo_account=SYSTEM_ID), upstream("dear")],
            "routes": [
                {
                    "prefix": "",
                    "carriers": [
                        {"carrier": "cheap", "price": "0.001"},
                        {"carrier": "dear", "price": "0.002"},
                    ],
                }
            ],
            "store": {"path": str(tmp / "smsc.db")},
            "routing": {"explore": 0},
        },
        "simulated_carriers": [
            {"name": "cheap", "config": simulator()},
            {"name": "dear", "config": simulator()},
        ],
        "log_level": "info",
    }
    path = write_yaml(tmp / "smsc.yaml", config)
    child = Child(tmp, "serve", "--config", str(path), name="serve")
    try:
        url = child.line(r"smsc serve: console: (http://\S+)").group(1)
        port = int(child.line(r"smsc serve: listening on 127\.0\.0\.1:(\d+)").group(1))
        http = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
        ready = f"http://127.0.0.1:{http}/api/v1/ready?wait=30"
        with urllib.request.urlopen(ready, timeout=40) as answer:
            assert answer.status == 200
        yield Smsc(child, url, http, port)
    finally:
        child.stop()


def login(page: Page, smsc: Smsc) -> None:
    page.goto(smsc.url)
    expect(page).to_have_url(re.compile(r"/console/overview$"))


def metric(smsc: Smsc, name: str, **labels: str) -> float:
    """A sample of /metrics (summed over the labels not given)."""
    with urllib.request.urlopen(f"{smsc.base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bound_client(port: int, system_id: str, password: str, kind: str = "trx") -> SmpplibPeer:
    peer = SmpplibPeer(port)
    peer.client.connect()
    bind = {
        "trx": peer.client.bind_transceiver,
        "rx": peer.client.bind_receiver,
    }[kind]
    bind(system_id=system_id, password=password)
    return peer


# --- login ------------------------------------------------------------------------------------


def test_pages_send_to_the_login_page_until_the_printed_url_logs_in(
    page: Page, context: BrowserContext, smsc: Smsc
) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", smsc.url)
    for name in PAGES:
        page.goto(f"{smsc.base}/console/{name}")
        expect(page).to_have_url(f"{smsc.base}/console/login?next=/console/{name}")
        expect(page.locator("#token")).to_be_visible()
    screenshot(page, "login")
    page.goto(smsc.url.replace("token=", "token=wrong"))
    expect(page).to_have_url(re.compile(r"/console/login\?failed=1$"))
    login(page, smsc)
    (cookie,) = (c for c in context.cookies() if c["name"] == "smsc_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert "token" not in page.url  # it left the address bar


def test_the_login_form_takes_the_token_with_the_keyboard(page: Page, smsc: Smsc) -> None:
    page.goto(f"{smsc.base}/console/routes")
    # The field takes the focus by itself (autofocus: the browser applies it once the page
    # is shown, which may be a moment after the load event): no click needed.
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(smsc.url.split("token=")[1])
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{smsc.base}/console/routes")
    expect(page.locator("#routes")).to_contain_text("cheap 0.001")


# --- every page, wide and narrow ----------------------------------------------------------------


def test_every_page_renders_wide_and_narrow_without_spilling_sideways(
    page: Page, smsc: Smsc
) -> None:
    login(page, smsc)
    for size, viewport in (("wide", WIDE), ("narrow", NARROW)):
        page.set_viewport_size(viewport)  # type: ignore[arg-type]
        for name in PAGES:
            page.goto(f"{smsc.base}/console/{name}")
            expect(page.locator("main h1")).to_be_visible()
            expect(page.locator(f'nav a[href="/console/{name}"]')).to_have_attribute(
                "aria-current", "page"
            )
            # wide tables scroll inside their box; the page itself never does sideways
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"], (name, size, width)
            screenshot(page, f"{name}-{size}")


# --- overview -----------------------------------------------------------------------------------


def test_the_overview_moves_under_load_and_its_numbers_are_the_metrics(
    page: Page, smsc: Smsc
) -> None:
    login(page, smsc)
    accepted = page.locator("#count-accepted")
    expect(accepted).not_to_have_text("–")
    before = int(accepted.inner_text().replace(",", ""))
    # (every message before this test was routed once it was answered: the tests before
    # waited for their receipts, or sent none)
    routed_before = int(metric(smsc, "smsc_route_decisions_total"))
    peer = bound_client(smsc.port, SYSTEM_ID, PASSWORD)
    try:
        n = 200
        for i in range(n):  # 50 at a time: the account's max_window is 100
            peer.client.send_message(
                source_addr="1234", destination_addr=f"4477009{i:05d}", short_message=b"load"
            )
            if i % 50 == 49:
                sent = i + 1
                peer.read_until(lambda: len(peer.resps) >= sent, _deadline())  # noqa: B023
    finally:
        peer.close()
    assert all(r.status == 0 for r in peer.resps)
    total = metric(smsc, "smsc_pdus_total", command="submit_sm", status="ESME_ROK")
    assert total >= before + n
    # the counter catches up with /metrics within a second or two (one sample a second)
    expect(accepted).to_have_text(f"{int(total):,}")
    # A submit is answered once it is queued; it is routed after that (a loaded machine
    # may still be routing the last ones now): the count of messages sent to a carrier
    # reaches every one of them, and then it is /metrics' count.
    expect(page.locator("#count-sent")).to_have_text(f"{routed_before + n:,}")
    assert metric(smsc, "smsc_route_decisions_total") == routed_before + n
    # the accepted/s line left the baseline: some point is above the bottom of the chart
    page.wait_for_function(
        """() => {
          const line = document.querySelector('#chart-accepted polyline');
          return line && line.getAttribute('points').split(' ')
            .some(p => p && Number(p.split(',')[1]) < 110);
        }"""
    )
    expect(page.locator("#count-carriers")).to_have_text("2 / 2")
    screenshot(page, "overview-under-load")


# --- sessions -----------------------------------------------------------------------------------


def test_kick_in_the_sessions_page_disconnects_the_smpplib_client(page: Page, smsc: Smsc) -> None:
    peer = bound_client(smsc.port, OTHER_ID, "globex")
    try:
        login(page, smsc)
        page.goto(f"{smsc.base}/console/sessions")
        row = page.locator("#binds tr", has_text=OTHER_ID)
        expect(row).to_have_count(1)
        screenshot(page, "sessions-bound")
        row.get_by_role("button", name=re.compile("^Kick")).click()
        expect(page.locator("#confirm")).to_be_visible()
        page.locator("#confirm-ok").click()
        expect(page.get_by_role("status")).to_contain_text("unbound")
        # smpplib gets the unbind, and then the connection closes
        gone = _disconnected(peer)
        assert gone, "the client is still connected"
        expect(page.locator("#binds tr", has_text=OTHER_ID)).to_have_count(0)
    finally:
        peer.close()


def _deadline() -> float:
    import time

    return time.monotonic() + WAIT


def _disconnected(peer: SmpplibPeer) -> bool:
    import time

    until = _deadline()
    while time.monotonic() < until:
        try:
            peer.client.read_once()
        except (smpplib.exceptions.ConnectionError, OSError):
            return True
    return False


# --- carriers and routes ------------------------------------------------------------------------


def explain(page: Page, smsc: Smsc, destination: str) -> str:
    page.goto(f"{smsc.base}/console/routes")
    page.locator("#explain-destination").fill(destination)
    page.locator("#explain-account").fill(SYSTEM_ID)
    page.locator("#explain-form button[type=submit]").click()
    choice = page.locator("#explain-choice")
    expect(choice).to_be_visible()
    return choice.inner_text()


def test_pausing_a_carrier_moves_explain_to_the_next_one(page: Page, smsc: Smsc) -> None:
    login(page, smsc)
    assert explain(page, smsc, "447700900123") == "cheap"
    page.goto(f"{smsc.base}/console/carriers")
    page.locator('button[data-carrier="cheap"][data-action="pause"]').click()
    expect(page.locator("#confirm-text")).to_contain_text("Pause cheap")
    page.locator("#confirm-ok").click()
    try:
        expect(page.locator("#carriers tr", has_text="cheap").locator("[data-state]")).to_have_text(
            "paused"
        )
        screenshot(page, "carriers-paused")
        assert explain(page, smsc, "447700900123") == "dear"
        expect(page.locator("#explain-candidates")).to_contain_text("paused by the operator")
        screenshot(page, "routes-explain")
    finally:
        page.goto(f"{smsc.base}/console/carriers")
        page.locator('button[data-carrier="cheap"][data-action="resume"]').click()
        page.locator("#confirm-ok").click()
        expect(page.locator('button[data-carrier="cheap"][data-action="pause"]')).to_be_visible()
    assert explain(page, smsc, "447700900123") == "cheap"


def test_cancelling_the_confirmation_changes_nothing(page: Page, smsc: Smsc) -> None:
    login(page, smsc)
    page.goto(f"{smsc.base}/console/carriers")
    page.locator('button[data-carrier="dear"][data-action="drain"]').click()
    expect(page.locator("#confirm-ok")).to_be_focused()  # the dialog is up, keys go to it
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    carriers = _api_get(page, smsc, "/api/v1/carriers")["carriers"]
    assert not any(c["paused"] or c["drained"] for c in carriers)


# --- send and messages --------------------------------------------------------------------------


def test_a_sent_message_is_followed_to_its_receipt_and_found_by_destination(
    page: Page, smsc: Smsc
) -> None:
    login(page, smsc)
    page.goto(f"{smsc.base}/console/send")
    destination = "447700955501"
    page.locator("#send-account").fill(SYSTEM_ID)
    page.locator("#send-destination").fill(destination)
    page.locator("#send-text").fill("console test")
    page.locator("#send-form button[type=submit]").click()
    timeline = page.locator("#follow #timeline")
    expect(timeline).to_have_attribute("data-state", "DELIVERED")
    expect(timeline.locator('[data-step="final"]')).to_contain_text("DELIVERED")
    message_id = timeline.get_attribute("data-id")
    screenshot(page, "send-followed")

    page.goto(f"{smsc.base}/console/messages")
    page.locator("#find-destination").fill(destination)
    page.locator("#find-form button[type=submit]").click()
    link = page.locator(f'#found a[data-message="{message_id}"]')
    expect(link).to_have_count(1)
    expect(page.locator("#found tbody tr")).to_have_count(1)
    link.click()
    shown = page.locator("#detail #timeline")
    expect(shown).to_have_attribute("data-id", str(message_id))
    expect(shown.locator('[data-step="accepted"]')).to_contain_text(destination)
    expect(shown.locator('[data-step="routed"]')).to_contain_text("cheap")
    expect(shown.locator('[data-step="final"]')).to_contain_text("DELIVERED")
    screenshot(page, "messages-timeline")


def test_the_send_form_is_filled_and_submitted_with_the_keyboard(page: Page, smsc: Smsc) -> None:
    login(page, smsc)
    page.goto(f"{smsc.base}/console/send")
    _tab_to(page, "send-account")
    page.keyboard.type(SYSTEM_ID)
    page.keyboard.press("Tab")
    page.keyboard.type("447700955502")
    page.keyboard.press("Enter")
    expect(page.locator("#follow #timeline")).to_have_attribute("data-state", "DELIVERED")


def _tab_to(page: Page, element_id: str, presses: int = 40) -> None:
    """Press Tab until the element has the focus (at most ``presses`` times)."""
    for _ in range(presses):
        if page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} not reachable with Tab")


# --- CSRF and the cookie ------------------------------------------------------------------------


def _api_get(page: Page, smsc: Smsc, path: str) -> Any:
    response = page.request.get(smsc.base + path)
    assert response.ok, response.text()
    return response.json()


def test_a_post_without_the_csrf_token_or_the_cookie_is_refused(page: Page, smsc: Smsc) -> None:
    login(page, smsc)
    csrf = page.locator('meta[name="csrf"]').get_attribute("content")
    assert csrf
    # the page's cookie goes with page.request; the CSRF header does not unless given
    refused = page.request.post(f"{smsc.base}/api/v1/carriers/cheap/pause")
    assert refused.status == 403
    assert "CSRF" in refused.json()["error"]
    refused = page.request.post(
        f"{smsc.base}/api/v1/carriers/cheap/pause", headers={"X-CSRF-Token": "x" * 43}
    )
    assert refused.status == 403
    refused = page.request.post(f"{smsc.base}/console/api/messages/1/cancel")
    assert refused.status == 403
    # no cookie at all: the admin API is off without a configured token, the console 401
    for path, status in (
        ("/api/v1/carriers/cheap/pause", 403),
        ("/console/api/messages/1/cancel", 401),
    ):
        request = urllib.request.Request(
            smsc.base + path, method="POST", headers={"X-CSRF-Token": csrf}
        )
        with pytest.raises(urllib.error.HTTPError) as refused_plain:
            urllib.request.urlopen(request, timeout=10)
        refused_plain.value.close()
        assert refused_plain.value.code == status
    carriers = _api_get(page, smsc, "/api/v1/carriers")["carriers"]
    assert not any(c["paused"] for c in carriers)
    # with the token, the same request goes through (then undone)
    done = page.request.post(
        f"{smsc.base}/api/v1/carriers/cheap/pause", headers={"X-CSRF-Token": csrf}
    )
    assert done.status == 200
    assert done.json()["paused"] is True
    undone = page.request.post(
        f"{smsc.base}/api/v1/carriers/cheap/resume", headers={"X-CSRF-Token": csrf}
    )
    assert undone.status == 200


# --- the simulator's page -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """``smsc carrier --metrics-port 0``: (its SMPP port, its page's base URL)."""
    tmp = tmp_path_factory.mktemp("carrier")
    config = {**simulator(), "host": "127.0.0.1", "port": 0}
    path = write_yaml(tmp / "carrier.yaml", config)
    child = Child(tmp, "carrier", "--config", str(path), "--metrics-port", "0", name="carrier")
    try:
        admin = child.line(r"smsc carrier: admin .* on (http://\S+)").group(1)
        port = int(child.line(r"smsc carrier: listening on 127\.0\.0\.1:(\d+)").group(1))
        yield port, admin
    finally:
        child.stop()


def test_an_mo_injected_in_the_simulator_page_reaches_an_smpplib_receiver(
    page: Page, carrier: tuple[int, str]
) -> None:
    port, base = carrier
    peer = bound_client(port, UPSTREAM_ID, UPSTREAM_PASSWORD, kind="rx")
    try:
        page.goto(base + "/")
        expect(page.locator("#sim-sessions")).to_contain_text("receiver")
        _tab_to(page, "mo-system-id")
        page.locator("#mo-source").fill("447700900777")
        page.locator("#mo-destination").fill("5555")
        page.locator("#mo-text").fill("MO from the page")
        page.locator("#mo-text").press("Enter")
        expect(page.locator("#mo-status")).to_contain_text("MO sent to smsc (1 part)")
        peer.read_until(lambda: bool(peer.delivers), _deadline())
        (pdu,) = peer.delivers
        assert pdu.short_message == b"MO from the page"
        assert pdu.source_addr == b"447700900777"
        assert pdu.destination_addr == b"5555"
        expect(page.locator("#count-mo")).to_have_text("1")
        screenshot(page, "simulator")
        page.set_viewport_size(NARROW)  # type: ignore[arg-type]
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        screenshot(page, "simulator-narrow")
    finally:
        peer.close()


def test_the_simulator_page_lists_messages_with_their_planned_outcome(
    page: Page, carrier: tuple[int, str]
) -> None:
    port, base = carrier
    peer = bound_client(port, UPSTREAM_ID, UPSTREAM_PASSWORD)
    try:
        peer.client.send_message(
            source_addr="1234",
            destination_addr="447700900888",
            short_message=b"to the simulator",
            registered_delivery=True,
        )
        peer.read_until(lambda: bool(peer.resps) and bool(peer.delivers), _deadline())
        page.goto(base + "/")
        row = page.locator("#sim-messages tr", has_text="447700900888")
        expect(row).to_contain_text("DELIVERED")  # planned, and the state it reached
        expect(row).to_contain_text("to the simulator")
        screenshot(page, "simulator-messages")
    finally:
        peer.close()


def test_an_mo_injected_at_a_simulated_carrier_of_smsc_serve_reaches_the_account(
    page: Page, smsc: Smsc
) -> None:
    """cheap's MO goes to acme (its mo_account): an smpplib receiver bound as acme gets it."""
    peer = bound_client(smsc.port, SYSTEM_ID, PASSWORD, kind="rx")
    try:
        login(page, smsc)
        page.goto(f"{smsc.base}/console/simulators")
        expect(page.locator('[data-simulator="cheap"]')).to_contain_text("binds: smsc")
        page.locator("#mo-carrier").select_option("cheap")
        page.locator("#mo-source").fill("447700900999")
        page.locator("#mo-destination").fill("7777")
        page.locator("#mo-text").fill("MO through smsc")
        page.locator("#mo-form button[type=submit]").click()
        expect(page.locator("#sim-status")).to_contain_text("MO injected at cheap")

        # (receipts held for acme by the tests before may come first)
        def mo() -> list[Any]:
            return [p for p in peer.delivers if p.short_message == b"MO through smsc"]

        peer.read_until(lambda: bool(mo()), _deadline())
        (pdu,) = mo()
        assert pdu.source_addr == b"447700900999"
        assert pdu.destination_addr == b"7777"
        screenshot(page, "simulators")
    finally:
        peer.close()
