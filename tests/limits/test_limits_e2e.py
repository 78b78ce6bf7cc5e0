"""End to end: volume limits through a real gateway (mitmdump) and a loopback upstream that
records every request it receives; clients on several loopback source addresses (127.0.0.x)."""

from __future__ import annotations

import base64
import http.client
import json

import pytest
from gwharness import Gateway, Upstream, policy_yaml

BYTES_LIMIT = 4000
RPM = 5


@pytest.fixture(scope="module")
def lim(tmp_path_factory, confdir):
    up = Upstream("limits")
    policy = policy_yaml(
        [{"host": "*.bytes.test", "ports": [up.port]}, {"host": "*.reqs.test", "ports": [up.port]},
         {"cidr": "127.0.0.1/32", "ports": [up.port]}],
        resolve={"api.bytes.test": "127.0.0.1", "api.reqs.test": "127.0.0.1"},
        limits=[{"name": "bytes-out", "hosts": ["*.bytes.test"], "bytes_out_per_minute": BYTES_LIMIT},
                {"name": "reqs", "hosts": ["*.reqs.test"], "requests_per_minute": RPM}])
    gw = Gateway(tmp_path_factory.mktemp("limits"), policy, confdir=confdir, timeout=180)
    try:
        yield gw, up
    finally:
        gw.stop()
        up.close()


class Resp:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, body
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class client:
    """A proxy client connecting to the gateway from the loopback address `source` (http.client:
    httpx/httpcore drop the source address when they talk to a proxy)."""

    def __init__(self, gw, source: str, session_auth: str | None = None) -> None:
        self.gw, self.source = gw, source
        self.auth = {}
        if session_auth:
            self.auth["Proxy-Authorization"] = "Basic " + base64.b64encode(
                f"{session_auth}:x".encode()).decode()

    def __enter__(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30,
                                               source_address=(self.source, 0))
        return self

    def __exit__(self, *exc):
        self.conn.close()

    def request(self, method: str, url: str, content: bytes | None = None, headers=None) -> Resp:
        self.conn.request(method, url, body=content, headers={**self.auth, **(headers or {})})
        r = self.conn.getresponse()
        body = r.read()
        assert self.conn.sock is None or self.conn.sock.getsockname()[0] == self.source
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)

    def get(self, url: str, **kw) -> Resp:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> Resp:
        return self.request("POST", url, **kw)


def upstream_size(rec: dict) -> int:
    """What the upstream received: request line, headers and body."""
    head = f"{rec['method']} {rec['path']} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in rec["headers"].items()) + "\r\n"
    return len(head.encode()) + len(rec["body"].encode())


def received(up, marker: str) -> list[dict]:
    return [r for r in up.requests if marker in r["path"]]


def assert_limited(r: Resp, limit: str, scope: str, measure: str) -> dict:
    assert r.status_code == 429, r.text
    assert r.headers["x-egress-gateway"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    doc = r.json()
    assert (doc["error"], doc["limit"], doc["scope"], doc["measure"]) == (
        "rate_limited", limit, scope, measure)
    assert doc["retry_after"] == int(r.headers["retry-after"])
    return doc


def test_bytes_limit_upstream_gets_no_more_than_the_limit_plus_one_request(lim):
    gw, up = lim
    codes = []
    with client(gw, "127.0.0.11") as c:
        for i in range(20):
            r = c.post(f"http://api.bytes.test:{up.port}/drain-b/{i}", content=b"A" * 500,
                       headers={"X-Agent-Session": "e2e-bytes"})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert_limited(r, "bytes-out", "session", "bytes")
    assert 200 in codes and 429 in codes
    first = codes.index(429)
    assert all(c == 429 for c in codes[first:]), codes  # refused stays refused within the minute
    got = received(up, "/drain-b/")
    assert len(got) == first
    sizes = [upstream_size(r) for r in got]
    assert sum(sizes) <= BYTES_LIMIT + max(sizes), (sum(sizes), sizes)
    alerts = [a for a in gw.audit(everything=True) if a.get("alert") == "rate_limited"
              and "/drain-b/" in (a.get("path") or "")]
    assert alerts and alerts[0]["limit"] == "bytes-out" and alerts[0]["kind"] == "alert"
    assert alerts[0]["session"] == "e2e-bytes"


def test_rotating_session_ids_from_one_address_is_limited(lim):
    gw, up = lim
    with client(gw, "127.0.0.12") as c:
        rs = [c.get(f"http://api.reqs.test:{up.port}/rotate/{i}",
                    headers={"X-Agent-Session": f"rot-{i}"}) for i in range(RPM + 3)]
    assert [r.status_code for r in rs[:RPM]] == [200] * RPM
    for r in rs[RPM:]:
        assert_limited(r, "reqs", "client", "requests")
    assert len(received(up, "/rotate/")) == RPM


def test_one_session_from_several_addresses_is_limited(lim):
    gw, up = lim
    a, b = client(gw, "127.0.0.13"), client(gw, "127.0.0.14")
    with a, b:
        rs = [(a if i % 2 else b).get(f"http://api.reqs.test:{up.port}/hop/{i}",
                                      headers={"X-Agent-Session": "hopper"}) for i in range(RPM + 2)]
    assert [r.status_code for r in rs[:RPM]] == [200] * RPM, rs[0].text
    for r in rs[RPM:]:
        assert_limited(r, "reqs", "session", "requests")
    assert len(received(up, "/hop/")) == RPM


def test_proxy_authorization_session_and_unlimited_hosts(lim):
    """The session from Proxy-Authorization counts the same; a destination no limit names
    (an IP literal here) is not limited."""
    gw, up = lim
    with client(gw, "127.0.0.15", session_auth="pa-sess") as c:
        rs = [c.get(f"http://api.reqs.test:{up.port}/pa/{i}") for i in range(RPM + 1)]
        free = [c.get(f"http://127.0.0.1:{up.port}/free/{i}") for i in range(RPM + 3)]
    assert_limited(rs[-1], "reqs", "session", "requests")
    assert all(r.status_code == 200 for r in free)
    assert len(received(up, "/free/")) == RPM + 3
