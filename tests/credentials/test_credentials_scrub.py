"""Response scrubbing: real values echoed back become placeholders, also across stream chunks."""

from __future__ import annotations

import base64

import pytest
from cred_helpers import PH, REAL, entry, policy
from egress_gateway.credentials import scrub

FORMS = [
    ("literal", lambda v: v.encode()),
    ("base64", lambda v: base64.b64encode(v.encode())),
    ("base64 unpadded", lambda v: base64.b64encode(v.encode()).rstrip(b"=")),
    ("base64url", lambda v: base64.urlsafe_b64encode(v.encode())),
    ("hex", lambda v: v.encode().hex().encode()),
    ("HEX", lambda v: v.encode().hex().upper().encode()),
    ("reversed", lambda v: v[::-1].encode()),
    ("spaced", lambda v: " ".join(v).encode()),
    ("dotted", lambda v: ".".join(v).encode()),
    ("one per line", lambda v: "\n".join(v).encode()),
]


@pytest.mark.parametrize("form", [f[1] for f in FORMS], ids=[f[0] for f in FORMS])
def test_every_encoded_form_of_the_real_value_becomes_the_placeholder_form(form):
    pairs = scrub.replacements(policy(entry()).credentials)
    body = b"echo: " + form(REAL) + b" end"
    new, n = scrub.scrub(body, pairs)
    assert n == 1 and new == b"echo: " + form(PH) + b" end"


@pytest.mark.parametrize("form", [f[1] for f in FORMS], ids=[f[0] for f in FORMS])
def test_encoded_forms_are_scrubbed_across_stream_chunks(form):
    pairs = scrub.replacements(policy(entry()).credentials)
    body = b"data: " + form(REAL) + b"\n\n"
    for cut in (7, len(body) // 2, len(body) - 3):
        s = scrub.ScrubStream(True, pairs)
        out = s(body[:cut]) + s(body[cut:]) + s(b"")
        assert b"".join(out) == b"data: " + form(PH) + b"\n\n", cut


def test_scrub_stream_across_chunks_never_returns_empty_bytes():
    pairs = scrub.replacements(policy(entry()).credentials)
    body = f"data: one {REAL} two\n\n".encode()
    for cut in range(1, len(body)):
        s = scrub.ScrubStream(True, pairs)
        out = []
        for chunk in (body[:cut], body[cut:], b""):
            res = s(chunk)
            assert isinstance(res, list) and b"" not in res
            out += res
        assert b"".join(out) == f"data: one {PH} two\n\n".encode(), cut


def test_scrub_stream_wraps_inner_callable():
    pairs = scrub.replacements(policy(entry()).credentials)
    s = scrub.ScrubStream(lambda c: c.upper(), pairs)
    assert b"".join(s(b"abc") + s(b"")) == b"ABC"


def test_scrub_headers_in_place():
    from mitmproxy import http

    pairs = scrub.replacements(policy(entry()).credentials)
    h = http.Headers(x_echo=f"key={REAL}", other="fine")
    assert scrub.scrub_headers(h, pairs) == 1
    assert h["x-echo"] == f"key={PH}" and h["other"] == "fine"
    assert scrub.scrub_headers(h, pairs) == 0
