"""Protocol switches (egress/upgrade.py): which requests ask for one, which mitmproxy inspects,
and the addon refusing them (taddons/tflow)."""

from __future__ import annotations

import pytest
from egress_gateway.core import Core
from egress_gateway.egress.upgrade import UpgradeGuard, asks_upgrade, websocket_handshake
from egress_gateway.policy import parse_policy
from egress_gateway.redact.runtime import RedactRuntime
from mitmproxy import http
from mitmproxy.test import taddons, tflow

HANDSHAKES = [
    ("websocket 13", {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}, True, True),
    ("case and spaces", {"Upgrade": " WebSocket ", "Sec-WebSocket-Version": " 13"}, True, True),
    ("websocket 12", {"Upgrade": "websocket", "Sec-WebSocket-Version": "12"}, True, False),
    ("no version", {"Upgrade": "websocket"}, True, False),
    ("h2c", {"Upgrade": "h2c", "HTTP2-Settings": "AAMAAABk"}, True, False),
    ("h2c settings without Upgrade", {"HTTP2-Settings": "AAMAAABk"}, True, False),
    ("empty Upgrade", {"Upgrade": ""}, True, False),
    ("lookalike", {"Upgrade": "websocket2", "Sec-WebSocket-Version": "13"}, True, False),
    ("plain request", {"Accept": "*/*"}, False, False),
]


@pytest.mark.parametrize("headers,asks,inspectable", [c[1:] for c in HANDSHAKES],
                         ids=[c[0] for c in HANDSHAKES])
def test_handshakes(headers, asks, inspectable):
    h = http.Headers(**{k.replace("-", "_"): v for k, v in headers.items()})
    assert asks_upgrade(h) is asks
    assert websocket_handshake(h) is inspectable


def test_websocket_option_off_means_no_handshake_is_inspectable():
    h = http.Headers(Upgrade="websocket", Sec_WebSocket_Version="13")
    assert websocket_handshake(h, websocket_enabled=False) is False


POLICY = "version: 1\negress:\n  allow:\n    - host: example.com\n    - host: raw.example\n"


def make(extra: str = ""):
    core = Core()
    core.add_compiler("redact", lambda p: RedactRuntime(p, lambda s: None))
    core.policy = parse_policy(POLICY + extra)
    return UpgradeGuard(core)


def req(upgrade: str, host: str = "example.com"):
    f = tflow.tflow()
    f.request.host = host
    f.request.headers["Upgrade"] = upgrade
    f.request.headers["Connection"] = "Upgrade"
    return f


def test_non_websocket_upgrade_is_refused_before_the_upstream():
    g = make()
    with taddons.context():
        f = req("foo")
        g.requestheaders(f)
    assert f.response.status_code == 415
    assert f.response.headers["X-Egress-Gateway"] == "unsupported_content"
    assert f.response.headers["Connection"] == "close"
    assert f.metadata["gateway"]["details"] == {"where": "upgrade"}


def test_policy_passing_raw_tcp_passes_the_upgrade():
    g = make("redact:\n  rules:\n    - hosts: [raw.example]\n      request: {unsupported: pass}\n")
    with taddons.context():
        f = req("foo", "raw.example")
        g.requestheaders(f)
        assert f.response is None
        assert f.metadata["gateway"]["unscanned"]["request"].startswith("protocol switch")
        other = req("foo")
        g.requestheaders(other)
        assert other.response.status_code == 415


def test_a_websocket_handshake_passes():
    g = make()
    with taddons.context():
        f = req("websocket")
        f.request.headers["Sec-WebSocket-Version"] = "13"
        g.requestheaders(f)
    assert f.response is None


@pytest.mark.parametrize("websocket", [False, True])
def test_a_101_that_will_not_become_a_websocket_is_replaced(websocket):
    g = make()
    with taddons.context():
        f = tflow.tflow(resp=True)
        f.response.status_code = 101
        f.response.headers["Upgrade"] = "foo"
        if websocket:
            f.websocket = tflow.twebsocketflow().websocket
        g.response(f)
    if websocket:
        assert f.response.status_code == 101
    else:
        assert f.response.status_code == 415 and f.response.headers["Connection"] == "close"


def test_errors_refuse():
    g = make()
    g.core.policy = None  # require_policy raises
    with taddons.context():
        f = req("foo")
        g.requestheaders(f)
    assert f.response.status_code == 500
