"""The recorder's option parsers."""

from __future__ import annotations

import pytest
from egress_gateway.recording import settings


@pytest.mark.parametrize("value,ok", [(0, True), (1, True), (10**9, True), (-1, False), (True, False)],
                         ids=["zero", "one", "big", "negative", "bool"])
def test_parse_max_bytes(value, ok):
    if ok:
        assert settings.parse_max_bytes(value) == value
    else:
        with pytest.raises(ValueError):
            settings.parse_max_bytes(value)


@pytest.mark.parametrize("name,env,expected", [
    ("K", {"K": "s3cret"}, b"s3cret"),
    ("K", {}, None),
    ("K", {"K": ""}, None),
    ("", {"K": "x"}, None),
    ("not a name", {}, ValueError),
], ids=["set", "unset", "empty", "no-option", "bad-name"])
def test_parse_hmac_env(name, env, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            settings.parse_hmac_env(name, env)
    else:
        assert settings.parse_hmac_env(name, env) == expected
