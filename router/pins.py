"""Long messages' carrier pins: every part of a concatenated message over one carrier,
and for no longer than it takes.

Why pin. A handset reassembles the parts of a long message by their reference (UDH or
SAR). Over one carrier that works; over two it often does not: a carrier may rewrite the
originator, or turn SAR TLVs into a UDH with a reference of its own, and then the parts
never meet. So the first part to leave pins the message (by its group: account, source,
destination and reference) to its carrier, and the other parts follow.

When a pin goes. As soon as every part is *settled* — accepted by the carrier, or final
here (refused, expired, failed) — nothing of the message is routed again: the pin is
dropped at once. A message whose parts stop coming (a client that sent 2 of 3) loses its
pin after ``pin_idle`` seconds without any part routed or answered. The table holds
``max_pins`` groups at most (the least recently used goes). So a client's 257th long
message to a number (8-bit references wrap) finds no old pin to inherit.

When the pinned carrier cannot take a part (paused, no bind, breaker open), the part waits
``pin_wait`` seconds for it (parked, costing nothing), not until its validity ends. Then:

- nothing of the message is at the carrier yet (no part accepted or in flight there): the
  pin is simply moved — the message goes whole over the next carrier, nothing is split;
- else the carrier has failed the message: ``long_message_failure`` decides, as for a part
  that carrier refuses for good or whose retries run out. ``fail_all``: every part fails,
  a failure receipt each (the parts it accepted too: the handset cannot show half a
  message). ``resend_all``: every part goes again over the next carrier (the carrier left
  behind is never pinned again for this message), or ``fail_all`` when none is left.

This module is pure bookkeeping with time as a parameter (wall seconds); the dispatcher
(router/dispatch.py) acts on what it says.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum
from typing import Final

from router.config import RoutingConfig
from router.model import Message

#: A parked lot of pinned parts is keyed by their carrier and this mark, so that the
#: lot can be woken alone when its wait is over (carrier names never contain "/").
PIN_MARK: Final = "/pinned"


def pin_key(carrier: str) -> frozenset[str]:
    """The park key of parts waiting for their pinned ``carrier``: woken when it comes
    back (it names the carrier) or when their wait is over (:func:`pin_key` alone)."""
    return frozenset((carrier, carrier + PIN_MARK))


class Part(Enum):
    QUEUED = "queued"
    """With us: ready, parked or waiting to be sent again."""
    SENT = "sent"
    """In flight to the pinned carrier."""
    ACCEPTED = "accepted"
    """Accepted by the pinned carrier (its receipt awaited)."""
    FINAL = "final"
    """Finished here (refused, expired, failed)."""


class Group:
    """One long message being routed: its carrier, its parts, its clocks."""

    __slots__ = ("blocked_since", "carrier", "failed", "left", "parts", "total", "touched")

    def __init__(self, total: int, now: float) -> None:
        self.carrier: str | None = None
        self.total = total
        #: part seq → (the carrier's id of an accepted part, else "", where it is, the
        #: message as last seen)
        self.parts: dict[int, tuple[str, Part, Message]] = {}
        self.touched = now
        #: since when its carrier could not take a waiting part (None: it could)
        self.blocked_since: float | None = None
        #: carriers the message left (resend_all): never pinned again
        self.left: tuple[str, ...] = ()
        #: ``fail_all`` decided: parts still to come fail at once
        self.failed = False

    def at_carrier(self) -> list[Message]:
        """Parts accepted by the pinned carrier."""
        return [m for _, state, m in self.parts.values() if state is Part.ACCEPTED]

    def holds(self) -> bool:
        """Has the pinned carrier any part (accepted, or in flight)?"""
        return any(state in (Part.ACCEPTED, Part.SENT) for _, state, _ in self.parts.values())

    def settled(self) -> bool:
        return len(self.parts) >= self.total and all(
            state in (Part.ACCEPTED, Part.FINAL) for _, state, _ in self.parts.values()
        )


def g_name(msg: Message) -> str:
    assert msg.concat is not None
    return msg.concat.group


class Pins:
    """The groups of long messages being routed, bounded (``max_pins``), each dropped once
    settled or idle. ``settings`` may be replaced (a reload)."""

    def __init__(self, settings: RoutingConfig) -> None:
        self.settings = settings
        self._groups: OrderedDict[str, Group] = OrderedDict()
        #: the groups whose carrier cannot take a waiting part → that carrier
        self._blocked: dict[str, str] = {}
        #: carriers whose waiting parts lost their group (evicted): to be woken
        self._orphaned: set[str] = set()

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, group: str) -> Group | None:
        return self._groups.get(group)

    def carrier(self, group: str) -> str | None:
        """The carrier ``group``'s parts are pinned to, or None."""
        g = self._groups.get(group)
        return None if g is None else g.carrier

    def group(self, msg: Message, now: float) -> Group:
        """``msg``'s group (a long message's part), created if new, marked used at ``now``."""
        assert msg.concat is not None
        name = msg.concat.group
        groups = self._groups
        g = groups.get(name)
        if g is None:
            g = groups[name] = Group(msg.concat.total, now)
            while len(groups) > self.settings.max_pins:
                lost = self._blocked.pop(groups.popitem(last=False)[0], None)
                if lost is not None:
                    self._orphaned.add(lost)
        else:
            groups.move_to_end(name)
            g.touched = now
        return g

    def _set(self, msg: Message, state: Part, now: float, carrier_id: str = "") -> Group | None:
        concat = msg.concat
        if concat is None:
            return None
        g = self.group(msg, now)
        g.parts[concat.seq] = (carrier_id, state, msg)
        if g.settled():
            self._drop(concat.group)
        return g

    def _drop(self, name: str) -> None:
        del self._groups[name]
        self._blocked.pop(name, None)

    def _unblock(self, name: str, g: Group) -> None:
        g.blocked_since = None
        self._blocked.pop(name, None)

    def pin(self, msg: Message, carrier: str, now: float) -> None:
        """``msg``'s group goes over ``carrier`` (its first part leaves now)."""
        g = self.group(msg, now)
        g.carrier = carrier
        self._unblock(g_name(msg), g)

    def sending(self, msg: Message, now: float) -> None:
        """A part leaves for the pinned carrier."""
        g = self._set(msg, Part.SENT, now)
        if g is not None:
            self._unblock(g_name(msg), g)

    def queued(self, msg: Message, now: float) -> None:
        """A part is with us again (to be sent again, or waiting)."""
        self._set(msg, Part.QUEUED, now)

    def accepted(self, msg: Message, now: float, carrier_id: str = "") -> None:
        """The pinned carrier accepted a part (as ``carrier_id``)."""
        self._set(msg, Part.ACCEPTED, now, carrier_id)

    def final(self, msg: Message, now: float) -> None:
        """A part is final here (refused, expired, failed)."""
        self._set(msg, Part.FINAL, now)

    def blocked(self, msg: Message, now: float) -> bool:
        """A part cannot go because its pinned carrier is unavailable: True while it may
        wait for it still (``pin_wait`` from the first such part), False once that is over."""
        g = self.group(msg, now)
        if g.blocked_since is None and g.carrier is not None:
            g.blocked_since = now
            self._blocked[g_name(msg)] = g.carrier
        if g.blocked_since is None:
            return False
        return now - g.blocked_since < self.settings.pin_wait

    def unpin(self, group: str, leave: bool) -> Group | None:
        """Drop ``group``'s pin (its parts are routed afresh); ``leave``: its carrier is never
        pinned again for it."""
        g = self._groups.get(group)
        if g is None:
            return None
        if leave and g.carrier is not None and g.carrier not in g.left:
            g.left = (*g.left, g.carrier)
        g.carrier = None
        self._unblock(group, g)
        return g

    def forget_carrier(self, carrier: str) -> None:
        """``carrier`` is gone (a reload): its groups are pinned to nothing."""
        for name, g in self._groups.items():
            if g.carrier == carrier:
                g.carrier = None
                self._unblock(name, g)

    def overdue(self, now: float) -> list[tuple[str, str]]:
        """The groups whose parts have waited ``pin_wait`` or more for their carrier, with
        that carrier: each must be moved off it (and its parts woken)."""
        wait = self.settings.pin_wait
        groups = self._groups
        return [
            (name, carrier)
            for name, carrier in self._blocked.items()
            if (since := groups[name].blocked_since) is not None and now - since >= wait
        ]

    def take_orphaned(self) -> set[str]:
        """Carriers whose waiting parts lost their group to the bound (``max_pins``): wake
        them, to be routed afresh."""
        out, self._orphaned = self._orphaned, set()
        return out

    def next_deadline(self) -> float | None:
        """When the next blocked group's wait ends (wall seconds), or None."""
        wait = self.settings.pin_wait
        groups = self._groups
        times = [
            since + wait
            for name in self._blocked
            if (since := groups[name].blocked_since) is not None
        ]
        return min(times) if times else None

    def expire(self, now: float) -> int:
        """Drop the groups idle for ``pin_idle`` seconds; how many."""
        idle = self.settings.pin_idle
        groups = self._groups
        n = 0
        while groups:
            name, g = next(iter(groups.items()))
            if now - g.touched < idle:
                break
            if g.blocked_since is not None and g.carrier is not None:
                break  # its parts wait for their carrier: pin_wait decides, not idleness
            self._drop(name)
            n += 1
        return n
