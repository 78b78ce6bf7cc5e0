"""`run_gateway.sh check-policy FILE` and `run_gateway.sh schema`."""

from __future__ import annotations

import json
import sys

from egress_gateway.policy import Policy, PolicyError, load_policy


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: run_gateway.sh check-policy FILE", file=sys.stderr)
        return 2
    try:
        policy = load_policy(argv[0])
    except PolicyError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"{len(e.problems)} problem(s); the gateway will not start with this policy",
              file=sys.stderr)
        return 1
    e = policy.egress
    print(f"{argv[0]}: OK (version {policy.version}, egress {e.mode}, "
          f"{len(e.allow)} allow rules, {len(e.resolve)} pins)")
    return 0


def schema_main(argv: list[str]) -> int:
    """Print the policy's JSON Schema (generated from the models)."""
    json.dump(Policy.model_json_schema(), sys.stdout, indent=2)
    print()
    return 0
