"""The credentials policy section: validation, reading the secret, matching, presentation."""

from __future__ import annotations

import base64

import pytest
from cred_helpers import PH, REAL, entry, policy, req
from egress_gateway.policy import PolicyError


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
