"""The console's server side against a real App on loopback (no browser): who logs in and
how (the printed random token, or admin.token), that nothing but the login page answers
without a session, the CSRF token on every change, the audit log of every action, the
overview's event stream, the message search; and the sample ring's own rules."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from admin_fixtures import TOKEN
from loops import Run
from smsc_fixtures import DEADLINE, SYSTEM_ID, app_config, running_app

from smsc.app import App
from smsc.console.samples import SUBSCRIBER_BACKLOG, Sample, Sampler, quantile


def config(tmp_path: Path, token: str | None = None) -> Any:
    return app_config(
        tmp_path, {"cheap": {}, "dear": {}}, **({"admin": {"token": token}} if token else {})
    )


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # it keeps cookies of 127.0.0.1
        timeout=aiohttp.ClientTimeout(total=DEADLINE),
    )


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def login(session: aiohttp.ClientSession, app: App, token: str | None = None) -> str:
    """Log in with the printed URL (or ``token``); the session's CSRF token."""
    url = f"{base(app)}/?token={token}" if token else app.console_url(base(app))
    assert url is not None
    async with session.get(url, allow_redirects=False) as response:
        assert response.status == 200
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    async with session.get(base(app) + "/console/overview") as response:
        assert response.status == 200
        page = await response.text()
    found = re.search(r'<meta name="csrf" content="([^"]+)">', page)
    assert found
    return found.group(1)


# --- login ------------------------------------------------------------------------------------


