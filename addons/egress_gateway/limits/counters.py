"""The in-process counters of every (limit, key), keys ``session:<id>`` and ``client:<address>``.

A fleet keeps its counters in the store instead (`fleet.store.Store.charge`).
"""

from __future__ import annotations

from egress_gateway.limits import window

Buckets = dict[int, tuple[int, int]]


class Counters:
    def __init__(self) -> None:
        self.local: dict[tuple[str, str], Buckets] = {}

    def view(self, rule: str, key: str) -> Buckets:
        return self.local.get((rule, key), {})

    def charge(self, rule: str, key: str, now: float, size: int) -> None:
        window.add(self.local.setdefault((rule, key), {}), now, 1, size)

    def prune(self, now: float) -> None:
        for k in list(self.local):
            window.prune(self.local[k], now)
            if not self.local[k]:
                del self.local[k]
