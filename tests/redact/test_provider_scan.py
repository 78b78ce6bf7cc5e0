"""scan_message with a `provider` rule: the provider-fetch check runs on the decoded body first."""

from __future__ import annotations

import gzip
import json

import pytest
from egress_gateway.policy import parse_policy
from egress_gateway.redact.provider import ProviderPolicy
from egress_gateway.redact.scan import scan_message
from redact_fakes import FakeEngine

POLICY = parse_policy("""version: 1
egress:
  allow: [{host: api.anthropic.com}]
  provider_fetch: [docs.example.com]
redact:
  rules:
    - hosts: [api.anthropic.com]
      paths: [/v1/messages]
      request: {provider: anthropic, fields: {model: "format:model"}}
""")
PROVIDER = ProviderPolicy.from_egress(POLICY.egress)
RULES = POLICY.redact.for_flow("api.anthropic.com", "/v1/messages", "request")[1]
LIMIT = 64 * 1024


def doc(url: str) -> bytes:
    return json.dumps({"model": "claude-opus-4-1", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": url}}]}]}).encode()


def scan(raw, ct="application/json", ce=None, provider=PROVIDER):
    engine = FakeEngine()
    out = scan_message(raw, ct, ce, None, RULES, LIMIT,
                       lambda texts, **kw: engine.redact_many(texts), None, provider)
    return out, engine


CASES = [
    # (name, raw, content type, content encoding, expected refusal code or None)
    ("allowed", doc("https://docs.example.com/a.png"), "application/json", None, None),
    ("outside", doc("https://evil.test/a.png"), "application/json", None, "blocked"),
    ("gzip-outside", gzip.compress(doc("https://evil.test/a.png")), "application/json", "gzip",
     "blocked"),
    ("gzip-allowed", gzip.compress(doc("https://docs.example.com/a.png")), "application/json",
     "gzip", None),
    ("email-in-url", doc("https://docs.example.com/?to=jane%40corp.example.com"),
     "application/json", None, "sensitive_data"),
    ("not-json-type", doc("https://evil.test/a.png"), "text/plain", None, "unsupported_content"),
    ("invalid-json", b'{"messages": [', "application/json", None, "unsupported_content"),
    ("utf16", doc("https://evil.test/a.png").decode().encode("utf-16"), "application/json",
     None, "unsupported_content"),
    ("unknown-encoding", doc("https://evil.test/a.png"), "application/json", "snappy",
     "unsupported_content"),
    ("over-limit", b'{"pad": "' + b"x" * LIMIT + b'"}', "application/json", None, "too_large"),
    ("gzip-bomb", gzip.compress(b'{"pad": "' + b"x" * (4 * LIMIT) + b'"}'), "application/json",
     "gzip", "too_large"),
]


@pytest.mark.parametrize("raw, ct, ce, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_provider_check_outcomes(raw, ct, ce, code):
    out, engine = scan(raw, ct, ce)
    assert (out.refusal[0] if out.refusal else None) == code
    if code == "blocked":
        assert out.refusal[2] == {"field": "$.messages[0].content[0].source.url"}
        assert not engine.calls  # refused before any analysis
    if code == "sensitive_data":
        assert out.refusal[2]["fields"] == ["$.messages[0].content[0].source.url"]
        assert "jane" not in json.dumps(out.refusal)
    if code is None:
        assert out.body is None  # nothing found: forwarded byte for byte


def test_no_provider_check_for_responses_or_rules_without_provider():
    raw = doc("https://evil.test/a.png")
    out, _ = scan(raw, provider=None)  # the addon passes None for responses
    assert out.refusal is None
    plain = POLICY.redact.for_flow("other.example.com", "/", "request")[1]
    out = scan_message(raw, "application/json", None, None, plain, LIMIT,
                       lambda texts, **kw: FakeEngine().redact_many(texts), None, PROVIDER)
    assert out.refusal is None


def test_a_model_out_of_format_refuses_through_scan_message():
    raw = json.dumps({"model": "claude-x jane@corp.example.com", "messages": []}).encode()
    out, _ = scan(raw)
    assert out.refusal[0] == "sensitive_data" and out.refusal[2]["fields"] == ["model"]
    assert "jane" not in json.dumps(out.refusal)
