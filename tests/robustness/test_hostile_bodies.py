"""Hostile bodies and faults through a real gateway with redaction on (both directions).

Each class has a deliberate, asserted outcome: a refusal in the gateway's format or a correct
redaction; never a crash, a hang, an unscanned pass-through or an unrecorded flow. The
upstream echoes what it received, so the tests see exactly what left the gateway.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from pathlib import Path

import brotli
import httpx
import pytest
from gwharness import Gateway, Upstream, policy_yaml

HOST = "internal.test.example"
HERE = Path(__file__).resolve().parent
EMAIL = "maria.lopez@example.com"


def echo(record):
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"got": record["body"][:2000], "len": len(record["body"])}).encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = Upstream("echo", handler=echo)
    work = tmp_path_factory.mktemp("hostile")
    policy = work / "policy.yaml"
    policy.write_text(policy_yaml(allow=[{"host": HOST, "ports": [up.port]}],
                                  resolve={HOST: "127.0.0.1"}, redact={}))
    gw = Gateway(work, policy, confdir=confdir,
                 extra_args=["-s", str(HERE / "faults_addon.py"),
                             "--set", "gateway_scan_timeout=2",
                             "--set", "gateway_body_limit=2000000"])
    yield gw, up
    gw.stop()
    up.close()


def post(gw, up, body: bytes, ctype: str | None = "application/json", headers=None,
         timeout: float = 60) -> httpx.Response:
    h = dict(headers or {})
    if ctype:
        h["Content-Type"] = ctype
    return httpx.post(f"http://{HOST}:{up.port}/in", content=body, headers=h,
                      proxy=gw.proxy, timeout=timeout)


def refused(r: httpx.Response, code: str, status: int) -> None:
    assert r.status_code == status, r.text[:300]
    assert r.headers["x-egress-gateway"] == code
    assert r.json()["error"] == code


def upstream_saw(up, before: int) -> list[str]:
    return [r["body"] for r in up.requests[before:]]


def test_invalid_json_is_scanned_as_text(env):
    gw, up = env
    n = len(up.requests)
    r = post(gw, up, b'{"to": "' + EMAIL.encode() + b'", broken')
    assert r.status_code == 200
    (sent,) = upstream_saw(up, n)
    assert EMAIL not in sent and "<EMAIL_ADDRESS>" in sent


def test_json_that_lies_about_its_content_type(env):
    gw, up = env
    n = len(up.requests)
    # a binary label on bytes that read as text: scanned as the text it is (issue 16)
    r = post(gw, up, json.dumps({"to": EMAIL}).encode(), ctype="image/png")
    (sent,) = upstream_saw(up, n)
    assert r.status_code == 200 and EMAIL not in sent and "<EMAIL_ADDRESS>" in sent
    n = len(up.requests)
    # real binary under that label cannot be scanned: refused
    r = post(gw, up, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ctype="image/png")
    refused(r, "unsupported_content", 415)
    assert upstream_saw(up, n) == []
    r = post(gw, up, json.dumps({"to": EMAIL}).encode(), ctype="text/plain")
    (sent,) = upstream_saw(up, n)
    assert r.status_code == 200 and EMAIL not in sent


def test_invalid_utf8(env):
    gw, up = env
    n = len(up.requests)
    r = post(gw, up, b'{"to": "' + EMAIL.encode() + b'", "x": "\xff\xfe"}')
    if r.status_code == 200:
        assert EMAIL not in upstream_saw(up, n)[0]
    else:
        refused(r, "unsupported_content", 415)
        assert upstream_saw(up, n) == []


def test_deeply_nested_json(env):
    gw, up = env
    n = len(up.requests)
    depth = 100_000
    body = b"[" * depth + json.dumps(EMAIL).encode() + b"]" * depth
    r = post(gw, up, body)
    if r.status_code == 200:
        (sent,) = upstream_saw(up, n)
        assert EMAIL not in sent
    else:
        assert r.headers["x-egress-gateway"] in ("unsupported_content", "too_large")
        assert upstream_saw(up, n) == []


def test_five_megabyte_string_over_the_limit(env):
    gw, up = env
    n = len(up.requests)
    r = post(gw, up, json.dumps({"blob": "a" * 5_000_000, "to": EMAIL}).encode())
    refused(r, "too_large", 413)
    assert upstream_saw(up, n) == []


def test_huge_numbers_kept_exactly(env):
    gw, up = env
    n = len(up.requests)
    body = b'{"n": 1' + b"0" * 5000 + b', "f": 1e999999, "to": "' + EMAIL.encode() + b'"}'
    r = post(gw, up, body)
    assert r.status_code == 200
    (sent,) = upstream_saw(up, n)
    assert EMAIL not in sent and ("1" + "0" * 5000) in sent and "1e999999" in sent


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compression_bomb_refused(env, encoding):
    gw, up = env
    n = len(up.requests)
    raw = b'{"pad": "' + b"0" * 50_000_000 + b'"}'
    body = gzip.compress(raw, 9) if encoding == "gzip" else brotli.compress(raw, quality=9)
    assert len(body) < 1_000_000
    r = post(gw, up, body, headers={"Content-Encoding": encoding})
    refused(r, "too_large", 413)
    assert upstream_saw(up, n) == []


def test_truncated_gzip(env):
    gw, up = env
    n = len(up.requests)
    body = gzip.compress(json.dumps({"to": EMAIL, "pad": "x" * 5000}).encode())[:-20]
    r = post(gw, up, body, headers={"Content-Encoding": "gzip"})
    assert r.status_code in (400, 415), r.text[:200]
    assert r.headers.get("x-egress-gateway") in ("unsupported_content", "too_large", None)
    assert upstream_saw(up, n) == []


def test_multipart_without_boundary(env):
    gw, up = env
    n = len(up.requests)
    r = post(gw, up, b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n" + EMAIL.encode(),
             ctype="multipart/form-data")
    refused(r, "unsupported_content", 415)
    assert upstream_saw(up, n) == []


def test_detector_raising_fails_closed_and_others_keep_flowing(env):
    gw, up = env
    n = len(up.requests)
    r = post(gw, up, json.dumps({"note": "FAULT-RAISE please", "to": EMAIL}).encode())
    refused(r, "internal_error", 500)
    assert upstream_saw(up, n) == []
    ok = post(gw, up, json.dumps({"note": "all good", "to": EMAIL}).encode())
    assert ok.status_code == 200 and EMAIL not in upstream_saw(up, n)[0]


def test_detector_over_budget_fails_closed_without_blocking_others(env):
    gw, up = env
    n = len(up.requests)
    results: dict = {}

    def slow():
        results["slow"] = post(gw, up, json.dumps({"note": "FAULT-SLOW now"}).encode())

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    quick = post(gw, up, json.dumps({"note": "meanwhile", "to": EMAIL}).encode())
    quick_s = time.monotonic() - t0
    t.join(30)
    assert quick.status_code == 200 and quick_s < 2.0  # other flows keep moving
    refused(results["slow"], "internal_error", 500)
    assert [b for b in upstream_saw(up, n) if "FAULT-SLOW" in b] == []


def test_upstream_reset_mid_response(tmp_path, confdir):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\npartial")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST

    threading.Thread(target=serve, daemon=True).start()
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": HOST, "ports": [port]}],
                                       resolve={HOST: "127.0.0.1"}), confdir=confdir)
    try:
        with _maybe():
            r = httpx.get(f"http://{HOST}:{port}/x", proxy=gw.proxy, timeout=10)
            assert r.status_code >= 500  # mitmproxy's 502 for a broken upstream
        time.sleep(0.5)
        line = gw.audit()[-1]
        assert line["host"] == HOST and (line.get("error") or line["status"] >= 500)
        assert line.get("recording")  # recorded, not lost
    finally:
        gw.stop()
        srv.close()


class _maybe:
    """The client may see a 502 or a broken connection; both are acceptable outcomes."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, httpx.HTTPError)


def test_policy_replaced_by_garbage_while_traffic_flows(env):
    gw, up = env
    good = gw.policy_path.read_text()
    stop = threading.Event()
    statuses: list[int] = []

    def traffic():
        with httpx.Client(proxy=gw.proxy, timeout=30) as c:
            while not stop.is_set():
                statuses.append(c.post(f"http://{HOST}:{up.port}/in",
                                       json={"to": EMAIL}).status_code)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        mark = len(gw.log_text())
        time.sleep(0.5)
        gw.policy_path.write_bytes(b"\x00\xff garbage: [unclosed\n")
        gw.wait_for("policy reload FAILED", timeout=10, start=mark)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
        gw.policy_path.write_text(good)
    assert len(statuses) > 5 and set(statuses) == {200}
