"""A bounded log-linear latency histogram (the HDR idea), mergeable across workers.

Values are whole microseconds. Below 2**P they are counted exactly; above, each power of
two is cut into 2**(P-1) equal sub-buckets, so every recorded value is known to within
1 / 2**(P-1) of itself (P = 7: 1.6 %, reported as the bucket's midpoint, so ±0.8 %).
Values above :data:`MAX_US` (about 12.7 days) are clamped to it. Memory is one list of
:data:`BUCKETS` ints whatever is recorded; merging adds the lists; snapshots travel as
sparse ``{index: count}`` maps.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

P: Final = 7
SUB: Final = 1 << P  # exact below this
HALF: Final = SUB >> 1  # sub-buckets per power of two above it
MAX_US: Final = (1 << 40) - 1
BUCKETS: Final = ((MAX_US.bit_length() - P) + 1) * HALF + HALF


def bucket_of(us: int) -> int:
    """The bucket index of ``us`` microseconds (clamped to 0..MAX_US)."""
    if us < SUB:
        return us if us > 0 else 0
    if us > MAX_US:
        us = MAX_US
    shift = us.bit_length() - P
    return shift * HALF + (us >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value (µs) counted in bucket ``index``."""
    if index < SUB:
        return index, index
    shift = index // HALF - 1
    mantissa = index - shift * HALF
    return mantissa << shift, ((mantissa + 1) << shift) - 1


def bucket_value(index: int) -> float:
    """The value reported for bucket ``index``: its midpoint (µs)."""
    low, high = bucket_bounds(index)
    return (low + high) / 2


class SparseHistogram(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A histogram as it travels and is stored: only the buckets that hold something."""

    buckets: dict[int, int] = msgspec.field(default_factory=dict)
    count: int = 0
    total: int = 0
    min: int = 0
    max: int = 0


class Histogram:
    """Counts of microsecond values in :data:`BUCKETS` log-linear buckets."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0  # sum of recorded values (µs), for the mean
        self.min = 0
        self.max = 0

    def record(self, seconds: float) -> None:
        """Record a duration given in seconds (negative ones count as 0)."""
        us = int(seconds * 1e6 + 0.5)
        if us < SUB:
            if us < 0:
                us = 0
            index = us
        else:
            if us > MAX_US:
                us = MAX_US
            shift = us.bit_length() - P
            index = shift * HALF + (us >> shift)
        self.counts[index] += 1
        if self.count == 0 or us < self.min:
            self.min = us
        if us > self.max:
            self.max = us
        self.count += 1
        self.total += us

    def merge(self, other: Histogram) -> None:
        if not other.count:
            return
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.min = other.min if not self.count else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def merge_sparse(self, sparse: SparseHistogram) -> None:
        self.merge(Histogram.from_sparse(sparse))

    def percentile(self, q: float) -> float:
        """The value (µs) at or below which ``q`` percent of the recorded values lie.

        Exact below 128 µs; otherwise the bucket midpoint, never beyond min and max."""
        if not self.count:
            return 0.0
        if q <= 0:
            return float(self.min)
        if q >= 100:
            return float(self.max)
        rank = max(1, math.ceil(q * self.count / 100 - 1e-9))  # nearest-rank definition
        seen = 0
        for index, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    return float(min(max(bucket_value(index), self.min), self.max))
        return float(self.max)

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_sparse(self) -> SparseHistogram:
        return SparseHistogram(
            buckets={i: n for i, n in enumerate(self.counts) if n},
            count=self.count,
            total=self.total,
            min=self.min,
            max=self.max,
        )

    @classmethod
    def from_sparse(cls, sparse: SparseHistogram) -> Histogram:
        hist = cls()
        for index, n in sparse.buckets.items():
            if 0 <= index < BUCKETS:
                hist.counts[index] += n
        hist.count = sparse.count
        hist.total = sparse.total
        hist.min = sparse.min
        hist.max = sparse.max
        return hist

    def reset(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = self.total = self.min = self.max = 0
