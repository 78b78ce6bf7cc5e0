"""Sliding one-minute windows (limits/window.py): table-driven arithmetic, the time given."""

from __future__ import annotations

import pytest
from egress_gateway.limits import window

T = 1000.0  # a whole second

# name, buckets {second: (requests, bytes)}, now, size, rpm, bpm -> None or (measure, used, retry)
CASES = [
    ("empty window fits", {}, T, 100, 10, 1000, None),
    ("one under the request limit", {T - 5: (9, 0)}, T, 0, 10, None, None),
    ("at the request limit", {T - 5: (10, 0)}, T, 0, 10, None, ("requests", 10, 55)),
    ("old bucket expired (60 s ago)", {T - 60: (10, 0)}, T, 0, 10, None, None),
    ("bucket 59 s ago still counts", {T - 59: (10, 0)}, T, 0, 10, None, ("requests", 10, 1)),
    ("retry waits for the oldest bucket", {T - 30: (5, 0), T - 10: (5, 0)}, T + 0.5, 0, 10, None,
     ("requests", 10, 30)),
    ("bytes exactly at the limit fit", {T - 1: (1, 900)}, T, 100, None, 1000, None),
    ("one byte over", {T - 1: (1, 901)}, T, 100, None, 1000, ("bytes", 901, 59)),
    ("retry frees enough bytes, not the first bucket", {T - 40: (1, 100), T - 20: (1, 800)}, T,
     300, None, 1000, ("bytes", 900, 40)),
    ("a request bigger than the limit never fits", {}, T, 1001, None, 1000, ("bytes", 0, 60)),
    ("requests checked before bytes", {T: (2, 5000)}, T, 10, 2, 1000, ("requests", 2, 60)),
    ("no limits at all", {T: (99, 99)}, T, 99, None, None, None),
    ("fractional now inside the same second", {T: (1, 0)}, T + 0.99, 0, 1, None, ("requests", 1, 60)),
]


@pytest.mark.parametrize("buckets,now,size,rpm,bpm,want", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check(buckets, now, size, rpm, bpm, want):
    b = {int(s): v for s, v in buckets.items()}
    got = window.check(b, now, size, rpm, bpm)
    if want is None:
        assert got is None
    else:
        assert (got.measure, got.used, got.retry_after) == want
        assert got.limit == (rpm if want[0] == "requests" else bpm)


def test_add_totals_and_prune():
    b: dict = {}
    window.add(b, T, 1, 10)
    window.add(b, T + 0.5, 1, 5)
    window.add(b, T + 30, 1, 1)
    assert b[int(T)] == (2, 15)
    assert window.totals(b, T + 30) == (3, 16)
    assert window.totals(b, T + 60) == (1, 1)  # T's bucket left the window
    window.prune(b, T + 60)
    assert list(b) == [int(T + 30)]
