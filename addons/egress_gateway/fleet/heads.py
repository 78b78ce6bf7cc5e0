"""The audit across a fleet: which instance wrote a log, and whether a log still holds the head
its instance checkpointed to the store (a log cut or rewritten after the fact does not)."""

from __future__ import annotations

from pathlib import Path

from egress_gateway.recording.audit_report import load_lines


def instances_of(audit_path: Path) -> list[str]:
    """The instance ids named in a log's lines, in order of first appearance."""
    try:
        records, _ = load_lines(audit_path)
    except OSError:
        return []
    return list(dict.fromkeys(str(r["instance"]) for r in records if r.get("instance")))


def check_head(audit_path: Path, seq: int, head: str) -> str | None:
    """None when the log has line `seq` with hash `head`; else the problem."""
    try:
        records, _ = load_lines(audit_path)
    except OSError as e:
        return f"cannot read {audit_path}: {e}"
    for rec in records:
        if rec.get("seq") == seq:
            if rec.get("hash") == head:
                return None
            return (f"line seq {seq} does not have the hash the store checkpointed "
                    "(the log was rewritten)")
    return f"the log ends before seq {seq}, which the store checkpointed (lines were cut)"
