"""Shapes that cannot carry a pattern (used when the gateway analyses nothing)."""

from __future__ import annotations

import pytest
from egress_gateway.detection import shapes

PLAIN = [
    # (case, value, plain)
    ("a word", "messages", True),
    ("words and separators", "get_user-by.id~x", True),
    ("camel case", "getUserById", True),
    ("a version", "v1", True),
    ("a short number", "404", True),
    ("an e-mail", "jane@example.com", False),
    ("a phone number", "4155552671", False),
    ("four digits", "ci-run-1234", False),
    ("an IPv4 address", "10.0.0.1", False),
    ("an AWS key id", "AKIAIOSFODNN7EXAMPLE", False),
    ("a GitHub token", "ghp_" + "Ab1" * 12, False),
    ("mixed case run", "AbCdEfGhIjKl", False),
    ("a long word", "a" * 17, False),
    ("too long", "-".join(["word"] * 14), False),
    ("base64", "dGhpcyBpcyBzZWNyZXQ=", False),
    ("a space", "two words", False),
    ("empty", "", False),
]


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in PLAIN], ids=[c[0] for c in PLAIN])
def test_plain(value, expected):
    assert shapes.plain(value) is expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1/messages", None),
    ("/leak/jane%40example.com/tail", "/leak/withheld/tail"),
    ("/a//b/", None),
    ("/users/4155552671/AKIAIOSFODNN7EXAMPLE", "/users/withheld/withheld"),
])
def test_plain_path(path, expected):
    assert shapes.plain_path(path) == expected


@pytest.mark.parametrize(("host", "expected"), [
    ("api.example.com", None),
    ("akiaiosfodnn7examplq.evil.example", "withheld.evil.example"),
    ("x.536-90-4399.example", "withheld"),  # the kept labels would carry it
    ("4155552671.com", "withheld"),
    ("localhost", None),
])
def test_plain_host(host, expected):
    assert shapes.plain_host(host) == expected


def test_ids_and_reasons():
    assert shapes.plain_id("3f2a9c1e-0b7d-4e8a-9c2f-1a2b3c4d5e6f")
    assert not shapes.plain_id("ghp_" + "Ab1" * 12)
    reason = "akiaiosfodnn7examplq.evil.example is not on the egress allowlist (api.example.com)"
    assert shapes.scrub_hosts(reason) == (
        "withheld.evil.example is not on the egress allowlist (api.example.com)")
    assert shapes.scrub_hosts("port 8443 is not allowed for 10.0.0.1") == (
        "port 8443 is not allowed for 10.0.0.1")
