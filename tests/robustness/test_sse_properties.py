"""Property-based tests (hypothesis) of the SSE parser and the streaming redactor."""

from __future__ import annotations

import json
import re

from egress_gateway.net.sse import SSEParser
from egress_gateway.redact.stream import StreamRedactor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sse_fakes import analyze, apply

EMAIL = re.compile(r"[a-z0-9.]+@[a-z0-9]+\.[a-z]{2,}")

field_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                     max_size=30)
events = st.lists(st.tuples(st.sampled_from(["message", "delta", "ping"]),
                            st.lists(field_text, min_size=1, max_size=3)), min_size=1, max_size=8)
line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])


def serialise(evs, nl: bytes) -> bytes:
    out = b""
    for name, data_lines in evs:
        out += b"event: " + name.encode() + nl
        for d in data_lines:
            out += b"data: " + d.encode() + nl
        out += nl
    return out


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=200, deadline=None)
@given(events, line_end, st.lists(st.integers(min_value=0, max_value=10_000), max_size=10))
def test_parser_is_independent_of_chunking(evs, nl, cuts):
    raw = serialise(evs, nl)
    p = SSEParser()
    got = [ev for piece in chunked(raw, cuts) for ev in p.feed(piece)]
    # a data line that starts with a space loses exactly that one space (SSE rule)
    assert [(e.event, e.data) for e in got] == [(n, "\n".join(d)) for n, d in evs]
    assert p.close() is None



words = st.sampled_from(["hello", "mail", "bob.smith@example.com", "x@ab.io", "and", "then",
                         "carol@mail.org", "ok.", "the", "report"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(words, min_size=1, max_size=40), st.lists(st.integers(1, 12), min_size=1, max_size=60),
       st.lists(st.integers(min_value=0, max_value=100_000), max_size=8))
def test_stream_redactor_no_detected_value_survives(ws, sizes, cuts):
    text = " ".join(ws)
    pieces, pos, i = [], 0, 0
    while pos < len(text):
        n = sizes[i % len(sizes)]
        pieces.append(text[pos:pos + n])
        pos += n
        i += 1
    stream = b"".join(
        b"event: content_block_delta\ndata: " + json.dumps(
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": p}}).encode() + b"\n\n" for p in pieces)
    stream += b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}\n\n'
    r = StreamRedactor(analyze, apply, lambda d: apply(d, analyze(d)), window=24)
    out = b""
    for piece in chunked(stream, cuts):
        if not piece:
            continue  # mitmproxy passes b"" only once, at the end of the stream
        res = r(piece)
        assert res != b""  # never a zero-length chunk mid-stream
        out += b"".join(res) if isinstance(res, list) else res
    res = r(b"")
    out += b"".join(res) if isinstance(res, list) else res
    texts = "".join(json.loads(e.data)["delta"]["text"] for e in SSEParser().feed(out)
                    if json.loads(e.data)["type"] == "content_block_delta")
    assert "@" not in texts
    assert texts == EMAIL.sub("<EMAIL_ADDRESS>", text)
