"""Sliding one-minute windows of per-second buckets: pure arithmetic, the caller gives the time.

A window holds ``{second: (requests, bytes)}``; what counts is every bucket of the last
`WINDOW` seconds (the current second included). A request is refused when it would take the
window over a limit; `retry_after` says when enough old buckets will have expired for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW = 60  # seconds


@dataclass(frozen=True)
class Verdict:
    """Why a request is over a limit: which measure, what is used, the limit, when to retry."""

    measure: str  # "requests" or "bytes"
    used: int
    limit: int
    retry_after: int  # seconds


def second_of(now: float) -> int:
    return math.floor(now)


def live(buckets: dict[int, tuple[int, int]], now: float) -> list[tuple[int, int, int]]:
    """The buckets inside the window at `now`, oldest first: (second, requests, bytes)."""
    start = second_of(now) - WINDOW + 1
    return sorted((s, r, b) for s, (r, b) in buckets.items() if s >= start)


def totals(buckets: dict[int, tuple[int, int]], now: float) -> tuple[int, int]:
    rows = live(buckets, now)
    return sum(r for _, r, _ in rows), sum(b for _, _, b in rows)


def _retry_after(rows: list[tuple[int, int, int]], index: int, need: int, now: float) -> int:
    """Seconds until the window's `index` measure (1 requests, 2 bytes) has `need` units fewer."""
    freed = 0
    for row in rows:
        freed += row[index]
        if freed >= need:
            # that bucket leaves the window when `now` reaches its second + WINDOW
            return max(1, math.ceil(row[0] + WINDOW - now))
    return WINDOW


def check(buckets: dict[int, tuple[int, int]], now: float, size: int,
          requests_limit: int | None, bytes_limit: int | None) -> Verdict | None:
    """None when one more request of `size` bytes fits; else why not."""
    rows = live(buckets, now)
    reqs, sent = sum(r for _, r, _ in rows), sum(b for _, _, b in rows)
    if requests_limit is not None and reqs + 1 > requests_limit:
        return Verdict("requests", reqs, requests_limit,
                       _retry_after(rows, 1, reqs + 1 - requests_limit, now))
    if bytes_limit is not None and sent + size > bytes_limit:
        if size > bytes_limit:  # never fits in one minute
            return Verdict("bytes", sent, bytes_limit, WINDOW)
        return Verdict("bytes", sent, bytes_limit, _retry_after(rows, 2, sent + size - bytes_limit, now))
    return None


def add(buckets: dict[int, tuple[int, int]], now: float, requests: int, size: int) -> None:
    s = second_of(now)
    r, b = buckets.get(s, (0, 0))
    buckets[s] = (r + requests, b + size)


def prune(buckets: dict[int, tuple[int, int]], now: float) -> None:
    """Drop the buckets that left the window."""
    start = second_of(now) - WINDOW + 1
    for s in [s for s in buckets if s < start]:
        del buckets[s]
