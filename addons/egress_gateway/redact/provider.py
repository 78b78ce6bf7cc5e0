"""Egress through the model provider: what a Messages API request makes the provider fetch.

A request can make the provider's servers dial out for the agent: ``mcp_servers[].url`` (with an
``authorization_token``), image and document sources ``{"type": "url", "url": ...}`` (also
inside tool results), and server tools whose URLs the provider chooses (``web_search_*``,
``web_fetch_*``). `check` finds them at any depth (Message Batches nest requests under
``requests[*].params``), refuses what the policy does not allow (``blocked``, naming the field)
and returns the decoded host, path and query of each allowed URL for scanning.

JSON is read with every duplicate key kept: a parser that takes the first of two
``mcp_servers`` keys and one that takes the last must not disagree about what is checked.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass

from egress_gateway.net import hosts

SERVER_TOOL = re.compile(r"(web_search|web_fetch)_[0-9]{8}")
_AMBIGUOUS = re.compile(r"[\\\x00-\x20\x7f]")
_PUNCT = re.compile(r"[/._+~:;,=&|!$*'()\[\]]")
MAX_NODES = 200_000  # a bound on the walk (a 10 MB body of tiny objects)


class ProviderRefusal(ValueError):
    """The request makes the provider fetch what the policy does not allow."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


@dataclass(frozen=True)
class ProviderPolicy:
    """``egress.provider_fetch`` (host globs) and ``egress.provider_tools``, compiled once."""

    fetch: tuple[str, ...] = ()
    tools: frozenset[str] = frozenset()

    @classmethod
    def from_egress(cls, egress) -> ProviderPolicy:
        if egress is None:
            return cls()
        return cls(tuple(getattr(egress, "provider_fetch", ()) or ()),
                   frozenset(getattr(egress, "provider_tools", ()) or ()))

    def allows_host(self, host: str) -> bool:
        return any(hosts.host_matches(g, host) for g in self.fetch)

    def covers_domain(self, domain: str) -> bool:
        """A server tool's allowed domain covers it and every subdomain (the provider's rule):
        both must be inside the list."""
        sub = any(g.startswith("*.") and (domain == g[2:] or domain.endswith("." + g[2:]))
                  for g in self.fetch)
        return sub and self.allows_host(domain)


class _Obj(list):
    """A JSON object as its list of (key, value) pairs, duplicates kept."""

    def values_of(self, key: str) -> list:
        return [v for k, v in self if k == key]


def parse(text: str):
    """The JSON document with objects as `_Obj` (raises ValueError if it is not JSON)."""
    return json.loads(text, object_pairs_hook=_Obj)


def _url_text(field: str, url) -> tuple[str, str]:
    """(normalised host, the decoded parts of `url` to scan); refuses what is not http(s)."""
    if not isinstance(url, str):
        raise ProviderRefusal(field, f"{field} is not a URL string")
    if _AMBIGUOUS.search(url):  # parsers disagree on the host (WHATWG reads '\\' as '/')
        raise ProviderRefusal(field, f"{field} has characters URL parsers read differently")
    try:
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc:
            raise ValueError("user information")
        host = hosts.normalize_host(parts.hostname or "")
    except ValueError:
        raise ProviderRefusal(field, f"{field} is not a URL the gateway can check") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ProviderRefusal(field, f"{field} must be an http(s) URL with a host name")
    pieces = [host, parts.fragment]
    path = parts.path
    for _ in range(3):
        path = urllib.parse.unquote(path)
    pieces.append(path)
    for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        pieces += [k, v]
    text = "\n".join(urllib.parse.unquote(p) for p in pieces if p)
    # also with URL punctuation read as spaces (never rewritten: only scanned), so that a value
    # glued to '/' or '.png' is still a word to the recognizers
    return host, f"{text}\n{_PUNCT.sub(' ', text)}"


def check(doc, policy: ProviderPolicy) -> list[tuple[str, str]]:
    """``[(field, text to scan)]`` for the allowed URLs of a parsed request; raises
    `ProviderRefusal` for the first fetch the policy does not allow."""
    out: list[tuple[str, str]] = []
    todo: list[tuple[str, object]] = [("$", doc)]
    seen = 0
    while todo:
        path, node = todo.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ProviderRefusal(path, "the request is too complex to check for provider fetches")
        if isinstance(node, _Obj):
            _check_object(path, node, policy, out)
            for k, v in node:
                if isinstance(v, (list, _Obj)):
                    todo.append((f"{path}.{k}" if _plain_key(k) else f"{path}[{json.dumps(k)}]", v))
        elif isinstance(node, list):
            todo += [(f"{path}[{i}]", v) for i, v in enumerate(node) if isinstance(v, (list, _Obj))]
    return list(dict.fromkeys(out))  # an MCP server {"type": "url", "url": ...} is found twice


def _plain_key(k: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_\-]+", k) is not None


def _check_object(path: str, obj: _Obj, policy: ProviderPolicy, out: list) -> None:
    types = [t for t in obj.values_of("type") if isinstance(t, str)]
    # a URL source (image, document) in a message or a tool result
    if "url" in types:
        for url in obj.values_of("url"):
            _allowed_url(f"{path}.url", url, policy, out)
    # remote MCP servers: the provider connects to each URL (with its authorization_token)
    for servers in obj.values_of("mcp_servers"):
        if isinstance(servers, _Obj) or not isinstance(servers, list):
            raise ProviderRefusal(f"{path}.mcp_servers", "mcp_servers must be a list")
        for i, server in enumerate(servers):
            field = f"{path}.mcp_servers[{i}].url"
            urls = server.values_of("url") if isinstance(server, _Obj) else []
            if not urls:
                raise ProviderRefusal(field, f"{field} is missing")
            for url in urls:
                _allowed_url(field, url, policy, out)
    # server tools whose URLs the provider chooses
    for t in types:
        m = SERVER_TOOL.fullmatch(t)
        if m:
            _allowed_tool(path, m.group(1), obj, policy)


def _allowed_url(field: str, url, policy: ProviderPolicy, out: list) -> None:
    host, text = _url_text(field, url)
    if not policy.allows_host(host):
        raise ProviderRefusal(field, f"{field} makes the model provider fetch a host that is not "
                              "in egress.provider_fetch")
    out.append((field, text))


def _allowed_tool(path: str, name: str, obj: _Obj, policy: ProviderPolicy) -> None:
    if name not in policy.tools:
        raise ProviderRefusal(path, f"{path} enables the server tool {name}, which fetches URLs "
                              "the provider chooses; not in egress.provider_tools")
    lists = obj.values_of("allowed_domains")
    if not lists or any(not isinstance(v, list) or not v for v in lists):
        raise ProviderRefusal(f"{path}.allowed_domains", f"{path} ({name}) needs allowed_domains "
                              "inside egress.provider_fetch")
    for i, domain in enumerate(d for v in lists for d in v):
        field = f"{path}.allowed_domains[{i}]"
        if not isinstance(domain, str):
            raise ProviderRefusal(field, f"{field} is not a domain")
        try:
            host = hosts.normalize_host(domain.strip().split("/", 1)[0])
        except ValueError:
            raise ProviderRefusal(field, f"{field} is not a domain the gateway can check") from None
        if not policy.covers_domain(host):
            raise ProviderRefusal(field, f"{field} (and its subdomains) is not inside "
                                  "egress.provider_fetch")
