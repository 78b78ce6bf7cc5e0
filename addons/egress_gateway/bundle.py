"""The gateway's addons, in hook order. `addons/gateway.py` exposes this list to mitmproxy."""

from __future__ import annotations

from egress_gateway.approvals.addon import Approvals
from egress_gateway.core import Core
from egress_gateway.credentials.addon import CredentialGuard, CredentialInjector
from egress_gateway.egress.addon import Egress
from egress_gateway.recording.addon import Recorder
from egress_gateway.redact.addon import Redactor
from egress_gateway.session import Session


def make_addons() -> list:
    core = Core()
    # Session first (refusals carry it); the recorder last (it records the final flow and
    # writes the audit line).
    egress = Egress(core)
    # Approvals after redaction (it matches on redaction's counts and the reviewer sees redacted
    # bodies) and before credentials are injected (the reviewer sees placeholders).
    redactor = Redactor(core)
    approvals = Approvals(core, egress, redactor)
    # Credentials: the guard before egress (its hooks are synchronous: leaks are refused and
    # real values scrubbed from the flow before any hook awaits and mitmweb can read the flow;
    # echoed secrets are scrubbed before any other response hook); the injector after approvals
    # and redaction, before the recorder (it marks the final request for injection on the wire).
    addons = [core, Session(core.connections), CredentialGuard(core), egress, redactor,
              approvals, CredentialInjector(core), Recorder(core), core.closer]  # closer: last
    return addons
