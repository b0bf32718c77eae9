"""The console's HTTP side, on the admin server (smsc/admin.py installs it):

``/`` sends to the overview (logging in first with ``?token=``); ``/console/login``;
``/console/<page>`` the pages (one shell, each page a JavaScript module under
``static/``); ``/console/static/<file>``; ``/console/events`` the overview's samples as
Server-Sent Events; ``/console/api/messages`` search, timeline, follow (SSE) and cancel.

The pages call the admin API (``/api/v1``) for everything it already does (binds, kick,
carriers, pause/resume/drain, routes, explain, submit): :meth:`Console.guard` lets a
request with a console session cookie through there (never instead of a bearer token that
was given), with the session's CSRF token required on every state-changing request, and
each such request written to the audit log. Without a session nothing but the login page
and its stylesheet answers: pages send to the login page, the rest is 401.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from consolestyle import STYLESHEET
from router.ports import StoreError
from router.stores.sqlite import SqliteStore
from smsc.console.auth import COOKIE, SAFE_METHODS, ConsoleAuth, Session
from smsc.console.messages import Query, search, timeline
from smsc.console.messages import found as found_message
from smsc.console.samples import Sampler

if TYPE_CHECKING:
    from smsc.app import App

log = logging.getLogger(__name__)
audit = logging.getLogger("smsc.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC: Final = Path(__file__).resolve().parent / "static"
PAGES: Final = (
    "overview",
    "sessions",
    "carriers",
    "routes",
    "messages",
    "send",
    "simulators",
    "cluster",
)
#: What answers without a session.
OPEN: Final = frozenset({"/console/login", "/console/static/style.css", "/console/static/login.js"})
#: Where a request's console session is kept (aiohttp request storage).
SESSION_KEY: Final = web.RequestKey("smsc.console.session", Session)
#: Longest a follow stream (Send page: a message to its receipt) stays open.
FOLLOW_FOR: Final = 300.0
FOLLOW_EVERY: Final = 0.25
#: Seconds without a sample after which a stream sends a comment (and finds a gone reader).
HEARTBEAT: Final = 15.0
#: A stream write that takes longer than this ends the stream (a reader that stalls).
WRITE_DEADLINE: Final = 5.0
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
_NAME: Final = re.compile(r"^[a-z0-9_-]+\.(js|css|html)$")


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _peer(request: web.Request) -> str:
    return request.remote or "?"


class Console:
    """``install(web_app)`` before the server starts; ``start()`` once it listens (the
    sampler); ``await stop()`` before the server closes (ends the event streams)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.auth = ConsoleAuth(lambda: app.admin_token)
        self.sampler = Sampler(app)
        self._files = {p.name: p for p in STATIC.iterdir() if _NAME.match(p.name)}
        self._files[STYLESHEET.name] = STYLESHEET
        self._stopping = asyncio.Event()

    def install(self, web_app: web.Application) -> None:
        add = web_app.router
        add.add_get("/", self.root)
        add.add_get("/console/login", self.login_page)
        add.add_post("/console/login", self.login)
        add.add_post("/console/logout", self.logout)
        add.add_get("/console/static/{name}", self.static)
        add.add_get("/console/events", self.events)
        add.add_get("/console/api/messages", self.find)
        add.add_get("/console/api/messages/{id}", self.message)
        add.add_get("/console/api/messages/{id}/follow", self.follow)
        add.add_post("/console/api/messages/{id}/cancel", self.cancel)
        add.add_get("/console/api/simulators", self.simulators)
        for page in PAGES:
            add.add_get(f"/console/{page}", self.page)

    def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> None:
        self._stopping.set()
        await self.sampler.stop()

    def login_url(self, base: str) -> str:
        """What ``smsc serve`` prints: with the random token when none is configured."""
        token = self.auth.printed_token
        return f"{base}/?token={token}" if token else f"{base}/"

    # --- the guard ------------------------------------------------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/"):
            # A console page calling the admin API: with the session (and the CSRF token
            # for a change). A request with a bearer token goes on as it always did.
            if "Authorization" in request.headers or COOKIE not in request.cookies:
                return await handler(request)
            session = self.auth.session(request)
            if session is None:
                return _problem(401, "console session expired: log in again")
            return await self._with_session(request, handler, session)
        if path != "/" and not path.startswith("/console/"):
            return await handler(request)
        if path in OPEN:
            return await handler(request)
        session = self.auth.session(request)
        if session is None:
            if path == "/" and "token" in request.query:
                return await handler(request)  # root() logs in
            if request.method == "GET" and (path == "/" or path.removeprefix("/console/") in PAGES):
                raise web.HTTPFound(f"/console/login?next={path}")
            return _problem(401, "log in first (/console/login)")
        return await self._with_session(request, handler, session)

    async def _with_session(
        self, request: web.Request, handler: Handler, session: Session
    ) -> web.StreamResponse:
        if request.path.startswith("/console/api/") and not self.app.started:
            return _problem(503, "starting: not serving yet")
        if not self.auth.csrf_ok(request, session):
            audit.warning(
                "console %s %s refused: no CSRF token (session %s, %s)",
                request.method,
                request.path,
                session.tag,
                _peer(request),
            )
            return _problem(403, "missing or wrong CSRF token (X-CSRF-Token)")
        request[SESSION_KEY] = session
        try:
            response = await handler(request)
        except StoreError as exc:  # a store read that timed out, or a store closing
            if not request.path.startswith("/console/api/"):
                raise
            response = _problem(503, f"the store did not answer: {exc}")
        if request.method not in SAFE_METHODS:
            audit.info(
                "console %s %s%s → %d (session %s, %s)",
                request.method,
                request.path,
                f"?{request.query_string}" if request.query_string else "",
                response.status,
                session.tag,
                _peer(request),
            )
        return response

    # --- login ----------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        given = request.query.get("token")
        if given is not None:
            session = self.auth.login(given, _peer(request))
            if session is None:
                raise web.HTTPFound("/console/login?failed=1")
            # A page of our own that moves on: the token leaves the address bar, and the
            # next request is same-site (the SameSite=Strict cookie goes with it).
            response = self._html("moved.html", status=200)
            self.auth.set_cookie(response, session)
            return response
        raise web.HTTPFound("/console/overview")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self.auth.session(request) is not None:
            raise web.HTTPFound("/console/overview")
        return self._html("login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = form.get("token")
        session = self.auth.login(given if isinstance(given, str) else "", _peer(request))
        if session is None:
            raise web.HTTPSeeOther("/console/login?failed=1")
        target = str(form.get("next") or "")
        if target.removeprefix("/console/") not in PAGES:
            target = "/console/overview"
        response = web.HTTPSeeOther(target)
        self.auth.set_cookie(response, session)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.auth.logout(request[SESSION_KEY])
        response = web.Response(status=303, headers={"Location": "/console/login"})
        response.del_cookie(COOKIE, path="/")
        return response

    # --- pages and files ------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._html("shell.html", csrf=request[SESSION_KEY].csrf)

    async def static(self, request: web.Request) -> web.StreamResponse:
        path = self._files.get(request.match_info["name"])
        if path is None:
            return _problem(404, "no such file")
        return web.Response(
            body=path.read_bytes(),
            content_type=_TYPES[path.suffix],
            headers={"Cache-Control": "no-cache"},
        )

    def _html(self, name: str, status: int = 200, **values: str) -> web.Response:
        text = self._files[name].read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return web.Response(
            text=text,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    # --- live samples ---------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The ring so far (event ``history``), then each sample as it is taken."""
        queue = self.sampler.subscribe()
        if queue is None:
            return _problem(503, "too many live views open")
        response = self._stream()
        try:
            await response.prepare(request)
            await self._send(response, msgspec.json.encode(list(self.sampler.ring)), "history")
            while not self._stopping.is_set() and self.auth.session(request) is not None:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        sample = await queue.get()
                except TimeoutError:  # no sample (the node is starting): say we are here
                    async with asyncio.timeout(WRITE_DEADLINE):
                        await response.write(b": waiting for the node to start\n\n")
                    continue
                if sample is None:
                    break
                await self._send(response, msgspec.json.encode(sample))
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or stalled
        finally:
            self.sampler.unsubscribe(queue)
        return response

    @staticmethod
    def _stream() -> web.StreamResponse:
        """An event stream's response (prepared by its handler, which handles a browser
        gone before that)."""
        return web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )

    async def _send(self, response: web.StreamResponse, data: bytes, event: str = "") -> None:
        head = f"event: {event}\n".encode() if event else b""
        async with asyncio.timeout(WRITE_DEADLINE):
            await response.write(head + b"data: " + data + b"\n\n")

    # --- messages -------------------------------------------------------------------------

    async def find(self, request: web.Request) -> web.Response:
        raw: dict[str, Any] = {k: v for k, v in request.query.items() if v != ""}
        try:
            query = msgspec.convert(raw, Query, strict=False)
        except msgspec.ValidationError as exc:
            return _problem(400, str(exc))
        store = self.app.store
        if not isinstance(store, SqliteStore):  # the cluster's Redis store: by id alone
            if not query.id:
                return _problem(501, "this store (Redis) is searched by message id only")
            stored = await store.get(query.id)
            return _json({"messages": [found_message(stored)] if stored else []})
        try:
            found = await search(store, self.app.config.router.store.path, query)
        except TimeoutError as exc:
            return _problem(503, str(exc) or "the search took too long")
        except sqlite3.Error as exc:
            return _problem(503, f"the store cannot be searched: {exc}")
        return _json({"messages": found})

    async def message(self, request: web.Request) -> web.Response:
        message_id = request.match_info["id"]
        stored = await self.app.store.get(message_id)
        if stored is None:
            return _problem(404, f"no message {message_id!r}")
        return _json(timeline(stored, cancellable=self._cancellable(message_id)))

    def _cancellable(self, message_id: str) -> bool:
        router = self.app.router
        return router is not None and message_id in router.queue

    async def follow(self, request: web.Request) -> web.StreamResponse:
        """The message's timeline each time it changes, until its final state (or
        :data:`FOLLOW_FOR`): the Send page follows a test message to its receipt."""
        message_id = request.match_info["id"]
        response = self._stream()
        last = b""
        loop = asyncio.get_running_loop()
        until = loop.time() + FOLLOW_FOR
        try:
            await response.prepare(request)
            while loop.time() < until and not self._stopping.is_set():
                stored = await self.app.store.get(message_id)
                if stored is not None:
                    data = msgspec.json.encode(
                        timeline(stored, cancellable=self._cancellable(message_id))
                    )
                    if data != last:
                        await self._send(response, data)
                        last = data
                    if stored.done_at is not None:
                        await self._send(response, b"{}", "end")
                        break
                await asyncio.sleep(FOLLOW_EVERY)  # the store has no change feed to await
        except (ConnectionError, TimeoutError):
            pass
        return response

    async def simulators(self, request: web.Request) -> web.Response:
        """The simulated carriers inside this node, as their own page shows them (their MO
        goes through the admin API's ``POST /api/v1/carriers/{name}/mo``)."""
        return _json({"simulators": self.app.simulator_snapshots()})

    async def cancel(self, request: web.Request) -> web.Response:
        router = self.app.router
        message_id = request.match_info["id"]
        if router is None or not router.cancel(message_id):
            return _problem(409, f"message {message_id!r} is not waiting in the queue")
        return _json({"id": message_id, "cancelled": True})
