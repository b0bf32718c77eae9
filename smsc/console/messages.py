"""Finding messages for the console: by our id, the carrier's id, destination, account and
time range, newest first; and one message's timeline.

The store's own reads answer the protocol (one id at a time), so the search reads the
SQLite file on a connection of its own, read-only, in a worker thread: it never waits
behind the writer nor holds up the store's reads. It is bounded: at most
:data:`SCAN_LIMIT` rows looked at (newest first, in the time range) and
:data:`SEARCH_DEADLINE` seconds (SQLite's progress handler aborts it past that).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from router.model import Message, StoredMessage
from smppcore.constants import MessageState
from smppcore.text import decode_text

if TYPE_CHECKING:
    from router.stores.sqlite import SqliteStore

SCAN_LIMIT: Final = 20_000
SEARCH_DEADLINE: Final = 5.0
MAX_RESULTS: Final = 200

_decode = msgspec.msgpack.Decoder(Message).decode


class Query(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The search form (every field optional; all those given must match)."""

    id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    carrier_id: Annotated[str, msgspec.Meta(max_length=65)] = ""
    destination: Annotated[str, msgspec.Meta(max_length=21, pattern=r"^\+?[0-9]*$")] = ""
    account: Annotated[str, msgspec.Meta(max_length=16)] = ""
    since: float | None = None
    """Unix seconds (submitted at or after)."""
    until: float | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESULTS)] = 50


class Found(msgspec.Struct, frozen=True):
    id: str
    account: str
    source: str
    destination: str
    submitted_at: float
    state: str
    carrier: str
    carrier_message_id: str
    done_at: float | None


class Step(msgspec.Struct, frozen=True):
    """One line of a message's timeline."""

    at: float | None
    what: str
    detail: str


class Timeline(msgspec.Struct, frozen=True):
    message: Found
    text: str
    steps: list[Step]
    cancellable: bool


def store_target(store: SqliteStore, path: str) -> tuple[str, bool]:
    """The database the store writes (``path`` from its config) as (name, uri) for a
    read-only connection of our own."""
    if path == ":memory:":
        return f"file:smsc-store-{id(store)}?mode=memory&cache=shared", True
    return f"file:{path}?mode=ro", True


def _found(row: Any) -> Found:
    body, state, carrier, carrier_message_id, done_at = row
    message = _decode(body)
    return found(
        StoredMessage(
            message=message,
            state=MessageState(state),
            carrier=carrier,
            carrier_message_id=carrier_message_id,
            done_at=done_at,
        )
    )


def found(stored: StoredMessage) -> Found:
    message = stored.message
    return Found(
        id=message.id,
        account=message.account,
        source=message.source.addr,
        destination=message.destination.addr,
        submitted_at=message.submitted_at,
        state=stored.state.name,
        carrier=stored.carrier,
        carrier_message_id=stored.carrier_message_id,
        done_at=stored.done_at,
    )


def _search_sync(target: tuple[str, bool], query: Query, deadline: float) -> list[Found]:
    name, uri = target
    db = sqlite3.connect(name, uri=uri, timeout=1.0, check_same_thread=False)
    try:
        db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        where, params = [], []
        if query.id:
            where.append("id = ?")
            params.append(query.id)
        if query.carrier_id:
            where.append("carrier_message_id = ?")
            params.append(query.carrier_id)
        if query.account:
            where.append("account = ?")
            params.append(query.account)
        if query.since is not None:
            where.append("submitted_at >= ?")
            params.append(str(query.since))
        if query.until is not None:
            where.append("submitted_at <= ?")
            params.append(str(query.until))
        sql = "SELECT body, state, carrier, carrier_message_id, done_at FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at DESC LIMIT ?"
        destination = query.destination.lstrip("+")
        out: list[Found] = []
        for row in db.execute(sql, (*params, SCAN_LIMIT)):
            item = _found(row)
            if destination and item.destination.lstrip("+") != destination:
                continue
            out.append(item)
            if len(out) >= query.limit:
                break
        return out
    finally:
        db.close()


async def search(store: SqliteStore, path: str, query: Query) -> list[Found]:
    """Messages matching ``query``, newest first (TimeoutError past the deadline;
    sqlite3.Error when the file cannot be read)."""
    await store.flush(SEARCH_DEADLINE)  # what was accepted a moment ago is found too
    deadline = time.monotonic() + SEARCH_DEADLINE
    try:
        return await asyncio.to_thread(_search_sync, store_target(store, path), query, deadline)
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise TimeoutError(f"search took more than {SEARCH_DEADLINE:g} s") from None
        raise


def timeline(stored: StoredMessage, *, cancellable: bool) -> Timeline:
    """What became of a message, as the store knows it: accepted, the carriers that
    failed it (failovers), the carrier that took it and its id there, the final state."""
    message = stored.message
    steps = [
        Step(
            message.submitted_at,
            "accepted",
            f"from {message.account}: {message.source.addr or '-'} → {message.destination.addr}",
        )
    ]
    for i, carrier in enumerate(message.tried):
        steps.append(Step(None, "failover" if i else "failed at", f"{carrier} did not take it"))
    if stored.carrier:
        theirs = stored.carrier_message_id
        where = f"sent to {stored.carrier}" + (f" (carrier id {theirs})" if theirs else "")
        steps.append(Step(None, "routed", where))
    if stored.done_at is not None:
        error = f", error {stored.error:#x}" if stored.error else ""
        steps.append(Step(stored.done_at, "final", f"{stored.state.name}{error}"))
    else:
        steps.append(Step(None, "waiting", f"{stored.state.name}: no final state yet"))
    text = decode_text(message.short_message, message.data_coding)
    return Timeline(found(stored), text, steps, cancellable)
