"""A scan's time and text budget, per thread: `deadline` sets it, analysis checks it."""

from __future__ import annotations

import threading
import time


class DeadlineExceeded(TimeoutError):
    """The caller's time budget ran out between two analysis batches (see `deadline`)."""


class TextOverBudget(ValueError):
    """A message carries more new text (not in the findings cache) than its scan may analyse
    within the time budget (see `deadline`): refused before any of it is analysed."""


_local = threading.local()


class deadline:  # noqa: N801 - used as a context manager, like contextlib's
    """``with deadline(seconds): engine.redact_many(...)`` in a worker thread: analysis stops
    between batches once the budget is spent (the caller has already refused the flow; the
    thread must not keep the pool busy for minutes).

    ``at``: an absolute ``time.monotonic()`` instead (the budget started when the flow was
    queued, not when a worker picked it up; the clock is system-wide, so a scan worker process
    checks the same instant). ``max_fresh``: characters of uncached text the calls inside may
    analyse together; more raises `TextOverBudget` before analysing any. ``patience``: seconds
    past the deadline the caller waits for a scan worker process's answer (None: the workers'
    hang grace, after which that worker is replaced; 0 on the event loop: give up at the
    deadline, judging no worker).
    """

    def __init__(self, seconds: float | None = None, at: float | None = None,
                 max_fresh: int | None = None, patience: float | None = None) -> None:
        self.at = at if at is not None else time.monotonic() + (seconds or 0.0)
        self.max_fresh = max_fresh
        self.patience = patience

    def __enter__(self) -> deadline:
        self.prev = (getattr(_local, "deadline", None), getattr(_local, "fresh_left", None),
                     getattr(_local, "patience", None))
        _local.deadline = self.at
        _local.fresh_left = self.max_fresh
        _local.patience = self.patience
        return self

    def __exit__(self, *exc) -> None:
        _local.deadline, _local.fresh_left, _local.patience = self.prev


def current_deadline() -> float | None:
    """This thread's absolute deadline (``time.monotonic()``), if any."""
    return getattr(_local, "deadline", None)


def current_patience() -> float | None:
    """This thread's `deadline` patience (None: the default)."""
    return getattr(_local, "patience", None)


def check_deadline() -> None:
    at = current_deadline()
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("analysis stopped: the time budget is spent")


def spend_fresh(chars: int) -> None:
    left = getattr(_local, "fresh_left", None)
    if left is None:
        return
    if chars > left:
        raise TextOverBudget(f"the message carries more new text than the gateway scans within "
                             f"its time budget ({chars} characters to analyse, at most {left} "
                             f"more allowed: gateway_scan_max_text)")
    _local.fresh_left = left - chars
