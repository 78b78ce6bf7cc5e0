"""`run_gateway.sh audit DIR [--json FILE] [--html FILE]`: the per-session audit report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egress_gateway.cli.verify import add_log_arguments, key_from_args
from egress_gateway.recording.audit_report import build, render_html, render_text


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh audit",
                                 description="Per-session audit report of a recordings directory.")
    add_log_arguments(ap)
    ap.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    ap.add_argument("--html", type=Path, help="also write a self-contained HTML page to this file")
    args = ap.parse_args(argv)
    key = key_from_args(args, "audit")
    audit_path = args.audit or args.dir / "audit.jsonl"
    if not audit_path.is_file():
        print(f"audit: no audit log at {audit_path}", file=sys.stderr)
        return 2
    report = build(args.dir, args.audit, key)
    print(render_text(report["sessions"], report["integrity"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.html:
        args.html.write_text(render_html(report))
    return 0
