"""Just-in-time approvals: the addon that holds risky requests until a human reviewer decides.

A request matching a rule of the policy's ``approve`` section (`settings`) is held (intercepted)
in the ``request`` hook, after redaction (it matches on redaction's counts) and before
credentials are injected (the reviewer sees placeholders). Under mitmweb the reviewer resumes
(approve) or kills (deny) the flow with mitmweb's own controls, or with the commands
``gateway.approve``, ``gateway.approve.always`` and ``gateway.deny`` (what ``run_gateway.sh
approvals`` calls through mitmweb's REST API). Under mitmdump no reviewer can exist: the rule's
``unattended`` decides.

mitmproxy 12.3.1 facts this is built around: a kill does not wake ``flow.wait_for_resume()``
(the hold polls for it, `holds`), and a killed HTTP/1 flow would close the connection without
an answer (the hold turns the kill into the gateway's ``403 denied``). The review channel itself
is guarded (`webguard`).
"""

from __future__ import annotations

import json
import logging
import time

from mitmproxy import command, ctx, exceptions, hooks, http

from egress_gateway import session
from egress_gateway.approvals import webguard
from egress_gateway.approvals.holds import Always, Hold, detected_text, revive, snapshot
from egress_gateway.approvals.notify import Notifier, message
from egress_gateway.approvals.settings import ApproveRule
from egress_gateway.fleet.store import StoreDown
from egress_gateway.flowstate import refuse, settled, state
from egress_gateway.net import hosts
from egress_gateway.shutdown import refuse_stopping

log = logging.getLogger(__name__)