def test_without_admin_token_the_printed_url_carries_a_random_token_that_logs_in(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, client() as session:
            url = app.console_url(base(app))
            assert url is not None
            assert re.fullmatch(re.escape(base(app)) + r"/\?token=[\w-]{32}", url)
            await login(session, app)
            # the random token is no bearer token: the admin API stays off for scripts
            async with session.get(
                base(app) + "/api/v1/binds",
                headers={"Authorization": "Bearer " + url.split("token=")[1]},
            ) as response:
                assert response.status == 403

    run1(main())


def test_with_admin_token_that_token_logs_in_and_the_url_has_none(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path, TOKEN)) as app, client() as session:
            assert app.console_url(base(app)) == base(app) + "/"
            form = {"token": "not-the-token-0123456789", "next": "/console/routes"}
            async with session.post(
                base(app) + "/console/login", data=form, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "/console/login?failed=1"
            form["token"] = TOKEN
            async with session.post(
                base(app) + "/console/login", data=form, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "/console/routes"
            async with session.get(base(app) + "/console/routes") as response:
                assert response.status == 200

    run1(main())


def test_nothing_but_the_login_page_answers_without_a_session(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, client() as session:
            for path in ("/", "/console/overview", "/console/messages"):
                async with session.get(base(app) + path, allow_redirects=False) as response:
                    assert response.status == 302, path
                    assert response.headers["Location"].startswith("/console/login")
            for path in (
                "/console/static/app.js",
                "/console/events",
                "/console/api/messages?account=acme",
                "/console/api/messages/1",
            ):
                async with session.get(base(app) + path) as response:
                    assert response.status == 401, path
                    assert "log in" in (await response.json())["error"]
            async with session.post(base(app) + "/console/logout") as response:
                assert response.status == 401
            for path in ("/console/login", "/console/static/style.css"):
                async with session.get(base(app) + path) as response:
                    assert response.status == 200, path
            # what was open before stays open
            async with session.get(base(app) + "/metrics") as response:
                assert response.status == 200

    run1(main())


# --- CSRF and audit ----------------------------------------------------------------------------


def test_changes_need_the_csrf_token_and_every_action_is_audited(
    run1: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, client() as session:
            url = app.console_url(base(app))
            assert url is not None
            async with session.get(url.replace("token=", "token=x")) as response:
                assert response.status == 200  # the login page again
            csrf = await login(session, app)
            pause = base(app) + "/api/v1/carriers/cheap/pause"
            async with session.post(pause) as response:
                assert response.status == 403
            async with session.post(pause, headers={"X-CSRF-Token": "y" * 43}) as response:
                assert response.status == 403
            assert app.router is not None
            assert not app.router.paused
            async with session.post(pause, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 200
            assert app.router.paused == {"cheap"}
            resume = base(app) + "/api/v1/carriers/cheap/resume"
            async with session.post(resume, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 200
            async with session.post(
                base(app) + "/console/logout", headers={"X-CSRF-Token": csrf}
            ) as response:
                assert response.status == 200  # the login page, after the redirect
            assert not session.cookie_jar.filter_cookies(base(app))  # the cookie is gone
            async with session.post(pause, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 403  # and without it, the admin API is off
            assert not app.router.paused

    with caplog.at_level(logging.INFO, logger="smsc.audit"):
        run1(main())
    audit = [r.getMessage() for r in caplog.records if r.name == "smsc.audit"]
    assert audit[0] == "console login refused from 127.0.0.1: wrong token"
    assert audit[1].startswith("console login from 127.0.0.1 (session ")
    assert "console POST /api/v1/carriers/cheap/pause refused: no CSRF token" in audit[2]
    assert "console POST /api/v1/carriers/cheap/pause refused: no CSRF token" in audit[3]
    assert audit[4].startswith("console POST /api/v1/carriers/cheap/pause → 200 (session ")
    assert audit[5].startswith("console POST /api/v1/carriers/cheap/resume → 200 (session ")
    assert audit[6].startswith("console logout (session ")
    assert len(audit) == 8, audit  # and the POST /console/logout itself (303)
    assert "POST /console/logout → 303" in audit[7]


def test_a_bearer_token_goes_as_before_whatever_cookie_comes_with_it(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path, TOKEN)) as app, client() as session:
            await login(session, app, TOKEN)
            pause = base(app) + "/api/v1/carriers/cheap/pause"
            async with session.post(pause, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401  # the cookie does not stand in for it
            async with session.post(pause, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200  # no CSRF token needed: not a browser session

    run1(main())


# --- the event stream and the messages --------------------------------------------------------


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, str]:
    event, data = "message", ""
    async with asyncio.timeout(DEADLINE):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                return event, data


def test_the_event_stream_sends_the_ring_then_each_sample(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with running_app(config(tmp_path)) as app, client() as session:
            csrf = await login(session, app)
            async with session.get(base(app) + "/console/events") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                event, _ = await next_event(response)
                assert event == "history"
                body = {"account": SYSTEM_ID, "destination": "447700900123", "text": "hi"}
                async with session.post(
                    base(app) + "/api/v1/messages", json=body, headers={"X-CSRF-Token": csrf}
                ) as answer:
                    assert answer.status == 202
                # the accepted count is not the ESME count (the API is no SMPP submit):
                # what moves is the router's count of messages sent to a carrier
                while True:
                    event, data = await next_event(response)
                    assert event == "message"
                    if '"sent":1' in data:
                        break

    run1(main())


@pytest.mark.parametrize("store", ["file", ":memory:"])
def test_messages_are_found_and_bad_queries_named(run1: Run, tmp_path: Path, store: str) -> None:
    cfg = config(tmp_path)
    if store == ":memory:":  # the search reads the store's shared in-memory database
        router = msgspec.structs.replace(
            cfg.router, store=msgspec.structs.replace(cfg.router.store, path=":memory:")
        )
        cfg = msgspec.structs.replace(cfg, router=router)

    async def main() -> None:
        async with running_app(cfg) as app, client() as session:
            csrf = await login(session, app)
            ids = []
            for n in range(3):
                body = {"account": SYSTEM_ID, "destination": f"4477009001{n}", "text": "hi"}
                async with session.post(
                    base(app) + "/api/v1/messages", json=body, headers={"X-CSRF-Token": csrf}
                ) as answer:
                    ids.append((await answer.json())["message_id"])
            find = base(app) + "/console/api/messages"
            async with session.get(find, params={"account": SYSTEM_ID}) as response:
                found = (await response.json())["messages"]
            assert [m["id"] for m in found] == ids[::-1]  # newest first
            async with session.get(find, params={"destination": "+44770090011"}) as response:
                found = (await response.json())["messages"]
            assert [m["id"] for m in found] == [ids[1]]
            async with session.get(find, params={"destination": "abc"}) as response:
                assert response.status == 400
                assert "$.destination" in (await response.json())["error"]
            async with session.get(find, params={"limit": "0"}) as response:
                assert response.status == 400
                assert "$.limit" in (await response.json())["error"]
            cancel = f"{find}/{ids[0]}/cancel"
            async with session.post(cancel, headers={"X-CSRF-Token": csrf}) as response:
                assert response.status == 409  # sent already: nothing waits to cancel
            async with session.get(f"{find}/nonesuch") as response:
                assert response.status == 404

    run1(main())


# --- the sample ring ---------------------------------------------------------------------------


def test_quantiles_interpolate_within_the_bucket() -> None:
    bounds = (0.001, 0.01, 0.1)
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [10, 0, 0, 0], 0.5) == pytest.approx(0.0005)
    assert quantile(bounds, [0, 100, 0, 0], 0.99) == pytest.approx(0.001 + 0.009 * 0.99)
    assert quantile(bounds, [50, 0, 0, 50], 0.99) == 0.1  # +Inf: its lower bound


def _sample(t: float) -> Sample:
    return Sample(
        t=t, accepted=0, sent=0, finals={}, accepted_s=0, sent_s=0, finals_s={}, queue=0,
        p50_ms=None, p99_ms=None, binds=0, carriers_up=0, carriers=0, held=0,
    )  # fmt: skip


def test_a_subscriber_that_does_not_read_is_ended_and_the_ring_is_bounded(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        app = App(config(tmp_path))  # not started: the sampler is driven by hand
        sampler = Sampler(app)
        slow = sampler.subscribe()
        assert slow is not None
        for t in range(SUBSCRIBER_BACKLOG + 1):
            sampler.publish(_sample(t))
        assert sampler.subscribers == 0
        got = [slow.get_nowait() for _ in range(slow.qsize())]
        assert got[-1] is None  # the end of its stream
        for t in range(1000):
            sampler.publish(_sample(t))
        assert len(sampler.ring) == 900
        assert sampler.ring[0].t == 100
        assert sampler.take() is None  # nothing to read until the node runs

    run1(main())
