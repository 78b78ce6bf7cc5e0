"""Host names, host globs and IP addresses: pure functions, all raising ValueError on bad input."""

from __future__ import annotations

import ipaddress
import re

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_host(host: str) -> str:
    """Canonical form of a host name or IP literal: lowercase, no trailing dot, IDNA (punycode).

    IP literals in any encoding come back in their canonical form (``0x7f.1`` -> ``127.0.0.1``,
    ``[::1]`` -> ``::1``). Raises ValueError for anything that is neither.
    """
    if not isinstance(host, str):
        raise ValueError("host must be a string")
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise ValueError("empty host")
    if "@" in h:
        raise ValueError("user information in a host is not allowed")
    ip = parse_ip_literal(h)
    if ip is not None:
        return str(ip)
    if h.endswith("."):
        h = h[:-1]
    if not h or h.endswith("."):
        raise ValueError(f"invalid host {host!r}")
    try:
        h = idna.encode(h, uts46=True).decode("ascii") if not h.isascii() else h.lower()
    except idna.IDNAError as e:
        raise ValueError(f"invalid international host name {host!r}: {e}") from None
    labels = h.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(f"invalid host {host!r}")
    if len(h) > 253:
        raise ValueError("host name longer than 253 characters")
    return h


def _parse_ipv4_part(part: str) -> int:
    """One part of an inet_aton() style address: decimal, 0-prefixed octal or 0x hex."""
    if not part:
        raise ValueError("empty part")
    p = part.lower()
    if p.startswith("0x"):
        digits, base = p[2:], 16
        if digits == "":
            return 0
    elif len(p) > 1 and p.startswith("0"):
        digits, base = p[1:], 8
    else:
        digits, base = p, 10
    if not re.fullmatch(r"[0-9a-f]+", digits):
        raise ValueError(f"bad part {part!r}")
    return int(digits, base)


def parse_ipv4_any(text: str) -> ipaddress.IPv4Address | None:
    """Parse IPv4 the way inet_aton() (and so curl, browsers, libc) does, or return None.

    Accepts ``127.0.0.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``127.0.1``.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    try:
        nums = [_parse_ipv4_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = nums
    if any(n > 255 for n in head):
        return None
    if last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for n in head:
        value = (value << 8) | n
    value = (value << (8 * (4 - len(head)))) | last
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The IP address a host string denotes in any encoding, or None if it is a name."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith(".") and not h.endswith(".."):
        h = h[:-1]
    if ":" in h:
        addr = h.split("%", 1)[0]  # zone id: fe80::1%eth0
        try:
            return ipaddress.IPv6Address(addr)
        except ValueError:
            return None
    # A name whose last label is numeric is treated as an address (WHATWG URL rule), which is
    # what curl and browsers do: "1.2.3.0x4" must never be looked up as a name.
    return parse_ipv4_any(h)


def validate_host_glob(pattern: str) -> str:
    """Check and normalise an allowlist host entry: an exact host or ``*.domain``."""
    p = pattern.strip()
    if p in ("*", "*.", "**"):
        raise ValueError(f"{pattern!r} matches everything; name a domain")
    wildcard = p.startswith("*.")
    rest = p[2:] if wildcard else p
    if "*" in rest:
        raise ValueError(
            f"{pattern!r}: '*' is only allowed as the whole first label, as in '*.example.com'"
        )
    if parse_ip_literal(rest) is not None:
        raise ValueError(f"{pattern!r} is an IP address; use a 'cidr' entry for addresses")
    norm = normalize_host(rest)
    if wildcard and "." not in norm:
        raise ValueError(f"{pattern!r} matches a whole top-level domain; name a domain")
    return ("*." + norm) if wildcard else norm


def host_matches(pattern: str, host: str) -> bool:
    """Whether a normalised host matches a normalised glob.

    ``*.example.com`` matches any depth below example.com but not example.com itself.
    """
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


# --- address classification -------------------------------------------------------------

_V4_SPECIAL: list[tuple[str, str]] = [
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
]
_V6_SPECIAL: list[tuple[str, str]] = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link_local"),
    ("fec0::/10", "private"),
    ("ff00::/8", "multicast"),
    ("2001:db8::/32", "documentation"),
    ("100::/64", "reserved"),
]
_V4_NETS = [(ipaddress.IPv4Network(n), c) for n, c in _V4_SPECIAL]
_V6_NETS = [(ipaddress.IPv6Network(n), c) for n, c in _V6_SPECIAL]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, compatible, NAT64, 6to4, Teredo)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    packed = int(ip)
    if ip in ipaddress.IPv6Network("64:ff9b::/96") or ip in ipaddress.IPv6Network("64:ff9b:1::/48"):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks); skip :: and ::1
    if packed >> 32 == 0 and packed > 1:
        return ipaddress.IPv4Address(packed)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why an address is not a public internet address ('loopback', 'private', ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            cls = classify_address(inner)
            return f"{cls} (embedded in IPv6)" if cls else None
        for net, cls in _V6_NETS:
            if ip in net:
                return cls
        return None
    for net, cls in _V4_NETS:
        if ip in net:
            return cls
    return None


def address_in(ip: IPAddress, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Membership that also sees IPv4 addresses embedded in IPv6 ones."""
    if ip.version == net.version and ip in net:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and net.version == 4:
        inner = embedded_ipv4(ip)
        return inner is not None and inner in net
    return False
