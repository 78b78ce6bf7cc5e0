"""The incremental SSE parser, the hold-back logic and the stream callable (fake detector)."""

from __future__ import annotations

import json

import pytest
from egress_gateway.net.sse import SSEParser
from egress_gateway.redact.stream import HoldBack, StreamRedactor
from sse_fakes import EMAIL, analyze, apply, redact_data

PARSE = [
    ("lf", [b"event: a\ndata: 1\n\n"], [("a", "1")]),
    ("crlf", [b"event: a\r\ndata: 1\r\n\r\n"], [("a", "1")]),
    ("cr", [b"event: a\rdata: 1\r\r"], [("a", "1")]),
    ("split everywhere", [b"ev", b"ent: a\nda", b"ta: 1\n", b"\n"], [("a", "1")]),
    ("crlf split between cr and lf", [b"data: 1\r", b"\n\r", b"\n"], [("message", "1")]),
    ("multi-line data", [b"data: one\ndata: two\n\n"], [("message", "one\ntwo")]),
    ("no space after colon", [b"data:x\n\n"], [("message", "x")]),
    ("comment only", [b": keepalive\n\n"], [("message", "")]),
    ("retry and id", [b"retry: 100\nid: 7\ndata: z\n\n"], [("message", "z")]),
    ("two events", [b"data: a\n\ndata: b\n\n"], [("message", "a"), ("message", "b")]),
]


@pytest.mark.parametrize("chunks,expected", [p[1:] for p in PARSE], ids=[p[0] for p in PARSE])
def test_parser(chunks, expected):
    p = SSEParser()
    events = [ev for c in chunks for ev in p.feed(c)]
    assert [(e.event, e.data) for e in events] == expected
    assert p.close() is None


def test_stream_ending_mid_event():
    p = SSEParser()
    assert p.feed(b"data: complete\n\ndata: unfinished") and True
    tail = p.close()
    assert tail is not None and tail.data == "unfinished"


def test_line_length_bound():
    p = SSEParser(max_line=100)
    with pytest.raises(ValueError):
        p.feed(b"data: " + b"x" * 200)


def run_holdback(pieces, window=10):
    hb = HoldBack(analyze, apply, window=window, min_release=1)
    out = "".join(hb.push(p) for p in pieces) + hb.flush()
    return out, hb


HOLD = [
    ("two pieces", ["Mail alice@exa", "mple.com now please, thanks a lot"]),
    ("three pieces", ["Mail ali", "ce@examp", "le.com now please, thanks"]),
    ("byte at a time", list("write to bob.smith@example.org and wait for the reply")),
    ("at the end", ["contact: carol@", "example.net"]),
]


@pytest.mark.parametrize("pieces", [h[1] for h in HOLD], ids=[h[0] for h in HOLD])
def test_holdback_catches_split_entities(pieces):
    out, hb = run_holdback(pieces)
    assert "@" not in out and "<EMAIL_ADDRESS>" in out
    assert hb.counts["EMAIL_ADDRESS"] == 1
    assert EMAIL.sub("<EMAIL_ADDRESS>", "".join(pieces)) == out


def test_holdback_releases_early_text():
    hb = HoldBack(analyze, apply, window=10, min_release=1)
    first = hb.push("The quick brown fox jumps over the lazy dog and keeps running ")
    assert first.startswith("The quick brown fox")  # released before the end of the stream
    assert len(hb.pending) <= 10 + 10


def sse(*docs):
    return b"".join(b"event: " + d["type"].encode() + b"\ndata: " + json.dumps(d).encode()
                    + b"\n\n" for d in docs)


def delta(text, index=0, kind="text_delta"):
    field = "text" if kind == "text_delta" else "partial_json"
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}}


def collect(out):
    return b"".join(out) if isinstance(out, list) else out


def parse_text(stream: bytes):
    texts, types = {}, []
    for ev in SSEParser().feed(stream):
        doc = json.loads(ev.data)
        types.append(doc["type"])
        if doc["type"] == "content_block_delta":
            d = doc["delta"]
            texts[doc["index"]] = texts.get(doc["index"], "") + d.get("text", d.get("partial_json", ""))
    return texts, types


