"""The mechanics both HTTP test clients share (admin_fixtures.Api for the admin API,
http_fixtures.Client for the application API): one aiohttp session on loopback, a request
sent as JSON or raw bytes, and the request and the answer both checked against an OpenAPI
document with ``openapi-core``. Each client adds its API's own rules (its auth header,
its error body).

``MockRequest``/``MockResponse`` are openapi-core's plain request/response records (they
carry what went over the wire; nothing of ours is replaced)."""

from __future__ import annotations

import json
from typing import Any, Self

import aiohttp
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from smsc_fixtures import DEADLINE


class Reply:
    def __init__(self, status: int, body: Any, headers: dict[str, str], content_type: str):
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


class CheckedClient:
    """``await client.get(path)`` → :class:`Reply`; subclasses define :meth:`call` with
    their API's rules around :meth:`exchange`."""

    def __init__(self, port: int, openapi: OpenAPI, base: str = "") -> None:
        self.host = f"http://127.0.0.1:{port}"
        self.openapi = openapi
        self.base = base
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        raise NotImplementedError

    async def exchange(
        self,
        method: str,
        path: str,
        *,
        json_body: Any,
        raw: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
        check_request: bool,
        refused: tuple[int, ...],
    ) -> tuple[Reply, bytes]:
        """Send one request (``raw`` bytes, else ``json_body`` as JSON); check the request
        against the document when ``check_request`` and the answer's status is not one of
        ``refused`` (refused before the request was read: it need not fit the document),
        and the answer always. The answer with its body decoded as JSON, and the raw body."""
        sent = dict(headers)
        data = raw
        if data is None and json_body is not None:
            data = json.dumps(json_body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.host + self.base + path, data=data, params=params, headers=sent
        ) as response:
            body = await response.read()
            status, content_type = response.status, response.content_type
            got_headers = dict(response.headers)
        request = MockRequest(
            self.host,
            method.lower(),
            self.base + path,
            args=params or {},
            headers=sent,
            data=data,
            content_type="application/json" if data is not None else "",
        )
        if check_request and status not in refused:
            self.openapi.validate_request(request)
        self.openapi.validate_response(
            request, MockResponse(body, status_code=status, content_type=content_type)
        )
        return Reply(status, json.loads(body), got_headers, content_type), body
