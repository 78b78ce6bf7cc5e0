"""The gateway's addons, in hook order. `addons/gateway.py` exposes this list to mitmproxy."""

from __future__ import annotations

from .core import Core
from .egress import Egress
from .recorder import Recorder
from .session import Session


def make_addons() -> list:
    core = Core()
    # Session first (refusals carry it); the recorder last (it records the final flow and
    # writes the audit line).
    return [core, Session(), Egress(core), Recorder(core)]
