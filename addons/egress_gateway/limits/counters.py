"""The counters of every (limit, key): this instance's own, and the fleet's others' (from the store).

Keys are ``session:<id>`` and ``client:<address>``. Without a store only the local counters
exist; with one, `pending` holds what this instance counted since its last exchange with the
store, and `others` the other instances' buckets as last read (replaced at each exchange).
"""

from __future__ import annotations

from egress_gateway.limits import window

Buckets = dict[int, tuple[int, int]]


class Counters:
    def __init__(self) -> None:
        self.local: dict[tuple[str, str], Buckets] = {}
        self.others: dict[tuple[str, str], Buckets] = {}
        self.pending: dict[tuple[str, str, int], tuple[int, int]] = {}

    def view(self, rule: str, key: str) -> Buckets:
        """Every instance's buckets of (rule, key), summed per second."""
        mine = self.local.get((rule, key), {})
        theirs = self.others.get((rule, key))
        if not theirs:
            return mine
        out = dict(theirs)
        for s, (r, b) in mine.items():
            r0, b0 = out.get(s, (0, 0))
            out[s] = (r0 + r, b0 + b)
        return out

    def charge(self, rule: str, key: str, now: float, size: int) -> None:
        window.add(self.local.setdefault((rule, key), {}), now, 1, size)
        s = window.second_of(now)
        r, b = self.pending.get((rule, key, s), (0, 0))
        self.pending[(rule, key, s)] = (r + 1, b + size)

    def take_pending(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        out, self.pending = self.pending, {}
        return out

    def restore_pending(self, deltas: dict[tuple[str, str, int], tuple[int, int]]) -> None:
        """An exchange failed: its deltas go back (added to what was counted meanwhile)."""
        for k, (r, b) in deltas.items():
            r0, b0 = self.pending.get(k, (0, 0))
            self.pending[k] = (r0 + r, b0 + b)

    def set_others(self, rows) -> None:
        """`rows`: (rule, key, second, requests, bytes) of the other instances."""
        others: dict[tuple[str, str], Buckets] = {}
        for rule, key, s, r, b in rows:
            d = others.setdefault((rule, key), {})
            r0, b0 = d.get(int(s), (0, 0))
            d[int(s)] = (r0 + int(r), b0 + int(b))
        self.others = others

    def prune(self, now: float) -> None:
        for k in list(self.local):
            window.prune(self.local[k], now)
            if not self.local[k]:
                del self.local[k]
