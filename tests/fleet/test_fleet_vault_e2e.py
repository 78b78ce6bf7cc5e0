"""End to end: the restore vault in the fleet's store. A real PostgreSQL, three gateways
(mitmdump) with a restore rule sharing it, a loopback "model" that echoes what it is sent and
says what the client asks it to (``X-Say``). The store outage comes last."""

from __future__ import annotations

import re
import statistics
import time

import httpx
import pytest
from fleet_harness import STORE_PW, Fleet
from gwharness import Gateway, Upstream, policy_yaml

NAMES = ("va-a", "va-b", "va-c")
ROLE = "gwvault"
HOST = "api.vault.test"
KEY = "fleet-vault-key-0123456789abcdef"
EMAIL = "Jane.Roe@example.com"
TOKEN = re.compile(r"<EMAIL_ADDRESS_[a-z2-7]{8}>")


def model(record: dict):
    said = record["headers"].get("x-say", "")
    return 200, {"Content-Type": "text/plain"}, f"echo: {record['body']} | {said}".encode()


@pytest.fixture(scope="module")
def vfleet(pg_server, tmp_path_factory, confdir):
    srv = pg_server
    srv.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{STORE_PW}'", db="postgres")
    srv.psql(f"CREATE DATABASE gwvault OWNER {ROLE}", db="postgres")
    up = Upstream("fleet-vault", handler=model)
    work = tmp_path_factory.mktemp("fleet-vault")
    policy = policy_yaml([{"host": HOST, "ports": [up.port]}], resolve={HOST: "127.0.0.1"},
                         redact={"rules": [{"hosts": [HOST], "restore": True}]},
                         detection={"entities": ["EMAIL_ADDRESS"]})
    url = f"postgresql://{ROLE}@127.0.0.1:{srv.port}/gwvault"
    gws = []
    try:
        for name in NAMES:
            d = work / name
            d.mkdir()
            gws.append(Gateway(d, policy, confdir=confdir, wait=False,
                               env={"PGPASSWORD": STORE_PW, "GATEWAY_VAULT_KEY": KEY},
                               extra_args=["--set", f"gateway_state={url}",
                                           "--set", f"gateway_instance={name}"]))
            if len(gws) == 1:
                gws[0].wait_for("gateway ready", 180)
        for gw in gws:
            gw.wait_for("gateway ready", 180)
            gw.wait_for("connected (instance", 30)
        f = Fleet(srv, up, gws, url, None)
        f.gw = dict(zip(NAMES, gws, strict=True))
        yield f
    finally:
        for gw in gws:
            gw.stop()
        up.close()


def send(f: Fleet, name: str, session: str, body: str = "", say: str = "") -> httpx.Response:
    return httpx.post(f"http://{HOST}:{f.upstream.port}/v1/chat", content=body.encode(),
                      proxy=f.gw[name].proxy, timeout=60,
                      headers={"X-Agent-Session": session, "X-Say": say,
                               "Content-Type": "text/plain"})


def test_a_session_keeps_its_pseudonyms_across_the_three_instances(vfleet):
    f, up = vfleet, vfleet.upstream
    start = len(up.requests)
    r = send(f, "va-a", "vs-1", f"write to {EMAIL} today")
    assert r.status_code == 200, r.text
    sent = up.requests[start]["body"]
    assert EMAIL not in sent
    token = TOKEN.search(sent).group(0)
    assert r.text.startswith(f"echo: write to {EMAIL} today")  # restored on gw-a
    # the model names the token in answers through the other instances (their caches are cold)
    for name in ("va-b", "va-c"):
        r = send(f, name, "vs-1", "and then?", say=f"mail {token}")
        assert r.status_code == 200, r.text
        assert r.text.endswith(f"| mail {EMAIL}"), (name, r.text)
    # the same value from the same session gets the same token on another instance
    n = len(up.requests)
    assert send(f, "va-c", "vs-1", f"again {EMAIL}").status_code == 200
    assert TOKEN.search(up.requests[n]["body"]).group(0) == token
    # another session never gets it, on any instance
    for name in NAMES:
        r = send(f, name, "vs-other", "hi", say=f"mail {token}")
        assert r.status_code == 200, r.text
        assert EMAIL not in r.text and r.text.endswith(f"| mail {token}"), (name, r.text)


def test_the_store_holds_no_clear_value(vfleet):
    f = vfleet
    secret = "Zed.Quux@example.net"
    assert send(f, "va-b", "vs-2", f"cc {secret}").status_code == 200
    rows = f.server.psql("SELECT session || ' ' || token || ' ' || encode(value, 'hex') || ' ' || "
                 "encode(value, 'escape') FROM gateway_vault", db="gwvault").splitlines()
    assert len(rows) >= 2 and any(r.startswith("vs-2 <EMAIL_ADDRESS_") for r in rows), rows
    dump = "\n".join(rows).casefold()
    for value in (EMAIL, secret):
        assert value.casefold() not in dump
        assert value.encode().hex() not in dump
        assert value.split("@")[0].casefold() not in dump


