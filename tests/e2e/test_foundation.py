"""End to end: run_gateway.sh on a free loopback port, real clients, loopback upstreams."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import pytest
from gwharness import REPO, RUN, Gateway, free_port, policy_yaml

PIN = "api.test.example"


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=20)


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes to the gateway and read until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"}" in out:
                    break
        except TimeoutError:
            pass
    return out


def assert_refusal(status: int, headers, body: str, code: str = "blocked", http_status=403):
    assert status == http_status
    assert headers.get("x-egress-gateway") == code
    doc = json.loads(body)
    assert doc["error"] == code and doc["reason"]
    return doc


@pytest.fixture
def gw(tmp_path, confdir, upstream, tls_upstream):
    policy = policy_yaml(
        allow=[{"host": PIN, "ports": [upstream.port, tls_upstream.port]}],
        resolve={PIN: "127.0.0.1"},
    )
    g = Gateway(tmp_path, policy, confdir=confdir)
    yield g
    g.stop()


def test_http_absolute_form_allowed_and_refused(gw, upstream):
    ok = httpx.get(f"http://{PIN}:{upstream.port}/hello", proxy=gw.proxy)
    assert ok.status_code == 200 and ok.json()["path"] == "/hello"
    assert upstream.connections == 1

    r = httpx.get(f"http://evil.test.example:{upstream.port}/x", proxy=gw.proxy)
    doc = assert_refusal(r.status_code, r.headers, r.text)
    assert doc["host"] == "evil.test.example" and doc["port"] == upstream.port
    assert upstream.connections == 1 and len(upstream.requests) == 1


def test_https_connect_with_gateway_ca(gw, tls_upstream):
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.get(f"https://{PIN}:{tls_upstream.port}/secure")
        assert r.status_code == 200 and r.json()["upstream"] == "tls"
    res = curl("--cacert", gw.ca_cert, "-x", gw.proxy, f"https://{PIN}:{tls_upstream.port}/c")
    assert res.returncode == 0 and '"upstream": "tls"' in res.stdout


def test_refused_connect_gets_403_on_the_connect(gw, tls_upstream):
    before = tls_upstream.connections
    resp = raw(gw.port, b"CONNECT evil.test.example:443 HTTP/1.1\r\nHost: evil.test.example:443\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert b"X-Egress-Gateway: blocked" in head
    assert json.loads(body)["host"] == "evil.test.example"
    res = curl("--cacert", gw.ca_cert, "-x", gw.proxy, "https://evil.test.example/")
    assert res.returncode != 0 and "403" in res.stderr
    assert tls_upstream.connections == before


def test_port_not_allowed(gw, upstream):
    r = httpx.get(f"http://{PIN}:{upstream.port + 1}/x", proxy=gw.proxy)
    doc = assert_refusal(r.status_code, r.headers, r.text)
    assert "port" in doc["reason"]


@pytest.mark.parametrize("request_line", [
    b"GET http://user:pw@api.test.example:{port}/ HTTP/1.1\r\nHost: api.test.example:{port}\r\n\r\n",
    b"CONNECT user:pw@api.test.example:{port} HTTP/1.1\r\n\r\n",
], ids=["absolute-form", "connect"])
def test_userinfo_in_target_refused(gw, upstream, request_line):
    resp = raw(gw.port, request_line.replace(b"{port}", str(upstream.port).encode()))
    assert resp.startswith(b"HTTP/1.1 403") or resp.startswith(b"HTTP/1.1 400"), resp[:200]
    assert upstream.connections == 0


def test_host_header_must_match_destination(gw, upstream):
    resp = raw(gw.port, f"GET http://{PIN}:{upstream.port}/ HTTP/1.1\r\n"
                        f"Host: other.test.example:{upstream.port}\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 403"), resp[:300]
    assert upstream.connections == 0


def test_audit_lines(gw, upstream):
    httpx.get(f"http://{PIN}:{upstream.port}/a?email=alice@example.com", proxy=gw.proxy,
              headers={"Authorization": "Bearer sekrit-value"})
    httpx.get(f"http://evil.test.example:{upstream.port}/b", proxy=gw.proxy)
    lines = gw.audit()
    assert [line["decision"] for line in lines] == ["allowed", "blocked"]
    first, second = lines
    assert first["host"] == PIN and first["port"] == upstream.port and first["path"] == "/a"
    assert first["status"] == 200 and first["method"] == "GET" and first["session"] == "127.0.0.1"
    assert second["reason"] and second["status"] == 403 and second["code"] == "blocked"
    raw_log = gw.audit_path.read_text()
    assert "alice@example.com" not in raw_log and "sekrit-value" not in raw_log
    for key in ("time", "flow", "session", "method", "host", "port", "path", "decision",
                "reason", "status"):
        assert key in first


def test_report_mode_blocks_nothing_but_audits(tmp_path, confdir, upstream):
    policy = policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}],
                         resolve={PIN: "127.0.0.1", "evil.test.example": "127.0.0.1"},
                         mode="report")
    gw = Gateway(tmp_path, policy, confdir=confdir)
    try:
        r = httpx.get(f"http://evil.test.example:{upstream.port}/x", proxy=gw.proxy)
        assert r.status_code == 200
        (line,) = gw.audit()
        assert line["decision"] == "would_block" and "not on the egress allowlist" in line["reason"]
    finally:
        gw.stop()


def test_policy_hot_reload_and_broken_edit(gw, upstream):
    other = f"http://other.test.example:{upstream.port}/"
    assert httpx.get(other, proxy=gw.proxy).status_code == 403
    gw.policy_path.write_text(policy_yaml(
        allow=[{"host": PIN, "ports": [upstream.port]},
               {"host": "other.test.example", "ports": [upstream.port]}],
        resolve={PIN: "127.0.0.1", "other.test.example": "127.0.0.1"}))
    gw.wait_for("reloaded", timeout=10)
    assert httpx.get(other, proxy=gw.proxy).status_code == 200
    mark = len(gw.log_text())
    gw.policy_path.write_text("version: 1\negress:\n  allow:\n    - host: '*'\n")
    gw.wait_for("policy reload FAILED", timeout=10, start=mark)
    assert "'*' matches everything" in gw.log_text()[mark:]
    assert httpx.get(other, proxy=gw.proxy).status_code == 200  # last good policy still applies
    assert httpx.get(f"http://evil.test.example:{upstream.port}/", proxy=gw.proxy).status_code == 403


def test_repeated_set_is_refused():
    port = free_port()
    res = subprocess.run(
        [str(RUN), "-p", str(port), "--set", "gateway_policy=a.yaml", "--set", "gateway_policy=b.yaml"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "given twice" in res.stderr and "gateway_policy" in res.stderr


def test_broken_policy_stops_startup(tmp_path, confdir):
    bad = REPO / "tests" / "data" / "policies" / "star_host.yaml"
    gw = Gateway(tmp_path, bad, confdir=confdir, wait=False)
    try:
        assert gw.proxy and gw.proc.wait(60) != 0
        text = gw.log_text()
        assert f"{bad}: egress.allow[3].host: '*' matches everything; name a domain" in text
        assert "gateway ready" not in text
    finally:
        gw.stop()


def test_check_policy_command():
    ok = subprocess.run([str(RUN), "check-policy", "policies/default.yaml"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = subprocess.run([str(RUN), "check-policy", "tests/data/policies/many_problems.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.count("many_problems.yaml: ") == 4


def _script_copy(tmp_path, prefix: str = "") -> str:
    script = tmp_path / "gateway.py"
    script.write_text(prefix + (REPO / "addons" / "gateway.py").read_text())
    return str(script)


def test_broken_script_lets_nothing_through(tmp_path, confdir, upstream):
    script = _script_copy(tmp_path)
    policy = policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}], resolve={PIN: "127.0.0.1"})
    gw = Gateway(tmp_path, policy, confdir=confdir, env={"GATEWAY_SCRIPT": script})
    try:
        assert httpx.get(f"http://{PIN}:{upstream.port}/", proxy=gw.proxy).status_code == 200
        mark = len(gw.log_text())
        time.sleep(1.1)  # mtime granularity for mitmproxy's script watcher
        with open(script, "a") as fh:
            fh.write("\nthis is not python(\n")
        gw.wait_for("SyntaxError", timeout=15, start=mark)
        before = upstream.connections
        r = httpx.get(f"http://{PIN}:{upstream.port}/", proxy=gw.proxy)
        assert_refusal(r.status_code, r.headers, r.text, "gateway_unavailable", 503)
        with httpx.Client(proxy=gw.proxy, verify=False) as c:
            with pytest.raises(httpx.ProxyError):
                c.get(f"https://{PIN}:{upstream.port}/")
        assert upstream.connections == before
    finally:
        gw.stop()


def test_nothing_listens_before_ready(tmp_path, confdir):
    script = _script_copy(tmp_path, "import time\ntime.sleep(3)\n")
    gw = Gateway(tmp_path, REPO / "policies" / "default.yaml", confdir=confdir,
                 env={"GATEWAY_SCRIPT": script}, wait=False)
    try:
        gw.wait_for("Loading script", timeout=30)
        refused = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
            refused += 1
            time.sleep(0.1)
        assert refused >= 10
        gw.wait_for("gateway ready", timeout=30)
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
    finally:
        gw.stop()


def test_run_gateway_reuses_venv():
    start = time.monotonic()
    res = subprocess.run([str(RUN), "check-policy", "policies/default.yaml"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "setting up" not in res.stderr  # the second run installs nothing
    assert shutil.which("curl")
    assert time.monotonic() - start < 30
