"""Token buckets: a caller gets its burst at once, then its rate; callers are independent."""

from __future__ import annotations

import pytest
from matrec.coordinator.rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_caller() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3.0, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one call per 0.5 s after the burst
    assert buckets.take("b") == 0.0  # another caller is not slowed
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0.0
    clock.now += 60.0  # idle time refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)].count(0.0) == 3
