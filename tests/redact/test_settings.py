"""The policy's redact section: validation, per-host rules, inheritance, the shipped default."""

from __future__ import annotations

import pytest
from egress_gateway.locations import DEFAULT_POLICY
from egress_gateway.policy import PolicyError, load_policy, parse_policy

BASE = "version: 1\negress:\n  allow:\n    - host: api.anthropic.com\n"


def policy(redact: str):
    return parse_policy(BASE + redact)


def test_defaults_without_a_section():
    p = parse_policy(BASE)
    req = p.redact.for_flow("x.example.com", "/", "request")[1]
    resp = p.redact.for_flow("x.example.com", "/", "response")[1]
    assert p.redact.enabled and req.enabled and resp.enabled
    assert (req.too_large, req.unsupported) == ("block", "block")
    assert (resp.too_large, resp.unsupported) == ("block", "pass")
    assert req.json_paths is None


def test_rules_inherit_and_override():
    p = policy("""redact:
  request: {unsupported: pass, operators: {EMAIL_ADDRESS: {type: hash}}}
  rules:
    - hosts: ["*.internal.example.com"]
      paths: [/v1/messages]
      request: {json_paths: ["messages[*].content"]}
      response: {enabled: false}
    - hosts: [api.anthropic.com]
      request: {enabled: false}
""")
    idx, req = p.redact.for_flow("a.internal.example.com", "/v1/messages?x=1", "request")
    assert idx == 0 and req.json_paths == ["messages[*].content"]
    assert req.unsupported == "pass" and req.operators["EMAIL_ADDRESS"].type == "hash"
    assert not p.redact.for_flow("a.internal.example.com", "/v1/messages/batches", "response")[1].enabled
    assert p.redact.for_flow("a.internal.example.com", "/v1/other", "request")[0] == -1
    assert p.redact.for_flow("a.internal.example.com", "/v1/messagesX", "request")[0] == -1
    assert p.redact.for_flow("internal.example.com", "/v1/messages", "request")[0] == -1
    assert not p.redact.for_flow("api.anthropic.com", "/", "request")[1].enabled


def test_direction_detection_settings():
    p = policy("""detection:
  operators: {default: {type: replace}, PERSON: {type: pseudonym}}
redact:
  response:
    entities: [EMAIL_ADDRESS]
    operators: {EMAIL_ADDRESS: {type: block}}
""")
    resp = p.redact.for_flow("h.example.com", "/", "response")[1]
    det = resp.detection(p.detection)
    assert det.entities == ["EMAIL_ADDRESS"]
    assert det.operators["EMAIL_ADDRESS"].type == "block" and det.operators["PERSON"].type == "pseudonym"
    req = p.redact.for_flow("h.example.com", "/", "request")[1]
    assert req.detection(p.detection) is p.detection


@pytest.mark.parametrize("section,problem", [
    ("redact:\n  request: {json_paths: ['a[']}\n", "redact.request.json_paths"),
    ("redact:\n  request: {too_large: maybe}\n", "redact.request.too_large"),
    ("redact:\n  request: {entities: [NOT_AN_ENTITY]}\n", "NOT_AN_ENTITY"),
    ("redact:\n  response: {operators: {EMAIL_ADDRESS: {type: shred}}}\n", "redact.response.operators"),
    ("redact:\n  rules: [{hosts: ['*'], request: {}}]\n", "matches everything"),
    ("redact:\n  rules: [{hosts: [a.example.com], paths: [v1]}]\n", "must start with '/'"),
    ("redact:\n  rules: [{hosts: [a.example.com], request: {skip_json_paths: ['x..y']}}]\n",
     "redact.rules[0].request.skip_json_paths"),
    ("redact:\n  rules: [{hosts: [a.example.com], request: {entities: [NOPE]}}]\n", "NOPE"),
    ("redact:\n  unknown: 1\n", "redact.unknown: unknown key"),
], ids=["bad-path", "bad-action", "bad-entity", "bad-operator", "star-host", "relative-prefix",
        "bad-skip-path", "rule-bad-entity", "unknown-key"])
def test_problems_are_reported(section, problem):
    with pytest.raises(PolicyError) as e:
        policy(section)
    assert problem in str(e.value)


def test_shipped_default_scopes_the_messages_api():
    p = load_policy(DEFAULT_POLICY)
    idx, req = p.redact.for_flow("api.anthropic.com", "/v1/messages", "request")
    assert idx >= 0
    scope = req.scope()
    assert scope.selects(("messages", 0, "content", 1, "text"))
    assert scope.selects(("messages", 2, "content", 0, "content", 0, "text"))
    assert scope.selects(("messages", 2, "content", 0, "input", "command"))
    for path in [("system", 0, "text"), ("tools", 3, "description"), ("model",),
                 ("metadata", "user_id"), ("messages", 1, "content", 0, "id"),
                 ("messages", 1, "content", 0, "type"), ("messages", 1, "content", 0, "signature"),
                 ("messages", 1, "content", 0, "thinking")]:
        assert not scope.selects(path), path
    batches = p.redact.for_flow("api.anthropic.com", "/v1/messages/batches", "request")[1]
    assert batches.json_paths is None  # batch bodies nest messages elsewhere: scan everything
    other = p.redact.for_flow("api.anthropic.com", "/v1/files", "request")[1]
    assert other.json_paths is None  # elsewhere: every string value
