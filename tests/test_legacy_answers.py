"""The SMSC-level answers of Kannel (dlr-mask 8, 16) and Jasmin (dlr-level 1) as the
webhook sink makes them: one per long message once every part is answered (Kannel's
handle_split, Jasmin's LongSubmitSmTransaction); no final receipt after a refusal, decided
from the report alone (a message no carrier accepted has no carrier id); and none lost
without a count. The sink with a real SQLite outbox; :class:`SplitAnswers` on its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from loops import Run
from smsc_fixtures import DEADLINE

from router.model import (
    Address,
    Concat,
    DeliveryReport,
    Message,
    Refusal,
    StoredMessage,
)
from router.ports import SettledCallback
from smppcore.constants import MessageState
from smsc.callbacks import Callbacks, Target
from smsc.legacy_dlr import kannel_refused_url
from smsc.legacy_split import IDLE, Answer, SplitAnswers
from smsc.outbox import SqliteOutbox
from smsc.webhooks import WebhookSink

NOW = 1_800_000_000.0
KANNEL_URL = "http://app.example/dlr?type=%d&answer=%A&fid=%F"
REFUSED = Refusal(MessageState.REJECTED, "uk", 0x0B, "rejected")


def kannel(mask: int) -> Target:
    return Target(KANNEL_URL, None, "kannel", mask, "GET", "acme")


def jasmin(level: int) -> Target:
    return Target("http://app.example/jasmin", None, "jasmin", level, "GET", "acme")


def part(message_id: str, seq: int = 1, total: int = 1) -> Message:
    """Part ``seq`` of ``total`` of the message the client knows as ``message_id``."""
    concat = Concat(f"acme:{message_id}", total, seq) if total > 1 else None
    return Message(
        id=message_id if seq == 1 else f"{message_id}-{seq}",
        client_id=message_id if seq > 1 else "",
        account="acme",
        source=Address(5, 0, "Shop"),
        destination=Address(1, 1, "447700900001"),
        short_message=b"hi",
        concat=concat,
        submitted_at=NOW,
    )


class NoSmpp:
    """The SMPP delivery behind the sink: messages with a Kannel or Jasmin target never
    reach it."""

    def report(
        self, stored: StoredMessage, report: DeliveryReport, settled: SettledCallback | None = None
    ) -> None:
        raise AssertionError("a legacy target's report went to SMPP")

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        raise AssertionError("no MO here")


@asynccontextmanager
async def sink_with(tmp_path: Path, **targets: Target) -> AsyncIterator[WebhookSink]:
    outbox = SqliteOutbox(str(tmp_path / "outbox.db"))
    await outbox.open()
    callbacks = Callbacks()
    for message_id, target in targets.items():
        callbacks.add(message_id, target)
    try:
        yield WebhookSink(NoSmpp(), {}, outbox, callbacks, wall=lambda: NOW)
    finally:
        await outbox.close()


async def calls(sink: WebhookSink) -> list[dict[str, str]]:
    """The callbacks the sink put in the outbox (its file, once what is queued is
    committed): the query of each URL, in order."""
    assert isinstance(sink.outbox, SqliteOutbox)
    rows = await sink.outbox.file.read("SELECT url FROM events ORDER BY id")
    queries = [parse_qs(urlsplit(url).query, keep_blank_values=True) for (url,) in rows]
    return [{k: v[0] for k, v in query.items()} for query in queries]


def final(
    message_id: str, state: MessageState, carrier_id: str = ""
) -> tuple[StoredMessage, DeliveryReport]:
    msg = part(message_id)
    report = DeliveryReport(msg.id, state, 0, NOW, "uk", carrier_id)
    stored = StoredMessage(message=msg, state=state, carrier="uk", carrier_message_id=carrier_id)
    return stored, report


# --- a final report after a refusal ----------------------------------------------------------


def test_no_final_receipt_for_a_message_no_carrier_accepted_whoever_heard_its_refusal(
    run1: Run, tmp_path: Path
) -> None:
    """The final reports of refused messages (no carrier id) are not called back, though
    this sink never heard their refusal (another node's, or too many ago to remember):
    Kannel mask 2 (its type 16 covered it), Jasmin level 3 (level 1 did) and level 2 alone
    (Jasmin sends nothing without a carrier's receipt). A message a carrier accepted still
    gets its type 2; a cancelled one (DELETED, never announced as refused) too."""

    async def main() -> None:
        targets = {
            "k2": kannel(2),
            "j3": jasmin(3),
            "j2": jasmin(2),
            "reached": kannel(2),
            "cancelled": kannel(2),
        }
        async with sink_with(tmp_path, **targets) as sink:
            for message_id in ("k2", "j3", "j2"):
                sink.report(*final(message_id, MessageState.REJECTED))
            sink.report(*final("reached", MessageState.UNDELIVERABLE, "C9"))
            sink.report(*final("cancelled", MessageState.DELETED))
            got = await calls(sink)
            assert [(c["type"], c["fid"]) for c in got] == [("2", "C9"), ("2", "")]

    run1(main())


def test_kannel_says_retries_exceeded_in_its_own_words() -> None:
    msg = part("m1")
    exhausted = Refusal(MessageState.UNDELIVERABLE, "uk", 0, "retries exhausted")
    url = kannel_refused_url(kannel(16), msg, exhausted, NOW)
    assert url is not None
    assert parse_qs(urlsplit(url).query)["answer"] == ["NACK/Retries Exceeded"]
    unrouted = Refusal(MessageState.UNDELIVERABLE, "", 0, "no route")
    url = kannel_refused_url(kannel(16), msg, unrouted, NOW)
    assert url is not None
    assert parse_qs(urlsplit(url).query)["answer"] == ["NACK/no route"]


# --- long messages -----------------------------------------------------------------------------


def test_kannel_hears_once_per_long_message_when_every_part_is_answered(
    run1: Run, tmp_path: Path
) -> None:
    """Three parts accepted: one type 8, after the third. Three parts, the second refused:
    one type 16 with its refusal, after the last answer."""

    async def main() -> None:
        async with sink_with(tmp_path, good=kannel(8 | 16), bad=kannel(8 | 16)) as sink:
            sink.submit_accepted(part("good", 1, 3), "uk", "C1")
            sink.submit_accepted(part("good", 2, 3), "uk", "C2")
            sink.submit_accepted(part("bad", 1, 3), "uk", "C4")
            sink.submit_refused(part("bad", 2, 3), REFUSED)
            assert await calls(sink) == []  # nothing before every part is answered
            sink.submit_accepted(part("good", 3, 3), "uk", "C3")
            sink.submit_accepted(part("bad", 3, 3), "uk", "C6")
            got = await calls(sink)
            assert [(c["type"], c["answer"]) for c in got] == [
                ("8", "ACK/"),
                ("16", "NACK/0x0000000b/Invalid Destination Address"),
            ]
            assert len(sink.splits) == 0

    run1(main())


def test_jasmin_level_1_of_a_long_message_is_the_last_parts_answer(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with sink_with(tmp_path, m=jasmin(1), n=jasmin(3)) as sink:
            sink.submit_refused(part("m", 1, 2), REFUSED)
            sink.submit_accepted(part("m", 2, 2), "uk", "C2")
            sink.submit_accepted(part("n", 2, 2), "uk", "C3")
            sink.submit_refused(part("n", 1, 2), REFUSED)
            got = await calls(sink)
            assert [(c["id"], c["level"], c["message_status"]) for c in got] == [
                ("m", "1", "ESME_ROK"),  # as Jasmin: the response that closed it
                ("n", "1", "ESME_RINVDSTADR"),
            ]

    run1(main())


def test_a_long_message_whose_parts_stop_being_answered_is_decided_after_idle_minutes(
    run1: Run, tmp_path: Path
) -> None:
    """Part 1 of 2 accepted, part 2 never answered (its node died with it): at the first
    report after IDLE seconds the message is decided by what it has — Kannel's type 16,
    since not every part was accepted."""

    async def main() -> None:
        clock = [NOW]
        async with sink_with(tmp_path, long=kannel(8 | 16), other=kannel(1)) as sink:
            sink.wall = lambda: clock[0]
            sink.submit_accepted(part("long", 1, 2), "uk", "C1")
            clock[0] = NOW + IDLE - 1
            sink.report(*final("other", MessageState.DELIVERED, "C7"))
            assert [c["type"] for c in await calls(sink)] == ["1"]
            clock[0] = NOW + IDLE
            sink.report(*final("other", MessageState.DELIVERED, "C7"))
            got = await calls(sink)
            assert [(c["type"], c["answer"]) for c in got][1:] == [
                ("16", "NACK/parts unanswered"),
                ("1", got[2]["answer"]),
            ]

    run1(main())


def test_split_answers_decide_a_message_whose_parts_stop_coming_by_what_it_has() -> None:
    answers = SplitAnswers(idle=60.0)
    assert answers.answer(part("m", 1, 3), Answer("uk", "C1"), NOW) == []
    assert answers.sweep(NOW + 59) == []
    (verdict,) = answers.sweep(NOW + 60)
    assert (verdict.accepted, verdict.refused, answers.early) == (False, None, 1)
    # a late part of a message decided already starts nothing again
    assert answers.answer(part("m", 2, 3), Answer("uk", "C2"), NOW + 61) == []
    assert len(answers) == 0


def test_split_answers_are_bounded_the_oldest_decided_first() -> None:
    answers = SplitAnswers(limit=2)
    assert answers.answer(part("a", 1, 2), Answer("uk", "C1"), NOW) == []
    assert answers.answer(part("b", 1, 2), Answer("uk", "C2"), NOW) == []
    (pushed,) = answers.answer(part("c", 1, 2), Answer("uk", "C3"), NOW)
    assert pushed.message.reported_id == "a"
    assert len(answers) == 2
    # a part sent twice counts once, with its latest answer
    assert answers.answer(part("b", 1, 2), Answer("uk", "", REFUSED), NOW) == []
    (verdict,) = answers.answer(part("b", 2, 2), Answer("uk", "C5"), NOW)
    assert not verdict.accepted
    assert verdict.refused == Answer("uk", "", REFUSED)


# --- nothing lost without a count --------------------------------------------------------------


class Unkept(SqliteOutbox):
    """An outbox whose file cannot keep what it is given (its write fails)."""

    handed: list[asyncio.Future[bool]]

    def put(
        self, account: str, url: str, body: bytes, now: float, kind: str = "json"
    ) -> asyncio.Future[bool] | None:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(False)  # (its callbacks run at the loop's next turn)
        self.handed.append(done)
        return done


def test_an_smsc_level_callback_the_outbox_cannot_keep_is_counted_and_logged(
    run1: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        outbox = Unkept(str(tmp_path / "outbox.db"))
        outbox.handed = []
        callbacks = Callbacks()
        callbacks.add("m1", kannel(8))
        callbacks.add("m2", jasmin(1))
        woken = asyncio.Event()  # (the sink wakes its sender once each put is settled)
        sink = WebhookSink(NoSmpp(), {}, outbox, callbacks, wake=woken.set, wall=lambda: NOW)
        with caplog.at_level(logging.WARNING, logger="smsc.webhooks"):
            sink.submit_accepted(part("m1"), "uk", "C1")
            sink.submit_refused(part("m2"), REFUSED)
            assert len(outbox.handed) == 2
            async with asyncio.timeout(DEADLINE):
                while sink.dropped < 2:
                    woken.clear()
                    await woken.wait()
        assert sink.dropped == 2
        (line,) = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert "could not keep" in line.getMessage()

    run1(main())
