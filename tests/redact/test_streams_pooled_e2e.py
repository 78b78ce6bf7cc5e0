"""End to end: a response stream's analysis runs on the scan pool, within the budget.

A Messages API stream whose first text delta makes the detector hang (the test-only fault
script's FAULT-SLOW: 5 s) through a real gateway with a 1 s budget: while that stream's scan
is stuck, another flow is scanned and answered; the stream then ends with the documented
error event (complete chunked answer, no hang) and none of the held text reaches the agent.
A healthy stream through the same gateway is redacted as before.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from gwharness import REPO, Gateway, Upstream, policy_yaml

FAULTS = REPO / "tests" / "robustness" / "faults_addon.py"
PIN = "pooled.test.example"
GAP = 0.25
SLOW_TEXT = "FAULT-SLOW: Jane Roe wrote to jane.roe@example.com about the invoice today. "
HEALTHY_TEXT = ["Write to jane.doe@exa", "mple.com or call 415-55", "5-2671 today; ",
                "nothing else to add here. " * 3]


def _event(name: str, doc: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(doc)}\n\n".encode()


def _messages(pieces: list[str], tail: int) -> list[bytes]:
    evs = [_event("message_start", {"type": "message_start", "message": {
               "id": "msg_01", "type": "message", "role": "assistant", "content": [],
               "model": "claude-test", "usage": {"input_tokens": 1, "output_tokens": 1}}}),
           _event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})]
    evs += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": p}})
            for p in pieces]
    evs += [_event("ping", {"type": "ping"}) for _ in range(tail)]
    evs += [_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_stop", {"type": "message_stop"})]
    return evs


class SseStub:
    """A plain HTTP upstream: /slow streams a delta that hangs the detector, then pings every
    GAP seconds; /healthy streams PII split across deltas."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.finished: dict[str, float] = {}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            path = data.split(b" ")[1].decode()
            evs = _messages([SLOW_TEXT], 12) if path == "/slow" else _messages(HEALTHY_TEXT, 0)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for ev in evs:
                    conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
                    time.sleep(GAP if path == "/slow" else 0.02)
                self.finished[path] = time.monotonic()  # before the end: the client's end follows
                conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("pooled-streams")
    up, sse = Upstream("api"), SseStub()
    policy = policy_yaml(allow=[{"host": PIN, "ports": [up.port, sse.port]}],
                         resolve={PIN: "127.0.0.1"}, redact={})
    gw = Gateway(work, policy, confdir=confdir,
                 extra_args=["-s", str(FAULTS), "--set", "gateway_scan_timeout=1"])
    yield gw, up, sse
    gw.stop()
    up.close()
    sse.close()


def test_a_stuck_stream_scan_ends_the_stream_and_other_flows_are_served(world):
    gw, up, sse = world
    first = threading.Event()
    result: dict = {}

    def read_stream():
        with httpx.Client(proxy=gw.proxy, timeout=60) as client, \
                client.stream("GET", f"http://{PIN}:{sse.port}/slow") as r:
            body = b""
            for chunk in r.iter_raw():
                body += chunk
                first.set()
            result["body"], result["end"] = body, time.monotonic()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert first.wait(20), gw.log_text()[-3000:]
    time.sleep(4 * GAP)  # the hanging delta (third event) has reached the gateway
    # the stream's scan is stuck in a pool thread: another flow is scanned and answered
    r = httpx.post(f"http://{PIN}:{up.port}/v1/other", proxy=gw.proxy, timeout=30,
                   json={"text": "Please mail bob.smith@example.org the report."})
    answered = time.monotonic()
    assert r.status_code == 200, r.text
    assert "bob.smith@example.org" not in up.requests[-1]["body"]
    reader.join(60)
    assert not reader.is_alive()
    # served while the stream was open, before its upstream had even finished sending (a scan
    # on the event loop would have held every flow for the fault's 5 s)
    assert answered < sse.finished["/slow"] < result["end"]
    body = result["body"]
    assert b"event: error" in body and b"could not be scanned" in body, body[-500:]
    assert b"Jane Roe" not in body and b"jane.roe@example.com" not in body
    assert b"FAULT-SLOW" not in body
    assert b"event: message_start" in body  # what was scanned before the fault was sent
    assert body.count(b"event: error") == 1 and body.rstrip().endswith(b"}")
    gw.wait_for("stopped the event stream", timeout=10)


def test_a_healthy_stream_is_redacted_off_the_loop(world):
    gw, _, sse = world
    with httpx.Client(proxy=gw.proxy, timeout=30) as client, \
            client.stream("GET", f"http://{PIN}:{sse.port}/healthy") as r:
        body = b"".join(r.iter_raw())
    texts = [json.loads(line[6:])["delta"]["text"] for line in body.decode().splitlines()
             if line.startswith("data: ") and "text_delta" in line]
    joined = "".join(texts)
    assert "jane.doe@example.com" not in joined and "415-555-2671" not in joined
    assert "<EMAIL_ADDRESS>" in joined and "nothing else to add here." in joined
    assert b"event: message_stop" in body and b"event: error" not in body
