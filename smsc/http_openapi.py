"""The OpenAPI 3.1 description of the application HTTP API (smsc/http_api.py), served at
``/v1/openapi.json``. The tests check every request they make and every answer they get
against it."""

from __future__ import annotations

from typing import Any

from smsc import __version__

_NULL_STR = {"type": ["string", "null"]}
_NUMBER = {"type": "string", "pattern": r"^\+?[0-9]{1,20}$"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    props: dict[str, Any], *, required: list[str] | None = None, extra: bool = False
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": extra,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
_COMMON = {
    "401": _problem("no API key or account credentials, or wrong ones"),
    "503": _problem("busy or not serving now; try again after Retry-After", _RETRY_AFTER),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

_STATE = {
    "enum": [
        "accepted",
        "scheduled",
        "queued",
        "sent",
        "delivered",
        "undeliverable",
        "expired",
        "rejected",
        "deleted",
    ]
}
_SUMMARY_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "to": {"type": "string"},
    "from": _NULL_STR,
    "state": _STATE,
    "parts": {"type": "integer", "minimum": 1},
    "carrier": _NULL_STR,
    "created_at": {"type": "string", "format": "date-time"},
    "reference": _NULL_STR,
}

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "field": {"type": "string", "description": "the request field that is wrong"},
        },
        required=["type", "title", "status", "detail"],
    ),
    "SendRequest": _obj(
        {
            "to": {
                "oneOf": [
                    _NUMBER,
                    {"type": "array", "items": _NUMBER, "minItems": 1, "maxItems": 1000},
                ]
            },
            "from": {"type": "string", "minLength": 1, "maxLength": 20},
            "text": {"type": "string", "minLength": 1, "maxLength": 40000},
            "binary": {"type": "string", "contentEncoding": "base64"},
            "data_coding": {"type": "integer", "minimum": 0, "maximum": 255},
            "udh": {"type": "string", "contentEncoding": "base64"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 3},
            "validity": {
                "description": "seconds, an ISO 8601 duration (PT1H) or instant",
                "oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
            },
            "send_at": {"type": "string", "description": "ISO 8601 instant with a zone"},
            "receipt": {"type": "boolean"},
            "callback_url": {
                "type": "string",
                "format": "uri",
                "description": "where this message's events are POSTed instead of the"
                " account's status_url. Its host must be (or resolve to) an address in"
                " webhooks.callback_networks (default: public addresses; never link-local"
                " cloud metadata unless listed): an address literal outside them is answered"
                " 422 naming callback_url; a name resolving outside them fails the event"
                " (dead-lettered at once, last_error 'refused: ...')",
            },
            "reference": {"type": "string", "maxLength": 256},
        },
        required=["to"],
    ),
    "Accepted": _obj(
        {
            "messages": {
                "type": "array",
                "items": _obj(
                    {
                        "id": {"type": "string"},
                        "to": {"type": "string"},
                        "parts": {"type": "integer", "minimum": 1},
                        "status": {"enum": ["accepted", "scheduled", "rejected"]},
                        "error": {"type": "string"},
                    },
                    required=["id", "to", "parts", "status"],
                ),
            },
            "reference": _NULL_STR,
        }
    ),
    "MessageSummary": _obj(_SUMMARY_PROPS),
    "Message": _obj(
        {
            **_SUMMARY_PROPS,
            "price": {"type": ["string", "null"], "description": "per part, decimal"},
            "part_states": {
                "type": "array",
                "items": _obj(
                    {
                        "part": {"type": "integer"},
                        "state": _STATE,
                        "carrier": _NULL_STR,
                        "carrier_message_id": _NULL_STR,
                        "error": {"type": "integer"},
                    }
                ),
            },
            "timeline": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": {"type": ["string", "null"]},
                        "event": {"type": "string"},
                    },
                    "required": ["at", "event"],
                },
            },
        }
    ),
    "MessageList": _obj(
        {
            "messages": {"type": "array", "items": _ref("MessageSummary")},
            "next_cursor": _NULL_STR,
        }
    ),
    "Account": _obj(
        {
            "system_id": {"type": "string"},
            "throughput": {"type": ["number", "null"]},
            "burst": {"type": ["number", "null"]},
            "tokens": {"type": ["number", "null"]},
            "max_sessions": {"type": "integer"},
            "sessions_bound": {"type": "integer"},
            "allowed_carriers": {"type": ["array", "null"], "items": {"type": "string"}},
            "max_price": _NULL_STR,
            "default_priority": {"type": "integer"},
            "receipts_held": {"type": "integer"},
            "max_held": {"type": "integer"},
            "queue": _obj({"depth": {"type": "integer"}, "in_flight": {"type": "integer"}}),
            "webhooks": {"type": "boolean"},
        }
    ),
    "Failures": _obj(
        {
            "failures": {
                "type": "array",
                "items": _obj(
                    {
                        "id": {"type": "string"},
                        "url": {"type": "string"},
                        "attempts": {"type": "integer"},
                        "created_at": {"type": "string"},
                        "last_error": {
                            "type": "string",
                            "description": "why it failed last; 'refused: ...' when its"
                            " callback URL may not be reached (webhooks.callback_networks):"
                            " dead at once, never retried",
                        },
                        "event": {
                            "type": "object",
                            "description": "the JSON event; for a Kannel or Jasmin dlr-url,"
                            " the request it makes: {method: GET} (the url holds it) or"
                            " {method: POST, form}",
                        },
                    }
                ),
            }
        }
    ),
}

