"""Sub-commands of run_gateway.sh that are not mitmproxy itself: `python -m egress_gateway.cli CMD ...`.

Each command lives in its own module and is imported only when it runs (`check-policy` never
imports Presidio). `eval` and `bench` are development tools in `tools/`, outside the package.
"""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "check-policy": "egress_gateway.cli.policy:main",
    "schema": "egress_gateway.cli.policy:schema_main",
    "approvals": "egress_gateway.cli.approvals:main",
    "verify": "egress_gateway.cli.verify:main",
    "audit": "egress_gateway.cli.audit:main",
    "replay": "egress_gateway.cli.replay:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: run_gateway.sh {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    module, func = COMMANDS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)

