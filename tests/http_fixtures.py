"""Helpers for the application HTTP API's tests: a client that checks every request it
makes and every answer it gets against the API's OpenAPI document (openapi-core), a real
aiohttp webhook receiver that can fail its first calls, and the config of an App with the
API on loopback port 0."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from openapi_client import CheckedClient, Reply
from openapi_core import Config, OpenAPI
from smsc_fixtures import DEADLINE, OTHER_ID, OTHER_PASSWORD, PASSWORD, SYSTEM_ID, app_config

from smsc.apikeys import new_key
from smsc.config import SmscConfig
from smsc.http_openapi import SPEC

#: problem+json is JSON: openapi-core is told so (it knows application/json alone).
OPENAPI = OpenAPI.from_dict(
    SPEC, config=Config(extra_media_type_deserializers={"application/problem+json": json.loads})
)
KEY, KEY_HASH = new_key(bytes(range(32)))
OTHER_KEY, OTHER_KEY_HASH = new_key(bytes(range(1, 33)))
SECRET = "webhook-secret-0123456789"
#: Quick retries for the tests (the defaults wait seconds to minutes); callback URLs given
#: with a message may reach the receivers on loopback (as in the embedded default).
QUICK_WEBHOOKS = {
    "backoff_min": 0.05,
    "backoff_max": 0.2,
    "timeout": 2.0,
    "callback_networks": ["public", "127.0.0.0/8"],
}


def api_config(
    tmp_path: Path,
    carriers: dict[str, dict[str, Any]] | None = None,
    *,
    account: dict[str, Any] | None = None,
    other: dict[str, Any] | None = None,
    webhooks: dict[str, Any] | None = None,
    **top: Any,
) -> SmscConfig:
    """Carriers (default one, "fast"), the API on port 0, acme with an API key (and
    ``account`` keys), globex with another key (and ``other`` keys)."""
    accounts = [
        {"system_id": SYSTEM_ID, "password": PASSWORD, "api_keys": [KEY_HASH], **(account or {})},
        {
            "system_id": OTHER_ID,
            "password": OTHER_PASSWORD,
            "api_keys": [OTHER_KEY_HASH],
            **(other or {}),
        },
    ]
    return app_config(
        tmp_path,
        carriers or {"fast": {}},
        accounts=accounts,
        http_api={"host": "127.0.0.1", "port": 0},
        webhooks={**QUICK_WEBHOOKS, **(webhooks or {})},
        **top,
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Client(CheckedClient):
    """``await client.post("/v1/messages", json_body={...})`` → Reply, checked against the
    OpenAPI document; errors must be problem+json."""

    def __init__(self, port: int, auth: str | None = None) -> None:
        super().__init__(port, OPENAPI)
        self.auth = auth if auth is not None else f"Bearer {KEY}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        auth: str | bool | None = True,
        valid_request: bool = True,
    ) -> Reply:
        sent = dict(headers or {})
        given = self.auth if auth is True else auth
        if isinstance(given, str):
            sent["Authorization"] = given
        reply, body = await self.exchange(
            method,
            path,
            json_body=json_body,
            raw=raw,
            params=params,
            headers=sent,
            check_request=valid_request,
            refused=(401,),
        )
        wanted = "application/problem+json" if reply.status >= 400 else "application/json"
        assert reply.content_type == wanted, (reply.status, reply.content_type, body)
        if reply.status >= 400:
            assert reply.body["status"] == reply.status, reply.body
        return reply


class Call:
    """One request the receiver got (``event``: its JSON body, if it has one)."""

    def __init__(
        self,
        at: float,
        request: web.Request,
        body: bytes,
        status: int,
    ) -> None:
        self.at = at
        self.status = status
        self.method = request.method
        self.path = request.path
        self.query = dict(request.query)
        self.headers = dict(request.headers)
        self.body = body
        is_json = request.content_type == "application/json"
        self.event: dict[str, Any] = json.loads(body) if is_json else {"data": {}, "type": ""}


class Receiver:
    """A webhook receiver on loopback: answers ``fail_status`` to its first ``fail_first``
    calls (with ``Retry-After`` when ``retry_after`` is set), 204 to the rest; records
    every call. ``close``: closes the connection after each answer."""

    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: str | None = None,
        hang: asyncio.Event | None = None,
        close: bool = False,
    ) -> None:
        self.fail_first = fail_first
        self.close = close
        #: When set: every call waits for it before it is answered (a stuck receiver).
        self.hang = hang
        #: Calls being answered now, and the most at once.
        self.open = 0
        self.most_open = 0
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.calls: list[Call] = []
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def __aenter__(self) -> Receiver:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang is not None:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            self._changed.set()
            try:
                await self.hang.wait()
            finally:
                self.open -= 1
        loop = asyncio.get_running_loop()
        failing = len(self.calls) < self.fail_first
        status = self.fail_status if failing else 204
        self.calls.append(Call(loop.time(), request, body, status))
        self._changed.set()
        headers = {"Retry-After": self.retry_after} if failing and self.retry_after else None
        response = web.Response(status=status, headers=headers)
        if self.close:
            response.force_close()
        return response

    def taken(self) -> list[Call]:
        """The calls answered 2xx."""
        return [c for c in self.calls if c.status < 300]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def api_port(lines: list[str]) -> int:
    """The API's port from ``smsc serve``'s start-up lines."""
    for line in lines:
        found = re.fullmatch(r"smsc serve: application API at http://127\.0\.0\.1:(\d+)/v1", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no API line in {lines}")