def test_stream_redactor_messages_api():
    events = sse(
        {"type": "message_start", "message": {"model": "claude-sonnet-4-5-20250929"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        delta("Hello, write to ali"), delta("ce@exam"), delta("ple.com soon."),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use"}},
        delta('{"to": "dave@ex', 1, "input_json_delta"), delta('ample.com"}', 1, "input_json_delta"),
        {"type": "content_block_stop", "index": 1},
        {"type": "message_stop"},
    )
    r = StreamRedactor(analyze, apply, redact_data, window=10)
    out = b""
    for i in range(0, len(events), 7):  # arbitrary chunking
        out += collect(r(events[i:i + 7]))
    out += collect(r(b""))
    texts, types = parse_text(out)
    assert texts[0] == "Hello, write to <EMAIL_ADDRESS> soon."
    assert json.loads(texts[1]) == {"to": "<EMAIL_ADDRESS>"}
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert b"claude-sonnet-4-5-20250929" in out
    assert r.counts["EMAIL_ADDRESS"] == 2 and b"@" not in out


def test_stream_redactor_never_returns_empty_bytes_mid_stream():
    r = StreamRedactor(analyze, apply, redact_data, window=40)
    out = r(sse(delta("held")))
    assert out == []  # nothing released yet, and no zero-length chunk
    assert collect(r(b"")).count(b"held") == 1


def test_stream_redactor_generic_sse_and_comments():
    r = StreamRedactor(analyze, apply, redact_data)
    out = collect(r(b": ping\n\nretry: 5\ndata: mail eve@example.com\n\n"))
    assert out == b": ping\n\n"  # text data is one text per stream: held until the next event
    out += collect(r(b""))
    assert b"retry: 5\ndata: mail <EMAIL_ADDRESS>\n\n" in out


def test_stream_redactor_fails_closed():
    def boom(*args):
        raise RuntimeError("detector down")
    r = StreamRedactor(boom, boom, boom)
    out = collect(r(b"data: secret alice@example.com\n\n"))
    out += collect(r(b"data: " + b"x " * 40 + b"\n\n"))  # enough text to analyse
    assert b"alice" not in out and b"egress_gateway_error" in out
    assert r(b"data: more\n\n") == []
    assert r.failed


def test_stream_redactor_cuts_off_a_blocked_entity():
    def apply_blocking(text, findings):
        new, counts, _ = apply(text, findings)
        return new, counts, ({"PEM_PRIVATE_KEY"} if findings else set())
    r = StreamRedactor(analyze, apply_blocking, redact_data, window=5)
    out = collect(r(sse(delta("here is a key: k@example.com and more text after it"))))
    out += collect(r(sse(delta(" more"))))
    out += collect(r(b""))
    assert b"example.com" not in out and b"egress_gateway_error" in out and b"PEM_PRIVATE_KEY" in out
    assert r.failed.startswith("blocked")


@pytest.mark.parametrize("stream,expected", [
    (b": mail eve@example.com\n\n", b": mail <EMAIL_ADDRESS>\n\n"),
    (b"id: eve@example.com\ndata: hi\n\n", b"id: <EMAIL_ADDRESS>\ndata: hi\n\n"),
    (b"event: eve@example.com\ndata: hi\n\n", b"event: <EMAIL_ADDRESS>\ndata: hi\n\n"),
    (b"x-note: eve@example.com\n\n", b"x-note: <EMAIL_ADDRESS>\n\n"),
    (b": ping\r\n\r\nevent: message\r\ndata: hi\r\n\r\n",
     b": ping\r\n\r\nevent: message\r\ndata: hi\r\n\r\n"),
], ids=["comment", "id", "event", "unknown-field", "clean-kept-byte-for-byte"])
def test_stream_redactor_redacts_comments_and_other_fields(stream, expected):
    """A response stream's comments and non-data fields reach the agent verbatim: redacted too."""
    r = StreamRedactor(analyze, apply, redact_data)
    out = collect(r(stream)) + collect(r(b""))
    assert out == expected
