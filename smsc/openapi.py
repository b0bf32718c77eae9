"""The OpenAPI 3.1 description of the admin API (smsc/admin.py), served at
``/api/v1/openapi.json``. The one place the API's shapes are written down; the tests check
every endpoint's real requests and responses against it."""

from __future__ import annotations

from typing import Any

from smsc import __version__


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_AUTH = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Disabled"},
}
_BUSY = _error(
    "another carrier change (reload, pause, drain, resume) was under way for 30 s; nothing was done"
)
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_NUMBER = {"type": ["number", "null"]}


def _obj(props: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


def _carrier_op(summary: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_NAME, *(extra or {}).get("parameters", [])],
            "responses": {
                "200": _json(_ref("Carrier"), "the carrier's state afterwards"),
                **({"400": _error("bad parameter")} if extra else {}),
                "404": _error("no such carrier"),
                "409": _BUSY,
                **_AUTH,
            },
        }
    }


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string"}}),
    "Health": _obj(
        {
            "carrier": {"type": "string"},
            "binds": {"type": "integer"},
            "acceptance": _NUMBER,
            "delivery": _NUMBER,
            "latency": _NUMBER,
            "submits": {"type": "number"},
            "receipts": {"type": "number"},
            "breaker": {"enum": ["closed", "open", "half_open"]},
            "available": {"type": "boolean"},
            "healthy": {"type": "boolean"},
            "score": {"type": "number"},
            "reasons": {"type": "array", "items": {"type": "string"}},
        }
    ),
    "Carrier": _obj(
        {
            "name": {"type": "string"},
            "binds": {"type": "integer", "description": "binds configured"},
            "bound": {"type": "integer", "description": "submit-capable binds up"},
            "in_flight": {"type": "integer", "description": "submits awaiting an answer"},
            "paused": {"type": "boolean", "description": "routing skips it"},
            "drained": {"type": "boolean", "description": "paused and unbound"},
            "health": _ref("Health"),
            "rate": {
                "type": ["number", "null"],
                "description": "submits per second it may be sent now: its binds' adaptive "
                "rates, cut by its throttling, within its configured rate; null: no limit",
            },
        }
    ),
    "Bind": _obj(
        {
            "id": {"type": "string"},
            "account": {"type": "string"},
            "bind_type": {"enum": ["transmitter", "receiver", "transceiver"]},
            "peer": {"type": "string", "description": "host:port"},
            "since": {"type": "number", "description": "Unix seconds"},
            "in_flight": {"type": "integer", "description": "our deliver_sm unanswered"},
            "pending": {"type": "integer", "description": "its requests not yet answered"},
        }
    ),
    "Route": _obj(
        {
            "prefix": {"type": "string"},
            "accounts": {"type": "array", "items": {"type": "string"}},
            "carriers": {
                "type": "array",
                "items": _obj(
                    {
                        "carrier": {"type": "string"},
                        "price": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                    }
                ),
            },
        }
    ),
    "Explanation": _obj(
        {
            "destination": {"type": "string"},
            "account": {"type": "string"},
            "at": {"type": "number"},
            "prefix": {"type": ["string", "null"]},
            "account_route": {"type": "boolean"},
            "rank": {"enum": ["price", "delivered_cost"]},
            "max_latency": {**_NUMBER, "description": "the route's service level (seconds)"},
            "min_delivery": {**_NUMBER, "description": "the route's service level (share)"},
            "explore": {
                "type": "number",
                "description": "share of messages sent first to the least-measured fallback",
            },
            "explore_until": {
                **_NUMBER,
                "description": "... while it has fewer recent receipts than this; null: always",
            },
            "spill": {
                "enum": ["now", "wait", "never"],
                "description": "when the choice has no capacity: the next carrier at once, "
                "after spill_wait, or never",
            },
            "spill_wait": {"type": "number", "description": "seconds (spill: wait)"},
            "long_message_failure": {"enum": ["fail_all", "resend_all"]},
            "candidates": {
                "type": "array",
                "items": _obj(
                    {
                        "carrier": {"type": "string"},
                        "price": {
                            "type": "string",
                            "description": "per part, routing currency",
                        },
                        "price_source": {"enum": ["route", "card"]},
                        "available": {"type": "boolean"},
                        "healthy": {"type": "boolean"},
                        "eligible": {"type": "boolean"},
                        "role": {"enum": ["first", "fallback", "demoted", "excluded"]},
                        "why": {"type": "string"},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "score": {"type": "number"},
                        "delivery": {
                            **_NUMBER,
                            "description": "measured share of receipts DELIVRD (decayed)",
                        },
                        "receipts": {"type": "number", "description": "decayed receipt count"},
                        "delivery_estimate": {
                            "type": "number",
                            "description": "delivery pulled toward the prior: what ranks",
                        },
                        "cost_per_delivered": {
                            "type": ["string", "null"],
                            "description": "price / delivery_estimate",
                        },
                        "latency": {**_NUMBER, "description": "submit_sm_resp seconds"},
                        "breaker": {"enum": ["closed", "open", "half_open"]},
                        "rate": {
                            "type": ["number", "null"],
                            "description": "submits per second it may be sent now; null: no limit",
                        },
                        "in_flight": {"type": ["integer", "null"]},
                        "window": {
                            "type": ["integer", "null"],
                            "description": "submits its bound binds may have in flight",
                        },
                    }
                ),
            },
            "choice": {"type": ["string", "null"]},
            "price": {"type": ["string", "null"]},
            "fallbacks": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": ["string", "null"]},
        }
    ),
    "Queue": _obj(
        {
            "depth": {"type": "integer", "description": "ready, scheduled and parked"},
            "ready": {"type": "integer"},
            "scheduled": {"type": "integer"},
            "by_priority": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 4,
                "maxItems": 4,
                "description": "ready messages per priority 0..3",
            },
            "oldest_age": {
                **_NUMBER,
                "description": "seconds since the oldest waiting message was submitted",
            },
            "in_flight": {"type": "integer"},
            "paced": {
                "type": "integer",
                "description": "submits waiting for room before they are queued and answered",
            },
            "parked": {
                "type": "integer",
                "description": "messages waiting for a carrier of their route to come back",
            },
        }
    ),
    "SubmitRequest": _obj(
        {
            "account": {"type": "string", "minLength": 1, "maxLength": 15},
            "destination": {"type": "string", "pattern": "^\\+?[0-9]{1,20}$"},
            "text": {"type": "string", "minLength": 1, "maxLength": 10000},
            "source": {"type": "string", "maxLength": 20, "pattern": "^[ -~]*$"},
            "registered_delivery": {"type": "integer", "minimum": 0, "maximum": 255},
            "priority": {"type": "integer", "minimum": 0, "maximum": 3},
        },
        required=["account", "destination", "text"],
    ),
    "MoRequest": _obj(
        {
            "text": {"type": "string", "minLength": 1},
            "source": {"type": ["string", "null"]},
            "destination": {"type": ["string", "null"]},
            "data_coding": {"type": ["integer", "null"], "minimum": 0, "maximum": 255},
            "system_id": {
                "type": ["string", "null"],
                "description": "simulator account; default: the one smsc binds with",
            },
        },
        required=["text"],
    ),
    "Reload": _obj(
        {
            "applied": {"type": "array", "items": {"type": "string"}},
            "requires_restart": {
                "type": "array",
                "items": {"type": "string"},
                "description": "changed keys that need a restart (not applied)",
            },
        }
    ),
    "Node": _obj(
        {
            "node_id": {"type": "string"},
            "address": {"type": "string", "description": "its ESME listener's host"},
            "ports": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 65535},
                "description": "ESME, TLS and HTTP ports (0: off)",
            },
            "alive": {
                "type": "boolean",
                "description": "heartbeat at most lease seconds old, and not left",
            },
            "left": {
                "type": "boolean",
                "description": "stopped cleanly; the other nodes took over its unfinished messages",
            },
            "heartbeat_age": {"type": "number", "minimum": 0, "description": "seconds"},
            "config_hash": {
                "type": "string",
                "description": "digest of the shared configuration: nodes that differ drift",
            },
            "esme_binds": {"type": "integer", "minimum": 0},
            "bind_slots": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 1},
                "description": "carrier bind slots it holds, by carrier",
            },
            "queue_share": {
                "type": "integer",
                "minimum": 0,
                "description": "messages in its queue",
            },
        }
    ),
    "Cluster": _obj(
        {
            "node_id": {"type": "string", "description": "the node answering"},
            "shared": {"type": "boolean", "description": "false: one node, no Redis"},
            "reachable": {"type": "boolean", "description": "its last heartbeat got through"},
            "lease": {"type": "number", "description": "seconds"},
            "nodes": {"type": "array", "items": _ref("Node")},
        }
    ),
}

PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Liveness (no token needed)",
            "security": [],
            "responses": {"200": _json(_obj({"status": {"const": "ok"}}), "alive")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: the store is open and takes writes (not while its disk is "
            "full or read-only) and every carrier not paused or drained has a bind up (no "
            "token needed)",
            "security": [],
            "parameters": [
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "seconds to wait for readiness before answering (answers as "
                    "soon as ready; 503 if still not ready when the wait ends)",
                    "schema": {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                }
            ],
            "responses": {
                code: _json(
                    _obj(
                        {
                            "ready": {"type": "boolean"},
                            "store": {"type": "boolean"},
                            "carriers": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                                "description": "binds up per carrier",
                            },
                        }
                    ),
                    what,
                )
                for code, what in (
                    ("200", "ready"),
                    ("503", "not ready (during start-up: store false or true, carriers {})"),
                )
            }
            | {"400": _error("bad wait parameter")},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document (no token needed)",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }
    },
    "/binds": {
        "get": {
            "summary": "Bound ESME sessions",
            "responses": {
                "200": _json(
                    _obj({"binds": {"type": "array", "items": _ref("Bind")}}), "the binds"
                ),
                **_AUTH,
            },
        }
    },
    "/binds/{id}": {
        "delete": {
            "summary": "Kick a session: unbind, then close",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _json(
                    _obj({"id": {"type": "string"}, "unbound": {"const": True}}), "unbound"
                ),
                "404": _error("no such bind"),
                **_AUTH,
            },
        }
    },
    "/carriers": {
        "get": {
            "summary": "Every carrier: binds, in flight, health and breaker, paused",
            "responses": {
                "200": _json(
                    _obj({"carriers": {"type": "array", "items": _ref("Carrier")}}),
                    "the carriers",
                ),
                **_AUTH,
            },
        }
    },
    "/carriers/{name}": {
        "get": {
            "summary": "One carrier",
            "parameters": [_NAME],
            "responses": {
                "200": _json(_ref("Carrier"), "the carrier"),
                "404": _error("no such carrier"),
                **_AUTH,
            },
        }
    },
    "/carriers/{name}/pause": _carrier_op("Pause: routing skips the carrier; in flight finish"),
    "/carriers/{name}/resume": _carrier_op("Resume a paused or drained carrier"),
    "/carriers/{name}/drain": _carrier_op(
        "Drain: pause, wait for the submits in flight, unbind (resume binds again)",
        {
            "parameters": [
                {
                    "name": "timeout",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                    "description": "seconds to wait for in-flight submits (default 30)",
                }
            ]
        },
    ),
    "/carriers/{name}/mo": {
        "post": {
            "summary": "Inject a mobile-originated message on a simulated carrier",
            "parameters": [_NAME],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("MoRequest")}},
            },
            "responses": {
                "202": _json(
                    _obj(
                        {
                            "carrier": {"type": "string"},
                            "system_id": {"type": "string"},
                            "parts": {"type": "integer", "minimum": 1},
                        }
                    ),
                    "queued at the simulator",
                ),
                "400": _error("bad request"),
                "404": _error("no such simulated carrier or account"),
                **_AUTH,
            },
        }
    },
    "/routes": {
        "get": {
            "summary": "The route table with prices",
            "responses": {
                "200": _json(
                    _obj({"routes": {"type": "array", "items": _ref("Route")}}), "the routes"
                ),
                **_AUTH,
            },
        }
    },
    "/routes/explain": {
        "get": {
            "summary": "Why a destination routes the way it does for an account",
            "parameters": [
                {"name": n, "in": "query", "required": True, "schema": {"type": "string"}}
                for n in ("destination", "account")
            ],
            "responses": {
                "200": _json(_ref("Explanation"), "the decision"),
                "400": _error("missing parameter"),
                **_AUTH,
            },
        }
    },
    "/queue": {
        "get": {
            "summary": "Queue depth by priority, oldest age",
            "responses": {"200": _json(_ref("Queue"), "the queue"), **_AUTH},
        }
    },
    "/messages": {
        "post": {
            "summary": "Submit a message through the same intake as an ESME submit_sm",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("SubmitRequest")}},
            },
            "responses": {
                "202": _json(_obj({"message_id": {"type": "string"}}), "accepted; our message id"),
                "400": _error("bad request"),
                "404": _error("no such account"),
                "429": _error("the account's throughput is used up"),
                "413": _error("body over 64 KiB"),
                "503": _error("refused (queue full, store error)"),
                "504": _error("the router did not answer in time; the error names the message id"),
                **_AUTH,
            },
        }
    },
    "/cluster": {
        "get": {
            "summary": "The nodes of the cluster (this one alone without cluster.redis): "
            "heartbeat age, config hash, ESME binds, carrier bind slots, queue share",
            "responses": {
                "200": _json(_ref("Cluster"), "the nodes"),
                "503": _error("the cluster's Redis did not answer"),
                **_AUTH,
            },
        }
    },
    "/reload": {
        "post": {
            "summary": "Re-read the configuration file and apply it (as SIGHUP does)",
            "responses": {
                "200": _json(_ref("Reload"), "applied"),
                "400": _error("the new configuration is invalid; the old one keeps running"),
                "409": _error(
                    "started without a configuration file, or another carrier change "
                    "(reload, pause, drain, resume) held the node for 30 s"
                ),
                **_AUTH,
            },
        }
    },
}

