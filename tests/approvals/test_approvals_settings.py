"""The approve policy section: validation (clear errors) and matching."""

from __future__ import annotations

import pytest
import yaml
from egress_gateway.approvals.settings import ApproveRule
from egress_gateway.policy import PolicyError, parse_policy

BASE = {"version": 1, "egress": {"allow": [{"host": "api.example.com"}]}}


def policy_with(*rules: dict):
    return parse_policy(yaml.safe_dump({**BASE, "approve": list(rules)}), "p.yaml")


def problems(*rules: dict) -> str:
    with pytest.raises(PolicyError) as e:
        policy_with(*rules)
    return str(e.value)


R = {"name": "r", "reason": "because", "host": "api.example.com"}


def test_defaults_and_normalisation():
    (rule,) = policy_with({"name": "admin-writes", "host": "*.Internal.Example.com.",
                           "methods": ["post", "Delete"], "path": "/admin/*",
                           "reason": "writes to admin endpoints need a human"}).approve
    assert rule.host == ["*.internal.example.com"]
    assert rule.methods == ["POST", "DELETE"]
    assert (rule.timeout, rule.on_timeout, rule.unattended) == (60.0, "deny", "deny")
    assert policy_with().approve == [] and parse_policy(yaml.safe_dump(BASE)).approve == []


@pytest.mark.parametrize("rule,expected", [
    ({**R, "host": "*"}, "approve[0].host: '*' matches everything"),
    ({**R, "host": "a.*.example.com"}, "'*' is only allowed as the whole first label"),
    ({**R, "host_not": "*.com"}, "approve[0].host_not: '*.com' matches a whole top-level domain"),
    ({**R, "host": "10.0.0.1"}, "is an IP address"),
    ({**R, "path": "admin/*"}, "approve[0].path: 'admin/*': a path glob starts with '/'"),
    ({**R, "path": "/admin/**"}, "use '*' (it already matches across '/')"),
    ({**R, "path": "/a?b=1"}, "the query is not matched"),
    ({**R, "path": "/[ab]"}, "character classes are not supported"),
    ({**R, "entities": ["CREDIT_CRAD"]}, "approve[0].entities: unknown entity names ['CREDIT_CRAD']"),
    ({**R, "timeout": -5}, "approve[0].timeout: Input should be greater than 0"),
    ({**R, "timeout": 0}, "approve[0].timeout: Input should be greater than 0"),
    ({**R, "timeout": 100000}, "approve[0].timeout: Input should be less than or equal to 3600"),
    ({**R, "on_timeout": "maybe"}, "approve[0].on_timeout: Input should be 'deny' or 'allow'"),
    ({**R, "unattended": "yes"}, "approve[0].unattended: Input should be 'deny' or 'allow'"),
    ({**R, "methods": ["GET /x"]}, "'GET /x' is not an HTTP method"),
    ({**R, "methods": []}, "approve[0].methods: List should have at least 1 item"),
    ({**R, "name": "has space"}, "approve[0].name: 'has space': a rule name is"),
    ({**R, "reason": ""}, "approve[0].reason: String should have at least 1 character"),
    ({"name": "r", "reason": "x"}, "matches every request; give at least one of"),
    ({**R, "colour": "red"}, "approve[0].colour: unknown key"),
    ({"name": "r", "host": "a.example.com"}, "approve[0].reason: required key is missing"),
], ids=["star-host", "inner-star", "tld-host-not", "ip-host", "relative-path", "double-star",
        "query-in-path", "char-class", "unknown-entity", "negative-timeout", "zero-timeout",
        "huge-timeout", "bad-on-timeout", "bad-unattended", "bad-method", "no-methods",
        "bad-name", "empty-reason", "no-matcher", "unknown-key", "missing-reason"])
def test_validation_errors(rule, expected):
    text = problems(rule)
    assert text.startswith("p.yaml: ") and expected in text, text


def test_duplicate_names_refused():
    assert "approval rule name 'r' is used twice" in problems(R, {**R, "path": "/x"})


def _rule(**kw) -> ApproveRule:
    return ApproveRule(name="r", reason="x", **kw)


ADMIN = dict(host="*.internal.example.com", methods=["POST", "PUT", "DELETE"], path="/admin/*")


@pytest.mark.parametrize("method,host,path,hit", [
    ("DELETE", "db.internal.example.com", "/admin/users/1", True),
    ("post", "a.b.internal.example.com", "/admin/x?y=1", True),
    ("POST", "db.internal.example.com", "/admin", True),
    ("POST", "db.internal.example.com", "/Admin/x", True),
    ("POST", "db.internal.example.com", "/%61dmin/x", True),
    ("POST", "db.internal.example.com", "/%2561dmin/x", True),
    ("POST", "db.internal.example.com", "//admin/x", True),
    ("POST", "db.internal.example.com", "/public/../admin/x", True),
    ("POST", "db.internal.example.com", "/./admin/x", True),
    ("GET", "db.internal.example.com", "/admin/x", False),
    ("POST", "internal.example.com", "/admin/x", False),
    ("POST", "db.internal.example.com.evil.com", "/admin/x", False),
    ("POST", "db.internal.example.com", "/administrator", False),
    ("POST", "db.internal.example.com", "/x/admin/y", False),
    ("POST", None, "/admin/x", False),
    ("POST", "db.internal.example.com", "/admin/../public", True),
], ids=["delete", "deep-host-query", "bare-prefix", "case", "pct-encoded", "double-encoded",
        "double-slash", "dot-dot", "dot", "get", "apex", "suffix-trick", "longer-segment",
        "not-prefix", "ip-literal", "raw-only-still-held"])
def test_target_matching(method, host, path, hit):
    assert _rule(**ADMIN).matches(method, host, path, {}) is hit


OUTSIDE = dict(host_not="*.internal.example.com", entities=["CREDIT_CARD"], any_secret=True)


@pytest.mark.parametrize("host,counts,hit", [
    ("api.example.com", {"CREDIT_CARD": 1}, True),
    ("api.example.com", {"GITHUB_TOKEN": 2}, True),
    ("api.example.com", {"AWS_ACCESS_KEY_ID": 1, "EMAIL_ADDRESS": 3}, True),
    ("api.example.com", {"EMAIL_ADDRESS": 3}, False),
    ("api.example.com", {"CREDIT_CARD": 0}, False),
    ("api.example.com", {}, False),
    ("db.internal.example.com", {"CREDIT_CARD": 1}, False),
    (None, {"CREDIT_CARD": 1}, True),
], ids=["card-outside", "secret-outside", "secret-and-pii", "pii-only", "zero-count", "nothing",
        "card-inside", "ip-literal-is-outside"])
def test_detection_matching(host, counts, hit):
    assert _rule(**OUTSIDE).matches("POST", host, "/v1/x", counts) is hit


def test_entities_without_any_secret():
    rule = _rule(entities=["US_SSN"])
    assert rule.matches("GET", "a.example.com", "/", {"US_SSN": 1})
    assert not rule.matches("GET", "a.example.com", "/", {"GITHUB_TOKEN": 1})


def test_rule_key_changes_with_content():
    assert _rule(path="/a").key == _rule(path="/a").key != _rule(path="/b").key