def _legacy(summary: str, answer: str, media: str = "text/plain") -> dict[str, Any]:
    """A Kannel or Jasmin drop-in endpoint: its parameters in the query (GET) or a form
    body (POST), its own answers (smsc/legacy_http.py)."""
    op = {
        "summary": summary,
        "security": [],
        "parameters": [
            {"$ref": "#/components/parameters/username"},
            {"$ref": "#/components/parameters/password"},
        ],
        "responses": {
            "default": {"description": answer, "content": {media: {"schema": {}}}},
        },
    }
    post = {
        **op,
        "requestBody": {
            "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
        },
    }
    return {"get": op, "post": post}


_MESSAGE_READ = {"404": _problem("no such message of this account"), **_COMMON}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "smsc application API",
        "version": __version__,
        "description": "Send SMS over HTTP; delivery status and inbound messages arrive on"
        " signed webhooks (Smsc-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t.body)>).",
    },
    "security": [{"apiKey": []}, {"basic": []}],
    "paths": {
        "/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
        "/v1/messages": {
            "post": {
                "summary": "send a message to one number or up to 1,000",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SendRequest")}},
                },
                "responses": {
                    "202": _json(_ref("Accepted"), "accepted: our id per destination"),
                    "400": _problem("malformed body"),
                    "409": _problem("a request with this Idempotency-Key is in progress"),
                    "413": _problem("body too large"),
                    "422": _problem("a field is invalid (named in field)"),
                    "429": _problem("over the account's throughput", _RETRY_AFTER),
                    **_COMMON,
                },
            },
            "get": {
                "summary": "the account's messages sent through this API, newest first",
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": s}
                    for n, s in (
                        ("to", {"type": "string"}),
                        ("state", {"type": "string"}),
                        ("since", {"type": "string"}),
                        ("until", {"type": "string"}),
                        ("limit", {"type": "integer"}),
                        ("cursor", {"type": "string"}),
                    )
                ],
                "responses": {
                    "200": _json(_ref("MessageList"), "a page"),
                    "400": _problem("a bad filter (named in field)"),
                    **_COMMON,
                },
            },
        },
        "/v1/messages/{id}": {
            "get": {
                "summary": "one message: state, parts, carrier, price, timeline",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("Message"), "the message"), **_MESSAGE_READ},
            },
            "delete": {
                "summary": "cancel a message that has not left for a carrier",
                "parameters": [_ID],
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "id": {"type": "string"},
                                "state": {"const": "deleted"},
                                "parts_cancelled": {"type": "integer"},
                            }
                        ),
                        "cancelled",
                    ),
                    "409": _problem("already sent or final"),
                    **_MESSAGE_READ,
                },
            },
        },
        "/v1/account": {
            "get": {
                "summary": "the account's limits, sessions and queue",
                "responses": {"200": _json(_ref("Account"), "the account"), **_COMMON},
            }
        },
        "/v1/webhooks/failures": {
            "get": {
                "summary": "the account's dead-lettered webhook events, newest first",
                "responses": {"200": _json(_ref("Failures"), "dead letters"), **_COMMON},
            }
        },
        "/cgi-bin/sendsms": _legacy(
            "Kannel's sendsms (to, from, text, charset, coding, udh, priority, validity,"
            " deferred, dlr-mask, dlr-url). dlr-mask bits: 1 delivered, 2 not delivered,"
            " 4 buffered (from the carrier's receipt), 8 accepted by the carrier (%A:"
            " ACK/), 16 refused before any carrier took it (%A: NACK/0x<status>/<text>"
            " or NACK/<why>; also sent, as type 16, to a mask with 2). A dlr-url whose"
            " host is an address outside webhooks.callback_networks is answered 422",
            "202 '0: Accepted for delivery', or Kannel's error text",
        ),
        "/send": _legacy(
            "Jasmin's send (to, from, coding, content, hex-content, priority,"
            " validity-period, dlr, dlr-url, dlr-level, dlr-method). dlr-level 1: the"
            " carrier's submit_sm_resp (id, message_status ESME_ROK or the refusal's"
            " name, level, connector); 2: the terminal receipt; 3: both. A dlr-url whose"
            " host is an address outside webhooks.callback_networks is answered 422",
            "200 'Success \"<id>\"', or 'Error \"...\"'",
        ),
        "/balance": _legacy("Jasmin's balance (none kept: ND)", "JSON", "application/json"),
        "/rate": _legacy("Jasmin's rate (to, content)", "JSON", "application/json"),
        "/v1/webhooks/failures/{id}/retry": {
            "post": {
                "summary": "send a dead-lettered event again",
                "parameters": [_ID],
                "responses": {
                    "202": _json(
                        _obj({"id": {"type": "string"}, "state": {"const": "queued"}}), "queued"
                    ),
                    "404": _problem("no such dead-lettered event of this account"),
                    **_COMMON,
                },
            }
        },
    },
    "components": {
        "schemas": SCHEMAS,
        "parameters": {
            "username": {"name": "username", "in": "query", "schema": {"type": "string"}},
            "password": {"name": "password", "in": "query", "schema": {"type": "string"}},
        },
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "smsc api-key"},
            "basic": {"type": "http", "scheme": "basic", "description": "system_id, password"},
        },
    },
}
