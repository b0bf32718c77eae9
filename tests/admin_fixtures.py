"""A client of the admin API (smsc/admin.py) that checks every request it makes and every
response it gets against the OpenAPI document (smsc/openapi.py), with ``openapi-core``
(tests/openapi_client.py)."""

from __future__ import annotations

from typing import Any

from openapi_client import CheckedClient, Reply
from openapi_core import OpenAPI

from smsc.openapi import SPEC

TOKEN = "admin-token-0123456789"
OPENAPI = OpenAPI.from_dict(SPEC)
BASE = "/api/v1"


class Api(CheckedClient):
    """``await api.get("/carriers")`` → Reply, validated against the OpenAPI document."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        super().__init__(port, OPENAPI, BASE)
        self.token = token

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
        reply, body = await self.exchange(
            method,
            path,
            json_body=json_body,
            raw=raw,
            params=params,
            headers=headers,
            check_request=valid_request,
            refused=(401, 403),
        )
        assert reply.content_type == "application/json", (reply.status, reply.content_type, body)
        if reply.status >= 400 and path != "/ready":  # a 503 there is the readiness itself
            assert set(reply.body) == {"error"}, reply.body
        return reply
