"""Policy v1: the root model, one section per feature (each imported from its feature)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway.approvals.settings import ApproveRules, ReviewSettings
from egress_gateway.credentials.settings import Credentials
from egress_gateway.detection.settings import DetectionSettings
from egress_gateway.egress.settings import EgressSettings
from egress_gateway.limits.settings import LimitsSection
from egress_gateway.net import hosts
from egress_gateway.postgres.settings import PostgresSection, check_references
from egress_gateway.redact.settings import RedactSettings, check_entities


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Clients(_Model):
    """Who may use the gateway. Required (or proxy authentication) when it listens beyond loopback."""

    allow: list[str] = Field(
        default_factory=list,
        description="Client address blocks allowed to connect, e.g. [127.0.0.0/8, 10.8.0.0/16]. "
        "Empty: any client (only allowed while the gateway listens on loopback).",
    )

    @field_validator("allow")
    @classmethod
    def _check(cls, v: list[str]) -> list[str]:
        out = []
        for block in v:
            try:
                out.append(str(ipaddress.ip_network(str(block).strip(), strict=True)))
            except ValueError as e:
                raise ValueError(f"{block!r} is not an address block like 10.8.0.0/16 ({e})") from None
        return out

    @cached_property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The parsed blocks, once per policy (checked on every client connection)."""
        return [ipaddress.ip_network(b) for b in self.allow]

    def permits(self, address: str) -> bool:
        if not self.allow:
            return True
        ip = hosts.parse_ip_literal(address)
        return ip is not None and any(hosts.address_in(ip, net) for net in self.networks)


class Policy(_Model):
    """A gateway policy (format version 1)."""

    version: Literal[1] = Field(description="Policy format version; must be 1.")
    egress: EgressSettings = Field(description="Egress allowlist.")
    clients: Clients = Field(default_factory=Clients, description="Client access control.")
    approve: ApproveRules = Field(
        default_factory=list,
        description="Requests a human must approve before they leave (first matching rule holds).",
    )
    review: ReviewSettings = Field(
        default_factory=ReviewSettings,
        description="How reviewers hear about held requests (a webhook per new hold).",
    )
    detection: DetectionSettings = Field(
        default_factory=DetectionSettings,
        description="What PII and secrets to detect and how to rewrite them.",
    )
    redact: RedactSettings = Field(
        default_factory=RedactSettings,
        description="Where to redact: hosts, directions, JSON paths, too-large/unsupported bodies.",
    )
    credentials: Credentials = Field(
        default_factory=list,
        description="Secrets the gateway presents in place of the agent's placeholders, each bound "
        "to a destination; values come from environment variables or files, never the policy.",
    )
    postgres: PostgresSection = Field(
        default_factory=list,
        description="PostgreSQL databases agents reach through the gateway (one listening port "
        "each); the gateway logs in with its own credentials and masks result rows.",
    )
    limits: LimitsSection = Field(
        default_factory=list,
        description="Volume limits: requests and bytes sent upstream per minute, per session and "
        "per client address (over a limit: 429 rate_limited).",
    )

    @model_validator(mode="after")
    def _redact_entities(self) -> Policy:
        check_entities(self.redact, self.detection)
        check_references(self)
        return self