#: Paths that answer as usual during start-up; every other operation answers 503 Starting
#: then (smsc/admin.py). /ready's 503 is its own "not ready".
_SERVING_DURING_START_UP = frozenset({"/health", "/openapi.json", "/ready"})


def _during_start_up(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with the 503 of start-up on every operation that gives it."""
    starting = {"$ref": "#/components/responses/Starting"}
    both = _error("refused (queue full, store error); or the node is starting (see Starting)")
    out: dict[str, Any] = {}
    for path, ops in paths.items():
        if path in _SERVING_DURING_START_UP:
            out[path] = ops
            continue
        out[path] = {
            method: {
                **op,
                "responses": {
                    **op["responses"],
                    "503": both if "503" in op["responses"] else starting,
                },
            }
            for method, op in ops.items()
        }
    return out


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "smsc admin API",
        "version": __version__,
        "description": "Served on the metrics port. Every endpoint except health, ready and "
        "openapi.json needs `Authorization: Bearer <admin.token>`; with no token configured "
        "they answer 403. The server listens from the start of start-up: until the node has "
        "started, every endpoint except health, ready and openapi.json answers 503 "
        "(components/responses/Starting), ready answers 503 not ready.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": _during_start_up(PATHS),
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Unauthorized": _error("missing or wrong bearer token"),
            "Disabled": _error("no admin.token configured: the endpoint is off"),
            "Starting": {
                **_error(
                    "the node is starting (its store, carriers and listeners): "
                    '{"error": "starting: not serving yet"}; try again'
                ),
                "headers": {
                    "Retry-After": {
                        "description": "seconds to wait before trying again (1)",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                },
            },
        },
    },
}
