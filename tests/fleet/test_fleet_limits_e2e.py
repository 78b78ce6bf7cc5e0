"""End to end: volume limits across a fleet. A real PostgreSQL as the store, three gateways
(mitmdump) sharing its counters, a loopback upstream recording what it receives, clients on
chosen loopback source addresses. The store outage comes last."""

from __future__ import annotations

import statistics
import time

import pytest
from fleet_harness import STORE_PW, Fleet
from gwharness import Gateway, ProxyClient, Upstream, policy_yaml, upstream_size

NAMES = ("lim-a", "lim-b", "lim-c")
ROLE = "gwlimits"
BYTES_LIMIT = 6000
RPM = 6


@pytest.fixture(scope="module")
def lfleet(pg_server, tmp_path_factory, confdir):
    srv = pg_server
    srv.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{STORE_PW}'", db="postgres")
    srv.psql(f"CREATE DATABASE gwlimits OWNER {ROLE}", db="postgres")
    up = Upstream("fleet-limits")
    work = tmp_path_factory.mktemp("fleet-limits")
    policy = policy_yaml(
        [{"host": "*.lim.test", "ports": [up.port]}, {"cidr": "127.0.0.1/32", "ports": [up.port]}],
        resolve={"api.bytes.lim.test": "127.0.0.1", "api.reqs.lim.test": "127.0.0.1",
                 "api.lat.lim.test": "127.0.0.1"},
        limits=[{"name": "bytes-out", "hosts": ["*.bytes.lim.test"], "bytes_out_per_minute": BYTES_LIMIT},
                {"name": "reqs", "hosts": ["*.reqs.lim.test"], "requests_per_minute": RPM},
                {"name": "roomy", "hosts": ["*.lat.lim.test"], "requests_per_minute": 100000}])
    url = f"postgresql://{ROLE}@127.0.0.1:{srv.port}/gwlimits"
    gws = []
    try:
        for name in NAMES:
            d = work / name
            d.mkdir()
            gws.append(Gateway(d, policy, confdir=confdir, wait=False,
                               env={"PGPASSWORD": STORE_PW},
                               extra_args=["--set", f"gateway_state={url}",
                                           "--set", f"gateway_instance={name}"]))
            if len(gws) == 1:
                gws[0].wait_for("gateway ready", 180)
        for gw in gws:
            gw.wait_for("gateway ready", 180)
            gw.wait_for("connected (instance", 30)
        f = Fleet(srv, up, gws, url, None)
        f.gw = dict(zip(NAMES, gws, strict=True))
        yield f
    finally:
        for gw in gws:
            gw.stop()
        up.close()


def limited(r, limit: str, scope: str, measure: str) -> None:
    assert r.status_code == 429, r.text
    doc = r.json()
    assert (r.headers["x-egress-gateway"], doc["limit"], doc["scope"], doc["measure"]) == (
        "rate_limited", limit, scope, measure)
    assert 1 <= int(r.headers["retry-after"]) <= 60


def received(up, marker: str) -> list[dict]:
    return [r for r in up.requests if marker in r["path"]]


def test_byte_limit_holds_across_three_instances(lfleet):
    up = lfleet.upstream
    clients = [ProxyClient(lfleet.gw[n], "127.0.0.21") for n in NAMES]
    for c in clients:
        c.__enter__()
    try:
        codes = []
        for i in range(30):
            c = clients[i % 3]
            r = c.post(f"http://api.bytes.lim.test:{up.port}/fl-drain/{i}", content=b"B" * 700,
                       headers={"X-Agent-Session": "fl-bytes"})
            codes.append(r.status_code)
            if r.status_code == 429:
                limited(r, "bytes-out", "session", "bytes")
        assert 200 in codes and 429 in codes, codes
        n = codes.index(429)
        assert all(c == 429 for c in codes[n:]), codes
        # every instance refuses the session at once: its very next request on each instance
        # (the charge and the check are one round trip to the store, no reconciliation delay)
        for c in clients:
            r = c.post(f"http://api.bytes.lim.test:{up.port}/fl-drain/after", content=b"B" * 700,
                       headers={"X-Agent-Session": "fl-bytes"})
            limited(r, "bytes-out", "session", "bytes")
    finally:
        for c in clients:
            c.__exit__()
    got = received(up, "/fl-drain/")
    assert len(got) == n
    assert {r["headers"].get("x-agent-session") for r in got} == {None}  # stripped
    sizes = [upstream_size(r) for r in got]
    assert sum(sizes) <= BYTES_LIMIT + max(sizes), (sum(sizes), sizes)
    rows = lfleet.server.psql(db="gwlimits", sql="SELECT count(DISTINCT instance) FROM gateway_counters "
                      "WHERE key = 'session:fl-bytes' AND requests > 0")
    assert rows == "3"
    dump = lfleet.server.psql(db="gwlimits", sql="SELECT string_agg(c::text, ' ') FROM gateway_counters c")
    assert "BBBB" not in dump  # counts only, never content


