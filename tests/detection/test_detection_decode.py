"""Decoded views (detection/decode.py): what is decoded, what is not, how spans map back, bounds."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import pytest
from egress_gateway.detection import decode

EMAIL = "jane.doe@corp.example"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


DECODED = [
    ("numeric character reference", "mail jane.doe&#64;corp.example now", EMAIL),
    ("hex character reference", "mail jane.doe&#x40;corp.example now", EMAIL),
    ("named character reference", "mail jane.doe&commat;corp.example now", EMAIL),
    ("percent-encoding", "mail jane.doe%40corp.example now", EMAIL),
    ("json unicode escapes", r"mail \u006a\u0061ne.doe@corp.example now", EMAIL),
    ("js hex escapes", r"mail \x6a\x61\x6e\x65.doe@corp.example now", EMAIL),
    ("base64 run", f"mail {b64(EMAIL)} now", EMAIL),
    ("url-safe base64 run", "x " + base64.urlsafe_b64encode(b"<<jane.doe@corp.example>>?").decode()
     + " y", EMAIL),
    ("hex run", f"mail {EMAIL.encode().hex()} now", EMAIL),
    ("base64 of percent-encoded (two levels)", f"m {b64('jane.doe%40corp.example')} n", EMAIL),
    ("base64 segment of a path", f"/api/v1/{b64(EMAIL)}/x", EMAIL),
    ("zero-width characters", "mail jane.d\u200boe@corp\u200d.example now", EMAIL),
    ("soft hyphen and bidi", "mail jane.\u00addoe@corp.\u202eexample now", EMAIL),
    ("fullwidth at sign", "mail jane.doe\uff20corp.example now", EMAIL),
    ("small at sign", "mail jane.doe\ufe6bcorp.example now", EMAIL),
    ("fullwidth digits", "ssn \uff11\uff12\uff13-45-6789", "123-45-6789"),
]


@pytest.mark.parametrize("text,value", [c[1:] for c in DECODED], ids=[c[0] for c in DECODED])
def test_view_decodes(text, value):
    v = decode.view(text)
    assert v is not None and value in v.text
    # the value's span in the view maps back onto the original, covering the encoded run
    start = v.text.index(value)
    s, e = v.span(start, start + len(value))
    assert 0 <= s < e <= len(text)
    assert value not in text  # the literal was hidden in the original


NOT_DECODED = [
    ("plain text", "hello world, nothing to see here"),
    ("sha256 hex", hashlib.sha256(b"x").hexdigest()),
    ("git sha", "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904 fixed it"),
    ("uuid", f"id {uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF)}"),
    ("uuid without dashes", "id " + uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF).hex),
    ("png base64", "data:image/png;base64," + base64.b64encode(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))).decode()),
    ("sha1 base64", base64.b64encode(hashlib.sha1(b"x").digest()).decode()),
    ("long identifier", "call getUserAccountInformationById(accountIdentifier)"),
    ("unix path", "/usr/local/lib/python3.12/site-packages/egress_gateway/__init__.py"),
    ("short base64", "token aGVsbG8= here"),
]


@pytest.mark.parametrize("text", [c[1] for c in NOT_DECODED], ids=[c[0] for c in NOT_DECODED])
def test_view_leaves_binary_and_ids_alone(text):
    assert decode.view(text) is None


def test_span_covers_whole_base64_run():
    run = b64(f"contact {EMAIL} please")
    text = f"see {run} end"
    v = decode.view(text)
    start = v.text.index(EMAIL)
    assert v.span(start, start + len(EMAIL)) == (4, 4 + len(run))


def test_span_of_unchanged_text_is_identity():
    text = "a jane.doe%40corp.example b"
    v = decode.view(text)
    assert v.span(0, 1) == (0, 1)
    assert v.span(len(v.text) - 1, len(v.text)) == (len(text) - 1, len(text))


def test_deeply_nested_base64_is_bounded():
    s = EMAIL
    for _ in range(40):
        s = b64(s)
    s = s[:200_000]
    t = time.perf_counter()
    v = decode.view("x " + s)
    took = time.perf_counter() - t
    print(f"nested base64 ({len(s)} chars): {took * 1000:.1f} ms")
    assert v is None or EMAIL not in v.text  # only MAX_LEVELS levels are undone


def test_huge_hex_run_is_bounded():
    run = (b"A" * 1_000_000).hex()
    t = time.perf_counter()
    v = decode.view(run)
    print(f"hex run of {len(run)} digits: {(time.perf_counter() - t) * 1000:.1f} ms")
    assert v is not None and len(v.text) <= decode.BUDGET_FACTOR * len(run) + decode.BUDGET_SLACK


def test_many_references_stay_within_budget():
    text = "&#65;" * 200_000 + "\ufdfa" * 100_000  # NFKC of U+FDFA is 18 characters
    v = decode.view(text)
    assert len(v.text) <= decode.BUDGET_FACTOR * len(text) + decode.BUDGET_SLACK
