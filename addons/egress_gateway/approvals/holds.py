"""A held request and its state: waiting for a reviewer, the verdict, "approve always" memory."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from mitmproxy import http

from egress_gateway import session
from egress_gateway.approvals.settings import ApproveRule

POLL_SECONDS = 0.02
MAX_ALWAYS = 10_000  # remembered "approve always" decisions (oldest forgotten first)

Verdict = tuple[str, str, bool]  # (approve|deny|timeout, decided_by, always)


class Hold:
    """A request waiting for a reviewer."""

    def __init__(self, flow: http.HTTPFlow, rule: ApproveRule, detected: dict[str, int]):
        self.flow = flow
        self.rule = rule
        self.detected = detected
        self.started = time.monotonic()
        self.decision: Verdict | None = None  # set by a command, a disconnect or shutdown

    def decide(self, verdict: str, by: str, always: bool = False) -> None:
        """The first decision wins."""
        if self.decision is None:
            self.decision = (verdict, by, always)

    def summary(self) -> dict:
        req = self.flow.request
        return {
            "id": self.flow.id, "rule": self.rule.name, "reason": self.rule.reason,
            "method": req.method, "host": req.pretty_host, "port": req.port,
            "path": req.path.split("?", 1)[0], "detected": self.detected,
            "session": session.session_of(self.flow),
            "waiting_seconds": round(time.monotonic() - self.started, 1),
            "timeout": self.rule.timeout, "on_timeout": self.rule.on_timeout,
        }

    async def wait(self) -> Verdict:
        """Until a decision, a mitmweb resume or kill, or the rule's timeout."""
        flow = self.flow
        deadline = self.started + self.rule.timeout
        while True:
            if self.decision is not None:
                return self.decision
            if flow.error is not None:  # killed in mitmweb (a kill does not wake wait_for_resume)
                return ("deny", "reviewer:mitmweb", False)
            if not flow.intercepted:  # resumed in mitmweb; a marked flow means 'approve always'
                return ("approve", "reviewer:mitmweb", bool(flow.marked))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ("timeout", "timeout", False)
            await asyncio.sleep(min(POLL_SECONDS, remaining))


class Always:
    """"Approve always" decisions per (session, rule name, rule key), bounded, oldest forgotten
    first (a flood of sessions cannot grow it without limit)."""

    def __init__(self, limit: int = MAX_ALWAYS) -> None:
        self.limit = limit
        self._keys: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    @staticmethod
    def _key(sess: str, rule: ApproveRule) -> tuple[str, str, str]:
        return (sess, rule.name, rule.key)

    def __contains__(self, item: tuple[str, ApproveRule]) -> bool:
        return self._key(*item) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, sess: str, rule: ApproveRule) -> None:
        self._keys[self._key(sess, rule)] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


def detected_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()) if v) or "nothing"


def snapshot(req: http.Request) -> tuple:
    """Everything a reviewer could edit in a held request."""
    return (req.method, req.scheme, req.host, req.port, req.path, tuple(req.headers.fields),
            req.raw_content, tuple(req.trailers.fields) if req.trailers else None)


def revive(flow: http.HTTPFlow) -> None:
    """Undo a kill (and an interception) so that the gateway's own answer reaches the client."""
    if flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
        flow.error = None
        flow.live = True
    if flow.intercepted:
        flow.resume()
