"""Credential injection end to end: the real gateway under mitmweb, the official anthropic SDK
with a placeholder key, a loopback Messages API stub that answers slowly, and mitmweb's REST
API read while the request is in flight and afterwards.

The real key is a value only the stub and the gateway's environment know; every check on
files and on mitmweb is on raw bytes.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from gwharness import RUN, Gateway, Upstream, free_port, policy_yaml
from h2stub import H2Upstream

API = "api.test.example"
OTHER = "other.test.example"
REAL = "sk-ant-api03-REALKEY-e2e-4f1c9a7b2d8e6f0a3c5b7d9e1f2a4c6e"
PH = "gateway-placeholder-anthropic"
ENV = "GW_TEST_ANTHROPIC_KEY"
WEB_PASSWORD = "web-secret-for-tests"
SLOW = 2.0  # seconds the stub holds its answer when asked to be slow

MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test",
    "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1},
}


def forms(value: str) -> list[bytes]:
    """The raw forms of `value` a leak into a file would take."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), json.dumps(value).encode()[1:-1]]


def assert_absent(data: bytes, what: str) -> None:
    for form in forms(REAL):
        assert form not in data, f"the real key appears in {what}"


def messages_handler(record: dict):
    """The Messages API stub: slow on request, echoes the key it got when asked."""
    body = json.loads(record["body"] or "{}")
    text = body.get("messages", [{}])[0].get("content", "")
    if "slow" in text:
        time.sleep(SLOW)
    answer = dict(MESSAGE)
    headers = {"Content-Type": "application/json", "request-id": "req_1"}
    if "echo" in text:
        key = record["headers"].get("authorization", "").removeprefix("Bearer ")
        form = text.partition("echo-")[2].split()[0] if "echo-" in text else "literal"
        key = ENCODED[form.removesuffix("-stream")](key)
        answer["content"] = [{"type": "text", "text": f"you sent {key}"}]
        headers["x-echo-key"] = key
        if form.endswith("-stream"):  # the same answer as a server-sent event stream
            headers["Content-Type"] = "text/event-stream"
            return 200, headers, ("event: content_block_delta\ndata: " + json.dumps(
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": f"you sent {key}"}}) + "\n\n").encode()
    return 200, headers, json.dumps(answer).encode()


# Encoded forms of a value an upstream may echo (issue 16): each must reach the agent as the
# same form of the placeholder.
ENCODED = {
    "literal": lambda v: v,
    "hex": lambda v: v.encode().hex(),
    "HEX": lambda v: v.encode().hex().upper(),
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
    "reversed": lambda v: v[::-1],
    "spaced": lambda v: " ".join(v),
    "dashed": lambda v: "-".join(v),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    api = Upstream("api", tls=True, cert_dir=cert_dir, handler=messages_handler)
    other = Upstream("other", tls=True, cert_dir=cert_dir)
    h2up = H2Upstream(cert_dir, delay=SLOW)
    work = tmp_path_factory.mktemp("cred-e2e")
    web_port = free_port()
    policy = policy_yaml(
        allow=[{"host": API, "ports": [api.port, h2up.port]}, {"host": OTHER, "ports": [other.port]},
               {"host": "*.wild.test.example"}],
        resolve={API: "127.0.0.1", OTHER: "127.0.0.1"},
        # The anthropic SDK 2.x sends `Authorization: Bearer <key>`; Claude Code sends x-api-key:
        # one entry for each, same secret and placeholder; the header the agent sent is replaced.
        credentials=[{"name": "anthropic", "host": API, "header": "Authorization", "format": "bearer",
                      "env": ENV, "placeholder": PH},
                     {"name": "anthropic-x-api-key", "host": API, "header": "x-api-key", "env": ENV,
                      "placeholder": PH}],
    )
    (work / "policy.yaml").write_text(policy)
    gw = Gateway(work, work / "policy.yaml", confdir=confdir, command=[str(RUN), "web"],
                 extra_args=["--set", f"web_port={web_port}", "--set", f"web_password={WEB_PASSWORD}"],
                 env={ENV: REAL})
    yield {"gw": gw, "api": api, "other": other, "h2": h2up, "web": f"http://127.0.0.1:{web_port}",
           "work": work}
    gw.stop()
    api.close()
    other.close()
    h2up.close()


def web_get(env, path: str) -> bytes:
    r = httpx.get(env["web"] + path, headers={"Authorization": f"Bearer {WEB_PASSWORD}"}, timeout=10)
    assert r.status_code == 200, (path, r.status_code)
    return r.content


def web_snapshot(env) -> bytes:
    """Everything mitmweb serves about every flow: the list, a full dump, every body."""
    flows = web_get(env, "/flows")
    out = flows + web_get(env, "/flows/dump")
    for f in json.loads(flows):
        for part in ("request", "response"):
            if f.get(part) and f[part].get("contentLength"):
                out += web_get(env, f"/flows/{f['id']}/{part}/content.data")
    return out


SDK_SCRIPT = """
import json, sys, anthropic
client = anthropic.Anthropic(max_retries=0)  # ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL from the env
raw = client.messages.with_raw_response.create(
    model="claude-test", max_tokens=16, messages=[{"role": "user", "content": sys.argv[1]}])
msg = raw.parse()
print(json.dumps({"text": msg.content[0].text, "echo": raw.headers.get("x-echo-key")}))
"""


def run_sdk(env, prompt: str) -> subprocess.Popen:
    """The official anthropic SDK in its own process, configured as an agent would be: the
    placeholder key, the gateway as HTTPS proxy, the gateway's CA trusted."""
    gw = env["gw"]
    agent_env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    agent_env.update(ANTHROPIC_API_KEY=PH, ANTHROPIC_BASE_URL=f"https://{API}:{env['api'].port}",
                     HTTPS_PROXY=gw.proxy, SSL_CERT_FILE=gw.ca_cert, REQUESTS_CA_BUNDLE=gw.ca_cert)
    return subprocess.Popen([sys.executable, "-c", SDK_SCRIPT, prompt], env=agent_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sdk_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


def in_flight(env, path_part: str, client, timeout: float = 40) -> dict:
    """Wait until mitmweb shows a flow to `path_part` that has no response yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(client, dict):
            assert "error" not in client, client["error"]
        else:
            assert client.poll() is None, client.communicate()
        for f in json.loads(web_get(env, "/flows")):
            if path_part in f["request"]["path"] and not f.get("response"):
                return f
        time.sleep(0.05)
    raise AssertionError("the flow never showed up in mitmweb while in flight")


def test_sdk_gets_through_and_only_the_wire_holds_the_key(env):
    proc = run_sdk(env, "slow hi")
    flow = in_flight(env, "/v1/messages", proc)
    # While the stub holds its answer, mitmweb's view of the flow holds the placeholder only.
    during = web_snapshot(env)
    assert_absent(during, "mitmweb during the request")
    headers = dict((k.lower(), v) for k, v in flow["request"]["headers"])
    assert headers["authorization"] == f"Bearer {PH}" and "x-api-key" not in headers
    assert sdk_result(proc)["text"] == "hello"

    # The stub received the real key, exactly once, in the bound header.
    (got,) = [r for r in env["api"].requests if "slow" in r["body"]]
    assert got["headers"]["authorization"] == f"Bearer {REAL}"
    assert "x-api-key" not in got["headers"]  # only the header the agent sent is replaced
    assert REAL not in json.dumps({k: v for k, v in got["headers"].items() if k != "authorization"})

    after = web_snapshot(env)
    assert_absent(after, "mitmweb after the request")
    done = next(f for f in json.loads(web_get(env, "/flows")) if f["id"] == flow["id"])
    assert dict((k.lower(), v) for k, v in done["request"]["headers"])["authorization"] == f"Bearer {PH}"

    # Audit log, recordings, gateway log: every file the gateway wrote, as raw bytes.
    gw = env["gw"]
    files = [p for p in Path(env["work"]).rglob("*") if p.is_file()]
    assert gw.audit_path in files and any(p.suffix == ".mitm" for p in files), files
    for p in files:
        assert_absent(p.read_bytes(), str(p))
    line = next(a for a in gw.audit() if a.get("flow") == flow["id"])
    assert line["decision"] == "allowed" and line["status"] == 200


def test_echoed_key_is_replaced_by_the_placeholder(env):
    got = sdk_result(run_sdk(env, "echo"))
    assert got == {"text": f"you sent {PH}", "echo": PH}
    assert env["api"].requests[-1]["headers"]["authorization"] == f"Bearer {REAL}"  # echoed back
    assert_absent(web_snapshot(env), "mitmweb after an echo")
    assert_absent(env["gw"].log_path.read_bytes(), "the gateway log")


@pytest.mark.parametrize("form", [f for f in ENCODED if f != "literal"]
                         + ["hex-stream", "reversed-stream", "spaced-stream"])
def test_echoed_key_in_an_encoded_form_becomes_that_form_of_the_placeholder(env, form):
    gw, api = env["gw"], env["api"]
    enc = ENCODED[form.removesuffix("-stream")]
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{API}:{api.port}/v1/messages", headers={"Authorization": f"Bearer {PH}"},
                   json={"model": "claude-test", "max_tokens": 8,
                         "messages": [{"role": "user", "content": f"echo-{form} please"}]})
    assert r.status_code == 200, r.text[:300]
    assert api.requests[-1]["headers"]["authorization"] == f"Bearer {REAL}"
    text = r.text
    if form.endswith("-stream"):  # what the agent reads: the text deltas joined
        text = "".join(json.loads(line[6:])["delta"]["text"] for line in r.text.splitlines()
                       if line.startswith("data: "))
    assert enc(REAL) not in text and enc(REAL) not in r.headers.get("x-echo-key", "")
    assert enc(PH) in text, r.text[:300]
    # (the real key's base64 has no padding: its placeholder form may keep or lose its "=")
    assert r.headers["x-echo-key"].rstrip("=") == enc(PH).rstrip("=")


@pytest.mark.parametrize("form", ["hex", "HEX", "reversed", "spaced", "base64"])
def test_real_key_encoded_to_another_host_is_refused(env, form):
    gw, other = env["gw"], env["other"]
    before = len(other.requests)
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{OTHER}:{other.port}/x",
                   json={"note": f"k={ENCODED[form](REAL)}"})
    assert r.status_code == 403 and r.headers["x-egress-gateway"] == "credential_leak", r.text
    assert len(other.requests) == before


@pytest.mark.parametrize("how", ["header", "url", "query", "body", "body-base64"])
def test_placeholder_to_another_host_is_refused(env, how):
    gw, other = env["gw"], env["other"]
    before = len(other.requests)
    url = f"https://{OTHER}:{other.port}/collect"
    kwargs: dict = {}
    if how == "header":
        kwargs["headers"] = {"X-Api-Key": PH}
    elif how == "url":
        url = f"https://{OTHER}:{other.port}/collect/{PH}"
    elif how == "query":
        url += "?k=" + PH.upper()
    elif how == "body":
        kwargs["json"] = {"note": f"my key is {PH}"}
    elif how == "body-base64":
        kwargs["content"] = base64.b64encode(f"key={PH}".encode())
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(url, **kwargs)
    assert r.status_code == 403, r.text
    assert r.headers["x-egress-gateway"] == "credential_leak"
    doc = r.json()
    assert doc["error"] == "credential_leak" and doc["credential"] == "anthropic"
    assert PH not in r.text
    alert = [a for a in gw.audit() if a.get("kind") == "alert"][-1]
    assert alert["alert"] == "credential_leak" and alert["credential"] == "anthropic"
    assert alert["host"] == OTHER and alert["flow"]
    assert len(other.requests) == before


def test_placeholder_in_an_allowed_subdomain_is_refused_at_connect(env):
    """`*.wild.test.example` is allowed: the placeholder as a label is refused before any DNS."""
    gw = env["gw"]
    target = f"{PH}.wild.test.example:443"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 403"), head[:200]
    assert b"X-Egress-Gateway: credential_leak" in head


def test_real_key_to_another_host_is_refused(env):
    gw, other = env["gw"], env["other"]
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{OTHER}:{other.port}/x", content=f"k={REAL}".encode())
    assert r.status_code == 403 and r.headers["x-egress-gateway"] == "credential_leak"
    assert r.json()["credential"] == "anthropic"
    assert not any("/x" == q["path"] for q in other.requests)


def h2_get(gw, authority: str, path: str, headers: dict) -> tuple[int, bytes]:
    """An HTTP/2 GET through the gateway (CONNECT, TLS with ALPN h2 and the gateway's CA)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=gw.ca_cert)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(sock, server_hostname=authority.split(":")[0])
    assert s.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                          (":path", path), *headers.items()], end_stream=True)
    s.sendall(conn.data_to_send())
    status, body = 0, b""
    with s:
        while True:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    return status, body
            s.sendall(conn.data_to_send())
    return status, body


@pytest.mark.parametrize("client_h2", [False, True], ids=["httpx-client", "raw-h2-client"])
def test_http2_upstream_in_flight(env, client_h2):
    """The upstream speaks HTTP/2 only (so the key goes out in mitmproxy's HTTP/2 client's
    header list); the client is httpx (offers h2 upstream, speaks HTTP/1.1 to the gateway) or a
    raw HTTP/2 client. mitmweb never sees the key."""
    gw, up = env["gw"], env["h2"]
    result: dict = {}
    path = f"/v1/models/{'h2' if client_h2 else 'h1'}"

    def call():
        try:
            if client_h2:
                result["r"] = h2_get(gw, f"{API}:{up.port}", path, {"authorization": f"Bearer {PH}"})
            else:
                with httpx.Client(proxy=gw.proxy, http2=True,
                                  verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
                    r = c.get(f"https://{API}:{up.port}{path}", headers={"Authorization": f"Bearer {PH}"})
                    result["r"] = (r.status_code, r.content)
        except Exception as e:  # reported by in_flight or below
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    flow = in_flight(env, path, result)
    if client_h2:
        assert flow["request"]["http_version"] == "HTTP/2.0"
    assert_absent(web_snapshot(env), "mitmweb during an HTTP/2 request")
    t.join(20)
    assert "error" not in result, result.get("error")
    status, body = result["r"]
    assert status == 200 and json.loads(body) == {"h2": True, "path": path}
    (got,) = [r for r in up.requests if r[":path"] == path]
    assert got["authorization"] == f"Bearer {REAL}"
    assert_absent(web_snapshot(env), "mitmweb after an HTTP/2 request")


def test_missing_environment_variable_stops_startup(tmp_path, confdir):
    policy = policy_yaml(allow=[{"host": API}], credentials=[
        {"name": "anthropic", "host": API, "header": "x-api-key", "env": "GW_TEST_UNSET_VAR",
         "placeholder": PH}])
    assert "GW_TEST_UNSET_VAR" not in os.environ
    (tmp_path / "policy.yaml").write_text(policy)
    gw = Gateway(tmp_path, tmp_path / "policy.yaml", confdir=confdir, wait=False)
    gw.proc.wait(60)
    try:
        assert gw.proc.returncode != 0
        text = gw.log_text()
        assert (f"{gw.policy_path}: credentials[0]: credential 'anthropic': environment variable "
                "GW_TEST_UNSET_VAR is not set") in text, text
        assert "gateway ready" not in text
    finally:
        gw.stop()


def test_reload_with_a_missing_variable_keeps_the_last_good_policy(tmp_path, confdir, cert_dir):
    up = Upstream("api", tls=True, cert_dir=cert_dir)
    entry = {"name": "anthropic", "host": API, "header": "x-api-key", "env": ENV, "placeholder": PH}
    good = policy_yaml(allow=[{"host": API, "ports": [up.port]}], resolve={API: "127.0.0.1"},
                       credentials=[entry])
    (tmp_path / "policy.yaml").write_text(good)
    gw = Gateway(tmp_path, tmp_path / "policy.yaml", confdir=confdir, env={ENV: REAL})
    try:
        mark = len(gw.log_text())
        gw.policy_path.write_text(good.replace(ENV, "GW_TEST_UNSET_ON_RELOAD"))
        gw.wait_for("policy reload FAILED", timeout=10, start=mark)
        assert "credential 'anthropic': environment variable GW_TEST_UNSET_ON_RELOAD is not set" \
            in gw.log_text()[mark:]
        with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
            r = c.get(f"https://{API}:{up.port}/v1/models", headers={"x-api-key": PH})
        assert r.status_code == 200
        assert up.requests[-1]["headers"]["x-api-key"] == REAL  # the last good policy injects
        assert_absent(gw.log_path.read_bytes(), "the gateway log")
    finally:
        gw.stop()
        up.close()
