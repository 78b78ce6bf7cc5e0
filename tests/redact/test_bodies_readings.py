"""Bodies read as the receiver reads them (issue 16): lenient JSON, JSON in UTF-16/32, charset
lies, binary that is text, compressed bytes without a Content-Encoding, form field names,
multipart part headers, preamble and epilogue."""

from __future__ import annotations

import gzip

import pytest
from egress_gateway.redact import bodies, charsets
from egress_gateway.redact.bodies import Options, Unsupported
from egress_gateway.redact.walker import TextJob
from redact_fakes import fake_redact_many

LIMIT = 1024 * 1024
MP = 'multipart/form-data; boundary="b0und4ry"'


def run(raw: bytes, ct: str | None, ce: str | None = None, opts: Options | None = None):
    job = TextJob()
    plan = bodies.plan_body(job, raw, ct, ce, LIMIT, opts or Options())
    job.run(fake_redact_many)
    return plan.finish(), job


JSON_CODECS = [
    ("utf-16-le", "utf-16-le", False), ("utf-16-be", "utf-16-be", False),
    ("utf-16 with BOM", "utf-16", True), ("utf-32-le", "utf-32-le", False),
    ("utf-32-be", "utf-32-be", False), ("utf-8 with BOM", "utf-8-sig", True),
]


@pytest.mark.parametrize("codec,bom", [c[1:] for c in JSON_CODECS], ids=[c[0] for c in JSON_CODECS])
def test_json_in_utf16_and_utf32_is_read_and_rewritten_in_its_codec(codec, bom):
    raw = '{"to": "a@b.co"}'.encode(codec)
    new, job = run(raw, "application/json")
    assert job.counts == {"EMAIL_ADDRESS": 1}
    found, has_bom = charsets.json_codec(new)
    assert has_bom == bom
    assert new.decode(found).lstrip("\ufeff") == '{"to": "<EMAIL_ADDRESS>"}'


LENIENT = [
    ("NaN", b'{"n": NaN, "to": "a@b.co"}', b'{"n": NaN, "to": "<EMAIL_ADDRESS>"}'),
    ("Infinity", b'[-Infinity, "a@b.co"]', b'[-Infinity, "<EMAIL_ADDRESS>"]'),
    ("raw control character", b'{"to": "\x07a@b.co"}', b'{"to": "\\u0007<EMAIL_ADDRESS>"}'),
    ("trailing bytes", b'{"n": 1} then a@b.co', b'{"n": 1} then <EMAIL_ADDRESS>'),
    ("second document", b'{"n": 1}\n{"to": "a@b.co"}', b'{"n": 1}\n{"to": "<EMAIL_ADDRESS>"}'),
    ("key", b'{"a@b.co": true}', b'{"<EMAIL_ADDRESS>": true}'),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in LENIENT], ids=[c[0] for c in LENIENT])
def test_lenient_json(raw, expected):
    new, _ = run(raw, "application/json")
    assert new == expected


CHARSET_LIES = [
    ("ascii labelled utf-16", b"mail a@b.co now", "text/plain; charset=utf-16"),
    ("ascii labelled utf-16le", b"mail a@b.co now!", "text/plain; charset=utf-16le"),
    ("ascii labelled cp500", b"mail a@b.co now", "text/plain; charset=cp500"),
    ("ascii labelled utf-32", b"mail a@b.co now", "text/plain; charset=utf-32"),
    ("sse labelled cp037", b"data: a@b.co\n\n", "text/event-stream; charset=cp037"),
]


@pytest.mark.parametrize("raw,ct", [c[1:] for c in CHARSET_LIES], ids=[c[0] for c in CHARSET_LIES])
def test_charset_lie_is_read_both_ways_and_refused_on_a_finding(raw, ct):
    """Both readings scanned (a finding in the UTF-8 one refuses); bytes that are not even valid
    under the label are read as the UTF-8 they are, and rewritten."""
    new, job = run(raw, ct)
    if job.refused:
        assert "read as UTF-8" in job.refused[0][0]
    else:
        assert job.counts == {"EMAIL_ADDRESS": 1} and b"a@b.co" not in new


def test_honest_utf16_text_is_scanned_in_utf16():
    raw = "mail a@b.co now".encode("utf-16")
    new, job = run(raw, "text/plain; charset=utf-16")
    assert not job.refused
    assert new.decode("utf-16") == "mail <EMAIL_ADDRESS> now"


def test_latin1_label_on_utf8_is_not_a_lie():
    raw = "café a@b.co".encode()
    new, job = run(raw, "text/plain; charset=latin-1")
    assert not job.refused and b"<EMAIL_ADDRESS>" in new


