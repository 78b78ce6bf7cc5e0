"""Addon tests (mitmproxy.test.taddons/tflow): decisions, metadata and failing closed."""

from __future__ import annotations

import asyncio
import json

import pytest
from egress_gateway.core import Core
from egress_gateway.egress.addon import Egress
from egress_gateway.policy import parse_policy
from mitmproxy.test import taddons, tflow

POLICY = parse_policy(
    "version: 1\negress:\n  allow:\n    - host: api.anthropic.com\n"
    "    - cidr: 10.20.0.0/16\n      ports: [5432]\n"
)


def make(policy=POLICY):
    core = Core()
    core.policy = policy
    return core, Egress(core)


def flow_to(host: str, port: int = 443, scheme: str = "https"):
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = scheme, host, port
    f.request.headers["Host"] = host
    f.client_conn.sni = None
    return f


@pytest.mark.parametrize("host,port,allowed", [
    ("api.anthropic.com", 443, True),
    ("API.ANTHROPIC.COM.", 443, True),
    ("api.anthropic.com", 22, False),
    ("evil.com", 443, False),
    ("api.anthropic.com.evil.com", 443, False),
    ("10.20.1.5", 5432, True),
    ("10.20.1.5", 443, False),
    ("10.21.1.5", 5432, False),
], ids=["exact", "case-and-dot", "port", "other-host", "suffix-trick", "cidr", "cidr-port",
        "outside-cidr"])
def test_requestheaders_decision(host, port, allowed):
    core, egress = make()
    f = flow_to(host, port)
    f.request.headers["Host"] = f"{host}:{port}"
    with taddons.context():
        egress.requestheaders(f)
    if allowed:
        assert f.response is None
    else:
        assert f.response.status_code == 403
        assert f.response.headers["X-Egress-Gateway"] == "blocked"
        assert f.metadata["gateway"]["decision"] == "blocked"
        assert json.loads(f.response.content)["error"] == "blocked"


class Exploding:
    @property
    def egress(self):
        raise RuntimeError("boom")


@pytest.mark.parametrize("hook", ["requestheaders", "http_connect"])
def test_internal_error_fails_closed(hook):
    core, egress = make(Exploding())
    f = flow_to("api.anthropic.com")
    with taddons.context():
        getattr(egress, hook)(f)
    assert f.response.status_code == 500
    assert f.response.headers["X-Egress-Gateway"] == "internal_error"
    assert json.loads(f.response.content)["error"] == "internal_error"


def test_request_hook_fails_closed_without_policy():
    asyncio.run(_test_request_hook_fails_closed_without_policy())


async def _test_request_hook_fails_closed_without_policy():
    core, egress = make(None)
    f = flow_to("api.anthropic.com")
    with taddons.context():
        await egress.request(f)
    assert f.response.status_code == 500


def test_server_connect_backstop_refuses_unlisted_dial():
    asyncio.run(_test_server_connect_backstop_refuses_unlisted_dial())


async def _test_server_connect_backstop_refuses_unlisted_dial():
    core, egress = make()
    f = tflow.tflow()
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData

    f.server_conn.address = ("evil.com", 443)
    f.server_conn.error = None
    data = ServerConnectionHookData(server=f.server_conn, client=f.client_conn)

    class Audit:
        lines = []

        def write(self, rec):
            self.lines.append(rec)

    core.audit = Audit()
    with taddons.context():
        await egress.server_connect(data)
    assert "blocked by the egress gateway" in f.server_conn.error
    assert Audit.lines[0]["decision"] == "blocked" and Audit.lines[0]["kind"] == "connection"


def test_server_connect_uses_pin_without_dns():
    asyncio.run(_test_server_connect_uses_pin_without_dns())


async def _test_server_connect_uses_pin_without_dns():
    policy = parse_policy("version: 1\negress:\n  allow:\n    - host: db.example.com\n"
                          "  resolve:\n    db.example.com: 10.20.1.5\n")
    core, egress = make(policy)
    f = tflow.tflow()
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData

    f.server_conn.address = ("db.example.com", 443)
    f.server_conn.error = None
    f.server_conn.sni = None
    f.client_conn.sni = None
    data = ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
    with taddons.context():
        await egress.server_connect(data)
    assert f.server_conn.error is None
    assert f.server_conn.address == ("10.20.1.5", 443)
