"""Egress decisions: pure functions from a policy and a destination to allow/refuse + reason."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from egress_gateway.egress.settings import EgressSettings as Egress
from egress_gateway.net import hosts


@dataclass(frozen=True)
class Decision:
    """A result plus a human reason (and the details that go into the refusal body)."""

    allowed: bool
    reason: str
    code: str = "blocked"
    details: dict = field(default_factory=dict)


def _ports(ports) -> str:
    return ", ".join(str(p) for p in ports)


def check_destination(egress: Egress, host: str, port: int | None) -> Decision:
    """Is (host, port) on the allowlist? Host names match host entries, IP literals only cidr."""
    try:
        norm = hosts.normalize_host(host)
    except ValueError as e:
        return Decision(False, f"invalid destination host: {e}", details={"host": host})
    details = {"host": norm, "port": port}
    if port is None or not 0 < int(port) < 65536:
        return Decision(False, f"invalid destination port {port!r}", details=details)
    ip = hosts.parse_ip_literal(norm)
    port_mismatch: list[int] | None = None
    for rule in egress.allow:
        if ip is not None:
            if rule.cidr is None or not hosts.address_in(ip, rule.network):
                continue
        elif rule.host is None or not hosts.host_matches(rule.host, norm):
            continue
        if port in rule.ports:
            what = rule.host or rule.cidr
            return Decision(True, f"{norm}:{port} is allowed by {what}", code="", details=details)
        port_mismatch = rule.ports
    if port_mismatch is not None:
        return Decision(
            False,
            f"port {port} is not allowed for {norm} (allowed: {_ports(port_mismatch)})",
            details=details,
        )
    if ip is not None:
        return Decision(
            False, f"address {norm} is not in any allowed cidr block", details=details
        )
    return Decision(False, f"{norm} is not on the egress allowlist", details=details)


def check_resolved(
    egress: Egress, name: str, address: hosts.IPAddress, port: int, pinned: bool
) -> Decision:
    """May we dial `address`, which `name` resolved to? Private ranges need a cidr or a pin."""
    details = {"host": name, "port": port, "address": str(address)}
    for rule in egress.allow:
        if rule.cidr and hosts.address_in(address, rule.network) and port in rule.ports:
            return Decision(True, f"{address} is in {rule.cidr}", code="", details=details)
    if pinned:
        return Decision(True, f"{name} is pinned to {address}", code="", details=details)
    cls = hosts.classify_address(address)
    if cls:
        return Decision(
            False,
            f"{name} resolved to {address} ({cls}); allow it with a cidr entry or a resolve pin",
            details=details,
        )
    return Decision(True, f"{name} resolved to public address {address}", code="", details=details)


def pinned_address(egress: Egress, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The trusted address a name is pinned to in `egress.resolve`, if any."""
    try:
        addr = egress.resolve.get(hosts.normalize_host(host))
    except ValueError:
        return None
    return ipaddress.ip_address(addr) if addr else None
