"""`run_gateway.sh audit DIR... [--state URL] [--json FILE] [--html FILE]`: the per-session audit
report; with several directories (a fleet), per instance and per session across instances."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egress_gateway.cli.verify import add_log_arguments, check_dirs, key_from_args, load_heads
from egress_gateway.recording.audit_report import build, load_lines, render_html, render_text, summarize


def _fleet(args, key, heads) -> dict:
    """One report over several directories: integrity per instance, sessions across them."""
    from egress_gateway.cli.verify import verify_one

    records, instances, bad = [], [], 0
    for d in args.dirs:
        path = d / "audit.jsonl"
        lines, n_bad = load_lines(path)
        records += lines
        bad += n_bad
        res, names = verify_one(d, None, key, heads)
        instances.append({"directory": str(d), "instances": names, "ok": res.ok,
                          "lines": res.lines, "flows": res.flows,
                          "problems": [str(p) for p in res.problems], "warnings": res.warnings})
    records.sort(key=lambda r: str(r.get("time") or ""))
    sessions = summarize(records)
    for s in sessions:  # which instances each session crossed
        s["instances"] = sorted({str(r["instance"]) for r in records
                                 if r.get("instance") and str(r.get("session")) == s["session"]})
    ok = all(i["ok"] for i in instances)
    check = {"ok": ok, "lines": sum(i["lines"] for i in instances),
             "flows": sum(i["flows"] for i in instances),
             "problems": [f"{i['directory']}: {p}" for i in instances for p in i["problems"]],
             "warnings": [w for i in instances for w in i["warnings"]]}
    check["summary"] = (f"OK ({check['lines']} lines, {check['flows']} recorded flows verified, "
                        f"{len(instances)} instances)" if ok else f"FAILED: {check['problems'][0]}")
    return {"directory": ", ".join(str(d) for d in args.dirs),
            "audit_log": ", ".join(str(d / "audit.jsonl") for d in args.dirs),
            "unreadable_lines": bad, "instances": instances,
            "sessions": sessions, "integrity": check}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh audit",
                                 description="Per-session audit report of recordings directories.")
    add_log_arguments(ap)
    ap.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    ap.add_argument("--html", type=Path, help="also write a self-contained HTML page to this file")
    args = ap.parse_args(argv)
    key = key_from_args(args, "audit")
    check_dirs(args, "audit")
    for d in args.dirs:
        audit_path = args.audit or d / "audit.jsonl"
        if not audit_path.is_file():
            print(f"audit: no audit log at {audit_path}", file=sys.stderr)
            return 2
    heads = load_heads(args, "audit")
    if len(args.dirs) == 1 and heads is None:
        report = build(args.dirs[0], args.audit, key)
    else:
        report = _fleet(args, key, heads)
        for i in report["instances"]:
            state = "OK" if i["ok"] else f"FAILED: {i['problems'][0]}"
            print(f"instance {', '.join(i['instances']) or '-'} ({i['directory']}): "
                  f"{i['lines']} lines, {i['flows']} flows; {state}")
        print()
    print(render_text(report["sessions"], report["integrity"]))
    if len(args.dirs) > 1:
        for s in report["sessions"]:
            print(f"session {s['session']}: instances {', '.join(s['instances']) or '-'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.html:
        args.html.write_text(render_html(report))
    return 0