NOT_TEXT = [
    ("gzip as latin-1 text", gzip.compress(b"mail a@b.co"), "text/plain; charset=latin-1"),
    ("gzip as json", gzip.compress(b'{"a": "a@b.co"}'), "application/json"),
    ("gzip as octet-stream", gzip.compress(b"mail a@b.co"), "application/octet-stream"),
    ("zstd magic as text", b"\x28\xb5\x2f\xfd" + b"x" * 20, "text/plain"),
    ("control characters as latin-1", bytes(range(1, 32)) * 4 + b"a@b.co", "text/plain; charset=latin-1"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
]


@pytest.mark.parametrize("raw,ct", [c[1:] for c in NOT_TEXT], ids=[c[0] for c in NOT_TEXT])
def test_binary_is_unsupported_not_text(raw, ct):
    with pytest.raises(Unsupported):
        run(raw, ct)


@pytest.mark.parametrize("ct", ["application/octet-stream", "image/png", "application/grpc",
                                "font/woff2"])
def test_binary_label_on_text_bytes_is_scanned_as_text(ct):
    opts = Options()
    new, _ = run(b"mail a@b.co now", ct, opts=opts)
    assert new == b"mail <EMAIL_ADDRESS> now"
    assert "scanned as text" in opts.notes[0]


def test_gzip_transfer_coding_is_undone_like_a_content_coding():
    raw = gzip.compress(b"mail a@b.co now")
    new, _ = run(raw, "text/plain", "gzip")
    assert gzip.decompress(new) == b"mail <EMAIL_ADDRESS> now"


def test_form_field_name_is_analysed_and_refused():
    _, job = run(b"a%40b.co=1&x=2", "application/x-www-form-urlencoded")
    assert job.refused and job.refused[0][0] == "(form field name)"
    _, job = run(b"note=1&x=2", "application/x-www-form-urlencoded")
    assert not job.refused


def _mp(head_extra: bytes = b"", preamble: bytes = b"", epilogue: bytes = b"",
        part_ct: bytes = b"", body: bytes = b"hello") -> bytes:
    return (preamble + b"--b0und4ry\r\nContent-Disposition: form-data; name=\"f\"" + head_extra
            + b"\r\n" + part_ct + b"\r\n" + body + b"\r\n--b0und4ry--\r\n" + epilogue)


MULTIPART = [
    ("filename", _mp(b'; filename="a@b.co.txt"')),
    ("filename* (RFC 5987)", _mp(b"; filename*=utf-8''a%40b.co.txt")),
    ("extra part header", _mp(b"\r\nX-Note: a@b.co")),
    ("field name", _mp(b'; x="1"').replace(b'name="f"', b'name="a@b.co"')),
    ("preamble", _mp(preamble=b"a@b.co\r\n")),
    ("epilogue", _mp(epilogue=b"a@b.co\r\n")),
    ("part charset lie", _mp(part_ct=b"Content-Type: text/plain; charset=utf-16\r\n",
                             body=b"mail a@b.co now!")),
    ("part charset lie, odd length", _mp(part_ct=b"Content-Type: text/plain; charset=utf-16\r\n",
                                         body=b"mail a@b.co now")),
]


@pytest.mark.parametrize("raw", [c[1] for c in MULTIPART], ids=[c[0] for c in MULTIPART])
def test_multipart_outside_the_part_bodies_is_analysed(raw):
    new, job = run(raw, MP)
    assert job.refused or (job.counts and b"a@b.co" not in new)


def test_multipart_plain_headers_are_not_findings():
    new, job = run(_mp(b'; filename="report-2025.pdf"', part_ct=b"Content-Type: text/plain\r\n"),
                   MP)
    assert not job.refused and new is None


BINARY_CASES = [
    # name, text, binary?
    ("one DEL as a whole JSON string", '"\x7f"', False),
    ("three controls in a short text", "\x01\x02\x03", False),
    ("four controls, mostly", "\x01\x02\x03\x04a", True),
    ("many controls in long text, under 10%", "\x01" * 5 + "a" * 100, False),
    ("many controls, over 10%", "\x01" * 20 + "a" * 100, True),
    ("tabs and line ends are text", "\t\n\r\f" * 10, False),
    ("DEL and C1 are legal raw in JSON strings", '"\x7f\x7f ann@example.com \x85\x7f"', False),
    ("NULs", "\x00" * 10 + "abc", True),
]


@pytest.mark.parametrize("text,binary", [c[1:] for c in BINARY_CASES],
                         ids=[c[0] for c in BINARY_CASES])
def test_looks_binary(text, binary):
    from egress_gateway.redact.charsets import looks_binary

    assert looks_binary(text) is binary


def test_control_count_is_the_c0_set_but_tab_and_line_ends():
    from egress_gateway.redact.charsets import _controls

    every = "".join(chr(i) for i in range(0x3000))
    assert _controls(every) == sum(1 for c in every if ord(c) < 32 and c not in "\t\n\r\f") == 28
    assert _controls("a\x0bb\x00\x7f\x85") == 2  # VT and NUL; DEL and C1 are allowed in JSON