class Approvals:
    """Holds requests that match the policy's ``approve`` rules until a reviewer decides."""

    name = "egress_gateway_approvals"

    def __init__(self, core, egress, redactor, attended: bool | None = None, fleet=None) -> None:
        self.core = core
        self.fleet = fleet  # the fleet's review store (None or unconfigured: this gateway alone)
        if fleet is not None:
            fleet.on_down = self._store_down
            fleet.on_decision = self._store_decision
        self.egress = egress  # checks an edited request again
        self.redactor = redactor  # scans an edited request again (None: no redaction)
        self.attended = attended  # None: a reviewer exists when running under mitmweb
        self.held: dict[str, Hold] = {}
        self.notifier = Notifier(egress)
        self.always = Always()

    # --- lifecycle ---------------------------------------------------------------------------
    def _web(self) -> bool:
        try:
            return ctx.master.addons.get("webaddon") is not None
        except Exception:
            return False

    def _queued(self) -> bool:
        """Whether holds go to the fleet's review queue (``gateway_state`` is set)."""
        return self.fleet is not None and self.fleet.state is not None

    def reviewer_possible(self) -> bool:
        if self._queued():
            return True  # the store is the review channel, mitmweb or not
        return self._web() if self.attended is None else self.attended

    def configure(self, updated: set[str]) -> None:
        if self._web() and updated & {"web_host"}:
            webguard.check_web_host(ctx.options.web_host)

    def running(self) -> None:
        if not self._web():
            return
        webguard.install_option_guard(ctx.options)
        webguard.guard_web_commands()
        cols = list(ctx.options.web_columns)
        if "comment" not in cols:
            ctx.options.update(web_columns=[*cols, "comment"])
        rules = self._rules()
        log.info(f"egress gateway: approvals by a reviewer in mitmweb ({len(rules)} rules)")

    def done(self) -> None:
        # An unloaded gateway must not leave flows hanging: deny what is still held.
        self.end_holds("shutdown")

    def end_holds(self, by: str) -> int:
        """Deny every held request now (the gateway stops or unloads); the agent gets ``503
        gateway_unavailable`` ("gateway stopping"), the audit line ``denied`` by `by`. The one
        place where holds end without a reviewer: returns how many."""
        holds = list(self.held.values())
        for hold in holds:
            hold.decide("deny", by)
        return len(holds)

    def _rules(self) -> list[ApproveRule]:
        policy = self.core.policy
        return list(getattr(policy, "approve", None) or []) if policy is not None else []

    # --- hooks -------------------------------------------------------------------------------
    @staticmethod
    def _target(flow: http.HTTPFlow) -> tuple[str, str | None, str]:
        req = flow.request
        try:
            host = hosts.normalize_host(req.pretty_host)
            if hosts.parse_ip_literal(host) is not None:
                host = None  # IP literals never match host globs (and are outside every host_not)
        except ValueError:
            host = None
        return req.method, host, req.path

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request that may be held must not stream its body past the hold."""
        if settled(flow):
            return
        try:
            method, host, path = self._target(flow)
            if any(r.matches_target(method, host, path) for r in self._rules()):
                flow.request.stream = False
        except Exception:
            log.exception("egress gateway: internal error in approvals (requestheaders)")
            refuse(flow, "internal_error", "the gateway failed while checking approvals")

    async def request(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            await self._request(flow)
        except Exception:
            log.exception("egress gateway: internal error in approvals; refusing the flow")
            revive(flow)
            refuse(flow, "internal_error", "the gateway failed while holding the request for approval")

    async def _request(self, flow: http.HTTPFlow) -> None:
        rules = self._rules()
        if not rules:
            return
        method, host, path = self._target(flow)
        counts = dict((state(flow).redactions or {}).get("request") or {})
        rule = next((r for r in rules if r.matches(method, host, path, counts)), None)
        if rule is None:
            return
        sess = session.session_of(flow)
        if (sess, rule) in self.always or await self._always_in_store(sess, rule):
            self._record(flow, rule, "approved", "always", 0.0, held=False)
            return
        if not self.reviewer_possible():
            outcome = "approved" if rule.unattended == "allow" else "denied"
            self._record(flow, rule, outcome, "unattended", 0.0, held=False)
            if outcome == "denied":
                self._deny(flow, rule, "no reviewer can approve it (unattended)")
            return
        await self._hold(flow, rule, counts, sess)

    async def _always_in_store(self, sess: str, rule: ApproveRule) -> bool:
        """An "approve always" decided on another instance of the fleet (remembered here once
        seen). Store unreachable: False (the hold that follows is then denied)."""
        store = self.fleet.store if self._queued() else None
        if store is None:
            return False
        try:
            found = await store.has_always(sess, rule.name, rule.key)
        except StoreDown:
            return False
        if found:
            self.always.add(sess, rule)
        return found

    async def _hold(self, flow: http.HTTPFlow, rule: ApproveRule, counts: dict, sess: str) -> None:
        hold = Hold(flow, rule, {k: v for k, v in counts.items() if v})
        self.held[flow.id] = hold
        before = snapshot(flow.request)
        prior = flow.comment  # e.g. redaction's counts: kept after our status
        flow.comment = (f"HELD for approval by rule {rule.name!r}: {rule.reason}. "
                        f"Detected: {detected_text(hold.detected)}. Timeout {rule.timeout:g}s "
                        f"({rule.on_timeout}). Resume = approve, Abort = deny; Mark, then Resume = "
                        "approve always (this session and rule)." + (f"; {prior}" if prior else ""))
        flow.intercept()
        self._update(flow)
        store = self.fleet.store if self._queued() else None
        if self._queued():
            try:
                if store is None:
                    raise StoreDown("not connected yet")
                await store.add(hold.summary())
            except StoreDown:
                hold.decide("deny", "store unreachable")
        if hold.decision is None:
            self._notify(hold)
        log.warning(f"egress gateway: holding {flow.request.method} {flow.request.pretty_host}"
                    f"{flow.request.path.split('?', 1)[0]} for approval (rule {rule.name}, flow {flow.id})")
        try:
            verdict, by, always = await hold.wait()
        finally:
            self.held.pop(flow.id, None)
        waited = round(time.monotonic() - hold.started, 3)
        killed = flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
        revive(flow)
        if verdict == "timeout":
            verdict = "approve" if rule.on_timeout == "allow" else "deny"
        if verdict == "deny" and by == "shutdown":
            self._record(flow, rule, "denied", by, waited)
            if store is not None:  # the queue's row ends too
                await store.end(flow.id, "denied", by)
            refuse_stopping(flow, rule=rule.name)
            flow.comment = f"DENIED (gateway stopping) after {waited:g}s: rule {rule.name!r}" + (
                f"; {prior}" if prior else "")
            return
        if verdict == "deny" or killed:
            self._record(flow, rule, "denied", by, waited)
            if store is not None:
                await store.end(flow.id, "denied", by)
            why = {"timeout": f"no reviewer decided within {rule.timeout:g}s",
                   "store unreachable": "denied: the review store "
                   f"{self.fleet.state.display if self._queued() else ''} is unreachable"}.get(
                by, "a reviewer denied it" if by.startswith("reviewer") else f"denied ({by})")
            self._deny(flow, rule, why)
            flow.comment = f"DENIED ({by}) after {waited:g}s: rule {rule.name!r}" + (
                f"; {prior}" if prior else "")
            return
        if always:
            self.always.add(sess, rule)
            if store is not None:
                try:
                    await store.add_always(sess, rule.name, rule.key, by)
                except StoreDown:
                    log.warning("egress gateway: could not share an 'approve always' decision "
                                "with the fleet (store unreachable); it applies on this instance")
        self._record(flow, rule, "approved", by, waited, always=always or None)
        if store is not None:
            await store.end(flow.id, "approved", by)
        flow.comment = (f"APPROVED ({by}{', always' if always else ''}) after {waited:g}s: "
                        f"rule {rule.name!r}" + (f"; {prior}" if prior else ""))
        if snapshot(flow.request) != before:
            await self._recheck_edited(flow, rule)

    def client_disconnected(self, client) -> None:
        """The agent went away while its request was held: stop waiting (denied, never sent)."""
        for hold in list(self.held.values()):
            if hold.flow.client_conn.id == client.id:
                hold.decide("deny", "client disconnected")

    def _notify(self, hold: Hold) -> None:
        try:
            summary = hold.summary()
            if self._queued():
                st = self.fleet.state
                command = (f"./run_gateway.sh approvals approve {summary['id']} (or deny) "
                           f"--state postgresql://{st.host}:{st.port}/{st.dbname}")
                instance = self.fleet.instance
            else:
                command = f"./run_gateway.sh approvals approve {summary['id']} (or deny)"
                instance = None
            self.notifier.notify(getattr(self.core.policy, "review", None),
                                 message(summary, instance, command))
        except Exception:
            log.exception("egress gateway: could not send the review webhook")

    def _store_decision(self, flow_id: str, verdict: str, by: str, always: bool) -> bool:
        """A reviewer decided in the fleet's queue; False: not held here (any more)."""
        hold = self.held.get(flow_id)
        if hold is None:
            return False
        hold.decide("approve" if verdict == "approve" else "deny", by, bool(always))
        return True

    def _store_down(self, reason: str) -> None:
        """The store is unreachable: nobody can decide what is held here (fail closed)."""
        for hold in list(self.held.values()):
            hold.decide("deny", "store unreachable")

    async def _recheck_edited(self, flow: http.HTTPFlow, rule: ApproveRule) -> None:
        """A reviewer edited the held request: egress and redaction check it again (fail closed)."""
        state(flow).approval["edited"] = True
        await self.egress.request(flow)
        if flow.response:
            return
        if self.redactor is not None:  # None: a bundle without redaction
            await self.redactor.rescan_request(flow)

    # --- decisions -----------------------------------------------------------------------------
    @staticmethod
    def _deny(flow: http.HTTPFlow, rule: ApproveRule, why: str) -> None:
        refuse(flow, "denied", f"approval rule {rule.name!r}: {rule.reason}; {why}",
               rule=rule.name)

    @staticmethod
    def _record(flow, rule, outcome, by, waited, held=True, always=None) -> None:
        approval = {"rule": rule.name, "outcome": outcome, "decided_by": by,
                    "wait_seconds": waited, "held": held}
        if always:
            approval["always"] = True
        state(flow).approval = approval
        log.info(f"egress gateway: approval {outcome} by {by} after {waited:g}s "
                 f"(rule {rule.name}, flow {flow.id})")

    @staticmethod
    def _update(flow) -> None:
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:
            log.debug("egress gateway: could not announce a flow update", exc_info=True)

    def _find(self, flow_id: str) -> Hold:
        fid = flow_id.strip()
        if fid in self.held:
            return self.held[fid]
        found = [h for k, h in self.held.items() if fid and k.startswith(fid)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise exceptions.CommandError(f"no request is held with id {flow_id!r}")
        raise exceptions.CommandError(f"{flow_id!r} is ambiguous: {len(found)} held requests")

    def _decide(self, flow_id: str, verdict: str, always: bool) -> str:
        hold = self._find(flow_id)
        hold.decide(verdict, "reviewer:command", always)
        return hold.flow.id

    # --- commands (REST: POST /commands/<name>, no underscores in names) -------------------------
    @command.command("gateway.approve")
    def approve(self, flow_id: str) -> str:
        """Approve a held request once (a unique id prefix is enough)."""
        return self._decide(flow_id, "approve", False)

    @command.command("gateway.approve.always")
    def approve_always(self, flow_id: str) -> str:
        """Approve a held request and every later one of the same session and rule."""
        return self._decide(flow_id, "approve", True)

    @command.command("gateway.deny")
    def deny(self, flow_id: str) -> str:
        """Deny a held request: the agent gets 403 denied."""
        return self._decide(flow_id, "deny", False)

    @command.command("gateway.held")
    def list_held(self) -> str:
        """The held requests as JSON (no bodies, no header values, no queries)."""
        return json.dumps([h.summary() for h in self.held.values()])

    # --- the review channel is not reachable through the gateway ---------------------------------
    def server_connect(self, data) -> None:
        server = data.server
        if server.error or not server.address or not self._web():
            return
        try:
            host, port = server.address[0], server.address[1]
            if webguard.is_review_channel(host, port, ctx.options.web_host, ctx.options.web_port):
                server.error = "blocked by the egress gateway: that is the gateway's review channel"
                log.warning(f"egress gateway refused a dial to the review channel {host}:{port}")
        except Exception as e:
            log.exception("egress gateway: internal error in approvals (server_connect)")
            server.error = f"egress gateway internal error: {e}"
