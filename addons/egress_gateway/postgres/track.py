"""Statements in flight on one connection, matched with the server's answers (pure).

Each executed statement (a simple-protocol statement, or an extended-protocol ``Execute``) is
started here; ``CommandComplete`` or ``ErrorResponse`` finishes the oldest one, and
``ReadyForQuery`` finishes whatever its cycle left unrun. A finished statement becomes one
audit line: no values, only its type, tables, counts and text with literals as ``$n``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from egress_gateway.postgres.classify import Statement


@dataclass
class Record:
    statement: Statement
    protocol: str
    cycle: int
    started: float = field(default_factory=time.monotonic)
    time: float = field(default_factory=time.time)
    rows: int = 0
    tag: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    request_counts: dict[str, int] = field(default_factory=dict)
    approval: dict | None = None
    outcome: str = "ok"
    sqlstate: str | None = None
    decision: str = "allowed"
    code: str | None = None
    columns: list | None = None  # its result columns when no RowDescription precedes its rows
    messages: list = field(default_factory=list)  # (from_client, bytes) for the recording
    recorded_bytes: int = 0
    truncated: bool = False

    def audit(self) -> dict:
        s = self.statement
        rec = {
            "event": "statement", "statement": s.type, "tables": s.tables,
            "protocol": self.protocol, "decision": self.decision, "code": self.code,
            "outcome": self.outcome, "rows": self.rows,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "text": s.text,
        }
        if self.tag:
            rec["command_tag"] = self.tag.split(" ")[0]
            affected = self.tag.rsplit(" ", 1)[-1]
            if affected.isdigit() and s.type != "SELECT":
                rec["rows_affected"] = int(affected)
        if self.sqlstate:
            rec["sqlstate"] = self.sqlstate
        if s.without_where:
            rec["without_where"] = True
        if self.counts or self.request_counts:
            rec["redactions"] = {d: dict(c) for d, c in (("request", self.request_counts),
                                                          ("response", self.counts)) if c}
        if self.approval:
            rec["approval"] = self.approval
        return rec


RECORD_LIMIT = 1 << 20  # bytes of one statement's messages kept for its recording


class Tracker:
    """The connection's statements awaiting the server's answer, oldest first."""

    def __init__(self) -> None:
        self.pending: deque[Record] = deque()
        self.cycle = 0  # cycles (Query or Sync) sent to the server
        self.done_cycle = 0  # cycles the server finished (ReadyForQuery)

    def start(self, st: Statement, protocol: str, approval: dict | None = None) -> Record:
        r = Record(st, protocol, self.cycle + 1, approval=approval)  # the cycle in progress
        self.pending.append(r)
        return r

    def front(self) -> Record | None:
        return self.pending[0] if self.pending else None

    def note(self, from_client: bool, data: bytes) -> None:
        """Keep a message for the recording of the statement it belongs to (bounded)."""
        r = self.front()
        if r is None or not data:
            return
        if r.recorded_bytes + len(data) > RECORD_LIMIT:
            r.truncated = True
            return
        r.recorded_bytes += len(data)
        r.messages.append((from_client, data))

    def rows(self, n: int, counts: dict[str, int]) -> None:
        r = self.front()
        if r is None:
            return
        r.rows += n
        for e, c in counts.items():
            r.counts[e] = r.counts.get(e, 0) + c

    def complete(self, tag: str) -> Record | None:
        if not self.pending:
            return None
        r = self.pending.popleft()
        r.tag = tag
        return r

    def error(self, sqlstate: str | None, code: str | None = None) -> Record | None:
        if not self.pending:
            return None
        r = self.pending.popleft()
        r.outcome = "error"
        r.sqlstate = sqlstate
        if code:
            r.decision, r.code = "blocked", code
        return r

    def ready(self) -> list[Record]:
        """ReadyForQuery: the statements of the finished cycle that never ran."""
        self.done_cycle += 1
        out = []
        while self.pending and self.pending[0].cycle <= self.done_cycle:
            r = self.pending.popleft()
            r.outcome = "not_run"
            out.append(r)
        return out
