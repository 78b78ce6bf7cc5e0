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


MESSAGES_MODES = [
    ("user-text", ("messages", 0, "content", 1, "text"), "prose"),
    ("string-content", ("messages", 0, "content"), "prose"),
    ("tool-result", ("messages", 2, "content", 0, "content", 0, "text"), "prose"),
    ("tool-input", ("messages", 2, "content", 0, "input", "command"), "prose"),
    ("text-document", ("messages", 0, "content", 0, "source", "content", 0, "text"), "prose"),
    ("unknown-top-level", ("whatever",), "prose"),
    ("system-string", ("system",), "instructions"),
    ("system-block", ("system", 0, "text"), "instructions"),
    ("system-cache-control", ("system", 0, "cache_control", "type"), "instructions"),
    ("tool-description", ("tools", 3, "description"), "instructions"),
    ("tool-schema", ("tools", 3, "input_schema", "properties", "x", "description"),
     "instructions"),
    ("tool-name", ("tools", 3, "name"), "instructions"),
    ("metadata-user", ("metadata", "user_id"), "instructions"),
    ("stop-sequences", ("stop_sequences", 0), "instructions"),
    ("mcp-token", ("mcp_servers", 0, "authorization_token"), "instructions"),
    ("block-name", ("messages", 1, "content", 0, "name"), "instructions"),
    ("block-cache-control", ("messages", 1, "content", 0, "cache_control", "type"),
     "instructions"),
    ("model", ("model",), "format:model"),
    ("role", ("messages", 1, "role"), "format:word"),
    ("block-type", ("messages", 1, "content", 0, "type"), "format:word"),
    ("tool-use-id", ("messages", 1, "content", 0, "id"), "format:id"),
    ("tool-result-id", ("messages", 2, "content", 0, "tool_use_id"), "format:id"),
    ("thinking", ("messages", 1, "content", 0, "thinking"), "signed"),
    ("signature", ("messages", 1, "content", 0, "signature"), "format:base64"),
    ("redacted-thinking", ("messages", 1, "content", 0, "data"), "format:base64"),
    ("image-data", ("messages", 0, "content", 0, "source", "data"), "data"),
    ("nested-image-data", ("messages", 2, "content", 0, "content", 1, "source", "data"), "data"),
    ("media-type", ("messages", 0, "content", 0, "source", "media_type"), "format:media_type"),
    ("url-source", ("messages", 0, "content", 0, "source", "url"), "prose"),
]


@pytest.mark.parametrize("path, mode", [c[1:] for c in MESSAGES_MODES],
                         ids=[c[0] for c in MESSAGES_MODES])
def test_shipped_messages_rule_scans_every_string_in_its_mode(path, mode):
    p = load_policy(DEFAULT_POLICY)
    idx, req = p.redact.for_flow("api.anthropic.com", "/v1/messages", "request")
    assert idx >= 0 and req.json_paths is None and req.provider == "anthropic"
    scope = req.scope()
    assert scope.selects(path)
    assert scope.mode_at(path) == mode


RULE_PATHS = [
    ("messages", "/v1/messages", "messages"),
    ("messages-query", "/v1/messages?beta=true", "messages"),
    ("count-tokens", "/v1/messages/count_tokens", "messages"),
    ("batches", "/v1/messages/batches", "batches"),
    ("batches-encoded", "/v1/messages/%62atches", "batches"),
    ("batches-double-encoded", "/v1/messages/%2562atches", "batches"),
    ("batches-dot-segment", "/v1/messages/x/../batches", "batches"),
    ("batches-double-slash", "/v1//messages//batches", "batches"),
    ("batch-results", "/v1/messages/batches/msgbatch_01/results", "batches"),
    ("messages-dot-escape", "/v1/messages/../files", "default"),
    ("files", "/v1/files", "default"),
    ("prefix-not-segment", "/v1/messagesx", "default"),
]


