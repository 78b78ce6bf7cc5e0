"""Sub-commands of run_gateway.sh that are not mitmproxy itself: `python -m egress_gateway.cli CMD ...`."""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "check-policy": "egress_gateway.policy_cli:main",
    "schema": "egress_gateway.policy_cli:schema_main",
    "eval": "egress_gateway.evaluate:main",
    "approvals": "egress_gateway.approvals_cli:main",
    "bench": "egress_gateway.bench:main",
    "verify": "egress_gateway.verify:main",
    "audit": "egress_gateway.report:main",
    "replay": "egress_gateway.recorder:replay_main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: run_gateway.sh {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    module, func = COMMANDS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
