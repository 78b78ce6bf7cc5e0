"""The audit chain (seal, unseal, restart after a torn line) and the record builders."""

from __future__ import annotations

import json

import pytest
from egress_gateway.flowstate import refuse, state
from egress_gateway.recording import audit, verify
from mitmproxy.test import tflow


@pytest.mark.parametrize("key", [None, b"k"], ids=["sha256", "hmac"])
def test_seal_unseal_roundtrip(key):
    line, h = audit.seal({"a": "é", "n": 1, "hash": "ignored"}, 3, audit.GENESIS, key)
    body, stated = audit.unseal(line.encode())
    assert stated == h == audit.line_hash(body, key)
    rec = json.loads(line)
    assert (rec["seq"], rec["prev"], rec["hash"]) == (3, audit.GENESIS, h)
    assert list(rec)[-1] == "hash"


def test_hmac_differs_from_plain():
    assert audit.seal({"a": 1}, 1, audit.GENESIS, None)[1] != audit.seal({"a": 1}, 1, audit.GENESIS, b"k")[1]


def test_audit_log_continues_chain_after_restart_and_torn_line(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.write({"a": 1})
    log.close()
    with open(tmp_path / "audit.jsonl", "ab") as fh:
        fh.write(b'{"torn":')  # a crash in the middle of a line
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.write({"b": 2})
    log.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert lines[1] == '{"torn":'
    assert json.loads(lines[2])["seq"] == 2 and json.loads(lines[2])["prev"] == json.loads(lines[0])["hash"]
    res = verify.verify(tmp_path)
    assert [p.line for p in res.problems] == [2]


def test_timestamp_formats():
    assert audit.timestamp(0) == "1970-01-01T00:00:00Z"
    assert audit.timestamp(1.2345, millis=True) == "1970-01-01T00:00:01.234Z"
    assert audit.timestamp().endswith("Z") and len(audit.timestamp()) == 20


def test_flow_record_reads_the_state_without_creating_it():
    f = tflow.tflow(resp=True)
    f.metadata.pop("gateway", None)
    rec = audit.flow_record(f)
    assert "gateway" not in f.metadata
    assert rec["decision"] == "allowed" and rec["code"] is None and rec["kind"] == "http"
    st = state(f)
    st.redactions = {"request": {"EMAIL_ADDRESS": 1}}
    refuse(f, "sensitive_data", "no")
    rec = audit.flow_record(f)
    assert (rec["decision"], rec["code"], rec["redactions"]) == (
        "blocked", "sensitive_data", {"request": {"EMAIL_ADDRESS": 1}})
    assert list(rec)[:4] == ["time", "flow", "kind", "session"]


def test_dns_record():
    f = tflow.tdnsflow()
    st = state(f)
    st.decision, st.code, st.identity, st.reason = "blocked", "blocked", "dns", "refused x"
    rec = audit.dns_record(f, "evil.com")
    assert list(rec) == ["time", "kind", "flow", "session", "host", "decision", "code",
                         "identity", "reason"]
    assert rec["kind"] == "dns" and rec["host"] == "evil.com" and rec["reason"] == "refused x"
    assert rec["session"] == str(f.client_conn.peername[0])


def test_connection_record():
    f = tflow.tflow()
    rec = audit.connection_record(f.client_conn, f.server_conn, session_id=None, host="evil.com",
                                  port=443, code=None, identity="sni", reason="not listed")
    assert list(rec) == ["time", "kind", "session", "transport", "host", "port", "decision",
                         "code", "identity", "reason"]
    assert rec["session"] == str(f.client_conn.peername[0]) and rec["code"] == "blocked"
    rec = audit.connection_record(f.client_conn, f.server_conn, session_id="s1", host="h",
                                  port=1, code="dns_error", identity="connect", reason=None)
    assert rec["session"] == "s1" and rec["code"] == "dns_error"


def test_alert_record():
    f = tflow.tflow()
    f.request.path = "/v1/x?key=SECRET"
    rec = audit.alert_record(f, "credential_leak", credential="gh", value="raw", where="the body")
    assert list(rec) == ["time", "kind", "alert", "flow", "session", "method", "host", "port",
                         "path", "credential", "value", "where", "decision", "code"]
    assert rec["path"] == "/v1/x" and rec["code"] == "credential_leak"
    hidden = audit.alert_record(f, "credential_leak", show_path=False, credential="gh",
                                value="raw", where="the URL")
    assert hidden["path"] is None and "SECRET" not in json.dumps(hidden)
