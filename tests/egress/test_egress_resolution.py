"""Resolution (rebinding), client access and exposure checks, table-driven."""

from __future__ import annotations

import asyncio
import socket

import pytest
from egress_gateway.core import Core, exposure_problem
from egress_gateway.egress.addon import Egress
from egress_gateway.policy import parse_policy
from mitmproxy.test import taddons, tflow

POLICY = parse_policy(
    "version: 1\negress:\n  allow:\n    - host: api.example.com\n    - host: db.example.com\n"
    "    - cidr: 10.20.0.0/16\n"
)


def egress_with(policy=POLICY):
    core = Core()
    core.policy = policy
    return Egress(core)


def fake_getaddrinfo(answers):
    async def getaddrinfo(host, port, **kw):
        if answers is None:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers]
    return getaddrinfo


RESOLVE = [
    ("public", "api.example.com", ["93.184.216.34"], True, "93.184.216.34"),
    ("loopback answer", "api.example.com", ["127.0.0.1"], False, None),
    ("metadata answer", "api.example.com", ["169.254.169.254"], False, None),
    ("rebinding mix", "api.example.com", ["93.184.216.34", "10.0.0.7"], False, None),
    ("mapped private", "api.example.com", ["::ffff:192.168.1.1"], False, None),
    ("private in cidr", "db.example.com", ["10.20.3.4"], True, "10.20.3.4"),
    ("nxdomain", "api.example.com", None, False, None),
]


@pytest.mark.parametrize("host,answers,allowed,address", [r[1:] for r in RESOLVE],
                         ids=[r[0] for r in RESOLVE])
def test_resolve_checked(monkeypatch, host, answers, allowed, address):
    egress = egress_with()

    async def run():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo(answers))
        return await egress.resolve_checked(host, 443)

    d, addr = asyncio.run(run())
    assert d.allowed is allowed, d.reason
    assert addr == address
    if answers is None:
        assert d.code == "dns_error"


def test_pins_are_used_without_dns(monkeypatch):
    egress = egress_with(parse_policy(
        "version: 1\negress:\n  allow:\n    - host: db.example.com\n"
        "  resolve:\n    db.example.com: 10.9.9.9\n"))

    async def run():
        loop = asyncio.get_running_loop()

        async def boom(*a, **k):
            raise AssertionError("DNS must not be used for a pinned name")
        monkeypatch.setattr(loop, "getaddrinfo", boom)
        return await egress.resolve_checked("db.example.com", 443)

    d, addr = asyncio.run(run())
    assert d.allowed and addr == "10.9.9.9"


CLIENTS = [
    ("no restriction", [], "203.0.113.9", True),
    ("inside", ["10.8.0.0/16"], "10.8.1.1", True),
    ("outside", ["10.8.0.0/16"], "127.0.0.1", False),
    ("mapped inside", ["10.8.0.0/16"], "::ffff:10.8.1.1", True),
]


@pytest.mark.parametrize("allow,peer,ok", [c[1:] for c in CLIENTS], ids=[c[0] for c in CLIENTS])
def test_client_access(allow, peer, ok):
    policy = parse_policy("version: 1\negress:\n  allow: []\nclients:\n  allow: "
                          + ("[" + ", ".join(allow) + "]") + "\n")
    egress = egress_with(policy)
    f = tflow.tflow()
    f.client_conn.peername = (peer, 5555)
    f.client_conn.error = None
    with taddons.context():
        egress.client_connected(f.client_conn)
    assert (f.client_conn.error is None) is ok


EXPOSURE = [
    ("loopback", ["regular"], "127.0.0.1", None, [], False),
    ("localhost", ["regular"], "localhost", None, [], False),
    ("ipv6 loopback", ["regular"], "::1", None, [], False),
    ("all interfaces", ["regular"], "", None, [], True),
    ("public", ["regular"], "0.0.0.0", None, [], True),
    ("mode listen host", ["regular@0.0.0.0:8080"], "127.0.0.1", None, [], True),
    ("client cidr", ["regular"], "0.0.0.0", None, ["10.0.0.0/8"], False),
    ("proxyauth", ["regular"], "0.0.0.0", "user:pass", [], False),
    ("socks beyond loopback", ["socks5"], "0.0.0.0", None, [], True),
]


@pytest.mark.parametrize("modes,listen,auth,clients,problem", [e[1:] for e in EXPOSURE],
                         ids=[e[0] for e in EXPOSURE])
def test_exposure(modes, listen, auth, clients, problem):
    policy = parse_policy("version: 1\negress:\n  allow: []\nclients:\n  allow: ["
                          + ", ".join(clients) + "]\n")
    assert (exposure_problem(modes, listen, auth, policy) is not None) is problem
