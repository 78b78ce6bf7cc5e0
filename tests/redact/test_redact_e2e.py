"""End to end through run_gateway.sh: the anthropic SDK, an internal API, byte-exact pass-through.

One gateway for the module. Its redact section is the shipped default's, with the Messages API
rule pointed at the loopback stub's name (api.test.example) instead of api.anthropic.com.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import socket
import ssl
import statistics
import threading
import time
from pathlib import Path

import anthropic
import httpx
import pytest
import yaml
from gwharness import REPO, Gateway, Upstream, policy_yaml

API = "api.test.example"
INTERNAL = "internal.test.example"
RAW = "raw.test.example"  # redaction disabled by a rule: the baseline for latency
FIXTURE = REPO / "tests" / "data" / "claude_code_request.json"
HMAC_KEY = b"webhook-signing-key"

SYSTEM = ("You are a helpful agent built on Anthropic's Claude Agent SDK. "
          "Maintainer: Ann Lee <ann@anthropic.com>.")
MODEL = "claude-sonnet-4-5-20250929"


def shipped_redact(api_host: str) -> dict:
    redact = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())["redact"]
    for rule in redact["rules"]:
        rule["hosts"] = [api_host if h == "api.anthropic.com" else h for h in rule["hosts"]]
    redact["rules"].append({"hosts": [RAW], "request": {"enabled": False},
                            "response": {"enabled": False}})
    return redact


def messages_stub(record):
    body = json.loads(record["body"]) if record["body"] else {}
    if record["path"].startswith("/v1/messages"):
        reply = {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": body.get("model", MODEL),
            "content": [{"type": "text", "text": "I wrote to bob.smith@example.com for you."}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 9},
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(reply).encode()
    return 404, {"Content-Type": "application/json"}, b'{"error": "not found"}'


def internal_stub(record):
    path = record["path"]
    if path == "/customer":
        doc = {"id": 7, "name": "Customer record", "email": "carol.jones@example.com",
               "card": "4111 1111 1111 1111", "note": "nothing else"}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
    if path == "/customer.gz":
        doc = json.dumps({"email": "dave@example.com", "pad": "x" * 2000}).encode()
        return 200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(doc)
    if path == "/image":
        return 200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    if path == "/webhook":
        sig = hmac.new(HMAC_KEY, record["body"].encode(), hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(sig, record["headers"].get("x-signature", ""))
        return (200 if ok else 401), {"Content-Type": "text/plain"}, b"ok" if ok else b"bad signature"
    return 200, {"Content-Type": "application/json"}, b'{"ok": true}'


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    api = Upstream("api", tls=True, cert_dir=cert_dir, handler=messages_stub)
    internal = Upstream("internal", handler=internal_stub)
    work = tmp_path_factory.mktemp("redact-e2e")
    policy = policy_yaml(
        allow=[{"host": API, "ports": [api.port]},
               {"host": INTERNAL, "ports": [internal.port]},
               {"host": RAW, "ports": [internal.port]}],
        resolve={API: "127.0.0.1", INTERNAL: "127.0.0.1", RAW: "127.0.0.1"},
        detection={**yaml.safe_load((REPO / "policies" / "default.yaml").read_text())["detection"],
                   "operators": {"PEM_PRIVATE_KEY": {"type": "block"}}},
        redact=shipped_redact(API),
    )
    policy_path = work / "policy.yaml"
    policy_path.write_text(policy)
    gw = Gateway(work, policy_path, confdir=confdir)
    yield gw, api, internal
    gw.stop()
    api.close()
    internal.close()


def sdk_client(gw, api) -> anthropic.Anthropic:
    ctx = ssl.create_default_context(cafile=gw.ca_cert)
    return anthropic.Anthropic(
        api_key="sk-ant-api03-test-key-not-real", base_url=f"https://{API}:{api.port}",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=gw.proxy, verify=ctx),
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK warns about the model id
def test_anthropic_sdk_messages_call_is_redacted(env):
    gw, api, _ = env
    client = sdk_client(gw, api)
    msg = client.messages.create(
        model=MODEL, max_tokens=256, system=SYSTEM,
        tools=[{"name": "lookup", "description": "Look up a customer by e-mail, e.g. ann@anthropic.com",
                "input_schema": {"type": "object", "properties": {"email": {"type": "string"}}}}],
        messages=[
            {"role": "user",
             "content": "Please email jane.doe@example.com, her card is 4111 1111 1111 1111."},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "lookup",
                 "input": {"email": "jane.doe@example.com"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                 "content": "Found: phone 415-555-0132, SSN 219-09-9999, mail jane.doe@example.com"}]},
        ],
    )
    sent = json.loads(api.requests[-1]["body"])
    raw = api.requests[-1]["body"]
    assert "jane.doe@example.com" not in raw and "4111 1111 1111 1111" not in raw
    assert "219-09-9999" not in raw
    assert sent["messages"][0]["content"] == "Please email <EMAIL_ADDRESS>, her card is <CREDIT_CARD>."
    result = sent["messages"][2]["content"][0]
    assert result["tool_use_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert "<US_SSN>" in result["content"] and "<EMAIL_ADDRESS>" in result["content"]
    assert sent["messages"][1]["content"][0]["input"] == {"email": "<EMAIL_ADDRESS>"}
    # the agent's own instructions get patterns without NER: the name stays, the e-mail does not;
    # the control fields exactly as sent
    # instructions get patterns, no NER: the e-mail, and the name a "Maintainer:" frame names
    assert sent["system"] == (SYSTEM.replace("ann@anthropic.com", "<EMAIL_ADDRESS>")
                              .replace("Ann Lee", "<PERSON>"))
    assert sent["model"] == MODEL
    assert sent["tools"][0]["description"] == "Look up a customer by e-mail, e.g. <EMAIL_ADDRESS>"
    assert sent["tools"][0]["input_schema"] == {
        "type": "object", "properties": {"email": {"type": "string"}}}
    # the answer's text is redacted on the way back
    assert msg.content[0].text == "I wrote to <EMAIL_ADDRESS> for you."
    assert msg.model == MODEL and msg.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    line = [a for a in gw.audit() if a.get("path") == "/v1/messages"][-1]
    assert "jane.doe" not in json.dumps(line)
    assert line["redactions"]["request"]["EMAIL_ADDRESS"] >= 2
    assert line["redactions"]["response"] == {"EMAIL_ADDRESS": 1}
    log = gw.log_text()
    assert "redacted the request to api.test.example" in log and "jane.doe@example.com" not in log


def test_claude_code_request_fields_altered(env):
    """The ~42 KB Claude-Code-shaped request: system, tools and control fields byte-identical."""
    gw, api, _ = env
    body = FIXTURE.read_bytes()
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{API}:{api.port}/v1/messages?beta=true", content=body,
                   headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200
    before, after = json.loads(body), json.loads(api.requests[-1]["body"])
    for key in ("system", "tools", "model", "metadata", "max_tokens", "stream", "temperature"):
        assert after[key] == before[key], key
    sent = api.requests[-1]["body"]
    for value in ("jane.whitfield@gmail.com", "4111 1111 1111 1111", "219-09-9999",
                  "AKIAQ3EGRTLX7H2KP4MZ", "DE89370400440532013000", "203.0.113.42"):
        assert value not in sent, value
    leaves_before, leaves_after = dict(_leaves(before)), dict(_leaves(after))
    altered = [p for p in leaves_before if leaves_before[p] != leaves_after[p]]
    assert altered and all(p[0] == "messages" for p in altered)
    print(f"\nclaude-code fixture ({len(body)} bytes): {len(altered)} of {len(leaves_before)} "
          f"string fields altered, all inside messages")


def _leaves(o, p=()):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _leaves(v, p + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _leaves(v, p + (i,))
    elif isinstance(o, str):
        yield p, o


def test_internal_api_response_reaches_the_client_redacted(env):
    gw, _, internal = env
    r = httpx.get(f"http://{INTERNAL}:{internal.port}/customer", proxy=gw.proxy)
    doc = r.json()
    assert doc == {"id": 7, "name": "Customer record", "email": "<EMAIL_ADDRESS>",
                   "card": "<CREDIT_CARD>", "note": "nothing else"}
    assert int(r.headers["content-length"]) == len(r.content)
    r = httpx.get(f"http://{INTERNAL}:{internal.port}/customer.gz", proxy=gw.proxy)
    assert r.headers["content-encoding"] == "gzip" and r.json()["email"] == "<EMAIL_ADDRESS>"
    r = httpx.get(f"http://{INTERNAL}:{internal.port}/image", proxy=gw.proxy)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")  # binary responses pass


def test_signed_request_without_findings_passes_byte_for_byte(env):
    gw, _, internal = env
    body = b'{"event":"deploy",  "id": 1.50, "at":"2025-11-25T10:00:00Z", "n": 12345678901234567890}'
    sig = hmac.new(HMAC_KEY, body, hashlib.sha256).hexdigest()
    r = httpx.post(f"http://{INTERNAL}:{internal.port}/webhook", proxy=gw.proxy, content=body,
                   headers={"Content-Type": "application/json", "X-Signature": sig})
    assert r.status_code == 200 and r.text == "ok"
    assert internal.requests[-1]["body"].encode() == body


@pytest.mark.parametrize("body,ctype,status,code", [
    (b"\x00\x01\x02\x03", "application/octet-stream", 415, "unsupported_content"),
    (b'{"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7'
     b'\\n-----END PRIVATE KEY-----"}',
     "application/json", 403, "sensitive_data"),
], ids=["binary", "blocked-entity"])
def test_refusals_end_to_end(env, body, ctype, status, code):
    gw, _, internal = env
    before = len(internal.requests)
    r = httpx.post(f"http://{INTERNAL}:{internal.port}/upload", proxy=gw.proxy, content=body,
                   headers={"Content-Type": ctype})
    assert r.status_code == status and r.headers["x-egress-gateway"] == code
    doc = r.json()
    assert doc["error"] == code and doc["reason"]
    assert "MIIEvQ" not in r.text
    assert len(internal.requests) == before


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_gzip_bomb_is_refused_without_inflating(env):
    gw, _, internal = env
    bomb = gzip.compress(b"\0" * (64 << 20), 9) * 16  # ~1 MB on the wire, 1 GiB inflated
    assert len(bomb) < 2 << 20
    before, peak_before = len(internal.requests), _peak_rss_mb(gw.proc.pid)
    r = httpx.post(f"http://{INTERNAL}:{internal.port}/upload", proxy=gw.proxy, content=bomb,
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                   timeout=30)
    assert r.status_code == 413 and r.headers["x-egress-gateway"] == "too_large"
    assert len(internal.requests) == before
    grew = _peak_rss_mb(gw.proc.pid) - peak_before
    print(f"\n1 MB gzip bomb (1 GiB inflated): 413 too_large; gateway peak RSS grew {grew:.0f} MB")
    assert grew < 200


class SingleWriteUpstream:
    """A loopback HTTP/1.1 server that answers in one write with TCP_NODELAY (gwharness'
    Upstream writes headers and body separately: a ~40 ms delayed-ACK floor hides small costs)."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.bodies.append(rest[:length])
                buf = rest[length:]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")

    def close(self):
        self.sock.close()


