"""Guards of the review channel: protected options, mitmweb on loopback, dials to mitmweb refused."""

from __future__ import annotations

import pytest
from egress_gateway.approvals.webguard import check_web_host, is_review_channel, protected
from mitmproxy import exceptions


@pytest.mark.parametrize("name,is_protected", [
    ("scripts", True), ("ignore_hosts", True), ("allow_hosts", True), ("connection_strategy", True),
    ("gateway_policy", True), ("gateway_anything_new", True), ("web_password", True),
    ("listen_host", True), ("intercept", False), ("web_columns", False), ("server", False),
], ids=lambda v: str(v))
def test_protected_options(name, is_protected):
    assert protected(name) is is_protected


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False),
    ("10.0.0.5", False), ("example.com", False),
], ids=["v4-loopback", "localhost", "v6-loopback", "any", "lan", "name"])
def test_web_host_must_be_loopback(host, ok):
    if ok:
        check_web_host(host)
    else:
        with pytest.raises(exceptions.OptionsError, match="loopback only"):
            check_web_host(host)


@pytest.mark.parametrize("host,port,hit", [
    ("127.0.0.1", 8081, True), ("localhost.", 8081, True), ("127.1.2.3", 8081, True),
    ("0.0.0.0", 8081, True), ("::1", 8081, True), ("127.0.0.1", 8080, False),
    ("93.184.216.34", 8081, False), ("example.com", 8081, False),
], ids=["loopback", "localhost-dot", "loopback-range", "unspecified", "v6", "other-port",
        "remote", "name"])
def test_review_channel(host, port, hit):
    assert is_review_channel(host, port, "127.0.0.1", 8081) is hit
