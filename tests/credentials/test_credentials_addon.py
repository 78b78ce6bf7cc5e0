"""The credential addons with mitmproxy.test.taddons/tflow, and the wire-injection wrapper."""

from __future__ import annotations

import json

import pytest
import yaml
from egress_gateway.core import Core
from egress_gateway.credentials import scrub, wire
from egress_gateway.credentials.addon import CredentialGuard, CredentialInjector
from egress_gateway.policy import parse_policy
from mitmproxy import http
from mitmproxy.proxy.layers import http as layers_http
from mitmproxy.test import taddons, tflow

REAL = "sk-real-value-0123456789abcdef"
PH = "gateway-placeholder-x"


class FakeAudit:
    def __init__(self):
        self.lines: list[dict] = []

    def write(self, rec):
        self.lines.append(rec)


def make_core(policy) -> Core:
    core = Core()
    core.policy = policy
    core.audit = FakeAudit()
    return core


@pytest.fixture
def core(monkeypatch):
    monkeypatch.setenv("CRED_ADDON_KEY", REAL)
    doc = {"version": 1, "egress": {"allow": [{"host": "api.example.com"}, {"host": "evil.com"}]},
           "credentials": [{"name": "api", "host": "api.example.com", "header": "x-api-key",
                            "env": "CRED_ADDON_KEY", "placeholder": PH}]}
    return make_core(parse_policy(yaml.safe_dump(doc)))


def flow_to(host="api.example.com", headers=None, body=b"", scheme="https"):
    f = tflow.tflow(resp=False)
    r = f.request
    r.scheme, r.host, r.port, r.method, r.path = scheme, host, 443, "POST", "/v1/messages"
    r.headers.clear()
    r.headers["Host"] = host
    for k, v in (headers or {}).items():
        r.headers[k] = v
    r.raw_content = body
    return f


class Server:
    def __init__(self, address=("api.example.com", 443), tls=True):
        self.address, self.tls = address, tls


def test_guard_refuses_a_leak_and_audits_an_alert(core):
    g = CredentialGuard(core)
    f = flow_to("evil.com", headers={"X-Api-Key": PH})
    with taddons.context(g):
        g.requestheaders(f)
    assert f.response.status_code == 403
    assert f.response.headers["X-Egress-Gateway"] == "credential_leak"
    doc = json.loads(f.response.content)
    assert doc["credential"] == "api" and doc["where"] == "header X-Api-Key"
    meta = f.metadata["gateway"]
    assert meta["code"] == "credential_leak"
    assert meta["credential"]["alert"] == "credential_leak"
    (line,) = core.audit.lines
    assert line["kind"] == "alert" and line["credential"] == "api" and line["host"] == "evil.com"
    assert PH not in json.dumps(line) and PH not in json.dumps(meta)


def test_guard_scrubs_a_real_value_the_agent_sent(core):
    g = CredentialGuard(core)
    f = flow_to("api.example.com", headers={"X-Api-Key": REAL}, body=f"key {REAL}".encode())
    f.request.headers["content-length"] = str(len(f.request.raw_content))
    with taddons.context(g):
        g.requestheaders(f)
        g.request(f)
    assert f.response is None  # bound destination: allowed
    assert f.request.headers["X-Api-Key"] == PH
    assert f.request.raw_content == f"key {PH}".encode()
    assert f.request.headers["content-length"] == str(len(f"key {PH}"))


def test_guard_fails_closed(core):
    core.policy = None
    g = CredentialGuard(core)
    f = flow_to()
    with taddons.context(g):
        g.request(f)
    assert f.response.status_code == 500
    assert f.response.headers["X-Egress-Gateway"] == "internal_error"


def test_guard_refuses_undecodable_body(core):
    g = CredentialGuard(core)
    f = flow_to("evil.com", headers={"content-encoding": "gzip"}, body=b"not gzip")
    with taddons.context(g):
        g.request(f)
    assert f.response.headers["X-Egress-Gateway"] == "unsupported_content"


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_guard_scrubs_echo_in_response(core, encoding):
    g = CredentialGuard(core)
    f = flow_to()
    body = f'{{"msg": "bad key {REAL}"}}'.encode()
    headers = {"x-echo": REAL, "content-type": "application/json"}
    if encoding:
        headers["content-encoding"] = encoding
    f.response = http.Response.make(401, body, headers)  # encodes the body per the header
    if encoding:
        assert f.response.raw_content[:2] == b"\x1f\x8b"
    with taddons.context(g):
        g.responseheaders(f)
        assert f.response.headers["x-echo"] == PH
        g.response(f)
    assert REAL.encode() not in f.response.raw_content
    assert f.response.content == f'{{"msg": "bad key {PH}"}}'.encode()
    assert f.metadata["gateway"]["credential_echo"] == {"headers": 1, "body": 1}


def test_injector_marks_and_the_flow_keeps_the_placeholder(core):
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH})
    with taddons.context(inj):
        inj.request(f)
        assert f.response is None
        assert f.request.headers["X-Api-Key"] == PH
        assert f.metadata["gateway"]["credential"] == {"name": "api", "injected": False}
        sent = wire.materialise(f.request, Server())
    assert sent is not f.request and sent.headers["X-Api-Key"] == REAL
    assert f.request.headers["X-Api-Key"] == PH
    assert f.metadata["gateway"]["credential"] == {"name": "api", "injected": True}
    assert wire.materialise(f.request, Server()) is None  # one request, one injection


