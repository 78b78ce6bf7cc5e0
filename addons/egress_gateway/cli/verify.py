"""`run_gateway.sh verify DIR [--audit FILE] [--hmac-env NAME]`, and the arguments `audit` shares.

Exit 0 when everything verifies; 1 naming the first problem (then the others) when a line was
changed, removed, reordered or cut off the end, or a recording no longer matches its hash;
2 on usage errors. See recordings/README.md for what is and is not detectable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from egress_gateway.recording.settings import DEFAULT_HMAC_ENV, parse_hmac_env
from egress_gateway.recording.verify import verify


def add_log_arguments(ap: argparse.ArgumentParser) -> None:
    """DIR, --audit and --hmac-env: the arguments `verify` and `audit` share."""
    ap.add_argument("dir", type=Path, help="recordings directory (holds audit.jsonl by default)")
    ap.add_argument("--audit", type=Path, help="audit log (default DIR/audit.jsonl)")
    ap.add_argument("--hmac-env", default=DEFAULT_HMAC_ENV,
                    help=f"environment variable with the HMAC key (default {DEFAULT_HMAC_ENV})")


def key_from_args(args: argparse.Namespace, prog: str) -> bytes | None:
    """The HMAC key named by --hmac-env; SystemExit(2) with a message if the name is invalid."""
    try:
        return parse_hmac_env(args.hmac_env, os.environ)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh verify",
                                 description="Verify recordings and the audit log's hash chain.")
    add_log_arguments(ap)
    args = ap.parse_args(argv)
    key = key_from_args(args, "verify")
    if not args.dir.is_dir():
        print(f"verify: {args.dir} is not a directory", file=sys.stderr)
        return 2
    res = verify(args.dir, args.audit, key)
    if res.ok:
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        alg = "hmac-sha256" if key else "sha256"
        print(f"OK: {res.lines} audit lines ({alg} chain), {res.flows} recorded flows in "
              f"{res.recordings} recording file(s) verified")
        return 0
    first, *rest = res.problems
    print(f"FAILED: {args.audit or args.dir / 'audit.jsonl'} {first}", file=sys.stderr)
    for p in rest[:50]:
        print(f"  also: {p}", file=sys.stderr)
    if len(rest) > 50:
        print(f"  ... and {len(rest) - 50} more", file=sys.stderr)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 1
