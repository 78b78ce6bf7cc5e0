"""The fast tnetstring encoder writes exactly what mitmproxy's does (recordings stay readable)."""

from __future__ import annotations

import enum

import pytest
from egress_gateway.recording import tnet
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

FLOWS = [
    ("http", lambda: tflow.tflow(resp=True)),
    ("http error", lambda: tflow.tflow(err=True)),
    ("websocket", tflow.twebsocketflow),
    ("tcp", tflow.ttcpflow),
    ("udp", tflow.tudpflow),
    ("dns", tflow.tdnsflow),
]


@pytest.mark.parametrize("make", [f[1] for f in FLOWS], ids=[f[0] for f in FLOWS])
def test_same_bytes_as_mitmproxy_on_flows(make):
    state = make().get_state()
    assert tnet.dumps(state) == tnetstring.dumps(state)


class Kind(enum.IntEnum):
    A = 3


def test_odd_types():
    for v in (True, False, None, 0, -5, 2**80, 1.5, float("inf"), Kind.A, b"", "", "é", (), [],
              {b"k": [1, (2, None)], "s": {"n": -1.25}}):
        assert tnet.dumps(v) == tnetstring.dumps(v), v
    with pytest.raises(ValueError):
        tnet.dumps(object())


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary()
    | st.text(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.binary(), inner),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_same_bytes_property(v):
    assert tnet.dumps(v) == tnetstring.dumps(v)