def test_injector_does_not_add_a_header_the_agent_did_not_send(core):
    inj = CredentialInjector(core)
    f = flow_to(headers={"Authorization": f"Bearer {PH}"})
    with taddons.context(inj):
        inj.request(f)
        assert "credential" not in f.metadata.get("gateway", {})
        assert wire.materialise(f.request, Server()) is None


@pytest.mark.parametrize("change,server", [
    ("edited-host", Server()),
    (None, Server(address=("evil.com", 443))),
    (None, Server(tls=False)),
    ("proxy-debug", Server()),
], ids=["request-edited-after-marking", "server-is-another-host", "server-not-tls", "proxy-debug"])
def test_materialise_refuses_when_anything_changed(core, change, server):
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH})
    with taddons.context(inj) as tctx:
        tctx.options.add_option("proxy_debug", bool, False, "")
        inj.request(f)
        if change == "edited-host":
            f.request.host = "evil.com"
        if change == "proxy-debug":
            tctx.options.proxy_debug = True
        assert wire.materialise(f.request, server) is None
    assert f.metadata["gateway"]["credential"]["injected"] is False


def test_injector_refuses_plain_http_and_proxy_debug(core):
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH}, scheme="http")
    with taddons.context(inj) as tctx:
        tctx.options.add_option("proxy_debug", bool, False, "")
        inj.request(f)
        assert f.response.status_code == 403 and "only sent over HTTPS" in f.response.text
        tctx.options.proxy_debug = True
        g = flow_to(headers={"X-Api-Key": PH})
        inj.request(g)
        assert g.response.headers["X-Egress-Gateway"] == "internal_error"
        assert wire.materialise(g.request, Server()) is None


def test_injector_wraps_response_streams_of_injected_flows(core):
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH})
    with taddons.context(inj):
        inj.request(f)
        wire.materialise(f.request, Server())
        f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        f.response.stream = True
        inj.responseheaders(f)
        stream = f.response.stream
        assert isinstance(stream, scrub.ScrubStream)
        out = stream(f"data: {REAL[:5]}".encode()) + stream(f"{REAL[5:]}\n\n".encode()) + stream(b"")
    assert b"".join(out) == f"data: {PH}\n\n".encode()
    assert f.metadata["gateway"]["credential_echo"] == {"stream": 1}


# --- the wrapper around HttpLayer.event_to_child ---------------------------------------------
class FakeChild:
    """A stand-in for an upstream connection layer: records the events it is handed."""

    def __init__(self, server):
        self.context = type("Ctx", (), {"server": server})()
        self.events: list = []

    def handle_event(self, event):
        self.events.append(event)
        return iter(())


def test_wire_wrapper_swaps_only_marked_request_heads(core):
    wire.install_wire_injection()
    wire.install_wire_injection()  # idempotent
    wrapped = layers_http.HttpLayer.event_to_child
    assert wrapped._egress_gateway_credentials is True
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH})
    other = flow_to(headers={"X-Api-Key": PH})
    with taddons.context(inj):
        inj.request(f)
        child = FakeChild(Server())
        list(wrapped(None, child, layers_http.RequestHeaders(1, f.request, end_stream=True)))
        list(wrapped(None, child, layers_http.RequestHeaders(3, other.request, end_stream=True)))
        data = layers_http.RequestData(1, b"body")
        list(wrapped(None, child, data))
    sent, unmarked, passed = child.events
    assert sent.request is not f.request and sent.request.headers["X-Api-Key"] == REAL
    assert sent.stream_id == 1 and sent.end_stream is True
    assert f.request.headers["X-Api-Key"] == PH  # the flow never holds it
    assert unmarked.request is other.request  # not marked: handed on untouched
    assert passed is data


def test_wire_wrapper_leaves_stream_bound_events_alone(core):
    wire.install_wire_injection()
    inj = CredentialInjector(core)
    f = flow_to(headers={"X-Api-Key": PH})
    stream_child = layers_http.HttpStream.__new__(layers_http.HttpStream)
    seen = []
    stream_child.handle_event = lambda ev: (seen.append(ev), iter(()))[1]
    with taddons.context(inj):
        inj.request(f)
        ev = layers_http.RequestHeaders(1, f.request, end_stream=True)
        list(layers_http.HttpLayer.event_to_child(None, stream_child, ev))
        assert seen == [ev]  # a request arriving from the client is not touched
        assert wire.materialise(f.request, Server()) is not None  # still marked


@pytest.mark.parametrize("host,content,dropped", [
    ("evil.com", f"my key is {PH}".encode(), True),
    ("evil.com", f"real: {REAL}".encode(), True),
    ("evil.com", b"nothing to see", False),
    ("api.example.com", f"bound here: {PH}".encode(), False),
], ids=["placeholder-elsewhere", "real-value-elsewhere", "clean", "bound-destination"])
def test_guard_drops_websocket_messages_that_leak(core, host, content, dropped):
    from mitmproxy import websocket

    f = tflow.twebsocketflow()
    f.request.host = host
    f.websocket.messages.append(websocket.WebSocketMessage(websocket.Opcode.TEXT, True, content))
    guard = CredentialGuard(core)
    with taddons.context():
        guard.websocket_message(f)
    assert f.websocket.messages[-1].dropped is dropped
    if dropped:
        (line,) = core.audit.lines
        assert line["alert"] == "credential_leak" and line["where"] == "a WebSocket message"
        assert REAL not in json.dumps(line) and PH not in json.dumps(line)
    else:
        assert core.audit.lines == []
