"""The ``egress:`` section of the policy: the allowlist, ports and pinned names (default deny)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway.net import hosts

DEFAULT_PORTS = (80, 443)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]


class AllowRule(_Model):
    """One allowlist entry: a host (exact or `*.domain`) or a `cidr`, with the ports allowed."""

    host: str | None = Field(
        None,
        description="Exact host (any case, trailing dot ignored, IDNA) or '*.domain' for any "
        "depth below the domain, not the domain itself. Never matches IP-literal destinations.",
    )
    cidr: str | None = Field(
        None,
        description="Address block, e.g. 10.20.0.0/16: matches IP-literal destinations and the "
        "addresses names resolve to (allows private/loopback ranges inside it).",
    )
    ports: list[Port] = Field(
        default_factory=lambda: list(DEFAULT_PORTS),
        min_length=1,
        description="Destination ports allowed; default [80, 443].",
    )

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str | None) -> str | None:
        return None if v is None else hosts.validate_host_glob(v)

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            net = ipaddress.ip_network(v.strip(), strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an address block like 10.20.0.0/16 ({e})") from None
        if net.prefixlen == 0:
            raise ValueError(f"{v!r} matches every address; name a smaller block")
        return str(net)

    @model_validator(mode="after")
    def _one_of(self) -> AllowRule:
        if (self.host is None) == (self.cidr is None):
            raise ValueError("give exactly one of 'host' or 'cidr'")
        return self

    @cached_property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The parsed block, once per rule (checked on every dial)."""
        return ipaddress.ip_network(self.cidr) if self.cidr else None


class EgressSettings(_Model):
    """Which destinations the agent may reach. Everything else is refused (default deny)."""

    mode: Literal["enforce", "report"] = Field(
        "enforce",
        description="enforce: refuse what is not allowed. report: log and audit what would be "
        "refused (decision 'would_block'), refuse nothing.",
    )
    allow: list[AllowRule] = Field(default_factory=list, description="The allowlist.")
    provider_fetch: list[str] = Field(
        default_factory=list,
        description="Hosts (exact or '*.domain', as in allow) the model provider's servers may "
        "fetch for the agent: mcp_servers[].url, url sources, server tools' allowed_domains. "
        "Empty: none (see 'Egress through the model provider' in policies/README.md).",
    )
    provider_tools: list[Literal["web_search", "web_fetch"]] = Field(
        default_factory=list,
        description="Server tools that fetch URLs the provider chooses, allowed only with "
        "allowed_domains inside provider_fetch. Empty: requests enabling them are refused.",
    )
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="Pinned name -> address, like curl --resolve. Trusted: used without DNS and "
        "allowed even when private. The name must still be on the allowlist.",
    )

    @field_validator("provider_fetch")
    @classmethod
    def _check_fetch(cls, v: list[str]) -> list[str]:
        return [hosts.validate_host_glob(h) for h in v]

    @field_validator("resolve")
    @classmethod
    def _check_resolve(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, addr in v.items():
            if hosts.parse_ip_literal(str(name)) is not None:
                raise ValueError(f"{name!r}: pin names, not addresses")
            key = hosts.normalize_host(str(name))
            try:
                out[key] = str(ipaddress.ip_address(str(addr).strip()))
            except ValueError:
                raise ValueError(f"{name}: {addr!r} is not an IP address") from None
        return out


