"""End to end: SIGTERM to a gateway with flows in flight loses nothing.

A request held for approval (mitmweb), a scan still running, a server-sent-events answer in the
middle of its stream, an open WebSocket and a request whose upstream answers within the grace:
then SIGTERM. Each client gets its documented answer or a clean end, each flow has an audit line
naming how it ended and a recording, `verify` passes, and a restarted gateway extends the chain.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from egress_gateway.cli.approvals import WebClient
from egress_gateway.recording import audit as audit_mod
from egress_gateway.recording import verify as verify_mod
from gwharness import REPO, RUN, Gateway, Upstream, free_port, policy_yaml
from mitmproxy import io as mio

PIN = "api.test.example"
GRACE = 2.0
CLOSE_AFTER = 2.0  # shutdown.CLOSE_AFTER
FAULTS = REPO / "tests" / "robustness" / "faults_addon.py"


def slow_answer(record):
    if record["path"].startswith("/slow"):
        time.sleep(1.0)  # answers within the grace: drained
    if record["path"].startswith("/stuck"):
        time.sleep(30)  # never within any grace
    return 200, {"Content-Type": "application/json"}, json.dumps({"path": record["path"]}).encode()


class SseStub:
    """A plain HTTP upstream streaming one SSE event every 0.2 s (chunked) until closed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.closed_by_gateway = threading.Event()
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
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                for i in range(300):
                    ev = f"event: ping\ndata: {json.dumps({'type': 'ping', 'n': i})}\n\n".encode()
                    conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
                    time.sleep(0.2)
            except OSError:
                self.closed_by_gateway.set()

    def close(self):
        self.sock.close()