@pytest.mark.parametrize("path, rule", [c[1:] for c in RULE_PATHS], ids=[c[0] for c in RULE_PATHS])
def test_shipped_rules_match_the_normalised_path(path, rule):
    p = load_policy(DEFAULT_POLICY)
    idx, req = p.redact.for_flow("api.anthropic.com", path, "request")
    got = "default" if idx < 0 else ("batches" if req.fields == {} else "messages")
    assert got == rule
    if rule == "batches":
        assert req.json_paths is None and req.provider == "anthropic"
    if rule == "default":
        assert req.json_paths is None and not req.fields and req.provider is None


def test_shipped_response_rule_scans_every_field():
    p = load_policy(DEFAULT_POLICY)
    _, resp = p.redact.for_flow("api.anthropic.com", "/v1/messages", "response")
    scope = resp.scope()
    assert resp.json_paths is None
    cases = {("content", 0, "text"): "prose", ("content", 0, "input", "q"): "prose",
             ("stop_sequence",): "prose", ("usage", "service_tier"): "prose",
             ("content", 0, "citations", 0, "cited_text"): "prose",
             ("delta", "partial_json"): "prose", ("model",): "format:model",
             ("message", "model"): "format:model", ("content", 0, "thinking"): "signed",
             ("delta", "thinking"): "signed", ("delta", "signature"): "format:base64",
             ("content_block", "id"): "format:id", ("content", 0, "name"): "instructions"}
    for path, mode in cases.items():
        assert scope.selects(path) and scope.mode_at(path) == mode, path


FIELD_PROBLEMS = [
    ("unknown-mode", "{x: loud}", "unknown field mode 'loud'"),
    ("unknown-format", "{x: 'format:ssn'}", "unknown format 'ssn'"),
    ("bad-path", "{'a[': prose}", "a["),
    ("not-a-map", "[x]", "fields"),
]


@pytest.mark.parametrize("fields, problem", [c[1:] for c in FIELD_PROBLEMS],
                         ids=[c[0] for c in FIELD_PROBLEMS])
def test_field_modes_are_validated_at_load(fields, problem):
    with pytest.raises(PolicyError) as e:
        policy(f"redact:\n  rules: [{{hosts: [a.example.com], request: {{fields: {fields}}}}}]\n")
    assert problem in str(e.value) and "redact.rules[0].request.fields" in str(e.value)


def test_provider_key_is_validated():
    with pytest.raises(PolicyError) as e:
        policy("redact:\n  request: {provider: openai}\n")
    assert "redact.request.provider" in str(e.value)


def test_runtime_remembers_rule_lookups_within_a_bound(monkeypatch):
    from egress_gateway.redact import runtime

    pol = parse_policy("""version: 1
egress:
  allow:
    - host: "*.example.com"
redact:
  rules:
    - hosts: [api.example.com]
      paths: [/v1/messages]
      request: {enabled: false}
""")
    rt = runtime.RedactRuntime(pol, engine_factory=lambda s: None)
    monkeypatch.setattr(runtime, "RULE_CACHE", 3)
    cases = [("api.example.com", "/v1/messages", 0), ("API.example.com.", "/v1/messages/x", 0),
             ("api.example.com", "/v1/%6Dessages", 0), ("api.example.com", "/v2", -1),
             ("other.example.com", "/v1/messages", -1)]
    for _ in range(2):
        for host, path, idx in cases:
            got, rules = rt.for_flow(host, path, "request")
            assert got == idx == pol.redact.rule_index(host, path)
            assert rules.enabled is (idx < 0)
            assert len(rt._rule_of) <= 3
    rt.for_flow("api.example.com", "/v1/messages?q=" + "x" * 5000, "request")
    assert ("api.example.com", "/v1/messages") in rt._rule_of  # the query is not part of it
    long = "/v1/" + "a" * 2000
    assert rt.for_flow("api.example.com", long, "request")[0] == -1
    assert all(len(p) < 1024 for _, p in rt._rule_of)  # a long path is never remembered
