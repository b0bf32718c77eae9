"""Who may use the console: a login token, then a session cookie.

The login token is ``admin.token`` when one is configured (read anew at every login, so a
reload that changes it applies), else a random one made at start and printed by ``smsc
serve`` in its login URL (as Jupyter does). A login gives a session: a random id in an
HttpOnly, SameSite=Strict cookie, and a CSRF token of its own that the pages send in the
``X-CSRF-Token`` header with every state-changing request. Sessions are in memory (a
restart logs everyone out), at most :data:`MAX_SESSIONS` (the oldest goes), each for
:data:`SESSION_TTL` seconds. Logins, logouts and refused attempts go to the audit log
(``smsc.audit``).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import msgspec
from aiohttp import web

audit = logging.getLogger("smsc.audit")

COOKIE: Final = "smsc_console"
CSRF_HEADER: Final = "X-CSRF-Token"
MAX_SESSIONS: Final = 64
SESSION_TTL: Final = 12 * 3600.0
#: Methods that change nothing (no CSRF token needed).
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class Session(msgspec.Struct, frozen=True):
    id: str
    csrf: str
    expires: float
    peer: str

    @property
    def tag(self) -> str:
        """What the audit log names the session by (never the id itself)."""
        return self.id[:8]


class ConsoleAuth:
    """Login tokens and sessions. ``configured()`` gives the configured admin token (or
    None); without one, :attr:`login_token` is the random token made here."""

    def __init__(
        self, configured: Callable[[], str | None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._configured = configured
        self._clock = clock
        self._random = secrets.token_urlsafe(24)
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @property
    def login_token(self) -> str:
        return self._configured() or self._random

    @property
    def printed_token(self) -> str | None:
        """The token to print in the login URL: the random one; None when a token is
        configured (whoever configured it knows it)."""
        return None if self._configured() else self._random

    def login(self, given: str, peer: str) -> Session | None:
        """A new session when ``given`` is the login token (compared in constant time)."""
        token = self.login_token
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
        ):
            audit.warning("console login refused from %s: wrong token", peer)
            return None
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self._clock() + SESSION_TTL,
            peer=peer,
        )
        self._sessions[session.id] = session
        audit.info("console login from %s (session %s)", peer, session.tag)
        return session

    def session(self, request: web.Request) -> Session | None:
        """The request's live session (by its cookie), or None."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[sid]
            return None
        return session

    def csrf_ok(self, request: web.Request, session: Session) -> bool:
        """A safe method, or the session's CSRF token in the header."""
        if request.method in SAFE_METHODS:
            return True
        given = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), session.csrf.encode())

    def logout(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        audit.info("console logout (session %s)", session.tag)

    @staticmethod
    def set_cookie(response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(SESSION_TTL),
            path="/",
            httponly=True,
            samesite="Strict",
        )
