"""Bind-rate limiting per source address: slows a password guesser down.

:class:`BindGuard` counts failed binds (wrong password, unknown system_id) per peer IP over
a sliding window; after ``failed_binds`` of them within ``failed_bind_window`` seconds, every
bind from that IP is refused (ESME_RBINDFAIL, without looking at the password) for
``bind_cooldown`` seconds. A successful bind does not clear the count (or a guesser with an
account of its own could reset it between guesses); failures simply age out.

A bind is counted when it starts (:meth:`BindGuard.begin`), not when its password check
(scrypt, tens of milliseconds, in a thread) ends: attempts still being checked are
*pending*, and while failures + pending reach ``failed_binds`` a new attempt from that
address waits (:attr:`Admission.WAIT`) for one of them to end. So pipelined guesses on one
connection, or concurrent ones over many connections from one address, get at most
``failed_binds`` passwords checked before the cool-down starts; an address binding many
sessions at once with the right password only waits its turn. Each attempt that began ends
once: :meth:`BindGuard.failed` (counted) or :meth:`BindGuard.release` (not counted).

Memory is bounded: at most ``max_tracked_peers`` addresses are remembered, the least
recently seen forgotten first. Time is a parameter (``now``, monotonic seconds).
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque

from smsc.config import SecurityConfig


class Admission(enum.Enum):
    """What :meth:`BindGuard.begin` says of a bind attempt."""

    GO = "go"
    """Check it (it is pending until it ends)."""
    WAIT = "wait"
    """Failures and attempts in progress are at the limit: ask again when one ends."""
    COOLDOWN = "cooldown"
    """The address is in a cool-down: refuse it unseen."""


class _Peer:
    __slots__ = ("blocked_until", "failures", "pending")

    def __init__(self, size: int) -> None:
        self.failures: deque[float] = deque(maxlen=size)
        self.blocked_until = 0.0
        self.pending = 0


class BindGuard:
    """Failed and pending binds per peer address, and the cool-downs they trigger."""

    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        #: Cool-downs started so far.
        self.blocks = 0

    def __len__(self) -> int:
        return len(self._peers)

    def blocked(self, host: str | None, now: float) -> bool:
        """Is ``host`` in a cool-down (its binds to be refused unseen)?"""
        if host is None or self.config.failed_binds is None:
            return False
        peer = self._peers.get(host)
        return peer is not None and now < peer.blocked_until

    def pending(self, host: str) -> int:
        """Attempts from ``host`` that began and have not ended."""
        peer = self._peers.get(host)
        return 0 if peer is None else peer.pending

    def begin(self, host: str | None, now: float) -> Admission:
        """May a bind from ``host`` be checked now? GO counts it as pending."""
        limit = self.config.failed_binds
        if host is None or limit is None:
            return Admission.GO
        peer = self._peer(host, limit)
        if now < peer.blocked_until:
            return Admission.COOLDOWN
        self._expire(peer, now)
        if len(peer.failures) + peer.pending >= limit:
            return Admission.WAIT
        peer.pending += 1
        return Admission.GO

    def release(self, host: str | None) -> None:
        """An attempt that began ended without a failure (bound, or refused for a reason
        that is not a guess)."""
        peer = None if host is None else self._peers.get(host)
        if peer is not None and peer.pending:
            peer.pending -= 1

    def failed(self, host: str | None, now: float) -> bool:
        """Count a failed bind from ``host`` (ending its attempt when one began); True
        when it starts a cool-down."""
        cfg = self.config
        limit = cfg.failed_binds
        if host is None or limit is None:
            return False
        peer = self._peer(host, limit)
        if peer.pending:
            peer.pending -= 1
        failures = peer.failures
        failures.append(now)
        self._expire(peer, now)
        if len(failures) >= limit:
            failures.clear()
            peer.blocked_until = now + cfg.bind_cooldown
            self.blocks += 1
            return True
        return False

    def _peer(self, host: str, limit: int) -> _Peer:
        peers = self._peers
        peer = peers.get(host)
        if peer is None:
            peer = peers[host] = _Peer(limit)
            while len(peers) > self.config.max_tracked_peers:
                peers.popitem(last=False)
        else:
            peers.move_to_end(host)
        return peer

    def _expire(self, peer: _Peer, now: float) -> None:
        failures = peer.failures
        while failures and failures[0] <= now - self.config.failed_bind_window:
            failures.popleft()
