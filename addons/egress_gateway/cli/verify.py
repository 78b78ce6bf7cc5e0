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
    """DIR..., --audit, --hmac-env and --state: the arguments `verify` and `audit` share."""
    ap.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                    help="recordings directory (holds audit.jsonl by default); several for a fleet")
    ap.add_argument("--audit", type=Path, help="audit log (default DIR/audit.jsonl; one DIR only)")
    ap.add_argument("--hmac-env", default=DEFAULT_HMAC_ENV,
                    help=f"environment variable with the HMAC key (default {DEFAULT_HMAC_ENV})")
    ap.add_argument("--state", default=None,
                    help="the fleet's store (postgresql://USER@HOST:PORT/DB): also check each "
                    "log against the head its instance checkpointed there")


def key_from_args(args: argparse.Namespace, prog: str) -> bytes | None:
    """The HMAC key named by --hmac-env; SystemExit(2) with a message if the name is invalid."""
    try:
        return parse_hmac_env(args.hmac_env, os.environ)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_dirs(args: argparse.Namespace, prog: str) -> None:
    if args.audit and len(args.dirs) > 1:
        print(f"{prog}: --audit takes one DIR", file=sys.stderr)
        raise SystemExit(2)
    for d in args.dirs:
        if not d.is_dir():
            print(f"{prog}: {d} is not a directory", file=sys.stderr)
            raise SystemExit(2)


def load_heads(args: argparse.Namespace, prog: str) -> dict[str, dict] | None:
    if not args.state:
        return None
    from egress_gateway.fleet.heads import store_heads

    try:
        return store_heads(args.state)
    except Exception as e:  # ValueError (the URL), psycopg.Error
        print(f"{prog}: cannot read the review store: {str(e).strip().splitlines()[0]}",
              file=sys.stderr)
        raise SystemExit(2) from None


def verify_one(directory: Path, audit_path: Path | None, key: bytes | None,
               heads: dict[str, dict] | None):
    """(Result, instance ids of the log): the chain and recordings, then the store's head."""
    from egress_gateway.fleet.heads import check_head, instances_of
    from egress_gateway.recording.verify import Problem

    path = audit_path or directory / "audit.jsonl"
    res = verify(directory, audit_path, key)
    names = instances_of(path)
    if heads is not None:
        for name in names:
            head = heads.get(name)
            if head is None:
                res.warnings.append(f"instance {name} has no audit head in the store")
                continue
            problem = check_head(path, int(head["seq"]), head["hash"])
            if problem:
                res.problems.append(Problem(None, f"instance {name}: {problem}"))
    return res, names


def _report(directory: Path, audit_path: Path | None, key, res, names) -> int:
    where = f"{audit_path or directory / 'audit.jsonl'}"
    who = f"instance {', '.join(names)}: " if names else ""
    if res.ok:
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        alg = "hmac-sha256" if key else "sha256"
        print(f"OK: {who}{res.lines} audit lines ({alg} chain), {res.flows} recorded flows in "
              f"{res.recordings} recording file(s) verified ({directory})")
        return 0
    first, *rest = res.problems
    print(f"FAILED: {who}{where} {first}", file=sys.stderr)
    for p in rest[:50]:
        print(f"  also: {p}", file=sys.stderr)
    if len(rest) > 50:
        print(f"  ... and {len(rest) - 50} more", file=sys.stderr)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh verify",
                                 description="Verify recordings and the audit log's hash chain "
                                 "(of one gateway, or of each instance of a fleet).")
    add_log_arguments(ap)
    args = ap.parse_args(argv)
    key = key_from_args(args, "verify")
    check_dirs(args, "verify")
    heads = load_heads(args, "verify")
    rc = 0
    seen: list[str] = []
    for d in args.dirs:
        res, names = verify_one(d, args.audit, key, heads)
        seen += names
        rc = max(rc, _report(d, args.audit, key, res, names))
    if heads is not None:
        for name in sorted(set(heads) - set(seen)):
            print(f"warning: instance {name} checkpointed to the store but no DIR given holds its "
                  "log", file=sys.stderr)
    return rc
