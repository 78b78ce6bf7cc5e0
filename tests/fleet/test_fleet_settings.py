"""gateway_state and gateway_instance parsing; the store's address as agents could dial it."""

from __future__ import annotations

import pytest
from egress_gateway.fleet.settings import instance_name, parse_state_url, store_addresses


@pytest.mark.parametrize("url,host,port,db,user", [
    pytest.param("postgresql://gw@127.0.0.1:5433/state", "127.0.0.1", 5433, "state", "gw", id="full"),
    pytest.param("postgres://db.example.com/state", "db.example.com", 5432, "state", None,
                 id="default-port-no-user"),
    pytest.param("postgresql://gw@[::1]:6000/s?sslmode=verify-full", "::1", 6000, "s", "gw",
                 id="ipv6-sslmode"),
])
def test_good_urls(url, host, port, db, user):
    s = parse_state_url(url)
    assert (s.host, s.port, s.dbname, s.user) == (host, port, db, user)
    assert "password" not in s.conninfo()


@pytest.mark.parametrize("url,problem", [
    pytest.param("postgresql://gw:secret@h/db", "must not contain a password", id="password"),
    pytest.param("postgresql://gw@h/db?password=x", "must not contain a password", id="password-param"),
    pytest.param("mysql://gw@h/db", "postgresql://", id="scheme"),
    pytest.param("postgresql://gw@h", "database name", id="no-db"),
    pytest.param("postgresql:///db", "needs a host", id="no-host"),
    pytest.param("postgresql://gw@h:99999/db", "bad port", id="bad-port"),
    pytest.param("postgresql://gw@h/db?options=-c%20x", "unsupported parameter", id="options"),
])
def test_bad_urls(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_state_url(url)


def test_password_never_in_the_display():
    with pytest.raises(ValueError) as e:
        parse_state_url("postgresql://gw:Hunter2-secret@h/db")
    assert "Hunter2-secret" not in str(e.value)


@pytest.mark.parametrize("value,port,want", [
    pytest.param("gw-a", 8080, "gw-a", id="given"),
    pytest.param("  pool.1:9000 ", 8080, "pool.1:9000", id="trimmed"),
])
def test_instance_names(value, port, want):
    assert instance_name(value, port) == want


def test_default_instance_is_host_and_port():
    assert instance_name("", 8123).endswith(":8123")


@pytest.mark.parametrize("bad", ["a b", "x" * 101, "-lead", "semi;colon"])
def test_bad_instance_names(bad):
    with pytest.raises(ValueError, match="gateway_instance"):
        instance_name(bad, 8080)


def test_store_addresses_include_the_resolved_ips():
    addrs = store_addresses(parse_state_url("postgresql://gw@localhost:5544/db"))
    assert ("localhost", 5544) in addrs and ("127.0.0.1", 5544) in addrs
