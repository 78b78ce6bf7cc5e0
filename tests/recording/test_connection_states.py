"""The recorder's flow state with connection states reused: the same bytes as mitmproxy's
own ``get_state()``, and never a stale connection."""

from __future__ import annotations

import pytest
from egress_gateway.recording import mask
from mitmproxy.test import tflow


def _flows():
    plain = tflow.tflow(resp=True)
    failed = tflow.tflow(err=True)
    ws = tflow.twebsocketflow()
    tls = tflow.tflow(resp=True)
    tls.client_conn.tls_version, tls.client_conn.sni = "TLSv1.3", "api.example.com"
    tls.server_conn.alpn_offers = [b"h2", b"http/1.1"]
    tls.server_conn.cipher_list = ["TLS_AES_128_GCM_SHA256"]
    return [("response", plain), ("error", failed), ("websocket", ws), ("tls", tls)]


@pytest.mark.parametrize("flow", [f for _, f in _flows()], ids=[n for n, _ in _flows()])
def test_recorded_bytes_equal_mitmproxys_get_state(flow, monkeypatch):
    flow.metadata["gateway"] = {"session": "s1", "decision": "allowed"}
    flow.metadata["other"] = {"dropped": True}
    for forwarded in (True, False):
        fast = mask.serialize(mask.recorded_state(flow, forwarded))
        again = mask.serialize(mask.recorded_state(flow, forwarded))  # from the cache
        with monkeypatch.context() as m:
            m.setattr(mask, "flow_state", lambda f: f.get_state())
            slow = mask.serialize(mask.recorded_state(flow, forwarded))
        assert fast == again == slow


def test_a_changed_connection_is_never_served_stale():
    f = tflow.tflow(resp=True)
    first = mask.flow_state(f)
    assert mask.flow_state(f)["server_conn"] is first["server_conn"]  # unchanged: reused
    changes = [
        lambda: setattr(f.server_conn, "timestamp_end", 1234.5),
        lambda: setattr(f.client_conn, "tls_version", "TLSv1.2"),
        lambda: f.server_conn.alpn_offers.append(b"h2") if isinstance(
            f.server_conn.alpn_offers, list) else setattr(f.server_conn, "alpn_offers", [b"h2"]),
        lambda: setattr(f.server_conn, "alpn_offers", [*f.server_conn.alpn_offers, b"x"]),
        lambda: setattr(f.client_conn, "error", "reset"),
    ]
    for change in changes:
        change()
        assert mask.flow_state(f)["client_conn"] == f.client_conn.get_state()
        assert mask.flow_state(f)["server_conn"] == f.server_conn.get_state()


def test_an_edited_flow_takes_mitmproxys_path():
    f = tflow.tflow(resp=True)
    f.backup()
    f.request.path = "/edited"
    assert mask.flow_state(f) == f.get_state()
    assert mask.flow_state(f)["backup"] is not None
