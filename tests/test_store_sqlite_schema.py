"""router.stores.sqlite: a database written before messages had owners (schema 1) opens as
schema 2, its unfinished messages owned by the node that opens it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message
from router.stores.sqlite import SqliteStore
from smppcore.constants import MessageState

#: Schema 1 as the first SQLite store created it (its messages table and user_version).
SCHEMA_1 = (
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY NOT NULL,
        account TEXT NOT NULL,
        state INTEGER NOT NULL,
        error INTEGER NOT NULL DEFAULT 0,
        carrier TEXT NOT NULL DEFAULT '',
        carrier_message_id TEXT NOT NULL DEFAULT '',
        carrier_key TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX messages_unfinished ON messages (submitted_at) WHERE done_at IS NULL",
    "PRAGMA user_version=1",
)


def message(i: int) -> Message:
    return Message(
        id=f"m{i}",
        account="acme",
        source=Address(5, 0, "ACME"),
        destination=Address(1, 1, "447700900123"),
        short_message=b"hi",
        submitted_at=1_000.0 + i,
    )


def test_a_schema_1_database_is_taken_over_by_the_node_that_opens_it(
    tmp_path: Path, run: Any
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in SCHEMA_1:
            db.execute(statement)
        for i, done_at in ((1, None), (2, 5.0)):
            db.execute(
                "INSERT INTO messages (id, account, state, submitted_at, done_at, body)"
                " VALUES (?, 'acme', 2, ?, ?, ?)",
                (f"m{i}", 1_000.0 + i, done_at, msgspec.msgpack.encode(message(i))),
            )

    async def main() -> None:
        store = SqliteStore(StoreConfig(path=str(path)), node_id="n1")
        await store.open()
        try:
            assert [s.message.id for s in await store.unfinished()] == ["m1"]
            assert store.add(message(3))
            store.set_final("m1", DeliveryReport("", MessageState.DELIVERED, done_at=9.0))
            await store.flush()
            assert [s.message.id for s in await store.unfinished()] == ["m3"]
        finally:
            await store.close()

    run(asyncio.wait_for(main(), 10.0))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        owners = dict(db.execute("SELECT id, owner FROM messages").fetchall())
    assert owners == {"m1": "n1", "m2": "", "m3": "n1"}
