"""End to end: volume limits through a real gateway (mitmdump) and a loopback upstream that
records every request it receives; clients on several loopback source addresses (127.0.0.x)."""

from __future__ import annotations

import pytest
from gwharness import Gateway, ProxyClient, Upstream, policy_yaml, upstream_size

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


def received(up, marker: str) -> list[dict]:
    return [r for r in up.requests if marker in r["path"]]


def assert_limited(r, limit: str, scope: str, measure: str) -> dict:
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
    with ProxyClient(gw, "127.0.0.11") as c:
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
    with ProxyClient(gw, "127.0.0.12") as c:
        rs = [c.get(f"http://api.reqs.test:{up.port}/rotate/{i}",
                    headers={"X-Agent-Session": f"rot-{i}"}) for i in range(RPM + 3)]
    assert [r.status_code for r in rs[:RPM]] == [200] * RPM
    for r in rs[RPM:]:
        assert_limited(r, "reqs", "client", "requests")
    assert len(received(up, "/rotate/")) == RPM


def test_one_session_from_several_addresses_is_limited(lim):
    gw, up = lim
    a, b = ProxyClient(gw, "127.0.0.13"), ProxyClient(gw, "127.0.0.14")
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
    with ProxyClient(gw, "127.0.0.15", session_auth="pa-sess") as c:
        rs = [c.get(f"http://api.reqs.test:{up.port}/pa/{i}") for i in range(RPM + 1)]
        free = [c.get(f"http://127.0.0.1:{up.port}/free/{i}") for i in range(RPM + 3)]
    assert_limited(rs[-1], "reqs", "session", "requests")
    assert all(r.status_code == 200 for r in free)
    assert len(received(up, "/free/")) == RPM + 3
