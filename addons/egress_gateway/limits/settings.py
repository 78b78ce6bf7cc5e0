"""The policy's ``limits`` section: how much a session (and a client address) may send per minute."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway.net import hosts
from egress_gateway.policy import validators


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitRule(_Model):
    """A volume limit, enforced per session and per client address (rotating session ids from
    one address does not escape it)."""

    name: str = Field(description="Limit name (letters, digits, '_', '.', '-'); unique.")
    hosts: list[str] | None = Field(
        None, min_length=1, description="Destination host globs (exact or '*.domain', as in "
        "egress.allow) the limit counts; absent: every host. IP-literal destinations match no "
        "glob.")
    requests_per_minute: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Requests allowed in any 60 seconds.")
    bytes_out_per_minute: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Bytes sent upstream in any 60 seconds: request line, headers and body "
        "as sent (after redaction, compressed as on the wire).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return validators.entry_name(v, "limit")

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [hosts.validate_host_glob(str(h)) for h in v]

    @model_validator(mode="after")
    def _some_limit(self) -> LimitRule:
        if self.requests_per_minute is None and self.bytes_out_per_minute is None:
            raise ValueError(f"limit {self.name!r} limits nothing; give requests_per_minute "
                             "and/or bytes_out_per_minute")
        return self

    def applies_to(self, host: str) -> bool:
        """Whether a request to `host` (normalised) counts against this limit."""
        if self.hosts is None:
            return True
        if hosts.parse_ip_literal(host) is not None:
            return False
        return any(hosts.host_matches(g, host) for g in self.hosts)


LimitsSection = validators.named_list(LimitRule, "limit")
