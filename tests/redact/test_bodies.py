"""Content types: each kind rewritten in place; unscannable and oversized bodies refused."""

from __future__ import annotations

import gzip
import json

import pytest
from egress_gateway.net import codecs
from egress_gateway.redact import bodies
from egress_gateway.redact.bodies import Options, Unsupported, content_kind
from egress_gateway.redact.jsonpath import Scope
from egress_gateway.redact.walker import TextJob
from redact_fakes import FakeEngine, fake_redact_many

LIMIT = 1024 * 1024


def run(raw: bytes, ct: str | None, ce: str | None = None, opts: Options | None = None,
        limit: int = LIMIT):
    job = TextJob()
    plan = bodies.plan_body(job, raw, ct, ce, limit, opts or Options())
    job.run(fake_redact_many)
    return plan.finish(), job


@pytest.mark.parametrize("ct,data,kind", [
    ("application/json", b"{}", "json"),
    ("application/json; charset=utf-8", b"{}", "json"),
    ("application/vnd.api+json", b"{}", "json"),
    ("text/json", b"{}", "json"),
    ("application/x-ndjson", b"{}", "ndjson"),
    ("application/jsonl", b"{}", "ndjson"),
    ("application/x-www-form-urlencoded", b"a=b", "form"),
    ('multipart/form-data; boundary="xyz"', b"", "multipart"),
    ("text/event-stream", b"", "sse"),
    ("text/plain", b"", "text"),
    ("TEXT/HTML; charset=ISO-8859-1", b"", "text"),
    ("application/xml", b"", "text"),
    ("application/atom+xml", b"", "text"),
    ("application/yaml", b"", "text"),
    (None, b"plain words a@b.co", "text"),
    (None, b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    ("application/octet-stream", b"text really", "binary"),
    ("image/png", b"", "binary"),
    ("application/grpc", b"", "binary"),
], ids=lambda v: str(v)[:30])
def test_content_kind(ct, data, kind):
    assert content_kind(ct, data) == kind


REWRITES = [
    ("json", "application/json", b'{"a": "x a@b.co", "n": 1.50}', b'{"a": "x <EMAIL_ADDRESS>", "n": 1.50}'),
    ("json with BOM", "application/json", b'\xef\xbb\xbf{"a": "a@b.co"}',
     b'\xef\xbb\xbf{"a": "<EMAIL_ADDRESS>"}'),
    ("invalid json scanned as text", "application/json", b'{"a": "a@b.co",,}',
     b'{"a": "<EMAIL_ADDRESS>",,}'),
    ("ndjson", "application/x-ndjson", b'{"a":"a@b.co"}\n{"b":1}\r\n{"c":"c@d.co"}\n',
     b'{"a":"<EMAIL_ADDRESS>"}\n{"b":1}\r\n{"c":"<EMAIL_ADDRESS>"}\n'),
    ("form", "application/x-www-form-urlencoded", b"to=a%40b.co&subject=hi+there&empty=&flag",
     b"to=%3CEMAIL_ADDRESS%3E&subject=hi+there&empty=&flag"),
    ("form with JSON value", "application/x-www-form-urlencoded",
     b"payload=%7B%22to%22%3A%22a%40b.co%22%7D&k=v",
     b"payload=%7B%22to%22%3A+%22%3CEMAIL_ADDRESS%3E%22%7D&k=v".replace(b"%3A+", b"%3A")),
    ("text", "text/plain", b"contact a@b.co today", b"contact <EMAIL_ADDRESS> today"),
    ("text latin-1", "text/plain; charset=iso-8859-1", "caf\xe9 a@b.co".encode("latin-1"),
     "caf\xe9 <EMAIL_ADDRESS>".encode("latin-1")),
    ("unlabelled text", None, b"mail a@b.co", b"mail <EMAIL_ADDRESS>"),
    ("sse", "text/event-stream",
     b'event: message_start\ndata: {"t": "a@b.co"}\n\n: keepalive\n\nid: 3\ndata: line one\n'
     b'data: z@y.io\n\nevent: done\ndata: [DONE]\n\n',
     b'event: message_start\ndata: {"t": "<EMAIL_ADDRESS>"}\n\n: keepalive\n\nid: 3\n'
     b'data: line one\ndata: <EMAIL_ADDRESS>\n\nevent: done\ndata: [DONE]\n\n'),
    ("sse crlf", "text/event-stream", b"data:a@b.co\r\n\r\n", b"data: <EMAIL_ADDRESS>\r\n\r\n"),
]


@pytest.mark.parametrize("ct,raw,expected", [(c, r, e) for _, c, r, e in REWRITES],
                         ids=[r[0] for r in REWRITES])
def test_rewrite_in_place(ct, raw, expected):
    new, job = run(raw, ct)
    assert new == expected
    assert job.counts["EMAIL_ADDRESS"] >= 1


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> bytes:
    out = b""
    for disposition, ctype, body in parts:
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MP = 'multipart/form-data; boundary="b0und4ry"'


def test_multipart_text_parts():
    raw = multipart([
        ('form-data; name="note"', None, b"reach me at a@b.co"),
        ('form-data; name="meta"', "application/json", b'{"owner": "c@d.co", "n": 1}'),
        ('form-data; name="plain"', "text/plain", b"nothing here"),
    ])
    new, job = run(raw, MP)
    assert new == raw.replace(b"a@b.co", b"<EMAIL_ADDRESS>").replace(b"c@d.co", b"<EMAIL_ADDRESS>")
    assert job.counts == {"EMAIL_ADDRESS": 2}


def test_multipart_binary_part_blocks_or_passes():
    raw = multipart([('form-data; name="f"; filename="x.png"', "image/png", b"\x89PNG\x00\x01"),
                     ('form-data; name="note"', None, b"a@b.co")])
    with pytest.raises(Unsupported):
        run(raw, MP)
    opts = Options(unsupported="pass")
    new, _ = run(raw, MP, opts=opts)
    assert new == raw.replace(b"a@b.co", b"<EMAIL_ADDRESS>")
    assert b"\x89PNG\x00\x01" in new and opts.notes and "image/png" in opts.notes[0]


def test_multipart_malformed():
    with pytest.raises(Unsupported):
        run(b"--b0und4ry\r\nno end", MP)
    with pytest.raises(Unsupported):
        run(b"x", "multipart/form-data")


@pytest.mark.parametrize("ct,raw", [
    ("application/json", b'{"a": "nothing", "n": 1.0000000000000001}'),
    ("application/json", b'{"a":\n  [1,2,3]  }  '),
    ("application/x-www-form-urlencoded", b"a=1&b=%7E%7e&c=hello+world"),
    ("text/plain", b"no pii at all"),
    ("text/event-stream", b"data: hi\n\n"),
], ids=["json", "json-whitespace", "form-odd-encoding", "text", "sse"])
def test_nothing_found_returns_none(ct, raw):
    new, _ = run(raw, ct)
    assert new is None


@pytest.mark.parametrize("ct,raw", [
    ("application/octet-stream", b"\x00\x01"),
    ("image/png", b"\x89PNG"),
    (None, b"\x00\x01\x02\x03binary"),
    ("text/plain; charset=utf-8", b"\xff\xfe bad utf-8"),
    ("text/plain; charset=klingon", b"x"),
    ("application/x-www-form-urlencoded", "k=\xe9".encode("latin-1")),
], ids=["octet-stream", "image", "sniffed-binary", "bad-utf8", "unknown-charset", "raw-bytes-form"])
def test_unsupported(ct, raw):
    with pytest.raises(Unsupported):
        run(raw, ct)


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd"])
def test_compressed_body_round_trip(enc):
    body = json.dumps({"to": "a@b.co", "pad": "x" * 5000}).encode()
    raw = codecs.encode(body, [enc])
    new, _ = run(raw, "application/json", enc)
    assert new is not None
    assert json.loads(codecs.decode(new, [enc], LIMIT))["to"] == "<EMAIL_ADDRESS>"
    clean = codecs.encode(b'{"to": "nobody"}', [enc])
    assert run(clean, "application/json", enc)[0] is None


def test_too_large_before_and_after_decoding():
    with pytest.raises(codecs.TooLarge):
        run(b"x" * 2000, "text/plain", limit=1024)
    bomb = gzip.compress(b"a" * 100_000)
    assert len(bomb) < 1024
    with pytest.raises(codecs.TooLarge):
        run(bomb, "text/plain", "gzip", limit=1024)


def test_bad_encoding_is_unsupported():
    with pytest.raises(Unsupported):
        run(b"not gzip", "text/plain", "gzip")
    with pytest.raises(Unsupported):
        run(b"x", "text/plain", "compress")


def test_json_paths_apply_to_bodies():
    raw = b'{"keep": "a@b.co", "scan": {"x": "c@d.co"}}'
    new, _ = run(raw, "application/json", opts=Options(scope=Scope(["scan"])))
    assert new == b'{"keep": "a@b.co", "scan": {"x": "<EMAIL_ADDRESS>"}}'


def test_sse_seam_redacts_one_event():
    eng = FakeEngine()
    text, counts, blocked = bodies.redact_sse_data('{"delta": {"text": "a@b.co"}}', eng.redact_many)
    assert json.loads(text) == {"delta": {"text": "<EMAIL_ADDRESS>"}}
    assert counts == {"EMAIL_ADDRESS": 1} and not blocked
    same = "plain"
    assert bodies.redact_sse_data(same, eng.redact_many)[0] is same


def test_query_strings():
    job = TextJob()
    fin = bodies.plan_urlencoded(job, "q=a%40b.co&page=2&x", Options())
    job.run(fake_redact_many)
    assert fin() == "q=%3CEMAIL_ADDRESS%3E&page=2&x"
