"""Drop-in endpoints for applications written for Kannel's smsbox or Jasmin's HTTP API, on
the application API's listener: their parameter names, their answers, their receipt
callbacks (smsc/legacy_dlr.py) — retried through the webhook outbox, unlike theirs.

- Kannel ``GET|POST /cgi-bin/sendsms``: ``username``, ``password`` (an account's SMPP
  credentials), ``to`` (numbers separated by spaces), ``from``, ``text``, ``charset``
  (of ``text``; default UTF-8), ``coding`` (0: GSM 03.38, 1: 8-bit binary, 2: UCS-2;
  none: GSM when it fits, else UCS-2), ``udh`` (binary, URL-encoded), ``priority``,
  ``validity`` and ``deferred`` (minutes), ``dlr-mask``, ``dlr-url``. Answers ``202 0:
  Accepted for delivery`` (our ids in ``X-Smsc-Message-Id``).
- Jasmin ``GET|POST /send``: ``username``, ``password``, ``to``, ``from``, ``coding``
  (data_coding 0-14), ``content`` or ``hex-content``, ``priority``, ``validity-period``
  (minutes), ``dlr`` (yes/no), ``dlr-url``, ``dlr-level`` (1-3), ``dlr-method``
  (GET/POST). Answers ``200 Success "<id>"``; ``/balance`` (no balance is kept: ND, as
  Jasmin says for unlimited) and ``/rate`` (the route's price per part, the parts).

Callbacks: Kannel's dlr-mask types 1, 2, 4 (receipts), 8 (the carrier accepted) and 16
(refused before any carrier took it); Jasmin's dlr-level 1 (the carrier's answer to the
submit), 2 (the terminal receipt) and 3 (both) — smsc/legacy_dlr.py. A ``dlr-url`` whose
host is an address literal outside ``webhooks.callback_networks`` is answered 422 naming
it (smsc/callback_guard.py); a name is judged when the callback connects.

Parameters are read from the raw query (GET) or form body (POST), so that ``text`` in a
charset other than UTF-8 and a binary ``udh`` arrive as sent. Every account policy
applies as in smsc/http_api.py (the same dispatch): throughput, carriers, price ceiling.
"""

from __future__ import annotations

import binascii
import re
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from smppcore.constants import DataCoding
from smppcore.errors import EncodingError
from smppcore.text import encode_text, gsm_encode
from smsc.accounts import AccountState
from smsc.callbacks import Target
from smsc.http_api import HttpApi, Order, Part, Problem, binary_parts, text_parts
from smsc.legacy_dlr import kannel_registered_delivery

_NUMBER = re.compile(r"\+?[0-9]{1,20}")
#: Query or form parameters read at most (a request with more is refused).
_MAX_PARAMS = 100


