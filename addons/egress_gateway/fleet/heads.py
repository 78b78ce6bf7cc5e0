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


def store_heads(state_url: str) -> dict[str, dict]:
    """instance -> {log, seq, hash, alg, updated} from the store."""
    import psycopg
    from psycopg.rows import dict_row

    from egress_gateway.fleet.settings import parse_state_url

    url = parse_state_url(state_url)
    with psycopg.connect(**url.conninfo(application_name="egress-gateway-verify"),
                         row_factory=dict_row) as conn:
        if conn.execute("SELECT to_regclass('gateway_audit_heads') AS t").fetchone()["t"] is None:
            return {}
        rows = conn.execute("SELECT instance, log, seq, hash, alg, updated::text AS updated "
                            "FROM gateway_audit_heads").fetchall()
    return {r["instance"]: r for r in rows}
