"""Host normalisation, globs, IP literals in every encoding, address classification."""

import ipaddress

import pytest
from egress_gateway.net import hosts

NORMALIZE = [
    ("lowercase", "API.Anthropic.COM", "api.anthropic.com"),
    ("trailing dot", "api.anthropic.com.", "api.anthropic.com"),
    ("spaces", "  api.anthropic.com ", "api.anthropic.com"),
    ("punycode", "bücher.example", "xn--bcher-kva.example"),
    ("already punycode", "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("ipv4", "127.0.0.1", "127.0.0.1"),
    ("ipv4 decimal", "2130706433", "127.0.0.1"),
    ("ipv4 hex", "0x7f000001", "127.0.0.1"),
    ("ipv4 octal", "0177.0.0.1", "127.0.0.1"),
    ("ipv4 short", "127.1", "127.0.0.1"),
    ("ipv4 three parts", "127.0.1", "127.0.0.1"),
    ("ipv4 mixed", "0x7f.0.0.01", "127.0.0.1"),
    ("ipv6 brackets", "[::1]", "::1"),
    ("ipv6 mapped", "::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("metadata decimal", "2852039166", "169.254.169.254"),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in NORMALIZE], ids=[c[0] for c in NORMALIZE])
def test_normalize(raw, expected):
    assert hosts.normalize_host(raw) == expected


BAD_HOSTS = [
    ("empty", ""),
    ("userinfo", "user:pw@api.anthropic.com"),
    ("space inside", "api anthropic.com"),
    ("double dot", "api..anthropic.com"),
    ("leading hyphen label", "-api.anthropic.com"),
    ("slash", "api.anthropic.com/x"),
    ("nul", "api.anthropic.com\x00.evil.com"),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_HOSTS], ids=[c[0] for c in BAD_HOSTS])
def test_normalize_rejects(raw):
    with pytest.raises(ValueError):
        hosts.normalize_host(raw)


MATCH = [
    ("exact", "api.anthropic.com", "api.anthropic.com", True),
    ("exact other", "api.anthropic.com", "anthropic.com", False),
    ("suffix lookalike", "api.anthropic.com", "api.anthropic.com.evil.com", False),
    ("prefix lookalike", "api.anthropic.com", "evilapi.anthropic.com", False),
    ("wildcard one level", "*.internal.example.com", "a.internal.example.com", True),
    ("wildcard depth", "*.internal.example.com", "a.b.c.internal.example.com", True),
    ("wildcard not apex", "*.internal.example.com", "internal.example.com", False),
    ("wildcard lookalike", "*.internal.example.com", "evilinternal.example.com", False),
    ("wildcard suffix trick", "*.internal.example.com", "internal.example.com.evil.com", False),
]


@pytest.mark.parametrize("pattern,host,expected", [c[1:] for c in MATCH], ids=[c[0] for c in MATCH])
def test_host_matches(pattern, host, expected):
    assert hosts.host_matches(pattern, host) is expected


BAD_GLOBS = [
    ("star", "*", "matches everything"),
    ("star dot", "*.", "matches everything"),
    ("tld", "*.com", "top-level domain"),
    ("inner star", "api.*.com", "first label"),
    ("partial star", "*api.anthropic.com", "first label"),
    ("ip", "127.0.0.1", "cidr"),
]


@pytest.mark.parametrize("glob,msg", [c[1:] for c in BAD_GLOBS], ids=[c[0] for c in BAD_GLOBS])
def test_validate_glob_rejects(glob, msg):
    with pytest.raises(ValueError, match=msg):
        hosts.validate_host_glob(glob)


def test_validate_glob_normalises():
    assert hosts.validate_host_glob("*.Internal.Example.COM.") == "*.internal.example.com"


IP_LITERALS = [
    ("name", "example.com", None),
    ("name with digits", "1password.com", None),
    ("dotted", "10.1.2.3", "10.1.2.3"),
    ("decimal", "167838211", "10.1.2.3"),
    ("hex whole", "0xa010203", "10.1.2.3"),
    ("hex parts", "0xa.0x1.0x2.0x3", "10.1.2.3"),
    ("octal parts", "012.01.02.03", "10.1.2.3"),
    ("two parts", "10.66051", "10.1.2.3"),
    ("trailing dot", "10.1.2.3.", "10.1.2.3"),
    ("too big part", "256.1.1.1", None),
    ("ipv6", "fe80::1", "fe80::1"),
    ("ipv6 zone", "fe80::1%eth0", "fe80::1"),
    ("ipv6 bracket", "[2001:db8::1]", "2001:db8::1"),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in IP_LITERALS], ids=[c[0] for c in IP_LITERALS])
def test_parse_ip_literal(raw, expected):
    got = hosts.parse_ip_literal(raw)
    assert (str(got) if got is not None else None) == expected


CLASSIFY = [
    ("public v4", "93.184.216.34", None),
    ("public v6", "2606:2800:220:1:248:1893:25c8:1946", None),
    ("loopback", "127.0.0.1", "loopback"),
    ("loopback other", "127.5.6.7", "loopback"),
    ("rfc1918 10", "10.0.0.1", "private"),
    ("rfc1918 172", "172.16.5.4", "private"),
    ("rfc1918 192", "192.168.1.1", "private"),
    ("metadata", "169.254.169.254", "link_local"),
    ("cgnat", "100.64.0.1", "cgnat"),
    ("unspecified", "0.0.0.0", "unspecified"),
    ("multicast", "224.0.0.1", "multicast"),
    ("broadcast", "255.255.255.255", "broadcast"),
    ("v6 loopback", "::1", "loopback"),
    ("v6 unspecified", "::", "unspecified"),
    ("v6 ula", "fd00::1", "private"),
    ("v6 link local", "fe80::1", "link_local"),
    ("v6 multicast", "ff02::1", "multicast"),
    ("v4-mapped loopback", "::ffff:127.0.0.1", "loopback (embedded in IPv6)"),
    ("v4-mapped metadata", "::ffff:169.254.169.254", "link_local (embedded in IPv6)"),
    ("v4-compatible private", "::10.0.0.1", "private (embedded in IPv6)"),
    ("nat64 private", "64:ff9b::10.0.0.1", "private (embedded in IPv6)"),
    ("6to4 private", "2002:a00:1::1", "private (embedded in IPv6)"),
    ("v4-mapped public", "::ffff:93.184.216.34", None),
]


@pytest.mark.parametrize("addr,expected", [c[1:] for c in CLASSIFY], ids=[c[0] for c in CLASSIFY])
def test_classify(addr, expected):
    assert hosts.classify_address(ipaddress.ip_address(addr)) == expected


def test_address_in_sees_embedded_ipv4():
    net = ipaddress.ip_network("10.20.0.0/16")
    assert hosts.address_in(ipaddress.ip_address("::ffff:10.20.1.5"), net)
    assert not hosts.address_in(ipaddress.ip_address("::ffff:10.21.1.5"), net)
