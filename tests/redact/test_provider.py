"""What a Messages API request makes the provider fetch (`redact/provider.py`): a table."""

from __future__ import annotations

import json

import pytest
from egress_gateway.policy import PolicyError, parse_policy
from egress_gateway.redact.provider import ProviderPolicy, ProviderRefusal, check, parse

POLICY = ProviderPolicy(("docs.example.com", "example.org", "*.example.org"),
                        frozenset({"web_fetch"}))
NONE = ProviderPolicy()


def img(url):
    return {"type": "image", "source": {"type": "url", "url": url}}


def msg(*blocks):
    return {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": list(blocks)}]}


REFUSED = [
    # (name, document, policy, field named)
    ("mcp-default-policy", {"mcp_servers": [{"type": "url", "url": "https://docs.example.com/mcp",
                                             "name": "x"}]}, NONE, "$.mcp_servers[0].url"),
    ("mcp-other-host", {"mcp_servers": [{"type": "url", "url": "https://evil.test/mcp"}]}, POLICY,
     "$.mcp_servers[0].url"),
    ("mcp-no-url", {"mcp_servers": [{"type": "url", "name": "x"}]}, POLICY, "$.mcp_servers[0].url"),
    ("mcp-not-a-list", {"mcp_servers": {"url": "https://docs.example.com"}}, POLICY, "$.mcp_servers"),
    ("image-url", msg(img("https://evil.test/a.png")), POLICY, "$.messages[0].content[0].source.url"),
    ("document-url", msg({"type": "document", "source": {"type": "url",
                                                        "url": "https://evil.test/a.pdf"}}),
     POLICY, "$.messages[0].content[0].source.url"),
    ("url-in-tool-result", msg({"type": "tool_result", "tool_use_id": "t", "content": [
        img("https://evil.test/x")]}), POLICY, "$.messages[0].content[0].content[0].source.url"),
    ("url-in-batch", {"requests": [{"custom_id": "a", "params": msg(img("https://evil.test/x"))}]},
     POLICY, "$.requests[0].params.messages[0].content[0].source.url"),
    ("ftp-scheme", msg(img("ftp://docs.example.com/a")), POLICY, "$.messages[0].content[0].source.url"),
    ("userinfo", msg(img("https://docs.example.com@evil.test/a")), POLICY,
     "$.messages[0].content[0].source.url"),
    ("backslash-differential", msg(img("https://evil.test\\@docs.example.com/")), POLICY,
     "$.messages[0].content[0].source.url"),
    ("whitespace", msg(img(" https://docs.example.com/a")), POLICY,
     "$.messages[0].content[0].source.url"),
    ("ip-literal", msg(img("http://127.0.0.1/a")), POLICY, "$.messages[0].content[0].source.url"),
    ("subdomain-not-listed", msg(img("https://a.docs.example.com/")), POLICY,
     "$.messages[0].content[0].source.url"),
    ("url-not-string", msg({"type": "image", "source": {"type": "url", "url": 7}}), POLICY,
     "$.messages[0].content[0].source.url"),
    ("web-search-not-allowed", {"tools": [{"type": "web_search_20250305", "name": "web_search",
                                           "allowed_domains": ["example.org"]}]}, POLICY,
     "$.tools[0]"),
    ("web-fetch-no-domains", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]},
     POLICY, "$.tools[0].allowed_domains"),
    ("web-fetch-empty-domains", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                                            "allowed_domains": []}]}, POLICY,
     "$.tools[0].allowed_domains"),
    ("web-fetch-domain-outside", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                                             "allowed_domains": ["evil.test"]}]}, POLICY,
     "$.tools[0].allowed_domains[0]"),
    ("web-fetch-subdomains-not-covered", {"tools": [{"type": "web_fetch_20250910",
                                                     "allowed_domains": ["docs.example.com"]}]},
     POLICY, "$.tools[0].allowed_domains[0]"),
    ("web-fetch-blocked-domains-only", {"tools": [{"type": "web_fetch_20250910",
                                                   "blocked_domains": ["evil.test"]}]}, POLICY,
     "$.tools[0].allowed_domains"),
]


@pytest.mark.parametrize("doc, policy, field", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_naming_the_field(doc, policy, field):
    with pytest.raises(ProviderRefusal) as e:
        check(parse(json.dumps(doc)), policy)
    assert e.value.field == field
    assert "evil" not in str(e.value)  # the reason names the field, never the value


def test_duplicate_keys_are_all_checked():
    raw = ('{"mcp_servers": [], "mcp_servers": [{"type": "url", "url": "https://evil.test"}]}')
    with pytest.raises(ProviderRefusal):
        check(parse(raw), POLICY)
    raw = ('{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", '
           '"url": "https://docs.example.com/a", "url": "https://evil.test/b"}}]}]}')
    with pytest.raises(ProviderRefusal):
        check(parse(raw), POLICY)


ALLOWED = [
    ("nothing", msg({"type": "text", "text": "hi"}), []),
    ("mcp-listed", {"mcp_servers": [{"type": "url", "url": "https://docs.example.com/mcp?team=a%40b.com",
                                     "authorization_token": "t"}]},
     [("$.mcp_servers[0].url", "docs.example.com\n/mcp\nteam\na@b.com\n"
                                "docs example com\n mcp\nteam\na@b com")]),
    ("image-wildcard", msg(img("https://cdn.example.org/%2562ob.png#frag")),
     [("$.messages[0].content[0].source.url", "cdn.example.org\nfrag\n/bob.png\n"
                                               "cdn example org\nfrag\n bob png")]),
    ("web-fetch-covered", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                                      "allowed_domains": ["example.org", "a.example.org/docs"]}]}, []),
    ("client-tool-named-web-search", {"tools": [{"name": "web_search", "input_schema": {}}]}, []),
    ("server-tool-use-history", msg({"type": "server_tool_use", "id": "srvtoolu_1",
                                     "name": "web_search", "input": {"query": "x"}}), []),
    ("base64-image", msg({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                      "data": "iVBORw0KGgo="}}), []),
]


@pytest.mark.parametrize("doc, texts", [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_allowed_with_the_url_parts_to_scan(doc, texts):
    assert check(parse(json.dumps(doc)), POLICY) == texts


def test_the_walk_is_bounded():
    doc = parse(json.dumps({"a": [[] for _ in range(250_000)]}))
    with pytest.raises(ProviderRefusal, match="too complex"):
        check(doc, POLICY)


BASE = "version: 1\negress:\n  allow: [{host: api.anthropic.com}]\n"


def test_policy_keys_load_and_validate():
    p = parse_policy(BASE + "  provider_fetch: [Docs.Example.com, '*.example.org']\n"
                     "  provider_tools: [web_fetch]\n")
    assert ProviderPolicy.from_egress(p.egress) == ProviderPolicy(
        ("docs.example.com", "*.example.org"), frozenset({"web_fetch"}))
    for bad, problem in (("  provider_fetch: ['*']\n", "egress.provider_fetch"),
                         ("  provider_fetch: [10.0.0.1]\n", "egress.provider_fetch"),
                         ("  provider_tools: [code_execution]\n", "egress.provider_tools")):
        with pytest.raises(PolicyError) as e:
            parse_policy(BASE + bad)
        assert problem in str(e.value)
