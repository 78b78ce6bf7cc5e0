"""The audit report: per-session summary, terminal table, HTML (the CLI: test_recording_e2e)."""

from __future__ import annotations

import pytest
from egress_gateway.recording import audit_report as report

RECORDS = [
    {"time": "2026-01-01T10:00:00.000Z", "session": "a", "kind": "http", "host": "api.x.com",
     "port": 443, "path": "/v1", "decision": "allowed", "bytes_out": 100, "bytes_in": 1000,
     "redactions": {"request": {"EMAIL_ADDRESS": 2}, "response": {"PERSON": 1}},
     "approval": {"rule": "r", "outcome": "approved", "decided_by": "web", "wait_seconds": 3}},
    {"time": "2026-01-01T10:05:00.000Z", "session": "a", "kind": "http", "host": "api.x.com",
     "port": 443, "path": "/v1", "decision": "allowed", "bytes_out": 50, "bytes_in": 10,
     "redactions": {"request": {"EMAIL_ADDRESS": 1}},
     "approval": {"rule": "r", "outcome": "denied", "decided_by": "timeout", "wait_seconds": 60}},
    {"time": "2026-01-01T10:01:00.000Z", "session": "a", "kind": "http", "host": "evil.com",
     "port": 8080, "path": "/<script>", "decision": "blocked", "code": "blocked",
     "reason": "evil.com is not on the egress allowlist", "bytes_out": 0, "bytes_in": 90},
    {"time": "2026-01-01T10:02:00.000Z", "session": "a", "kind": "connect", "host": "evil.com",
     "port": 443, "decision": "blocked", "code": "blocked",
     "reason": "evil.com is not on the egress allowlist"},
    {"time": "2026-01-01T09:00:00.000Z", "session": "b", "kind": "http", "host": "api.x.com",
     "port": 443, "path": "/", "decision": "allowed", "bytes_out": 1, "bytes_in": 2},
]


def test_summarize():
    a, b = report.summarize(RECORDS)
    assert a["session"] == "a" and b["session"] == "b"
    assert (a["first"], a["last"]) == ("2026-01-01T10:00:00.000Z", "2026-01-01T10:05:00.000Z")
    assert a["flows"] == 3 and a["hosts"] == {"api.x.com": 2}  # refused hosts were not contacted
    assert len(a["refused"]) == 2
    assert a["refused_reasons"] == {"blocked: evil.com is not on the egress allowlist": 2}
    assert a["redactions"] == {"request": {"EMAIL_ADDRESS": 3}, "response": {"PERSON": 1}}
    assert a["approvals"] == {"asked": 2, "granted": 1, "denied": 1}
    assert (a["bytes_out"], a["bytes_in"]) == (150, 1100)


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"),
                                    (5 * 1024 * 1024, "5.0 MB")], ids=["0", "b", "kb", "mb"])
def test_human_bytes(n, text):
    assert report.human_bytes(n) == text


def test_text_and_html_render():
    sessions = report.summarize(RECORDS)
    check = {"ok": False, "summary": "FAILED: line 3: seq 3 was changed", "problems": [],
             "warnings": []}
    text = report.render_text(sessions, check)
    assert "EMAIL_ADDRESS 3" in text and "asked 2, granted 1, denied 1" in text
    assert "2 x blocked: evil.com" in text and "integrity: FAILED: line 3" in text
    page = report.render_html({"directory": "d", "audit_log": "d/audit.jsonl", "unreadable_lines": 0,
                               "sessions": sessions, "integrity": check})
    assert "/<script>" not in page and "/&lt;script&gt;" in page  # autoescaped
    assert page.startswith("<!DOCTYPE html>") and "<link" not in page and "src=" not in page
    assert "EMAIL_ADDRESS" in page and "seq 3 was changed" in page
