"""The policy's ``approve`` section: rules naming the requests a human must approve."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from egress_gateway.net import hosts, urlpath
from egress_gateway.policy import validators

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_entities() -> tuple[set[str], set[str]]:
    """(every entity name, the secret ones). Imported lazily: the detection package is heavy."""
    from egress_gateway.detection.entities import ALL_ENTITIES, SECRET_ENTITIES

    return set(ALL_ENTITIES), set(SECRET_ENTITIES)


def _globs(v: str | list[str] | None) -> list[str] | None:
    if v is None:
        return None
    items = [v] if isinstance(v, str) else list(v)
    if not items:
        raise ValueError("give at least one host glob")
    return [hosts.validate_host_glob(str(h)) for h in items]


class ApproveRule(_Model):
    """Hold matching requests for a human. Every matcher given must match; 'entities' and
    'any_secret' match when any of them was detected in the request."""

    name: str = Field(description="Rule name (letters, digits, '_', '.', '-'); unique.")
    reason: str = Field(min_length=1, description="Why a human must confirm; shown to the reviewer "
                        "and in refusals.")
    host: str | list[str] | None = Field(
        None, description="Destination host glob(s) (exact or '*.domain'): the rule applies only "
        "to these hosts.")
    host_not: str | list[str] | None = Field(
        None, description="Host glob(s) the rule does NOT apply to ('outside *.internal.example.com'). "
        "IP-literal destinations are always outside.")
    methods: validators.Methods = Field(
        None, min_length=1, description="HTTP methods, e.g. [POST, PUT, DELETE]; default any.")
    path: validators.PathGlobText = Field(
        None, description="Path glob, e.g. '/admin/*' ('*' matches anything, '/' included; "
        "'/x/*' also matches '/x'). Compared case-insensitively after %-decoding and removing "
        "dot segments; the query is not part of the path.")
    entities: list[str] | None = Field(
        None, min_length=1, description="Detected entity names (see detection), e.g. [CREDIT_CARD].")
    any_secret: bool = Field(False, description="Match when any secret entity was detected.")
    postgres: list[str] | None = Field(
        None, min_length=1, description="Database entries (postgres[].name): the rule holds "
        "their statements instead of HTTP requests.")
    statements: list[str] | None = Field(
        None, min_length=1, description="Statement types, e.g. [DELETE, UPDATE, DROP, TRUNCATE, "
        "ALTER, GRANT, COPY] (postgres rules).")
    tables: list[str] | None = Field(
        None, min_length=1, description="Tables ('name' any schema, or 'schema.name'; any case) "
        "(postgres rules).")
    without_where: bool = Field(False, description="Match only an UPDATE or DELETE without a "
                                "WHERE clause (postgres rules).")
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT)] = Field(
        DEFAULT_TIMEOUT, description="Seconds to wait for a reviewer (default 60).")
    on_timeout: Literal["deny", "allow"] = Field(
        "deny", description="What a timeout means (default deny).")
    unattended: Literal["deny", "allow"] = Field(
        "deny", description="The decision when no reviewer can exist (mitmdump); default deny.")

    _glob: urlpath.PathGlob | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return validators.entry_name(v, "rule")

    @field_validator("host", "host_not")
    @classmethod
    def _check_hosts(cls, v):
        return _globs(v)

    @field_validator("entities")
    @classmethod
    def _check_entities(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        known, _ = _known_entities()
        unknown = [e for e in v if e not in known]
        if unknown:
            raise ValueError(f"unknown entity names {unknown}; known: {', '.join(sorted(known))}")
        return list(v)

    @field_validator("statements")
    @classmethod
    def _check_statements(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [str(x).strip().upper() for x in v]

    @model_validator(mode="after")
    def _some_matcher(self) -> ApproveRule:
        db_keys = self.statements or self.tables or self.without_where
        if self.postgres:
            if self.host or self.host_not or self.methods or self.path:
                raise ValueError(f"rule {self.name!r}: host, host_not, methods and path apply to "
                                 "HTTP, not to postgres rules")
            return self
        if db_keys:
            raise ValueError(f"rule {self.name!r}: statements, tables and without_where need "
                             "'postgres' (the database entries they apply to)")
        if not (self.host or self.host_not or self.methods or self.path or self.entities
                or self.any_secret):
            raise ValueError(f"rule {self.name!r} matches every request; give at least one of "
                             "host, host_not, methods, path, entities, any_secret")
        if self.path is not None:
            self._glob = urlpath.PathGlob(self.path)
        return self

    # --- matching -----------------------------------------------------------------------------
    def matches_target(self, method: str, host: str | None, path: str) -> bool:
        """Method, host and path (what is known from the headers)."""
        if self.postgres:
            return False  # a database rule never holds HTTP requests
        if self.methods and method.upper() not in self.methods:
            return False
        if self.host and (host is None or not any(hosts.host_matches(g, host) for g in self.host)):
            return False
        if self.host_not and host is not None and any(hosts.host_matches(g, host) for g in self.host_not):
            return False
        # held when either spelling of the path matches: a rule cannot be dodged by '/x/../admin'
        return self._glob is None or self._glob.matches_either(path)

    def detected(self, counts: dict[str, int]) -> bool | None:
        """Whether the detection matchers fire (None: the rule has none)."""
        if not self.entities and not self.any_secret:
            return None
        if self.entities and any(counts.get(e, 0) > 0 for e in self.entities):
            return True
        if self.any_secret:
            _, secret = _known_entities()
            return any(n > 0 and e in secret for e, n in counts.items())
        return False

    def matches_statement(self, entry: str, kind: str, tables: list[str], without_where: bool,
                          counts: dict[str, int]) -> bool:
        """Whether this rule holds a statement of the database entry `entry`."""
        if not self.postgres or entry not in self.postgres:
            return False
        if self.statements and kind.upper() not in self.statements:
            return False
        if self.without_where and not without_where:
            return False
        if self.tables:
            want = [t.lower() for t in self.tables]
            names = [t.lower() for t in tables]
            if not any(n == w or ("." not in w and n.rsplit(".", 1)[-1] == w)
                       for n in names for w in want):
                return False
        return self.detected(counts) is not False

    def matches(self, method: str, host: str | None, path: str, counts: dict[str, int]) -> bool:
        return self.matches_target(method, host, path) and self.detected(counts) is not False

    @property
    def key(self) -> str:
        """Identifies this rule's content: a changed rule needs a new 'approve always'."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


ApproveRules = validators.named_list(ApproveRule, "approval rule")


class ReviewSettings(_Model):
    """How reviewers hear about holds: a Slack-compatible incoming webhook (no values in it)."""

    webhook: str | None = Field(
        None, description="Incoming-webhook URL (http or https) that gets one JSON message per "
        "new hold. The URL is a secret: prefer webhook_env. Dialled under the egress SSRF and "
        "resolve rules; needs no egress.allow entry.")
    webhook_env: str | None = Field(
        None, description="Name of the environment variable holding the webhook URL.")

    @field_validator("webhook")
    @classmethod
    def _check_webhook(cls, v: str | None) -> str | None:
        if v is not None:
            parse_webhook(v)
        return v

    @field_validator("webhook_env")
    @classmethod
    def _check_env(cls, v: str | None) -> str | None:
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError("an environment variable name (letters, digits, '_')")
        return v

    @model_validator(mode="after")
    def _one(self) -> ReviewSettings:
        if self.webhook and self.webhook_env:
            raise ValueError("give webhook or webhook_env, not both")
        return self


def parse_webhook(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path-with-query) of a webhook URL; the URL itself is never echoed."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("no user or password in the URL")
    host = hosts.normalize_host(parts.hostname)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path
