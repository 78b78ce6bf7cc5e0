"""End to end: the official anthropic SDK streams a Messages API answer through the gateway.

The loopback stub sends the events one by one with a pause between them. PII split across
deltas arrives redacted, the SDK parses every event, and the first event reaches the client
before the stub has sent its last one.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import anthropic
import pytest
import yaml
from gwharness import REPO, Gateway, make_cert, policy_yaml

API = "api.test.example"
MODEL = "claude-sonnet-4-5-20250929"
GAP = 0.03

TEXT_PIECES = ["Sure. Write to jane.doe@exa", "mple.com or call 415-55", "5-2671 today; ",
               "the card on file is 4111 1111 ", "1111 1111. ", "Nothing else to add here. " * 3]
TOOL_PIECES = ['{"to": "bob.sm', 'ith@example.org", "subject": "Invoice"}']


def events() -> list[bytes]:
    docs = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    docs += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": t}})
             for t in TEXT_PIECES]
    docs += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
             ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                 "type": "tool_use", "id": "toolu_01", "name": "send_mail", "input": {}}})]
    docs += [("content_block_delta", {"type": "content_block_delta", "index": 1,
                                      "delta": {"type": "input_json_delta", "partial_json": p}})
             for p in TOOL_PIECES]
    docs += [("content_block_stop", {"type": "content_block_stop", "index": 1}),
             ("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                "usage": {"output_tokens": 40}}),
             ("message_stop", {"type": "message_stop"})]
    return [f"event: {name}\ndata: {json.dumps(doc)}\n\n".encode() for name, doc in docs]


class StreamingStub:
    """A TLS Messages API stub that streams SSE with a pause between events."""

    def __init__(self, cert_dir):
        cert, key = make_cert(cert_dir)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.last_event_sent: float | None = None
        self.requests: list[dict] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(json.loads(body))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
            for ev in events():
                conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.last_event_sent = time.monotonic()
                time.sleep(GAP)
            conn.sendall(b"0\r\n\r\n")
            conn.close()
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    stub = StreamingStub(cert_dir)
    redact = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())["redact"]
    for rule in redact["rules"]:
        rule["hosts"] = [API if h == "api.anthropic.com" else h for h in rule["hosts"]]
    work = tmp_path_factory.mktemp("sse-e2e")
    policy = work / "policy.yaml"
    policy.write_text(policy_yaml(allow=[{"host": API, "ports": [stub.port]}],
                                  resolve={API: "127.0.0.1"}, redact=redact))
    gw = Gateway(work, policy, confdir=confdir)
    yield gw, stub
    gw.stop()
    stub.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sdk_streams_redacted_events_incrementally(env):
    gw, stub = env
    client = anthropic.Anthropic(
        api_key="sk-ant-api03-placeholder", base_url=f"https://{API}:{stub.port}", max_retries=0,
        http_client=anthropic.DefaultHttpxClient(
            proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)))
    first_event_at = None
    kinds = []
    with client.messages.stream(model=MODEL, max_tokens=200,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        for event in stream:
            if first_event_at is None:
                first_event_at = time.monotonic()
            kinds.append(event.type)
        final = stream.get_final_message()
    # incremental: the first event arrived while the stub was still sending
    assert first_event_at is not None and stub.last_event_sent is not None
    assert first_event_at < stub.last_event_sent - 5 * GAP
    # every event parsed; PII split across deltas redacted
    assert kinds[0] == "message_start" and "message_stop" in kinds
    text = "".join(b.text for b in final.content if b.type == "text")
    for raw in ("jane.doe", "example.com", "555-2671", "4111"):
        assert raw not in text, text
    assert "<EMAIL_ADDRESS>" in text and "<PHONE_NUMBER>" in text
    assert "Nothing else to add here." in text
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.input == {"to": "<EMAIL_ADDRESS>", "subject": "Invoice"}
    assert final.model == MODEL
    line = [rec for rec in gw.audit() if rec.get("path") == "/v1/messages"][-1]
    assert line["streamed"]["events"] > 10 and "scan_ms" in line  # visible on the audit line
    counts = line["redactions"]["response"]
    assert counts["EMAIL_ADDRESS"] == 2 and counts["PHONE_NUMBER"] == 1
    assert counts.get("CREDIT_CARD") == 1


def test_recording_holds_the_redacted_stream(env):
    gw, stub = env
    from mitmproxy import io as mio

    files = sorted(gw.workdir.glob("**/*.mitm"))
    assert files
    blob = b"".join(f.read_bytes() for f in files)
    assert b"jane.doe" not in blob and b"555-2671" not in blob
    flows = [f for path in files for f in mio.FlowReader(open(path, "rb")).stream()]
    streamed = [f for f in flows if f.request.path == "/v1/messages"]
    assert streamed and b"<EMAIL_ADDRESS>" in streamed[-1].response.content
