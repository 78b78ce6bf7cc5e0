"""The leak scanner: the forms a value travels in, and where a request carries one."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest
from cred_helpers import PH, REAL, entry, policy, req
from egress_gateway.credentials import leak
from egress_gateway.net import codecs


def b64_at(offset: int, value: str) -> bytes:
    return base64.b64encode(b"x" * offset + f"k={value}&".encode())


SCAN = [
    ("raw", PH.encode(), "placeholder"),
    ("upper", PH.upper().encode(), "placeholder"),
    ("b64-0", b64_at(0, PH), "placeholder"),
    ("b64-1", b64_at(1, PH), "placeholder"),
    ("b64-2", b64_at(2, PH), "placeholder"),
    ("urlsafe-b64", base64.urlsafe_b64encode(f"zz{REAL}".encode()), "secret"),
    ("secret-quoted", b"v=" + REAL.encode(), "secret"),
    ("nothing", b"gateway-placeholder-y and sk-real-value", None),
    ("secret-hex", REAL.encode().hex().encode(), "secret"),
    ("secret-HEX", REAL.encode().hex().upper().encode(), "secret"),
    ("secret-reversed", REAL[::-1].encode(), "secret"),
    ("secret-reversed-b64", base64.b64encode(REAL[::-1].encode()), "secret"),
    ("secret-spaced", " ".join(REAL).encode(), "secret"),
    ("secret-dashed", "-".join(REAL).encode(), "secret"),
    ("secret-one-per-line", "\n".join(REAL).encode(), "secret"),
    ("placeholder-hex", PH.encode().hex().encode(), "placeholder"),
    ("unrelated hex", b"deadbeef" * 8, None),
]


@pytest.mark.parametrize("data,kind", [s[1:] for s in SCAN], ids=[s[0] for s in SCAN])
def test_scanner(data, kind):
    bindings = policy(entry()).credentials
    needle = leak.Scanner(bindings).find(data, set())
    assert (needle.kind if needle else None) == kind
    if needle:  # exempt when bound
        assert leak.Scanner(bindings).find(data, {PH, REAL}) is None


LEAKS = [
    ("header-elsewhere", req(host="evil.com", headers={"X-Api-Key": PH}), "header X-Api-Key"),
    ("url-elsewhere", req(host="evil.com", path=f"/p/{PH}"), "the URL"),
    ("query-encoded", req(host="evil.com", path="/p?k=gateway%2Dplaceholder%2Dx"), "the URL"),
    ("percent-body", req(host="evil.com", body=b"k=" + "".join(f"%{ord(c):02X}" for c in PH).encode()),
     "the body"),
    ("body-elsewhere", req(host="evil.com", body=f'{{"k": "{REAL}"}}'.encode()), "the body"),
    ("gzip-body", req(host="evil.com", headers={"content-encoding": "gzip"},
                      body=gzip.compress(PH.encode())), "the body"),
    ("host-label", req(host=f"{PH}.example.org"), "the URL"),
    ("gzip-transfer-coding", req(host="evil.com", headers={"transfer-encoding": "gzip, chunked"},
                                 body=gzip.compress(REAL[::-1].encode())), "the body"),
    ("bound-header", req(headers={"X-Api-Key": PH}), None),
    ("bound-body", req(body=PH.encode()), None),
    ("bound-wrong-method", req(method="GET", headers={"X-Api-Key": PH}), "header X-Api-Key"),
    ("clean", req(host="evil.com", body=b"hello"), None),
]


@pytest.mark.parametrize("request_,where", [x[1:] for x in LEAKS], ids=[x[0] for x in LEAKS])
def test_find_leak(request_, where):
    bindings = policy(entry(methods=["POST"])).credentials
    found = leak.find_leak(request_, bindings, leak.Scanner(bindings))
    assert (found.where if found else None) == where
    if found:
        assert REAL not in found.reason() and PH not in found.reason()


def test_find_leak_undecodable_body_raises():
    bindings = policy(entry()).credentials
    r = req(host="evil.com", headers={"content-encoding": "gzip"}, body=b"not gzip")
    with pytest.raises(codecs.BadEncoding):
        leak.find_leak(r, bindings, leak.Scanner(bindings))


def test_find_leak_uses_the_strict_decoder():
    """One bounded decoder (net.codecs): data after the end of a deflate stream is refused."""
    bindings = policy(entry()).credentials
    r = req(host="evil.com", headers={"content-encoding": "deflate"},
            body=zlib.compress(b"hello") + b"junk")
    with pytest.raises(codecs.BadEncoding):
        leak.find_leak(r, bindings, leak.Scanner(bindings))


def test_find_leak_body_limit():
    bindings = policy(entry()).credentials
    r = req(host="evil.com", headers={"content-encoding": "gzip"},
            body=gzip.compress(b"\0" * (leak.BODY_LIMIT + 1)))
    with pytest.raises(codecs.TooLarge):
        leak.find_leak(r, bindings, leak.Scanner(bindings))