class WsUpstream:
    def __init__(self):
        from websockets.sync.server import serve

        def handler(ws):
            for msg in ws:
                ws.send(f"echo:{msg}")

        self.server = serve(handler, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def ws_open(gw_port: int, port: int, text: str) -> tuple[socket.socket, str]:
    """An open WebSocket through the gateway after one echoed message: (socket, answer)."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", gw_port), timeout=15)
    s.sendall((f"GET http://{PIN}:{port}/ws HTTP/1.1\r\nHost: {PIN}:{port}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nX-Agent-Session: ws-agent\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload, mask = text.encode(), os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
              + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    data = head.split(b"\r\n\r\n", 1)[1]
    while len(data) < 2 or len(data) < 2 + data[1]:
        data += s.recv(4096)
    return s, data[2:2 + data[1]].decode()


def ws_wait_close(s: socket.socket) -> tuple[bytes, float]:
    """Read until the gateway ends the WebSocket: (the frames, when the socket closed)."""
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic()


def read_sse(r: httpx.Response, first: threading.Event) -> tuple[list[str], str | None, float]:
    lines, problem = [], None
    try:
        for line in r.iter_lines():
            lines.append(line)
            first.set()
    except httpx.HTTPError as e:
        problem = type(e).__name__
    return lines, problem, time.monotonic()


def recorded_flows(directory: Path) -> list:
    flows = []
    for path in sorted(directory.rglob("*.mitm")):
        with open(path, "rb") as fh:
            flows.extend(mio.FlowReader(fh).stream())
    return flows


def line_for(lines: list[dict], path: str) -> dict:
    found = [a for a in lines if a.get("path") == path]
    assert len(found) == 1, (path, found)
    return found[0]


@pytest.fixture
def world(tmp_path, confdir):
    up = Upstream("drain", handler=slow_answer)
    sse, ws = SseStub(), WsUpstream()
    yield tmp_path, confdir, up, sse, ws
    up.close()
    sse.close()
    ws.close()


def test_sigterm_drains_answers_records_and_audits_every_flow(world):
    work, confdir, up, sse, ws = world
    web_port = free_port()
    pwfile = work / "web-password"
    policy = policy_yaml(
        allow=[{"host": PIN, "ports": [up.port, sse.port, ws.port]}], resolve={PIN: "127.0.0.1"},
        redact={},
        approve=[{"name": "held", "host": PIN, "path": "/held/*", "reason": "needs a human",
                  "timeout": 60}])
    (work / "policy.yaml").write_text(policy)
    env = {"GATEWAY_WEB_PASSWORD_FILE": str(pwfile), "GATEWAY_WEB_PASSWORD": ""}
    gw = Gateway(work, work / "policy.yaml", confdir=confdir, command=[str(RUN), "web"], env=env,
                 timeout=120,
                 extra_args=["--set", f"web_port={web_port}", "-s", str(FAULTS),
                             "--set", f"gateway_shutdown_grace={GRACE:g}",
                             "--set", f"gateway_recordings={work}"])
    client = WebClient(f"http://127.0.0.1:{web_port}", pwfile.read_text().strip())
    pool = concurrent.futures.ThreadPoolExecutor(8)
    base = f"http://{PIN}"
    try:
        def call(method, url, **kw):
            r = httpx.request(method, url, proxy=gw.proxy, timeout=60, **kw)
            return r, time.monotonic()

        held = pool.submit(call, "POST", f"{base}:{up.port}/held/op", json={"op": "drop"})
        deadline = time.monotonic() + 15
        while not any(h["path"] == "/held/op" for h in client.held()):
            assert time.monotonic() < deadline, gw.log_text()[-3000:]
            time.sleep(0.05)
        scan = pool.submit(call, "POST", f"{base}:{up.port}/scan",
                           json={"text": "FAULT-SLOW please summarise this"})
        drained = pool.submit(call, "GET", f"{base}:{up.port}/slow")
        sse_client = httpx.Client(proxy=gw.proxy, timeout=60)
        first = threading.Event()
        sse_resp = sse_client.send(sse_client.build_request("GET", f"{base}:{sse.port}/stream"),
                                   stream=True)
        sse_done = pool.submit(read_sse, sse_resp, first)
        assert first.wait(10)
        ws_sock, echoed = ws_open(gw.port, ws.port, "hello")
        assert echoed == "echo:hello"
        ws_done = pool.submit(ws_wait_close, ws_sock)
        time.sleep(0.3)  # the scan is on its worker, /slow waits for its upstream

        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no new connections once stopping
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()

        budget = GRACE + CLOSE_AFTER + 1.5
        r, t = held.result(20)
        assert r.status_code == 503 and r.headers["x-egress-gateway"] == "gateway_unavailable"
        assert r.json() == {"error": "gateway_unavailable", "reason": "gateway stopping",
                            "rule": "held"}
        assert t - t0 < budget
        r, t = scan.result(20)
        assert r.status_code == 503 and r.json()["reason"] == "gateway stopping", r.text
        assert t - t0 < budget
        r, t = drained.result(20)
        assert r.status_code == 200 and r.json() == {"path": "/slow"} and t - t0 < GRACE
        lines, problem, t = sse_done.result(20)
        assert problem is None, problem  # a clean end of the chunked answer
        assert "event: error" in lines and "event: ping" in lines
        error_data = lines[lines.index("event: error") + 1]
        assert json.loads(error_data.removeprefix("data: "))["type"] == "error"
        assert t - t0 < budget
        frames, t = ws_done.result(20)
        assert frames[:1] == b"\x88", frames  # a Close frame, then the end of the connection
        assert t - t0 < budget
        gw.proc.wait(30)
        exit_s = time.monotonic() - t0
        print(f"\nexit {exit_s:.2f} s after SIGTERM (grace {GRACE:g} s; the slow scan's worker "
              "thread sleeps 5 s and is joined at exit; loaded machine)")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        gw.stop()
    assert gw.proc.returncode == 0
    log = gw.log_text()
    assert "Traceback" not in log and "CancelledError" not in log, log[-4000:]
    assert "1 drained" in log and "recorded" in log

    lines = gw.audit(everything=True)
    a = line_for(lines, "/held/op")
    assert a["code"] == "gateway_unavailable" and a["shutdown"] == "refused"
    assert a["approval"]["outcome"] == "denied" and a["approval"]["decided_by"] == "shutdown"
    a = line_for(lines, "/scan")
    assert a["code"] == "gateway_unavailable" and a["shutdown"] == "refused" and a["bytes_out"] == 0
    a = line_for(lines, "/slow")
    assert a["status"] == 200 and a["shutdown"] == "drained"
    a = line_for(lines, "/stream")
    assert a["stream_stopped"] == "gateway stopping" and a["shutdown"] == "stream_ended"
    (a,) = [x for x in lines if x.get("kind") == "websocket"]
    assert a["shutdown"] == "closed" and a["websocket_messages"] == 2
    stop = lines[-1]
    assert stop["kind"] == "gateway" and stop["event"] == "stop" and stop["why"] == "SIGTERM"
    assert stop["in_flight"] == 5 and stop["drained"] == 1 and stop["unrecorded"] == 0
    assert stop["recorded"] == 5 and stop["refused"] >= 2 and stop["streams_ended"] == 1
    cp = json.loads(audit_mod.checkpoint_path(gw.audit_path).read_text())
    assert cp["seq"] == stop["seq"] and cp["hash"] == stop["hash"]  # the checkpoint is last

    paths = {f.request.path for f in recorded_flows(work)}
    assert {"/held/op", "/scan", "/slow", "/stream", "/ws"} <= paths
    res = verify_mod.verify(work, gw.audit_path)
    assert res.ok, res.problems

    # restart on the same log: a new flow extends the chain after the stop line
    gw2 = Gateway(work, work / "policy.yaml", confdir=confdir,
                  extra_args=["--set", f"gateway_recordings={work}"])
    try:
        assert httpx.get(f"{base}:{up.port}/after", proxy=gw2.proxy).status_code == 200
    finally:
        gw2.stop()
    lines2 = gw2.audit(everything=True)
    after = line_for(lines2, "/after")
    assert after["seq"] == stop["seq"] + 1 and after["prev"] == stop["hash"]
    assert lines2[-1]["kind"] == "gateway" and lines2[-1]["in_flight"] == 0
    res = verify_mod.verify(work, gw2.audit_path)
    assert res.ok, res.problems


def test_a_second_signal_stops_at_once_with_a_complete_log(tmp_path, confdir, world):
    _, _, up, _, _ = world
    policy = policy_yaml(allow=[{"host": PIN, "ports": [up.port]}], resolve={PIN: "127.0.0.1"})
    gw = Gateway(tmp_path, policy, confdir=confdir,
                 extra_args=["--set", "gateway_shutdown_grace=60",
                             "--set", f"gateway_recordings={tmp_path}"])
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        stuck = pool.submit(httpx.get, f"http://{PIN}:{up.port}/stuck", proxy=gw.proxy, timeout=60)
        deadline = time.monotonic() + 10
        while not any(r["path"] == "/stuck" for r in up.requests):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(15)
        exit_s = time.monotonic() - t0
        print(f"\nexit {exit_s:.2f} s after two SIGTERMs (grace 60 s; loaded machine)")
        assert exit_s < 10
        with pytest.raises(httpx.HTTPError):  # forwarded, never answered: its connection closed
            stuck.result(10)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        gw.stop()
    assert gw.proc.returncode == 0
    raw = gw.audit_path.read_bytes()
    assert raw.endswith(b"\n")  # no torn line
    lines = gw.audit(everything=True)
    a = line_for(lines, "/stuck")
    assert a["shutdown"] == "closed" and a.get("error")
    assert lines[-1]["kind"] == "gateway" and lines[-1]["unrecorded"] == 0
    res = verify_mod.verify(tmp_path, gw.audit_path)
    assert res.ok, res.problems
