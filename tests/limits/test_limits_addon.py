"""The limits addon (limits/addon.py) with taddons/tflow: per session, per client address, the
429 refusal with Retry-After, and what counts as bytes sent."""

from __future__ import annotations

import pytest
from egress_gateway.core import Core
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
            lim.request(f)
            assert f.response is None
        clock.t += 10
        f = flow()
        lim.request(f)
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
            lim.request(f)
            assert f.response is None
        f = flow(session="s-fresh")
        lim.request(f)
    assert f.response.status_code == 429 and f.response.json()["scope"] == "client"


def test_another_address_and_session_is_not_limited():
    lim, _ = make()
    with taddons.context():
        for _ in range(3):
            lim.request(flow())
        f = flow(session="s-2", client="10.0.0.8")
        lim.request(f)
    assert f.response is None


def test_hosts_outside_the_globs_do_not_count():
    lim, _ = make()
    with taddons.context():
        for _ in range(5):
            f = flow(host="other.example.org")
            lim.request(f)
            assert f.response is None


def test_window_slides():
    lim, clock = make()
    with taddons.context():
        for _ in range(3):
            lim.request(flow())
        clock.t += 60
        f = flow()
        lim.request(f)
    assert f.response is None


def test_bytes_counted_as_sent_and_refused_requests_not_counted():
    lim, clock = make()
    with taddons.context():
        f1 = flow(host="other.example.org", body=b"x" * 1000)
        size = wire_size(f1.request)
        assert size > 1000  # line and headers count too
        lim.request(f1)
        assert f1.response is None
        big = flow(host="other.example.org", body=b"y" * 1500)
        lim.request(big)
        assert big.response.status_code == 429 and big.response.json()["measure"] == "bytes"
        small = flow(host="other.example.org", body=b"z" * 100)
        lim.request(small)  # the refused request was not counted
        assert small.response is None


def test_settled_flows_are_not_counted():
    lim, _ = make()
    with taddons.context():
        for _ in range(5):
            f = flow()
            f.response = tflow.tresp()
            lim.request(f)
        f = flow()
        lim.request(f)
    assert f.response is None


def test_an_internal_error_refuses():
    lim, _ = make()
    lim.counters = None  # broken
    with taddons.context():
        f = flow()
        lim.request(f)
    assert f.response.status_code == 500 and f.response.headers[HEADER] == "internal_error"


def test_ipv4_mapped_client_address_is_the_same_client():
    lim, _ = make()
    with taddons.context():
        for i, addr in enumerate(("10.0.0.7", "::ffff:10.0.0.7", "10.0.0.7")):
            lim.request(flow(session=f"s-{i}", client=addr))
        f = flow(session="s-9", client="::ffff:10.0.0.7")
        lim.request(f)
    assert f.response.status_code == 429


@pytest.mark.parametrize("body", [b"", b"abc" * 100])
def test_wire_size_is_line_headers_and_body(body):
    f = flow(body=body)
    head = f"{f.request.method} {f.request.path} {f.request.http_version}\r\n"
    assert wire_size(f.request) >= len(head) + len(body)
