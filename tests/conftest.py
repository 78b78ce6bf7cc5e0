"""Shared fixtures: one mitmproxy confdir (CA) per test session, loopback upstreams."""

from __future__ import annotations

import pytest
from gwharness import Upstream


@pytest.fixture(scope="session")
def confdir(tmp_path_factory):
    """mitmproxy's confdir for all gateways of the session: the CA is generated once."""
    return tmp_path_factory.mktemp("mitmconf")


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("certs")


@pytest.fixture
def upstream():
    up = Upstream("plain")
    yield up
    up.close()


@pytest.fixture
def tls_upstream(cert_dir):
    up = Upstream("tls", tls=True, cert_dir=cert_dir)
    yield up
    up.close()
