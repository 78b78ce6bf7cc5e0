"""The gateway's addons, in hook order. `addons/gateway.py` exposes this list to mitmproxy."""

from __future__ import annotations

from .audit import Audit
from .core import Core
from .egress import Egress


def make_addons() -> list:
    core = Core()
    return [core, Egress(core), Audit(core)]
