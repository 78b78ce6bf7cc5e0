"""The limits addon (limits/addon.py) with taddons/tflow: per session, per client address, the
429 refusal with Retry-After, and what counts as bytes sent."""

from __future__ import annotations

from asyncio import run

import pytest
from egress_gateway.core import Core
from egress_gateway.fleet.store import StoreDown
from egress_gateway.flowstate import HEADER, peek, state
from egress_gateway.limits.addon import Limits, wire_size
from egress_gateway.policy import parse_policy
from mitmproxy.test import taddons, tflow

POLICY = """version: 1
egress:
  allow:
    - host: api.example.com
    - host: other.example.org
limits:
  - name: per-minute
    hosts: ["*.example.com"]
    requests_per_minute: 3
  - name: bytes
    bytes_out_per_minute: 2000
"""


class Clock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make():
    core = Core()
    clock = Clock()
    lim = Limits(core, clock=clock)
    core.policy = parse_policy(POLICY)
    return lim, clock


def flow(session: str = "s-1", host: str = "api.example.com", body: bytes = b"",
         client: str = "10.0.0.7"):
    f = tflow.tflow()
    f.request.host = host
    f.request.content = body
    f.client_conn.peername = (client, 40000)
    state(f).session = session
    return f


def test_requests_over_the_limit_are_refused_with_retry_after():
    lim, clock = make()
    with taddons.context():
        for _ in range(3):
            f = flow()
            run(lim.request(f))
            assert f.response is None
        clock.t += 10
        f = flow()
        run(lim.request(f))
    assert f.response.status_code == 429
    assert f.response.headers[HEADER] == "rate_limited"
    assert f.response.headers["Retry-After"] == "50"
    doc = f.response.json()
    assert doc["error"] == "rate_limited" and doc["limit"] == "per-minute"
    assert doc["scope"] == "session" and doc["measure"] == "requests"
    assert peek(f).limit["alert"] == "rate_limited"


def test_rotating_session_ids_from_one_address_is_limited():
    lim, _ = make()
    with taddons.context():
        for i in range(3):
            f = flow(session=f"s-{i}")
            run(lim.request(f))
            assert f.response is None
        f = flow(session="s-fresh")
        run(lim.request(f))
    assert f.response.status_code == 429 and f.response.json()["scope"] == "client"


def test_another_address_and_session_is_not_limited():
    lim, _ = make()
    with taddons.context():
        for _ in range(3):
            run(lim.request(flow()))
        f = flow(session="s-2", client="10.0.0.8")
        run(lim.request(f))
    assert f.response is None


def test_hosts_outside_the_globs_do_not_count():
    lim, _ = make()
    with taddons.context():
        for _ in range(5):
            f = flow(host="other.example.org")
            run(lim.request(f))
            assert f.response is None


def test_window_slides():
    lim, clock = make()
    with taddons.context():
        for _ in range(3):
            run(lim.request(flow()))
        clock.t += 60
        f = flow()
        run(lim.request(f))
    assert f.response is None


def test_bytes_counted_as_sent_and_refused_requests_not_counted():
    lim, clock = make()
    with taddons.context():
        f1 = flow(host="other.example.org", body=b"x" * 1000)
        size = wire_size(f1.request)
        assert size > 1000  # line and headers count too
        run(lim.request(f1))
        assert f1.response is None
        big = flow(host="other.example.org", body=b"y" * 1500)
        run(lim.request(big))
        assert big.response.status_code == 429 and big.response.json()["measure"] == "bytes"
        small = flow(host="other.example.org", body=b"z" * 100)
        run(lim.request(small))  # the refused request was not counted
        assert small.response is None


def test_settled_flows_are_not_counted():
    lim, _ = make()
    with taddons.context():
        for _ in range(5):
            f = flow()
            f.response = tflow.tresp()
            run(lim.request(f))
        f = flow()
        run(lim.request(f))
    assert f.response is None


def test_an_internal_error_refuses():
    lim, _ = make()
    lim.counters = None  # broken
    with taddons.context():
        f = flow()
        run(lim.request(f))
    assert f.response.status_code == 500 and f.response.headers[HEADER] == "internal_error"


