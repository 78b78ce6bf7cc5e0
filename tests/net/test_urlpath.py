"""The one URL-path normaliser, glob and prefix test (net/urlpath.py), and what its users make of them."""

from __future__ import annotations

import pytest
import yaml
from egress_gateway.net import urlpath
from egress_gateway.policy import parse_policy

NORMALISE = [
    ("plain", "/v1/messages", "/v1/messages"),
    ("query", "/a/b?x=1", "/a/b"),
    ("fragment", "/a/b#top", "/a/b"),
    ("case-kept", "/A/B", "/A/B"),
    ("double-slash", "/a//b", "/a/b"),
    ("trailing-slash", "/a/b/", "/a/b/"),
    ("dot", "/a/./b", "/a/b"),
    ("dot-dot", "/a/b/../c", "/a/c"),
    ("above-root", "/../../etc", "/etc"),
    ("encoded-dots", "/%2e%2e/x", "/x"),
    ("encoded-slash", "/v1/..%2Fadmin", "/admin"),
    ("double-encoded", "/%2561dmin", "/admin"),
    ("unreserved", "/%7Euser/%41", "/~user/A"),
    ("backslash", "\\a\\b", "/a/b"),
    ("empty", "", "/"),
    ("root", "/", "/"),
]


@pytest.mark.parametrize("raw,norm", [c[1:] for c in NORMALISE], ids=[c[0] for c in NORMALISE])
def test_normalize_path(raw, norm):
    assert urlpath.normalize_path(raw) == norm


GLOB = [  # (name, pattern, one form of a path, case_sensitive, matches)
    ("exact", "/v1/messages", "/v1/messages", False, True),
    ("exact-other", "/v1/messages", "/v1/messagesx", False, False),
    ("star-across-slash", "/v1/*", "/v1/a/b/c", False, True),
    ("dir-itself", "/admin/*", "/admin", False, True),
    ("longer-segment", "/admin/*", "/administrator", False, False),
    ("middle-star", "/a/*/c", "/a/b/x/c", False, True),
    ("case-insensitive", "/admin/*", "/ADMIN/x", False, True),
    ("case-sensitive", "/v1/*", "/V1/x", True, False),
    ("dots-literal", "/a.b", "/axb", False, False),
    ("regex-chars-literal", "/a+(b)", "/a+(b)", False, True),
]


@pytest.mark.parametrize("pattern,path,cs,hit", [c[1:] for c in GLOB], ids=[c[0] for c in GLOB])
def test_glob(pattern, path, cs, hit):
    assert urlpath.PathGlob(pattern, case_sensitive=cs).fullmatch(path) is hit


BAD_GLOBS = [
    ("relative", "admin/*", "starts with '/'"),
    ("query", "/a?b=1", "the query is not matched"),
    ("fragment", "/a#b", "fragments are never sent"),
    ("class", "/[ab]", "character classes are not supported"),
    ("double-star", "/a/**", "use '*'"),
    ("too-long", "/" + "a" * 1024, "longer than 1024"),
]


@pytest.mark.parametrize("pattern,message", [c[1:] for c in BAD_GLOBS], ids=[c[0] for c in BAD_GLOBS])
def test_bad_glob(pattern, message):
    with pytest.raises(ValueError, match=message):
        urlpath.PathGlob(pattern)


EITHER_BOTH = [  # (name, pattern, request path, either, both)
    ("plain", "/v1/*", "/v1/messages?beta=true", True, True),
    ("dot-dot-out", "/v1/*", "/v1/../admin", True, False),
    ("dot-dot-in", "/v1/*", "/x/../v1/messages", True, False),
    ("encoded-in", "/admin/*", "/%61dmin/x", True, False),
    ("double-slash", "/v1/*", "/v1//messages", True, True),
    ("neither", "/v1/*", "/v2/x", False, False),
]


@pytest.mark.parametrize("pattern,path,either,both", [c[1:] for c in EITHER_BOTH],
                         ids=[c[0] for c in EITHER_BOTH])
def test_either_and_both(pattern, path, either, both):
    g = urlpath.PathGlob(pattern)
    assert (g.matches_either(path), g.matches_both(path)) == (either, both)


PREFIX = [  # (name, prefixes, request path, under one of them: raw OR normalised)
    ("exact", ["/v1/messages"], "/v1/messages", True),
    ("below", ["/v1/messages"], "/v1/messages/x?y=1", True),
    ("sibling", ["/v1/messages"], "/v1/messagesx", False),
    ("slash-prefix", ["/v1/"], "/v1/x", True),
    ("dot-dot-into", ["/v1/messages"], "/x/../v1/messages", True),
    ("encoded-into", ["/v1/messages"], "/v1/%6Dessages", True),
    ("double-slash-into", ["/v1/messages"], "/v1//messages", True),
    ("raw-only", ["/v1/"], "/v1/../admin", True),
    ("case-sensitive", ["/v1/messages"], "/V1/messages", False),
    ("none", ["/a", "/b"], "/c", False),
]


@pytest.mark.parametrize("prefixes,path,hit", [c[1:] for c in PREFIX], ids=[c[0] for c in PREFIX])
def test_under_any_prefix(prefixes, path, hit):
    assert urlpath.under_any_prefix(prefixes, path) is hit


# --- the consumers: the stricter meaning of each ------------------------------------------------
def _policy(**sections):
    doc = {"version": 1, "egress": {"allow": [{"host": "api.example.com"}]}, **sections}
    return parse_policy(yaml.safe_dump(doc), "p.yaml")


def test_redaction_rules_apply_when_either_path_matches():
    """Was: plain prefixes on the raw path only; '/x/../v1/messages' escaped a /v1/messages rule."""
    p = _policy(redact={"rules": [{"hosts": ["api.example.com"], "paths": ["/v1/messages"],
                                   "request": {"path": False}}]})
    (rule,) = p.redact.rules
    assert rule.matches("api.example.com", "/v1/messages")
    assert rule.matches("api.example.com", "/x/../v1/messages")
    assert rule.matches("api.example.com", "/v1//messages")
    assert not rule.matches("api.example.com", "/v1/other")


def test_approval_rules_apply_when_either_path_matches():
    p = _policy(approve=[{"name": "r", "reason": "x", "path": "/admin/*"}])
    (rule,) = p.approve
    assert rule.matches_target("POST", "api.example.com", "/public/../admin/x")  # normalised
    assert rule.matches_target("POST", "api.example.com", "/admin/../public")  # raw


def test_credentials_inject_only_when_both_paths_match(monkeypatch):
    """Was: fnmatch on the raw path, so '/v1/../admin' matched a '/v1/*' binding."""
    from mitmproxy.test import tflow

    monkeypatch.setenv("URLPATH_TEST_KEY", "sk-real-value-0123456789")
    p = _policy(credentials=[{"name": "api", "host": "api.example.com", "header": "x-api-key",
                              "env": "URLPATH_TEST_KEY", "placeholder": "gateway-placeholder",
                              "path": "/v1/*"}])
    (b,) = p.credentials
    r = tflow.tflow().request
    r.host = "api.example.com"
    for path, hit in (("/v1/messages", True), ("/v1/../admin", False),
                      ("/v1/%2e%2e/admin", False), ("/admin/../v1/x", False)):
        r.path = path
        assert b.matches(r) is hit, path
