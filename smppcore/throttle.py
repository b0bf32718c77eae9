"""Token bucket: a sustained rate with bursts allowed (never min-spacing; SMPP-NOTES).

Pure: the caller passes ``now``. Used for account throughput (ESME_RTHROTTLED) on the MC
side and for carrier rate limits on the ESME side.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second accrue up to ``burst``; each take spends them."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if there are that many; False (nothing spent) if not."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def delay(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 when they are now)."""
        self._refill(now)
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    @property
    def tokens(self) -> float:
        return self._tokens
