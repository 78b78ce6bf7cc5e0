"""The ``redact:`` section of the gateway policy (pydantic v2, immutable).

Example::

    redact:
      request:                      # requests leaving (every allowed host)
        json_paths: null            # null: every string value of a JSON body
        too_large: block            # bodies over gateway_body_limit
        unsupported: block          # binary / unknown content types
      response:                     # responses coming back
        unsupported: pass
      rules:                        # per host (first match wins), overriding the above
        - hosts: [api.anthropic.com]
          paths: [/v1/messages]
          request:
            json_paths: ["messages[*].content"]
            skip_json_paths: ["messages[*].content[*].id"]

A rule's ``request`` / ``response`` overrides only the keys it names; the others come from the
section's ``request`` / ``response``.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway.detection.settings import DetectionSettings, OperatorSpec
from egress_gateway.net import hosts, urlpath
from egress_gateway.redact.fields import parse_mode
from egress_gateway.redact.jsonpath import Scope, parse_path

Action = Literal["pass", "block"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DirectionRules(_Model):
    """How one direction of a flow is redacted."""

    enabled: bool = Field(True, description="Scan and redact this direction at all.")
    entities: list[str] | None = Field(
        None,
        description="Entities to detect in this direction (names as in detection.entities); "
        "null: detection.entities.",
    )
    operators: dict[str, OperatorSpec] = Field(
        default_factory=dict,
        description="Operators per entity for this direction, over detection.operators "
        "('default' applies to all others). {type: block} refuses the flow (403 sensitive_data).",
    )
    json_paths: list[str] | None = Field(
        None,
        description="Parts of JSON bodies to scan (see 'JSON paths' in policies/README.md), e.g. "
        "'messages[*].content'; null: every string value. Also applies to JSON in NDJSON lines, "
        "SSE event data and WebSocket messages.",
    )
    skip_json_paths: list[str] = Field(
        default_factory=list,
        description="Parts of JSON bodies never scanned, even inside json_paths.",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="JSON path -> field mode (see 'Field modes' in policies/README.md): prose "
        "(default), instructions (no NER), signed (never rewritten; a finding refuses), "
        "format:<name> (anything else refuses), skip. A string takes the mode of the first "
        "listed path naming it or one of its ancestors.",
    )
    provider: Literal["anthropic"] | None = Field(
        None,
        description="The body is a request to this model provider's API: URLs its servers would "
        "fetch (mcp_servers, url sources) and server tools (web search, web fetch) are checked "
        "against egress.provider_fetch / egress.provider_tools (requests only).",
    )
    query: bool = Field(True, description="Scan URL query values (requests only).")
    path: bool = Field(True, description="Scan URL path segments (requests only): each segment "
                       "is percent-decoded and scanned; found values are replaced and re-encoded.")
    headers: bool = Field(True, description="Scan header names and values, trailers and the "
                          "method (patterns and secret recognizers, no NER).")
    skip_headers: list[str] = Field(
        default_factory=list,
        description="Header names never scanned (case-insensitive), e.g. an API key header the "
        "agent holds on purpose and no credential binds.",
    )
    too_large: Action = Field(
        "block",
        description="Bodies over gateway_body_limit (before or after decompression): block "
        "(413 too_large) or pass unscanned.",
    )
    unsupported: Action = Field(
        "block",
        description="Bodies that cannot be scanned (binary or unknown content type, bad charset "
        "or encoding): block (415 unsupported_content) or pass unscanned.",
    )

    @field_validator("json_paths", "skip_json_paths")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            parse_path(p)
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for path, mode in v.items():
            parse_path(path)
            try:
                out[path] = parse_mode(mode)
            except ValueError as e:
                raise ValueError(f"fields[{path!r}]: {e}") from None
        return out

    @functools.cached_property
    def _scope(self) -> Scope:
        return Scope(self.json_paths, self.skip_json_paths, list(self.fields.items()))

    def scope(self) -> Scope:
        """The compiled JSON paths (built once per rules object: they never change)."""
        return self._scope

    def detection(self, base: DetectionSettings) -> DetectionSettings:
        """The detection settings for this direction: `base` with entities/operators applied."""
        update: dict = {}
        if self.entities is not None:
            update["entities"] = list(self.entities)
        if self.operators:
            update["operators"] = {**base.operators, **self.operators}
        if not update:
            return base
        return DetectionSettings.model_validate({**base.model_dump(), **update})


class ResponseRules(DirectionRules):
    """Responses: binary content (images, archives) passes by default."""

    unsupported: Action = Field(
        "pass",
        description="Bodies that cannot be scanned (binary or unknown content type): pass "
        "unscanned (default) or block (415 unsupported_content).",
    )
    query: bool = Field(False, description="Not used for responses.")
    path: bool = Field(False, description="Not used for responses.")
    provider: Literal["anthropic"] | None = Field(None, description="Not used for responses.")


class RedactRule(_Model):
    """Per-host overrides; the first rule whose hosts (and paths) match a flow applies."""

    hosts: list[str] = Field(
        default_factory=list,
        description="Hosts as in egress.allow: exact names or '*.domain' (any depth below).",
    )
    postgres: list[str] = Field(
        default_factory=list,
        description="Names of postgres entries this rule applies to (instead of hosts): "
        "response = result rows and server messages, request = the agent's statements.",
    )
    paths: list[str] = Field(
        default_factory=list,
        description="URL path prefixes (e.g. /v1/messages), matched on the normalised path the "
        "upstream will see (percent-decoded, no dot segments or '//'); empty: every path.",
    )
    restore: bool = Field(
        False,
        description="Reversible pseudonyms (see 'Restore' in policies/README.md): in requests "
        "every non-block operator becomes the session token <ENTITY_xxxxxxxx>; in responses the "
        "session's tokens are replaced back by its values. Needs the key named by "
        "gateway_vault_key_env.",
    )
    request: DirectionRules | None = Field(
        None, description="Keys of redact.request to override for these hosts (others inherited)."
    )
    response: ResponseRules | None = Field(
        None, description="Keys of redact.response to override for these hosts (others inherited)."
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [hosts.validate_host_glob(h) for h in v]

    @field_validator("paths")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        return [urlpath.validate_prefix(p) for p in v]

    @model_validator(mode="after")
    def _one_target(self) -> RedactRule:
        if bool(self.hosts) == bool(self.postgres):
            raise ValueError("give either 'hosts' or 'postgres' (database entry names)")
        if self.postgres and self.paths:
            raise ValueError("'paths' applies to hosts, not to postgres entries")
        if self.postgres and self.restore:
            raise ValueError("'restore' applies to hosts (HTTP), not to postgres entries")
        return self

    def matches(self, host: str, path: str) -> bool:
        if not any(hosts.host_matches(h, host) for h in self.hosts):
            return False
        if not self.paths:
            return True
        # Only the normalised form: a rule may narrow the scan, so a raw spelling must not pick
        # a narrower rule than the path the upstream resolves (/v1/messages/%62atches).
        norm = urlpath.normalize_path(path)
        return any(urlpath.under_prefix(p, norm) for p in self.paths)


class RedactSettings(_Model):
    """PII and secret redaction of request and response bodies, query strings and WebSocket
    messages."""

    enabled: bool = Field(True, description="Redact at all (false: no scanning anywhere).")
    request: DirectionRules = Field(
        default_factory=DirectionRules, description="Requests leaving, for every host."
    )
    response: ResponseRules = Field(
        default_factory=ResponseRules, description="Responses coming back, for every host."
    )
    rules: list[RedactRule] = Field(
        default_factory=list, description="Per-host overrides; first match wins."
    )

    @model_validator(mode="after")
    def _rules_resolve(self) -> RedactSettings:
        for i, rule in enumerate(self.rules):
            for d in ("request", "response"):
                try:
                    self._merged(rule, d)
                except ValueError as e:
                    raise ValueError(f"rules[{i}].{d}: {e}") from None
        return self

    def _merged(self, rule: RedactRule | None, direction: str) -> DirectionRules:
        base: DirectionRules = getattr(self, direction)
        over = getattr(rule, direction) if rule is not None else None
        if over is None or not over.model_fields_set:
            return base
        return type(base).model_validate(
            {**base.model_dump(), **over.model_dump(include=over.model_fields_set)}
        )

    def rule_index(self, host: str, path: str) -> int:
        """The index of the first rule matching a flow to `host` and `path`, or -1."""
        try:
            host = hosts.normalize_host(host)
        except ValueError:
            pass  # an unparseable host matches no rule (egress refuses it anyway)
        return next((i for i, r in enumerate(self.rules) if r.matches(host, path)), -1)

    def for_flow(self, host: str, path: str, direction: str) -> tuple[int, DirectionRules]:
        """(rule index or -1, the rules for one direction of a flow to `host` and `path`)."""
        idx = self.rule_index(host, path)
        return idx, self._merged(self.rules[idx] if idx >= 0 else None, direction)


def check_entities(redact: RedactSettings, detection: DetectionSettings) -> None:
    """Entity names in the redact section must be known to the detection settings."""
    problems = []
    sections = [("request", redact.request), ("response", redact.response)]
    for i, rule in enumerate(redact.rules):
        for d in ("request", "response"):
            sections.append((f"rules[{i}].{d}", redact._merged(rule, d)))
    for where, rules in sections:
        try:
            rules.detection(detection)
        except ValueError as e:
            problems.append(f"redact.{where}: {e}")
    if problems:
        raise ValueError("; ".join(problems))