def test_store_latency_of_the_vault(vfleet):
    """Prints the added round trips' latency (tokenize of a new value, lookup on a cold
    cache) against the real store; figures from a loaded machine."""
    import psycopg
    from egress_gateway.fleet.settings import parse_state_url
    from egress_gateway.pseudonyms.pgvault import StoreVault

    url = parse_state_url(vfleet.url)
    env = {"password": STORE_PW}

    def vault():
        return StoreVault(KEY.encode(), lambda: psycopg.connect(**url.conninfo(**env),
                                                                autocommit=True), url.display)
    a, b = vault(), vault()
    tok, look = [], []
    for i in range(200):
        t0 = time.perf_counter()
        token = a.tokenize("bench", "EMAIL_ADDRESS", f"user{i}@example.com")
        t1 = time.perf_counter()
        assert b.lookup("bench", token) == f"user{i}@example.com"
        t2 = time.perf_counter()
        tok.append((t1 - t0) * 1000)
        look.append((t2 - t1) * 1000)
    for name, xs in (("tokenize (new value)", tok), ("lookup (cold cache)", look)):
        xs = sorted(xs[10:])
        print(f"\nvault store {name}: median {statistics.median(xs):.2f} ms, "
              f"p99 {xs[int(len(xs) * 0.99) - 1]:.2f} ms (loaded machine)")
    t0 = time.perf_counter()
    assert b.lookup("bench", token) == "user199@example.com"
    print(f"vault cached lookup: {(time.perf_counter() - t0) * 1e6:.0f} us")
    a.close()
    b.close()


def test_request_latency_with_the_store(vfleet):
    """Prints per-request latency through a gateway of restore flows: a value already cached
    (no round trip), a new value (one write), a token first seen on another instance (one
    lookup); the differences are what the store adds. Figures from a loaded machine."""
    f = vfleet

    def timed(fn) -> float:
        t0 = time.perf_counter()
        r = fn()
        assert r.status_code == 200, r.text
        return (time.perf_counter() - t0) * 1000

    cached, new, cold = [], [], []
    assert send(f, "va-a", "lat", f"hot {EMAIL}").status_code == 200
    for i in range(60):
        cached.append(timed(lambda: send(f, "va-a", "lat", f"hot {EMAIL}")))
        value = f"lat{i}@example.com"
        new.append(timed(lambda v=value: send(f, "va-a", "lat", f"new {v}")))
        token = TOKEN.search(f.upstream.requests[-1]["body"]).group(0)
        cold.append(timed(lambda t=token: send(f, "va-b", "lat", "hi", say=t)))
        assert f.upstream.requests[-1]["headers"]["x-say"] == token
    for name, xs in (("cached value", cached), ("new value (store write)", new),
                     ("token from another instance (store read)", cold)):
        xs = sorted(xs[5:])
        print(f"\nrestore request, {name}: median {statistics.median(xs):.1f} ms, "
              f"p99 {xs[int(len(xs) * 0.99) - 1]:.1f} ms (loaded machine)")


def test_store_outage_refuses_restore_flows_then_recovers(vfleet):
    f, up = vfleet, vfleet.upstream
    f.stop_store()
    try:
        deadline = time.monotonic() + 20
        while True:  # each instance notices within about a second (its heartbeat)
            r = send(f, "va-a", "vs-1", f"write to {EMAIL}")
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for name in NAMES:
            for body, say in ((f"write to {EMAIL}", ""), ("no value here", "<EMAIL_ADDRESS_aaaaaaaa>")):
                n = len(up.requests)
                deadline = time.monotonic() + 20
                while True:
                    r = send(f, name, "vs-1", body, say=say)
                    if r.status_code == 503 or time.monotonic() > deadline:
                        break
                    n = len(up.requests)
                    time.sleep(0.2)
                assert r.status_code == 503, (name, r.status_code, r.text)
                assert r.headers["x-egress-gateway"] == "state_unavailable"
                assert r.json()["error"] == "state_unavailable"
                assert len(up.requests) == n  # refused before it left
    finally:
        f.start_store()
    for name in NAMES:
        deadline = time.monotonic() + 40
        while True:
            r = send(f, name, "vs-1", "back?", say="mail <EMAIL_ADDRESS_x>")
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 200, (name, r.text)
    n = len(up.requests)
    r = send(f, "va-b", "vs-3", "new Ann.Lee@example.org", say="")
    assert r.status_code == 200 and "Ann.Lee@example.org" in r.text
    assert "Ann.Lee@example.org" not in up.requests[n]["body"]