def test_added_latency_for_a_2kb_pii_request(tmp_path, confdir):
    up = SingleWriteUpstream()
    hosts = {"scan.test.example": "127.0.0.1", RAW: "127.0.0.1"}
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(
        allow=[{"host": h, "ports": [up.port]} for h in hosts], resolve=hosts,
        redact={"rules": [{"hosts": [RAW], "request": {"enabled": False},
                           "response": {"enabled": False}}]}))
    gw = Gateway(tmp_path, policy, confdir=confdir)
    para = ("Customer Jane Doe (jane.doe@example.com, +1 415-555-2671) asked us to update the "
            "card ending 1111 on her account and to call her back tomorrow morning. ")
    body = json.dumps({"messages": [{"role": "user", "content": (para * 12)[:2000]}]}).encode()

    def timed(host: str) -> float:
        with httpx.Client(proxy=gw.proxy) as c:
            samples = []
            for _ in range(20):
                t = time.perf_counter()
                r = c.post(f"http://{host}:{up.port}/ingest", content=body,
                           headers={"Content-Type": "application/json"})
                samples.append(time.perf_counter() - t)
                assert r.status_code == 200
            return statistics.median(samples[5:])

    try:
        raw, redacted = timed(RAW), timed("scan.test.example")
        assert body in up.bodies and b"jane.doe@example.com" not in up.bodies[-1]
    finally:
        gw.stop()
        up.close()
    print(f"\n2 KB PII request through the gateway: {raw * 1000:.1f} ms with redaction off, "
          f"{redacted * 1000:.1f} ms on ({(redacted - raw) * 1000:.1f} ms added)")
    assert redacted < 2.0


def test_skipped_work_changes_nothing_an_agent_sends(env):
    """The cheap paths (no NER on text without a capital, no phone matcher on a bare digit run
    no context word can lift) leave every finding in place through the real gateway: a bare
    number under a phone-ish key or after a context word, and a name after a sentence-initial
    function word, are still redacted; an id with no context passes, as it always did."""
    gw, _, internal = env
    body = {"customer": {"mobile": "4155552671"},
            "note": "The meeting with Jane Whitfield moved; her tel 4155552672 works.",
            "log": "order 5550001234 shipped",
            "lower": "please send the report to the team"}
    r = httpx.post(f"http://{INTERNAL}:{internal.port}/notes", json=body, proxy=gw.proxy)
    assert r.status_code == 200
    sent = json.loads(internal.requests[-1]["body"])
    assert sent["customer"]["mobile"] == "<PHONE_NUMBER>"
    assert "Jane Whitfield" not in sent["note"] and "<PERSON>" in sent["note"]
    assert "4155552672" not in sent["note"] and "<PHONE_NUMBER>" in sent["note"]
    assert sent["log"] == "order 5550001234 shipped"  # 0.3 < 0.5 without context, as before
    assert sent["lower"] == body["lower"]
