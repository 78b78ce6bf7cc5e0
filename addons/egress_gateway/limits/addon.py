"""The volume limits addon: counts what each session and each client address sends upstream.

``request`` (after redaction, approvals and credential marking: the request as it will be sent)
checks every limit whose hosts match against two keys, the flow's session and its client
address, so an agent rotating session ids from one address is limited too. Over a limit:
``429 rate_limited`` with ``Retry-After``, audited as an alert; nothing is counted for a
refused request.

Alone, the counters are in-process (see `counters`). In a fleet (``gateway_state``) the store
holds them: each request under a limit is charged there and checked against every instance's
buckets in one round trip (`Store.charge`), so a session or an address over a limit is refused
on every instance from its next request; a refused request's charge is taken back. Store
unreachable: requests under a limit are refused ``503 state_unavailable`` until it is back.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy.net.http.http1 import assemble

from egress_gateway import session
from egress_gateway.fleet.schema import COUNTERS_KEEP_SECONDS
from egress_gateway.fleet.store import StoreDown
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

    def __init__(self, core, fleet=None, clock=time.time) -> None:
        self.core = core
        self.fleet = fleet  # its store holds the counters of a fleet
        self.clock = clock
        self.counters = Counters()
        self._pruned = 0.0
        core.add_compiler("limits", compile_limits)

    def _rules(self) -> tuple:
        compiled = self.core.compiled
        return compiled["limits"] if compiled is not None and "limits" in compiled else ()

    async def request(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            self.core.require_policy()
            host = hosts.normalize_host(flow.request.host)
            rules = [r for r in self._rules() if r.applies_to(host)]
            if not rules:
                return
            keys = (("session", f"session:{session.session_of(flow)}"),
                    ("client", f"client:{client_address(flow)}"))
            store = self.fleet.store if self.fleet is not None else None
            if store is None:
                self._enforce(flow, rules, keys)
            else:
                await self._enforce_shared(flow, rules, keys, store)
        except StoreDown as e:
            log.warning(f"egress gateway refused a request under a volume limit: {e}")
            refuse(flow, "state_unavailable", f"{e}: volume limits cannot be enforced across "
                   "the fleet without it; retry when it is back")
        except Exception as e:
            log.exception("egress gateway: internal error in limits (request)")
            refuse(flow, "internal_error", f"egress gateway internal error: {type(e).__name__}")

    async def _enforce_shared(self, flow: http.HTTPFlow, rules: list, keys, store) -> None:
        """Charge the store first, then check every instance's buckets (this request taken
        out); over a limit: refund and refuse. Concurrent requests on other instances may see
        each other's charges: both are then refused, never both let through."""
        now = self.clock()
        second = window.second_of(now)
        size = wire_size(flow.request)
        pairs = [(rule.name, key) for rule in rules for _, key in keys]
        if now - self._pruned > PRUNE_SECONDS:
            self._pruned = now
            await store.prune_counters(second - COUNTERS_KEEP_SECONDS)
        rows = await store.charge(pairs, second, size, second - window.WINDOW + 1)
        buckets: dict[tuple[str, str], dict] = {p: {} for p in pairs}
        for rule_name, key, s, n, b in rows:
            buckets.setdefault((rule_name, key), {})[s] = (n, b)
        for rule in rules:
            for scope, key in keys:
                mine = buckets[(rule.name, key)]
                n, b = mine.get(second, (1, size))
                mine[second] = (n - 1, b - size)  # the window without this request
                over = window.check(mine, now, size, rule.requests_per_minute,
                                    rule.bytes_out_per_minute)
                if over is not None:
                    try:
                        await store.refund(pairs, second, size)
                    except StoreDown:
                        pass  # counted against the agent: errs on the side of refusing
                    self._refuse(flow, rule, scope, over)
                    return

    def _enforce(self, flow: http.HTTPFlow, rules: list, keys) -> None:
        now = self.clock()
        if now - self._pruned > PRUNE_SECONDS:
            self.counters.prune(now)
            self._pruned = now
        size = wire_size(flow.request)
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
