"""Bind-rate limiting per source address: slows a password guesser down.

:class:`BindGuard` counts failed binds (wrong password, unknown system_id) per peer IP over
a sliding window; after ``failed_binds`` of them within ``failed_bind_window`` seconds, every
bind from that IP is refused (ESME_RBINDFAIL, without looking at the password) for
``bind_cooldown`` seconds. A successful bind does not clear the count (or a guesser with an
account of its own could reset it between guesses); failures simply age out.

Memory is bounded: at most ``max_tracked_peers`` addresses are remembered, the least
recently seen forgotten first. Time is a parameter (``now``, monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from smsc.config import SecurityConfig


class _Peer:
    __slots__ = ("blocked_until", "failures")

    def __init__(self, size: int) -> None:
        self.failures: deque[float] = deque(maxlen=size)
        self.blocked_until = 0.0


class BindGuard:
    """Failed binds per peer address, and the cool-downs they trigger."""

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

    def failed(self, host: str | None, now: float) -> bool:
        """Count a failed bind from ``host``; True when it starts a cool-down."""
        cfg = self.config
        limit = cfg.failed_binds
        if host is None or limit is None:
            return False
        peers = self._peers
        peer = peers.get(host)
        if peer is None:
            peer = peers[host] = _Peer(limit)
            while len(peers) > cfg.max_tracked_peers:
                peers.popitem(last=False)
        else:
            peers.move_to_end(host)
        failures = peer.failures
        failures.append(now)
        while failures and failures[0] <= now - cfg.failed_bind_window:
            failures.popleft()
        if len(failures) >= limit:
            failures.clear()
            peer.blocked_until = now + cfg.bind_cooldown
            self.blocks += 1
            return True
        return False
