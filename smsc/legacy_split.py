"""One SMSC-level answer per long message, as Kannel and Jasmin give it.

Neither calls its application back once per part of a long message for the carrier's
answer to the submit:

- Kannel (``handle_split`` in gw/bb_smscconn.c) counts the parts down and, once every
  part is done, sends one smsc-level report for the whole message: type 8 (``ACK/``)
  when every part was accepted, else type 16 (``NACK/...``) — one refused part fails it.
  A part refused only for now is sent again and not counted.
- Jasmin (``LongSubmitSmTransaction`` in jasmin/protocols/smpp/protocol.py) closes the
  long message's transaction when the last part's submit_sm_resp is in, and its one
  level-1 receipt carries *that* response's command_status (so a message whose refused
  part answered first reports the last part's ESME_ROK: Jasmin's own behaviour, kept).

:class:`SplitAnswers` holds those counts, by the message's id: every part's answer (the
latest for a part sent twice), until each of its ``total`` parts has one. Bounded: at
most ``limit`` messages wait (a message beyond it decides the oldest waiting one at once,
by what it has), and a message none of whose parts was answered for ``IDLE`` seconds is
decided by what it has at the next :meth:`SplitAnswers.sweep` (the webhook sink sweeps at
each answer and each report while messages wait) — its other parts may never be answered
(a node that died holding them). A decided message's id
is remembered (bounded too) so that a part answered late does not start it again.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from router.model import Message, Refusal

#: Seconds without an answer to any of its parts after which a long message is decided
#: by the answers it has (parts of one message are sent within seconds of each other;
#: retries and throttling stay well within this).
IDLE = 900.0
#: Long messages waiting for answers to their parts, at most.
LIMIT = 100_000
#: Decided long messages remembered (a late answer to one of their parts is ignored).
DECIDED = 100_000


class Answer(msgspec.Struct, frozen=True, gc=False):
    """A carrier's answer to one part: accepted (``carrier_message_id``) or ``refusal``."""

    carrier: str
    carrier_message_id: str = ""
    refusal: Refusal | None = None


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """The whole message's answer: ``accepted`` when every part was (``last`` is the
    last part's answer, ``refused`` the last refusal among them, if any)."""

    message: Message
    accepted: bool
    last: Answer
    refused: Answer | None


class _Waiting:
    __slots__ = ("answers", "message", "total", "touched")

    def __init__(self, message: Message, total: int, now: float) -> None:
        self.message = message
        self.total = total
        self.touched = now
        self.answers: dict[int, Answer] = {}


class SplitAnswers:
    """``answer(part, answer, now)``: the whole message's :class:`Verdict` once its parts
    are all answered, else None; the verdicts of messages decided early (idle, or pushed
    out by the bound) come back from the same calls, so a caller never loses one."""

    def __init__(self, *, idle: float = IDLE, limit: int = LIMIT, decided: int = DECIDED):
        self.idle = idle
        self.limit = limit
        self.decided_limit = decided
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._decided: OrderedDict[str, None] = OrderedDict()
        #: Messages decided before all their parts were answered (idle, or the bound).
        self.early = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def answer(self, part: Message, answer: Answer, now: float) -> list[Verdict]:
        """Record ``answer`` to ``part`` (a part of a long message); the verdicts it
        completes or that fell due meanwhile (usually none, or one)."""
        assert part.concat is not None
        key = part.reported_id
        out = self.sweep(now)
        if key in self._decided:
            return out
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting(part, part.concat.total, now)
            if len(self._waiting) > self.limit:
                out.append(self._decide(next(iter(self._waiting)), early=True))
        else:
            self._waiting.move_to_end(key)
            waiting.touched = now
        waiting.answers[part.concat.seq] = answer
        if len(waiting.answers) >= waiting.total:
            out.append(self._decide(key, early=False, last=answer))
        return out

    def sweep(self, now: float) -> list[Verdict]:
        """The verdicts of messages idle for ``idle`` seconds (by what they have)."""
        waiting = self._waiting
        out: list[Verdict] = []
        while waiting:
            key, oldest = next(iter(waiting.items()))
            if now - oldest.touched < self.idle:
                break
            out.append(self._decide(key, early=True))
        return out

    def _decide(self, key: str, *, early: bool, last: Answer | None = None) -> Verdict:
        waiting = self._waiting.pop(key)
        if early:
            self.early += 1
        decided = self._decided
        decided[key] = None
        if len(decided) > self.decided_limit:
            decided.popitem(last=False)
        answers = list(waiting.answers.values())
        if last is None:
            last = answers[-1]
        refused = [a for a in answers if a.refusal is not None]
        complete = len(answers) >= waiting.total
        return Verdict(
            message=waiting.message,
            accepted=complete and not refused,
            last=last,
            refused=refused[-1] if refused else None,
        )
