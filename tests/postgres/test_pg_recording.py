"""End to end: statements recorded as mitmproxy TCP flows; verify and audit include them."""

from __future__ import annotations

import json
import subprocess

import psycopg
from gwharness import RUN
from mitmproxy import io
from pgharness import PASSWORDS, PLACEHOLDER, RAW_VALUES


def _flows(rec_dir):
    flows = []
    for f in sorted(rec_dir.rglob("*.mitm")):
        with open(f, "rb") as fh:
            flows.extend(io.FlowReader(fh).stream())
    return flows


def test_statements_are_recorded_masked_and_verifiable(pg_gateway, tmp_path):
    with psycopg.connect(pg_gateway.dsn(session="rec-session"), autocommit=True) as c:
        c.execute("SELECT * FROM customers ORDER BY id").fetchall()
        c.execute("SELECT name FROM customers WHERE id = %s", (1,)).fetchall()
    work = pg_gateway.gw.workdir
    rec_dir = work / "recordings"
    files = list(rec_dir.rglob("rec-session*.mitm"))
    assert files, list(rec_dir.rglob("*"))
    raw = b"".join(f.read_bytes() for f in files)
    for v in RAW_VALUES:
        assert v.encode() not in raw
    every = b"".join(f.read_bytes() for f in rec_dir.rglob("*.mitm"))  # wrong logins included
    for v in PASSWORDS.values():
        assert v.encode() not in every
    flows = [f for f in _flows(rec_dir) if f.metadata.get("gateway", {}).get("session")
             == "rec-session"]
    assert all(f.type == "tcp" for f in flows)
    login = [f for f in flows if f.metadata["gateway"].get("event") == "connection"]
    assert login and PLACEHOLDER.encode() in b"".join(m.content for m in login[0].messages)
    stmts = [f for f in flows if f.metadata["gateway"].get("event") == "statement"]
    select = [f for f in stmts if f.metadata["gateway"]["text"].startswith("SELECT * FROM")][0]
    body = b"".join(m.content for m in select.messages if not m.from_client)
    assert b"<EMAIL_ADDRESS>" in body and b"<US_SSN>" in body
    assert select.metadata["gateway"]["redactions"]["response"]["EMAIL_ADDRESS"] == 3
    # mitmdump reads the recording
    out = subprocess.run([str(RUN.parent / ".venv" / "bin" / "mitmdump"), "-nr", str(files[0])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # verify and audit cover the statement lines and their recordings
    v = subprocess.run([str(RUN), "verify", str(rec_dir), "--audit", str(pg_gateway.gw.audit_path)],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    report = tmp_path / "report.json"
    html = tmp_path / "report.html"
    a = subprocess.run([str(RUN), "audit", str(rec_dir), "--audit", str(pg_gateway.gw.audit_path),
                        "--json", str(report), "--html", str(html)],
                       capture_output=True, text=True, timeout=120)
    assert a.returncode == 0, a.stdout + a.stderr
    doc = json.loads(report.read_text())
    sess = [s for s in doc["sessions"] if s["session"] == "rec-session"][0]
    assert sess["databases"]["crm"]["statements"] >= 2
    assert "Databases" in html.read_text()
