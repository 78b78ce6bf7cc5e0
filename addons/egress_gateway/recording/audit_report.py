"""The audit report (`run_gateway.sh audit`): what each agent session sent and got.

Per session, from the audit log: time span, hosts contacted with request counts, refused attempts
with reasons, redactions per entity type and direction, approvals asked/granted/denied, bytes out
and in; plus the result of `verify` for the directory. A terminal table, a JSON document, and a
single self-contained HTML page (rendered by jinja2 from ``templates/report.html.j2``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from egress_gateway.recording import verify as verify_mod

TEMPLATE = "report.html.j2"
FLOW_KINDS = ("http", "websocket")


def load_lines(path: Path) -> tuple[list[dict], int]:
    """The audit log's records, and how many lines could not be read."""
    records, bad = [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def _approved(outcome: str | None) -> bool:
    return outcome in ("approved", "allowed", "granted")


def summarize(records: list[dict]) -> list[dict]:
    """One summary per session, sessions ordered by their first line."""
    sessions: dict[str, dict] = {}
    for rec in records:
        if rec.get("kind") == "gateway":  # the gateway's own lines (gateway_stop): no session
            continue
        sid = str(rec.get("session") or "unknown")
        s = sessions.get(sid)
        if s is None:
            s = sessions[sid] = {
                "session": sid, "first": None, "last": None, "flows": 0, "hosts": Counter(),
                "refused": [], "refused_reasons": Counter(),
                "redactions": {"request": Counter(), "response": Counter()},
                "approvals": {"asked": 0, "granted": 0, "denied": 0},
                "bytes_out": 0, "bytes_in": 0, "recordings": set(), "errors": 0,
                "databases": {},
            }
        t = rec.get("time")
        if t:
            s["first"] = min(s["first"] or t, t)
            s["last"] = max(s["last"] or t, t)
        kind = rec.get("kind", "http")
        host = rec.get("host")
        port = rec.get("port")
        dest = f"{host}:{port}" if host and port not in (None, 80, 443) else str(host)
        if kind == "postgres":
            dest = f"postgres {rec.get('database')}"
            _database(s["databases"], rec)
        if kind in FLOW_KINDS:
            s["flows"] += 1
            if rec.get("decision") != "blocked" or rec.get("code") == "recording_failed":
                s["hosts"][dest] += 1  # contacted (a refused request never left)
        if rec.get("decision") == "blocked":
            reason = rec.get("reason") or rec.get("code") or "refused"
            s["refused"].append({"time": t, "kind": kind, "method": rec.get("method"),
                                 "destination": dest, "path": rec.get("path"),
                                 "code": rec.get("code"), "reason": reason})
            s["refused_reasons"][f"{rec.get('code') or 'blocked'}: {reason}"] += 1
        for direction in ("request", "response"):
            for entity, n in ((rec.get("redactions") or {}).get(direction) or {}).items():
                if isinstance(n, int):
                    s["redactions"][direction][entity] += n
        approval = rec.get("approval")
        if isinstance(approval, dict):
            s["approvals"]["asked"] += 1
            s["approvals"]["granted" if _approved(approval.get("outcome")) else "denied"] += 1
        s["bytes_out"] += int(rec.get("bytes_out") or 0)
        s["bytes_in"] += int(rec.get("bytes_in") or 0)
        if rec.get("recording"):
            s["recordings"].add(rec["recording"])
        if rec.get("error") or rec.get("recording_error"):
            s["errors"] += 1
    out = []
    for s in sessions.values():
        out.append({
            **s,
            "hosts": dict(s["hosts"].most_common()),
            "refused_reasons": dict(s["refused_reasons"].most_common()),
            "redactions": {d: dict(c.most_common()) for d, c in s["redactions"].items()},
            "recordings": sorted(s["recordings"]),
        })
    return out


def _database(dbs: dict, rec: dict) -> None:
    """Per database: connections, statements by type, rows returned, refusals."""
    d = dbs.setdefault(str(rec.get("database")), {"connections": 0, "statements": 0, "types": {},
                                                   "rows": 0, "refused": 0})
    if rec.get("event") == "connection" and rec.get("decision") != "blocked":
        d["connections"] += 1
    if rec.get("event") == "statement":
        d["statements"] += 1
        t = str(rec.get("statement"))
        d["types"][t] = d["types"].get(t, 0) + 1
        d["rows"] += int(rec.get("rows") or 0)
    if rec.get("decision") == "blocked":
        d["refused"] += 1


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _redaction_text(red: dict) -> str:
    parts = []
    for direction, arrow in (("request", "out"), ("response", "in")):
        if red.get(direction):
            parts.append(f"{arrow}: " + ", ".join(f"{k} {v}" for k, v in red[direction].items()))
    return "; ".join(parts) or "-"


def render_text(summaries: list[dict], check: dict) -> str:
    head = ["session", "first", "last", "flows", "refused", "redacted out/in", "approvals a/g/d",
            "bytes out", "bytes in"]
    rows = []
    for s in summaries:
        red_out = sum(s["redactions"]["request"].values())
        red_in = sum(s["redactions"]["response"].values())
        a = s["approvals"]
        rows.append([s["session"], s["first"] or "-", s["last"] or "-", str(s["flows"]),
                     str(len(s["refused"])), f"{red_out}/{red_in}",
                     f"{a['asked']}/{a['granted']}/{a['denied']}",
                     human_bytes(s["bytes_out"]), human_bytes(s["bytes_in"])])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    for s in summaries:
        lines.append("")
        lines.append(f"== {s['session']}  ({s['first']} .. {s['last']})")
        hosts = ", ".join(f"{h} ({n})" for h, n in s["hosts"].items()) or "-"
        lines.append(f"   hosts:      {hosts}")
        if s["refused_reasons"]:
            lines.append("   refused:")
            for reason, n in s["refused_reasons"].items():
                lines.append(f"     {n} x {reason}")
        lines.append(f"   redactions: {_redaction_text(s['redactions'])}")
        a = s["approvals"]
        lines.append(f"   approvals:  asked {a['asked']}, granted {a['granted']}, denied {a['denied']}")
        lines.append(f"   bytes:      out {human_bytes(s['bytes_out'])}, in {human_bytes(s['bytes_in'])}")
        for db, d in s.get("databases", {}).items():
            types = ", ".join(f"{t} {n}" for t, n in sorted(d["types"].items())) or "-"
            lines.append(f"   database {db}: {d['connections']} connection(s), {d['statements']} "
                         f"statement(s) ({types}), {d['rows']} row(s), {d['refused']} refused")
        if s["recordings"]:
            lines.append(f"   recordings: {', '.join(s['recordings'])}")
    lines.append("")
    lines.append(f"integrity: {check['summary']}")
    return "\n".join(lines)


def render_html(report: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["bytes"] = human_bytes
    return env.get_template(TEMPLATE).render(**report)


def build(directory: Path, audit_path: Path | None, key: bytes | None) -> dict:
    """The whole report of a recordings directory: sessions, unreadable lines, integrity."""
    audit_path = audit_path or directory / "audit.jsonl"
    records, bad = load_lines(audit_path)
    res = verify_mod.verify(directory, audit_path, key)
    check = {"ok": res.ok, "lines": res.lines, "flows": res.flows,
             "problems": [str(p) for p in res.problems], "warnings": res.warnings}
    check["summary"] = (f"OK ({res.lines} lines, {res.flows} recorded flows verified)" if res.ok
                        else f"FAILED: {res.problems[0]}")
    return {"directory": str(directory), "audit_log": str(audit_path), "unreadable_lines": bad,
            "sessions": summarize(records), "integrity": check}
