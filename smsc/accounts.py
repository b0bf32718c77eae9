"""Live state of the ESME accounts: their binds, throttles and what the router may do."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from router.routing import AccountPolicy
from smppcore.aio import Connection
from smppcore.throttle import TokenBucket
from smsc.config import SmscAccount


class Throttle(Protocol):
    """An account's throughput limit: smppcore's TokenBucket on one node, a share of a
    cluster-wide bucket (router.cluster.tokens.LeasedBucket) on several."""

    burst: float

    def take(self, now: float, n: float = 1.0) -> bool: ...

    def delay(self, now: float, n: float = 1.0) -> float: ...

    @property
    def tokens(self) -> float: ...


#: ``shared(account, rate, burst)``: the account's bucket shared by the cluster's nodes.
SharedThrottle = Callable[[str, float, float], Throttle]


class AccountState:
    """One account: its config, its bound sessions, its token bucket."""

    def __init__(
        self, account: SmscAccount, now: float, *, shared: SharedThrottle | None = None
    ) -> None:
        """``shared``: makes the account's throughput bucket one the nodes of a cluster
        share; None: this node's own."""
        self._shared = shared
        self.sessions: set[Connection] = set()
        self.receivers: list[Connection] = []
        self._rr = 0
        self.reconfigure(account, now)

    def reconfigure(self, account: SmscAccount, now: float) -> None:
        """Apply a (reloaded) account config; bound sessions stay bound. The new limits
        apply to the next submit; max_window to the next bind."""
        self.account = account
        self.auth = account.auth()
        self.bucket: Throttle | None = None
        if account.throughput:
            burst = account.burst or max(1.0, account.throughput)
            self.bucket = (
                TokenBucket(account.throughput, burst, now)
                if self._shared is None
                else self._shared(account.system_id, account.throughput, float(burst))
            )
        self.policy = AccountPolicy(
            max_price=account.price_ceiling,
            allowed_carriers=(
                frozenset(account.allowed_carriers)
                if account.allowed_carriers is not None
                else None
            ),
        )

    @property
    def system_id(self) -> str:
        return self.account.system_id

    def add(self, conn: Connection) -> None:
        self.sessions.add(conn)
        if conn.session.can_deliver:
            self.receivers.append(conn)

    def remove(self, conn: Connection) -> None:
        self.sessions.discard(conn)
        if conn in self.receivers:
            self.receivers.remove(conn)

    def receiver(
        self, *, full_ok: bool = False, avoid: Collection[Connection] = ()
    ) -> Connection | None:
        """A bound receive-capable session with a free window slot (``full_ok``: or with
        requests already waiting for one), round robin; one of ``avoid`` only when no
        other has a slot."""
        receivers = self.receivers
        n = len(receivers)
        fallback = None
        for _ in range(n):
            self._rr = (self._rr + 1) % n
            conn = receivers[self._rr]
            session = conn.session
            if (
                session.can_deliver
                and not conn.closed
                and (full_ok or (not session.waiting and session.in_flight < session.config.window))
            ):
                if conn not in avoid:
                    return conn
                if fallback is None:
                    fallback = conn
        return fallback
