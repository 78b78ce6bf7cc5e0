"""Response scrubbing: real values echoed back become placeholders, also across stream chunks."""

from __future__ import annotations

from cred_helpers import PH, REAL, entry, policy
from egress_gateway.credentials import scrub


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
