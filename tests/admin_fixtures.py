"""A client of the admin API (smsc/admin.py) that checks every request it makes and every
response it gets against the OpenAPI document (smsc/openapi.py), with ``openapi-core``.

``MockRequest``/``MockResponse`` are openapi-core's plain request/response records (they
carry what went over the wire; nothing of ours is replaced)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from smsc_fixtures import DEADLINE

from smsc.openapi import SPEC

TOKEN = "admin-token-0123456789"
OPENAPI = OpenAPI.from_dict(SPEC)
BASE = "/api/v1"


class Reply:
    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


class Api:
    """``await api.get("/carriers")`` → Reply, validated against the OpenAPI document."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.host = f"http://127.0.0.1:{port}"
        self.token = token
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        token: str | bool | None = True,
        valid_request: bool = True,
    ) -> Reply:
        """One request. ``token``: True for ours, None for none, a string for that one.
        ``valid_request``: False for requests meant to break the document (the response is
        checked all the same)."""
        headers: dict[str, str] = {}
        given = self.token if token is True else token
        if isinstance(given, str):
            headers["Authorization"] = f"Bearer {given}"
        data = (
            raw
            if raw is not None
            else (None if json_body is None else json.dumps(json_body).encode())
        )
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.host + BASE + path, data=data, params=params, headers=headers
        ) as response:
            body_bytes = await response.read()
            status = response.status
            content_type = response.content_type
            reply_headers = dict(response.headers)
        request = MockRequest(
            self.host,
            method.lower(),
            BASE + path,
            args=params or {},
            headers=headers,
            data=data,
            content_type="application/json" if data is not None else "",
        )
        if valid_request and status not in (401, 403):
            OPENAPI.validate_request(request)
        assert content_type == "application/json", (status, content_type, body_bytes)
        OPENAPI.validate_response(
            request, MockResponse(body_bytes, status_code=status, content_type=content_type)
        )
        body = json.loads(body_bytes)
        if status >= 400 and path != "/ready":  # a 503 there is the readiness itself
            assert set(body) == {"error"}, body
        return Reply(status, body, reply_headers)