def test_ipv4_mapped_client_address_is_the_same_client():
    lim, _ = make()
    with taddons.context():
        for i, addr in enumerate(("10.0.0.7", "::ffff:10.0.0.7", "10.0.0.7")):
            run(lim.request(flow(session=f"s-{i}", client=addr)))
        f = flow(session="s-9", client="::ffff:10.0.0.7")
        run(lim.request(f))
    assert f.response.status_code == 429


@pytest.mark.parametrize("body", [b"", b"abc" * 100])
def test_wire_size_is_line_headers_and_body(body):
    f = flow(body=body)
    head = f"{f.request.method} {f.request.path} {f.request.http_version}\r\n"
    assert wire_size(f.request) >= len(head) + len(body)


# --- in a fleet: the store holds the counters (a fake store shared by two "instances") --------
class FakeStore:
    """gateway_charge's semantics over a dict shared by instances; `down` raises StoreDown."""

    def __init__(self, rows: dict, instance: str) -> None:
        self.rows, self.instance, self.down = rows, instance, False
        self.refunds = 0

    def _check(self):
        if self.down:
            raise StoreDown("the fleet's store postgresql://x@127.0.0.1:1/db is unreachable")

    async def charge(self, pairs, second, size, since):
        self._check()
        for r, k in pairs:
            n, b = self.rows.get((r, k, second, self.instance), (0, 0))
            self.rows[(r, k, second, self.instance)] = (n + 1, b + size)
        out: dict = {}
        for (r, k, s, _), (n, b) in self.rows.items():
            if (r, k) in pairs and s >= since:
                n0, b0 = out.get((r, k, s), (0, 0))
                out[(r, k, s)] = (n0 + n, b0 + b)
        return [(r, k, s, n, b) for (r, k, s), (n, b) in out.items()]

    async def refund(self, pairs, second, size):
        self._check()
        self.refunds += 1
        for r, k in pairs:
            n, b = self.rows[(r, k, second, self.instance)]
            self.rows[(r, k, second, self.instance)] = (n - 1, b - size)

    async def prune_counters(self, before):
        self._check()


class FakeFleet:
    def __init__(self, store) -> None:
        self.store = store


def fleet_of(n: int):
    rows: dict = {}
    clock = Clock()
    out = []
    for i in range(n):
        core = Core()
        lim = Limits(core, fleet=FakeFleet(FakeStore(rows, f"gw-{i}")), clock=clock)
        core.policy = parse_policy(POLICY)
        out.append(lim)
    return out, clock


def test_fleet_counts_across_instances():
    (a, b), _ = fleet_of(2)
    with taddons.context():
        for i in range(3):
            f = flow()
            run((a, b)[i % 2].request(f))
            assert f.response is None
        f = flow()
        run(b.request(f))
    assert f.response.status_code == 429 and f.response.json()["scope"] == "session"
    assert b.fleet.store.refunds == 1
    # the refused request was taken back: the window still holds 3
    assert sum(n for (r, k, _, _), (n, _) in a.fleet.store.rows.items()
               if r == "per-minute" and k == "session:s-1") == 3


def test_fleet_rotating_sessions_across_instances_is_limited_by_address():
    (a, b), _ = fleet_of(2)
    with taddons.context():
        for i in range(3):
            run((a, b)[i % 2].request(flow(session=f"r-{i}")))
        f = flow(session="r-new")
        run(a.request(f))
    assert f.response.status_code == 429 and f.response.json()["scope"] == "client"


def test_fleet_bytes_across_instances_retry_after():
    (a, b), clock = fleet_of(2)
    with taddons.context():
        f = flow(host="other.example.org", body=b"x" * 1500)
        run(a.request(f))
        assert f.response is None
        clock.t += 20
        g = flow(host="other.example.org", body=b"x" * 600)
        run(b.request(g))
    assert g.response.status_code == 429 and g.response.json()["measure"] == "bytes"
    assert g.response.headers["Retry-After"] == "40"


def test_store_down_refuses_limited_requests_503_and_recovers():
    (a,), _ = fleet_of(1)
    a.fleet.store.down = True
    with taddons.context():
        f = flow()
        run(a.request(f))
        a.fleet.store.down = False
        g = flow()
        run(a.request(g))
    assert f.response.status_code == 503
    assert f.response.headers[HEADER] == "state_unavailable"
    assert "unreachable" in f.response.json()["reason"]
    assert g.response is None
