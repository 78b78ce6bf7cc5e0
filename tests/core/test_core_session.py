"""Session identity: cleaning session ids, the proxy-auth user."""

from __future__ import annotations

import base64

import pytest
from egress_gateway import session


def basic(user: str, pw: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.mark.parametrize("raw,expected", [
    ("agent-7", "agent-7"),
    ("  run.42  ", "run.42"),
    ("a/b\\c", "a_b_c"),
    ("../etc", "_._etc"),
    (".hidden", "_hidden"),
    ("::1", "::1"),
    ("x" * 100, "x" * 64),
    ("", None),
    ("///", None),
    (None, None),
], ids=["plain", "trimmed", "slashes", "dotdot", "leading-dot", "ipv6", "long", "empty",
        "only-unsafe", "none"])
def test_clean_session_id(raw, expected):
    assert session.clean_session_id(raw) == expected


@pytest.mark.parametrize("value,expected", [
    (basic("sess1", "pw"), "sess1"),
    (basic("sess1", ""), "sess1"),
    (basic("user", "p:a:ss"), "user"),
    ("basic " + base64.b64encode(b"lower:x").decode(), "lower"),
    ("Bearer abc", None),
    ("Basic !!!notbase64", None),
    (basic("", "pw"), None),
    ("", None),
    (None, None),
], ids=["basic", "no-password", "colon-in-password", "scheme-case", "bearer", "bad-b64",
        "empty-user", "empty", "none"])
def test_proxy_auth_user(value, expected):
    assert session.proxy_auth_user(value) == expected
