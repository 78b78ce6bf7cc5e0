"""The gateway's addons, in hook order. `addons/gateway.py` exposes this list to mitmproxy."""

from __future__ import annotations

from .approvals import Approvals
from .core import Core
from .egress import Egress
from .recorder import Recorder
from .redact.addon import Redactor
from .session import Session


def make_addons() -> list:
    core = Core()
    # Session first (refusals carry it); the recorder last (it records the final flow and
    # writes the audit line).
    egress = Egress(core)
    # Approvals after redaction (it matches on redaction's counts and the reviewer sees redacted
    # bodies) and before credentials are injected (the reviewer sees placeholders).
    approvals = Approvals(core, egress)
    addons = [core, Session(), egress, Redactor(core), approvals, Recorder(core)]
    approvals.peers = addons
    return addons
