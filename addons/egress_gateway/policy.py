"""Policy v1: versioned YAML, validated at load time into immutable models.

`load_policy(path)` returns a `Policy` or raises `PolicyError` listing every problem as
``FILE: egress.allow[3].host: '*' matches everything; name a domain``. There are no defaults to
fall back to: unknown keys are errors, and a broken file is never half-applied.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import hosts
from .approvals import ApproveRules
from .credentials import Credentials
from .detection.settings import DetectionSettings
from .redact.settings import RedactSettings, check_entities

DEFAULT_PORTS = (80, 443)


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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


class Egress(_Model):
    """Which destinations the agent may reach. Everything else is refused (default deny)."""

    mode: Literal["enforce", "report"] = Field(
        "enforce",
        description="enforce: refuse what is not allowed. report: log and audit what would be "
        "refused (decision 'would_block'), refuse nothing.",
    )
    allow: list[AllowRule] = Field(default_factory=list, description="The allowlist.")
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="Pinned name -> address, like curl --resolve. Trusted: used without DNS and "
        "allowed even when private. The name must still be on the allowlist.",
    )

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
    egress: Egress = Field(description="Egress allowlist.")
    clients: Clients = Field(default_factory=Clients, description="Client access control.")
    approve: ApproveRules = Field(
        default_factory=list,
        description="Requests a human must approve before they leave (first matching rule holds).",
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

    @model_validator(mode="after")
    def _redact_entities(self) -> Policy:
        check_entities(self.redact, self.detection)
        return self


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see policies/README.md for the format)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "literal_error" or kind.endswith("_type") or kind.endswith("_parsing"):
        msg += f" (got {err.get('input')!r})"
    return msg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML text; raise PolicyError naming `source` in each problem."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([f"{source}: {where}invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: the policy must be a YAML mapping with 'version: 1'"])
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        problems = [f"{source}: {_loc(err['loc'])}: {_message(err)}" for err in e.errors()]
        raise PolicyError(problems) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{p}: cannot read policy: {e}"]) from None
    return parse_policy(text, str(p))