def test_rotating_sessions_across_instances_is_limited_by_address(lfleet):
    up = lfleet.upstream
    codes = []
    for i in range(RPM + 3):
        with ProxyClient(lfleet.gw[NAMES[i % 3]], "127.0.0.22") as c:
            r = c.get(f"http://api.reqs.lim.test:{up.port}/fl-rot/{i}",
                      headers={"X-Agent-Session": f"fl-rot-{i}"})
        codes.append(r.status_code)
        if i >= RPM:
            limited(r, "reqs", "client", "requests")
    assert codes[:RPM] == [200] * RPM
    assert len(received(up, "/fl-rot/")) == RPM


def test_added_latency_with_the_store(lfleet):
    """Per-request latency at the client: a limited host (charged in the store) against an
    unlimited one (an IP literal), same instance, same upstream. Printed, not asserted."""
    up = lfleet.upstream
    times: dict[str, list[float]] = {"limited": [], "unlimited": []}
    with ProxyClient(lfleet.gw["lim-a"], "127.0.0.23") as c:
        for i in range(400):
            kind = ("limited", "unlimited")[i % 2]
            host = "api.lat.lim.test" if kind == "limited" else "127.0.0.1"
            t0 = time.perf_counter()
            r = c.get(f"http://{host}:{up.port}/fl-lat/{i}", headers={"X-Agent-Session": "fl-lat"})
            times[kind].append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    out = {}
    for kind, ts in times.items():
        ts = sorted(ts[10:])  # warm-up
        out[kind] = (statistics.median(ts) * 1000, ts[int(len(ts) * 0.99) - 1] * 1000)
    print(f"\nper request (ms, 195 each, loaded 2-core machine): limited (store) median "
          f"{out['limited'][0]:.2f} p99 {out['limited'][1]:.2f}; unlimited median "
          f"{out['unlimited'][0]:.2f} p99 {out['unlimited'][1]:.2f}; added median "
          f"{out['limited'][0] - out['unlimited'][0]:.2f}")


def test_store_down_refuses_limited_flows_503_then_recovers(lfleet):
    up = lfleet.upstream
    url = f"http://api.lat.lim.test:{up.port}/fl-down"
    lfleet.stop_store()
    try:
        for name in NAMES:
            with ProxyClient(lfleet.gw[name], "127.0.0.24") as c:
                r = c.get(url, headers={"X-Agent-Session": "fl-down"})
                assert r.status_code == 503, r.text
                assert r.headers["x-egress-gateway"] == "state_unavailable"
                assert "unreachable" in r.json()["reason"]
                free = c.get(f"http://127.0.0.1:{up.port}/fl-free")  # under no limit
                assert free.status_code == 200
        assert not received(up, "/fl-down")
    finally:
        lfleet.start_store()
    deadline = time.monotonic() + 30
    for name in NAMES:
        while True:
            with ProxyClient(lfleet.gw[name], "127.0.0.24") as c:
                r = c.get(url, headers={"X-Agent-Session": "fl-down"})
            if r.status_code == 200:
                break
            assert r.headers["x-egress-gateway"] == "state_unavailable"
            assert time.monotonic() < deadline, f"{name} did not recover"
            time.sleep(0.2)
