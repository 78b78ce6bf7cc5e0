"""The volume limits addon: counts what each session and each client address sends upstream.

``request`` (after redaction, approvals and credential marking: the request as it will be sent)
checks every limit whose hosts match against two keys, the flow's session and its client
address, so an agent rotating session ids from one address is limited too. Over a limit:
``429 rate_limited`` with ``Retry-After``, audited as an alert; nothing is counted for a
refused request. The counters are in-process (see `counters`).
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy.net.http.http1 import assemble

from egress_gateway import session
from egress_gateway.flowstate import refuse, settled, state
from egress_gateway.limits import window
from egress_gateway.limits.counters import Counters
from egress_gateway.net import hosts
from egress_gateway.recording import audit

log = logging.getLogger(__name__)

PRUNE_SECONDS = 10.0


def wire_size(request: http.Request) -> int:
    """Request line, headers and body (with its chunk framing and trailers) as sent upstream."""
    if request.raw_content is None:
        return len(assemble.assemble_request_head(request))
    return len(assemble.assemble_request(request))


def client_address(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    addr = str(peer[0]) if peer else "unknown"
    return addr[7:] if addr.lower().startswith("::ffff:") and "." in addr else addr


def compile_limits(policy) -> tuple:
    return tuple(policy.limits)


class Limits:
    """Refuses what would take a session or a client address over a volume limit."""

    def __init__(self, core, clock=time.time) -> None:
        self.core = core
        self.clock = clock
        self.counters = Counters()
        self._pruned = 0.0
        core.add_compiler("limits", compile_limits)

    def _rules(self) -> tuple:
        compiled = self.core.compiled
        return compiled["limits"] if compiled is not None and "limits" in compiled else ()

    def request(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            self.core.require_policy()
            host = hosts.normalize_host(flow.request.host)
            rules = [r for r in self._rules() if r.applies_to(host)]
            if not rules:
                return
            self._enforce(flow, rules)
        except Exception as e:
            log.exception("egress gateway: internal error in limits (request)")
            refuse(flow, "internal_error", f"egress gateway internal error: {type(e).__name__}")

    def _enforce(self, flow: http.HTTPFlow, rules: list) -> None:
        now = self.clock()
        if now - self._pruned > PRUNE_SECONDS:
            self.counters.prune(now)
            self._pruned = now
        size = wire_size(flow.request)
        keys = (("session", f"session:{session.session_of(flow)}"),
                ("client", f"client:{client_address(flow)}"))
        for rule in rules:
            for scope, key in keys:
                over = window.check(self.counters.view(rule.name, key), now, size,
                                    rule.requests_per_minute, rule.bytes_out_per_minute)
                if over is not None:
                    self._refuse(flow, rule, scope, over)
                    return
        for rule in rules:
            for _, key in keys:
                self.counters.charge(rule.name, key, now, size)

    def _refuse(self, flow: http.HTTPFlow, rule, scope: str, over: window.Verdict) -> None:
        what = "requests" if over.measure == "requests" else "bytes sent upstream"
        reason = (f"the {scope} is over the volume limit {rule.name!r}: {over.used} {what} in "
                  f"the last minute, limit {over.limit}; retry after {over.retry_after} s")
        refuse(flow, "rate_limited", reason, limit=rule.name, scope=scope,
               measure=over.measure, retry_after=over.retry_after)
        flow.response.headers["Retry-After"] = str(over.retry_after)
        state(flow).limit = {"name": rule.name, "scope": scope, "measure": over.measure,
                             "alert": "rate_limited"}
        log.warning(f"egress gateway: ALERT rate_limited: {scope} over limit {rule.name!r} "
                    f"({over.measure}) for a request to {hosts.normalize_host(flow.request.host)}")
        try:
            if self.core.audit is not None:
                self.core.audit.write(audit.alert_record(
                    flow, "rate_limited", limit=rule.name, scope=scope, measure=over.measure,
                    used=over.used, max=over.limit, retry_after=over.retry_after))
        except Exception:
            log.exception("egress gateway: could not audit a rate_limited alert")