class LegacyEndpoints:
    """Registers Kannel's and Jasmin's endpoints on ``api``'s listener."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    def register(self, app: web.Application) -> None:
        add = app.router
        for method in ("GET", "POST"):
            add.add_route(method, "/cgi-bin/sendsms", self.kannel_send)
            add.add_route(method, "/send", self.jasmin_send)
            add.add_route(method, "/balance", self.jasmin_balance)
            add.add_route(method, "/rate", self.jasmin_rate)

    # --- Kannel -----------------------------------------------------------------------

    async def kannel_send(self, request: web.Request) -> web.Response:
        params = await _params(request)
        state = await self._account(params)
        if state is None:
            return _text(403, "Authorization failed for sendsms")
        try:
            order = self._kannel_order(state, params)
            body = await self.api.dispatch(state, order)
        except Problem as problem:
            return _text(problem.status, f"{problem.detail}", problem.headers)
        ids = ",".join(m["id"] for m in body["messages"] if m["status"] != "rejected")
        return _text(202, "0: Accepted for delivery", {"X-Smsc-Message-Id": ids})

    def _kannel_order(self, state: AccountState, params: dict[str, bytes]) -> Order:
        destinations = _numbers(params.get("to", b"").decode("latin-1").split(), "to")
        charset = params.get("charset", b"UTF-8").decode("latin-1") or "UTF-8"
        raw = params.get("text")
        if raw is None:
            raise _bad("text", "Missing text for sendsms")
        coding = _int(params, "coding", 0, 2)
        udh = params.get("udh") or None
        ref = self.api.next_ref()
        if coding == 1:
            parts = binary_parts(raw, int(DataCoding.BINARY), udh, ref, field="text")
        else:
            try:
                text = raw.decode(charset)
            except (LookupError, UnicodeDecodeError):
                raise _bad("charset", f"text is not {charset}") from None
            if udh is not None:
                dc = int(DataCoding.UCS2) if coding == 2 else 0
                data = encode_text(text, dc) if coding == 2 else gsm_encode(text, errors="replace")
                parts = binary_parts(data, dc, udh, ref, field="text")
            elif coding == 2:
                parts = text_parts(text, int(DataCoding.UCS2), ref)
            elif coding == 0 and "coding" in params:  # as Kannel: what GSM lacks becomes "?"
                data = gsm_encode(text, errors="replace")
                parts = binary_parts(data, 0, None, ref, field="text")
            else:
                parts = text_parts(text, None, ref)
        now = self.api.wall()
        mask = _int(params, "dlr-mask", 0, 31) or 0
        url = params.get("dlr-url", b"").decode("utf-8", "replace") or None
        target = None
        if url is not None and mask:
            self.api.check_callback("dlr-url", url)
            target = Target(url, None, dialect="kannel", mask=mask, user=state.system_id)
        validity = _int(params, "validity", 1, 10**7)
        deferred = _int(params, "deferred", 0, 10**7)
        return Order(
            destinations=destinations,
            parts=parts,
            source=params.get("from", b"").decode("latin-1").removeprefix("+"),
            priority=_int(params, "priority", 0, 3) or 0,
            registered=kannel_registered_delivery(mask) if target is not None else 0,
            schedule_at=now + deferred * 60 if deferred else None,
            expires_at=now + validity * 60 if validity else None,
            target=target,
        )

    # --- Jasmin -----------------------------------------------------------------------

    async def jasmin_send(self, request: web.Request) -> web.Response:
        params = await _params(request)
        state = await self._account(params)
        if state is None:
            return _jasmin_denied(params)
        try:
            order = self._jasmin_order(state, params)
            body = await self.api.dispatch(state, order)
        except Problem as problem:
            return _text(problem.status, f'Error "{problem.detail}"', problem.headers)
        (item,) = body["messages"]
        if item["status"] == "rejected":
            return _text(503, f'Error "{item.get("error", "rejected")}"')
        return _text(200, f'Success "{item["id"]}"')

    def _jasmin_order(self, state: AccountState, params: dict[str, bytes]) -> Order:
        if "to" not in params:
            raise _bad("to", "Mandatory argument [to] is not found.")
        destinations = _numbers([params["to"].decode("latin-1")], "to")
        coding = _int(params, "coding", 0, 14)
        ref = self.api.next_ref()
        parts: list[Part]
        if "hex-content" in params:
            try:
                data = binascii.unhexlify(params["hex-content"])
            except (binascii.Error, ValueError):
                raise _bad("hex-content", "hex-content is not hexadecimal") from None
            parts = binary_parts(data, coding or 0, None, ref, field="hex-content")
        elif "content" in params:
            text = params["content"].decode("utf-8", "replace")
            if coding is None:
                parts = text_parts(text, None, ref, field="content")
            elif coding == 0:
                data = gsm_encode(text, errors="replace")
                parts = binary_parts(data, 0, None, ref, field="content")
            else:
                try:
                    data = encode_text(text, coding)
                except EncodingError:
                    data = params["content"]  # a coding that carries no text: as sent
                parts = binary_parts(data, coding, None, ref, field="content")
        else:
            raise _bad("content", "content or hex-content not present.")
        now = self.api.wall()
        wants = params.get("dlr", b"no").decode("latin-1").lower() == "yes"
        url = params.get("dlr-url", b"").decode("utf-8", "replace") or None
        if wants and url is None:
            raise _bad("dlr-url", "dlr-url is mandatory when dlr is yes.")
        level = _int(params, "dlr-level", 1, 3) or 1
        method = params.get("dlr-method", b"GET").decode("latin-1").upper()
        if method not in ("GET", "POST"):
            raise _bad("dlr-method", "dlr-method must be GET or POST.")
        target = None
        if wants and url is not None:
            self.api.check_callback("dlr-url", url)
            target = Target(url, None, dialect="jasmin", mask=level, method=method)
        validity = _int(params, "validity-period", 1, 10**7)
        return Order(
            destinations=destinations,
            parts=parts,
            source=params.get("from", b"").decode("latin-1").removeprefix("+"),
            priority=_int(params, "priority", 0, 3) or 0,
            registered=1 if target is not None and level in (2, 3) else 0,
            schedule_at=None,
            expires_at=now + validity * 60 if validity else None,
            target=target,
        )

    async def jasmin_balance(self, request: web.Request) -> web.Response:
        params = await _params(request)
        state = await self._account(params)
        if state is None:
            return _jasmin_denied(params)
        return web.json_response({"balance": "ND", "sms_count": "ND"})

    async def jasmin_rate(self, request: web.Request) -> web.Response:
        params = await _params(request)
        state = await self._account(params)
        if state is None:
            return _jasmin_denied(params)
        try:
            (number,) = _numbers([params.get("to", b"").decode("latin-1")], "to")
            parts = self._jasmin_order(state, {"content": b"", **params, "to": number.encode()})
        except Problem as problem:
            return _text(problem.status, f'Error "{problem.detail}"')
        price = self.api.router.explain(number, state.system_id).price
        return web.json_response(
            {
                "submit_sm_count": len(parts.parts),
                "unit_rate": None if price is None else float(price),
            }
        )

    async def _account(self, params: dict[str, bytes]) -> AccountState | None:
        user = params.get("username", b"").decode("latin-1")
        password = params.get("password", b"").decode("latin-1")
        if not user:
            return None
        return await self.api.auth.by_password(user, password)


def _jasmin_denied(params: dict[str, bytes]) -> web.Response:
    user = params.get("username", b"").decode("latin-1")
    return _text(403, f'Error "Authentication failure for username:{user}"')


async def _params(request: web.Request) -> dict[str, bytes]:
    """The request's parameters (query, and form body for a POST) as the octets sent:
    the first value of each name."""
    raw = request.raw_path.partition("?")[2]
    pairs = parse_qsl(raw, keep_blank_values=True, encoding="latin-1")
    if request.method == "POST" and request.can_read_body:
        body = await request.read()
        pairs += parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    if len(pairs) > _MAX_PARAMS:
        raise web.HTTPBadRequest(text=f"more than {_MAX_PARAMS} parameters")
    out: dict[str, bytes] = {}
    for name, value in pairs:
        out.setdefault(name, value.encode("latin-1"))
    return out


def _numbers(values: list[str], field: str) -> list[str]:
    if not values or not values[0]:
        raise _bad(field, "Missing receiver number for sendsms")
    if len(values) > 1000:
        raise _bad(field, "more than 1000 receivers")
    for value in values:
        if not _NUMBER.fullmatch(value):
            raise _bad(field, f"{field}: {value!r} is not a number")
    return [v.removeprefix("+") for v in values]


def _int(params: dict[str, bytes], name: str, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == b"":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad(name, f"{name}: expected an integer {low}..{high}") from None
    if not low <= value <= high:
        raise _bad(name, f"{name}: expected an integer {low}..{high}")
    return value


def _bad(field: str, detail: str) -> Problem:
    return Problem(400, "Invalid field", detail, field=field)


def _text(status: int, text: str, headers: Any = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)
