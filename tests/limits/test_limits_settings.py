"""The policy's ``limits`` section: validation at load, with file, key and problem named."""

from __future__ import annotations

import pytest
from egress_gateway.policy import PolicyError, parse_policy

BASE = "version: 1\negress:\n  allow:\n    - host: api.example.com\n"

GOOD = BASE + """limits:
  - name: session-out
    hosts: ["*.example.com"]
    requests_per_minute: 600
    bytes_out_per_minute: 5000000
  - name: everything
    requests_per_minute: 10
"""

BAD = [
    ("nothing limited", "  - name: x\n    hosts: ['a.example']\n", "limits nothing"),
    ("zero requests", "  - name: x\n    requests_per_minute: 0\n", "greater than 0"),
    ("negative bytes", "  - name: x\n    bytes_out_per_minute: -1\n", "greater than 0"),
    ("bad glob", "  - name: x\n    hosts: ['*']\n    requests_per_minute: 1\n", "hosts"),
    ("empty hosts", "  - name: x\n    hosts: []\n    requests_per_minute: 1\n", "hosts"),
    ("bad name", "  - name: 'a b'\n    requests_per_minute: 1\n", "limit name"),
    ("unknown key", "  - name: x\n    requests_per_second: 1\n", "requests_per_second"),
    ("duplicate names", "  - name: x\n    requests_per_minute: 1\n  - name: x\n    "
     "requests_per_minute: 2\n", "used twice"),
    ("not a number", "  - name: x\n    requests_per_minute: lots\n", "requests_per_minute"),
]


def test_good_section_parses():
    p = parse_policy(GOOD)
    a, b = p.limits
    assert (a.name, a.hosts, a.requests_per_minute, a.bytes_out_per_minute) == (
        "session-out", ["*.example.com"], 600, 5000000)
    assert b.hosts is None and b.bytes_out_per_minute is None


HOSTS = [
    ("below the domain", "api.example.com", True),
    ("the domain itself", "example.com", False),
    ("another domain", "api.example.org", False),
    ("an IP literal", "127.0.0.1", False),
]


@pytest.mark.parametrize("host,want", [c[1:] for c in HOSTS], ids=[c[0] for c in HOSTS])
def test_hosts_globs_as_in_egress(host, want):
    rule = parse_policy(GOOD).limits[0]
    assert rule.applies_to(host) is want
    assert parse_policy(GOOD).limits[1].applies_to(host) is True  # no hosts: every host


@pytest.mark.parametrize("body,needle", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_sections_are_load_errors(body, needle):
    with pytest.raises(PolicyError) as e:
        parse_policy(BASE + "limits:\n" + body, source="p.yaml")
    text = str(e.value)
    assert needle in text and "p.yaml" in text and "limits" in text, text
