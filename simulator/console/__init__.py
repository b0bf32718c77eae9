"""The simulator's page, on its admin port (``smsc carrier --metrics-port``): the sessions
bound, the last messages received with their planned outcome and receipt time, a form that
injects an MO (``POST /mo``, the admin endpoint's own), the profiles in force and the
counters. The state streams as Server-Sent Events, one snapshot a second.

Like the rest of the simulator's admin endpoint it has no login: it is a test tool and
listens on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Final

import msgspec
from aiohttp import web

from consolestyle import STYLESHEET
from simulator.carrier import Carrier
from smppcore.constants import command_name, status_name
from smppcore.session import State
from smppcore.text import decode_text

STATIC: Final = Path(__file__).resolve().parent / "static"
#: Messages shown, newest first.
LAST: Final = 50
#: Live pages at most (each one stream).
MAX_STREAMS: Final = 16
#: Longest one stream stays open (the page reconnects on its own).
STREAM_FOR: Final = 600.0
WRITE_DEADLINE: Final = 5.0
_NAME: Final = re.compile(r"^[a-z0-9_-]+\.(js|css|html)$")
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
_BIND_TYPES: Final = {
    State.BOUND_TX: "transmitter",
    State.BOUND_RX: "receiver",
    State.BOUND_TRX: "transceiver",
}


def snapshot(carrier: Carrier) -> dict[str, Any]:
    """What the page shows, now."""
    accounts = []
    for system_id, state in sorted(carrier.accounts.items()):
        accounts.append(
            {
                "system_id": system_id,
                "profile": state.account.profile,
                "held": state.outbox.held,
                "sessions": [
                    {
                        "peer": ":".join(map(str, conn.peer[:2])) if conn.peer else "?",
                        "bind_type": _BIND_TYPES.get(conn.session.state, "?"),
                    }
                    for conn in state.sessions
                ],
            }
        )
    metrics = carrier.metrics
    submits: dict[str, int] = {}
    for (cid, status), n in metrics.pdus_out.items():
        if command_name(cid).startswith(("submit_sm_resp", "data_sm_resp", "submit_multi_resp")):
            name = status_name(status)
            submits[name] = submits.get(name, 0) + n
    messages = [
        {
            "id": m.id,
            "system_id": m.system_id,
            "submitted_at": m.submitted_at.timestamp(),
            "source": m.source,
            "destination": m.destination,
            "text": decode_text(m.short_message, m.data_coding),
            "state": m.state.name,
            "planned": m.fate.name,
            "receipt_at": None if m.final_at is None else m.final_at.timestamp(),
        }
        for m in carrier.messages.last(LAST)
    ]
    return {
        "system_id": carrier.config.system_id,
        "accounts": accounts,
        "counters": {
            "submits": submits,
            "receipts": dict(metrics.receipts),
            "mo_sent": metrics.mo_sent,
            "pending": carrier.messages.pending,
            "held_dropped": metrics.held_dropped,
        },
        "profiles": msgspec.to_builtins(carrier.config.profiles),
        "messages": messages,
    }


class SimulatorConsole:
    """``install(web_app)``; ``stop()`` ends the streams before the server closes."""

    def __init__(self, carrier: Carrier) -> None:
        self.carrier = carrier
        self._files = {p.name: p for p in STATIC.iterdir() if _NAME.match(p.name)}
        self._files[STYLESHEET.name] = STYLESHEET
        self._streams = 0
        self._stopping = asyncio.Event()

    def install(self, web_app: web.Application) -> None:
        add = web_app.router
        add.add_get("/", self.page)
        add.add_get("/console/static/{name}", self.static)
        add.add_get("/console/state", self.state)
        add.add_get("/console/events", self.events)

    def stop(self) -> None:
        self._stopping.set()

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._files["index.html"].read_text(encoding="utf-8"),
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
            },
        )

    async def static(self, request: web.Request) -> web.Response:
        path = self._files.get(request.match_info["name"])
        if path is None:
            return web.json_response({"error": "no such file"}, status=404)
        return web.Response(
            body=path.read_bytes(),
            content_type=_TYPES[path.suffix],
            headers={"Cache-Control": "no-cache"},
        )

    async def state(self, request: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(snapshot(self.carrier)), content_type="application/json"
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            return web.json_response({"error": "too many live pages open"}, status=503)
        self._streams += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        try:
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            until = loop.time() + STREAM_FOR
            while loop.time() < until and not self._stopping.is_set():
                data = msgspec.json.encode(snapshot(self.carrier))
                async with asyncio.timeout(WRITE_DEADLINE):
                    await response.write(b"data: " + data + b"\n\n")
                try:  # one snapshot a second, or at once when the server stops
                    async with asyncio.timeout(1.0):
                        await self._stopping.wait()
                except TimeoutError:
                    pass
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._streams -= 1
        return response
