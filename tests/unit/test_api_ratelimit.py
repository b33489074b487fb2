"""The API's in-process token buckets (enrollment's rate limits)."""

from __future__ import annotations

import pytest

from iotistic_vpn.api.ratelimit import RateLimiter


def test_a_burst_then_the_steady_rate_per_key():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)  # one more in half a second
    assert limiter.take("b", now=0.0) == 0.0  # another key has its own bucket
    assert limiter.take("a", now=0.5) == 0.0
    assert limiter.take("a", now=10.0) == 0.0  # refilled, never beyond the burst
    assert [limiter.take("a", now=10.0) for _ in range(3)][-1] > 0


def test_keys_beyond_the_bound_are_forgotten_least_recent_first():
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        limiter.take(key, now=0.0)
    assert limiter.take("a", now=0.0) == 0.0  # forgotten: a full bucket again
    assert limiter.take("c", now=0.0) > 0


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (19.5, "20")])
def test_retry_after_is_whole_seconds_rounded_up(wait, header):
    assert RateLimiter.retry_after(wait) == header
