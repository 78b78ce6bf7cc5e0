"""Held statements: an ``approve`` rule matched; a reviewer in mitmweb (or ``unattended``) decides.

Under mitmweb the statement appears as an intercepted TCP flow whose one message is the
statement with its literals replaced by ``$n`` and whose comment names the rule and its reason:
Resume approves, Abort (kill) denies, no decision within the rule's timeout applies
``on_timeout``. Only that connection waits. Under mitmdump no reviewer can exist: the rule's
``unattended`` decides at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx, hooks, tcp

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02


def _web() -> bool:
    try:
        return ctx.master.addons.get("webaddon") is not None
    except Exception:
        return False


class Holds:
    """Decides held statements; `attended` None: a reviewer exists when running under mitmweb."""

    def __init__(self, attended: bool | None = None) -> None:
        self.attended = attended
        self.held: dict[str, tcp.TCPFlow] = {}
        self.ended_by: str | None = None  # set by end_all(): every hold ends denied

    def end_all(self, by: str) -> int:
        """Deny every held statement now (the gateway stops); returns how many."""
        self.ended_by = by
        return len(self.held)

    async def decide(self, rule, check, st) -> tuple[bool, str, float]:
        """(approved, decided by, seconds waited)."""
        attended = _web() if self.attended is None else self.attended
        if not attended:
            log.info(f"egress gateway: PostgreSQL {st.type} on {check.entry.name} "
                     f"{'approved' if rule.unattended == 'allow' else 'denied'} unattended "
                     f"(rule {rule.name})")
            return rule.unattended == "allow", "unattended", 0.0
        flow = tcp.TCPFlow(check.client, check.server, live=True)
        flow.messages.append(tcp.TCPMessage(True, st.text.encode()))
        flow.metadata["gateway"] = {"session": check.session, "postgres": check.entry.name,
                                    "statement": st.type, "tables": st.tables,
                                    "held_by_rule": rule.name}
        where = f" on {', '.join(st.tables)}" if st.tables else ""
        flow.comment = (f"HELD for approval by rule {rule.name!r}: {rule.reason}. {st.type}{where}"
                        f"{' without WHERE' if st.without_where else ''} in database "
                        f"{check.entry.name}. Timeout {rule.timeout:g}s ({rule.on_timeout}). "
                        "Resume = approve, Abort = deny.")
        flow.intercept()
        self.held[flow.id] = flow
        started = time.monotonic()
        try:
            # mitmproxy's view (what mitmweb lists) has no command to add a flow: its add().
            ctx.master.addons.get("view").add([flow])
        except Exception:
            log.debug("egress gateway: could not show a held statement in the view", exc_info=True)
        log.warning(f"egress gateway: holding a PostgreSQL {st.type} on {check.entry.name} for "
                    f"approval (rule {rule.name}, flow {flow.id})")
        try:
            verdict, by = await self._wait(flow, rule, started)
        finally:
            self.held.pop(flow.id, None)
        waited = round(time.monotonic() - started, 3)
        if flow.intercepted:
            flow.resume()
        flow.error = None
        flow.live = False
        flow.comment = f"{'APPROVED' if verdict else 'DENIED'} ({by}) after {waited:g}s: rule " \
                       f"{rule.name!r}"
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:
            log.debug("egress gateway: could not announce a flow update", exc_info=True)
        return verdict, by, waited

    async def _wait(self, flow, rule, started: float) -> tuple[bool, str]:
        deadline = started + rule.timeout
        while True:
            if self.ended_by is not None:
                return False, self.ended_by
            if flow.error is not None:  # killed in mitmweb (a kill does not wake the flow)
                return False, "a reviewer denied it (reviewer:mitmweb)"
            if not flow.intercepted:
                return True, "reviewer:mitmweb"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return rule.on_timeout == "allow", f"no reviewer decided within {rule.timeout:g}s"
            await asyncio.sleep(min(POLL_SECONDS, remaining))
