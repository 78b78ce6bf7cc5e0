"""Credential settings, matching, the leak scanner and response scrubbing."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest
from egress_gateway.credentials import leak, scrub
from egress_gateway.net import codecs
from egress_gateway.policy import PolicyError, parse_policy
from mitmproxy.test import tflow

REAL = "sk-real-value-0123456789abcdef"
PH = "gateway-placeholder-x"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CRED_TEST_KEY", REAL)
    monkeypatch.setenv("CRED_TEST_EMPTY", "")
    monkeypatch.setenv("CRED_TEST_SHORT", "abc")
    monkeypatch.setenv("CRED_TEST_NEWLINE", "abc\r\ndefghijkl")
    monkeypatch.delenv("CRED_TEST_UNSET", raising=False)


def entry(**kw) -> dict:
    base = {"name": "api", "host": "api.example.com", "header": "x-api-key",
            "env": "CRED_TEST_KEY", "placeholder": PH}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def policy(*entries: dict):
    import yaml

    doc = {"version": 1, "egress": {"allow": [{"host": "api.example.com"}]},
           "credentials": list(entries)}
    return parse_policy(yaml.safe_dump(doc), "p.yaml")


def test_valid_entry_and_secret_is_masked():
    p = policy(entry())
    (b,) = p.credentials
    assert b.secret.reveal() == REAL
    assert REAL not in repr(p) and REAL not in str(b.secret) and REAL not in p.model_dump_json()
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(b.secret)


BAD = [
    ("missing-env", entry(env="CRED_TEST_UNSET"),
     "credentials[0]: credential 'api': environment variable CRED_TEST_UNSET is not set"),
    ("empty-env", entry(env="CRED_TEST_EMPTY"), "environment variable CRED_TEST_EMPTY is empty"),
    ("short", entry(env="CRED_TEST_SHORT"), "shorter than 8 characters"),
    ("control-chars", entry(env="CRED_TEST_NEWLINE"), "control or non-printable"),
    ("header-and-query", entry(query="key"), "give exactly one of 'header' or 'query'"),
    ("neither", entry(header=None), "give exactly one of 'header' or 'query'"),
    ("env-and-file", entry(file="/etc/hostname"), "give exactly one of 'env' or 'file'"),
    ("relative-file", entry(env=None, file="secret.txt"), "give an absolute path"),
    ("missing-file", entry(env=None, file="/nonexistent/secret"), "cannot read file /nonexistent/secret"),
    ("host-header", entry(header="Host"), "'Host' cannot carry a credential"),
    ("bad-header", entry(header="x api"), "is not a header name"),
    ("placeholder-short", entry(placeholder="ph"), "8-256 visible ASCII"),
    ("placeholder-space", entry(placeholder="gateway placeholder"), "8-256 visible ASCII"),
    ("placeholder-overlap", entry(placeholder=REAL[:12]), "overlap"),
    ("basic-no-colon", entry(format="basic", header="Authorization"), "needs 'user:password'"),
    ("query-bearer", entry(header=None, query="key", format="bearer"), "takes format raw"),
    ("star-host", entry(host="*"), "matches everything"),
    ("path-glob", entry(path="v1/*"), "starts with '/'"),
    ("path-glob-class", entry(path="/v[12]/*"), "character classes are not supported"),
    ("unknown-key", entry(value=REAL), "unknown key"),
]


@pytest.mark.parametrize("doc,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_entry(doc, message):
    with pytest.raises(PolicyError) as e:
        policy(doc)
    assert message in str(e.value), str(e.value)
    assert REAL not in str(e.value)


def test_duplicate_names():
    with pytest.raises(PolicyError, match="credential name 'api' is used twice"):
        policy(entry(), entry(header="authorization"))


def test_file_secret_strips_trailing_newline(tmp_path):
    f = tmp_path / "key"
    f.write_text(REAL + "\n")
    (b,) = policy(entry(env=None, file=str(f))).credentials
    assert b.secret.reveal() == REAL


def req(host="api.example.com", method="POST", path="/v1/messages", headers=None, body=b""):
    f = tflow.tflow()
    r = f.request
    r.scheme, r.host, r.port, r.method, r.path = "https", host, 443, method, path
    r.headers.clear()
    r.headers["Host"] = host
    for k, v in (headers or {}).items():
        r.headers[k] = v
    r.raw_content = body
    return r


MATCH = [
    ("exact", {}, req(), True),
    ("other-host", {}, req(host="evil.com"), False),
    ("suffix-trick", {}, req(host="api.example.com.evil.com"), False),
    ("case", {}, req(host="API.Example.COM"), True),
    ("wildcard", {"host": "*.example.com"}, req(host="a.b.example.com"), True),
    ("wildcard-apex", {"host": "*.example.com"}, req(host="example.com"), False),
    ("method-ok", {"methods": ["post"]}, req(), True),
    ("method-no", {"methods": ["GET"]}, req(), False),
    ("path-ok", {"path": "/v1/*"}, req(path="/v1/messages?beta=true"), True),
    ("path-no", {"path": "/v1/*"}, req(path="/v2/x"), False),
    # stricter since the one path glob: the raw AND the normalised path must match
    ("path-dot-dot", {"path": "/v1/*"}, req(path="/v1/../admin"), False),
    ("path-encoded-dot-dot", {"path": "/v1/*"}, req(path="/v1/%2e%2e/admin"), False),
    ("path-encoded-slash", {"path": "/v1/*"}, req(path="/v1/..%2Fadmin"), False),
    ("path-double-slash-ok", {"path": "/v1/*"}, req(path="/v1//messages"), True),
    ("path-case-sensitive", {"path": "/v1/*"}, req(path="/V1/messages"), False),
    ("path-normalises-into", {"path": "/v1/*"}, req(path="/x/../v1/messages"), False),
]


@pytest.mark.parametrize("kw,request_,expected", [m[1:] for m in MATCH], ids=[m[0] for m in MATCH])
def test_matches(kw, request_, expected):
    (b,) = policy(entry(**kw)).credentials
    assert b.matches(request_) is expected


@pytest.mark.parametrize("fmt,header,expected", [
    ("raw", "x-api-key", REAL),
    ("bearer", "Authorization", f"Bearer {REAL}"),
], ids=["raw", "bearer"])
def test_presented(fmt, header, expected):
    (b,) = policy(entry(format=fmt, header=header)).credentials
    r = req(headers={header: "agent value"})
    b.apply(r)
    assert r.headers.get_all(header) == [expected]


def test_presented_basic_and_query(monkeypatch):
    monkeypatch.setenv("CRED_TEST_BASIC", "user:" + REAL)
    (b,) = policy(entry(format="basic", header="Authorization", env="CRED_TEST_BASIC")).credentials
    assert b.presented() == "Basic " + base64.b64encode(f"user:{REAL}".encode()).decode()
    (q,) = policy(entry(header=None, query="key")).credentials
    r = req(path=f"/x?a=1&key={PH}")
    assert q.carried_by(r)
    q.apply(r)
    assert r.query["key"] == REAL and r.query["a"] == "1"
    assert not q.carried_by(req(path="/x?a=1"))


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
