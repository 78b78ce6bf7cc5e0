"""End to end: connecting through the gateway (placeholder in, the gateway's own login out)."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from pgharness import PASSWORDS, PLACEHOLDER, raw_login


def _refusal(gw, entry="crm", password=PLACEHOLDER, **params) -> dict[str, str]:
    """The ErrorResponse fields of a refused login (S severity, C SQLSTATE, M message)."""
    params = {"user": "agent-1", "database": "crm", **params}
    fields = raw_login(gw.ports[entry], params, password)
    assert fields, "the login was not refused"
    return fields


def _error(dsn: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        psycopg.connect(dsn).close()
    return ei.value


def test_select_one_with_placeholder_scram_verify_full(pg_gateway):
    with psycopg.connect(pg_gateway.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # The gateway logged in as its own role, over TLS; the agent never learns the role.
        row = conn.execute("SELECT current_user, ssl FROM pg_stat_ssl "
                           "WHERE pid = pg_backend_pid()").fetchone()
        assert row == ("agent_ro", True)
        assert conn.info.parameter_status("session_authorization") == "agent-1"
    audit = [r for r in pg_gateway.gw.audit() if r.get("kind") == "postgres"]
    assert any(r.get("decision") == "allowed" and r.get("auth") == "scram-sha-256"
               for r in audit)


def test_md5_login_over_tls_require(pg_gateway):
    with psycopg.connect(pg_gateway.dsn("md5")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5user",)
    assert any(r.get("auth") == "md5" for r in pg_gateway.gw.audit())


def test_psql_client(pg_gateway):
    out = subprocess.run(["psql", pg_gateway.dsn(), "-XAtc", "SELECT 40 + 2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def _audited(gw, code: str) -> bool:
    return any(r.get("kind") == "postgres" and r.get("decision") == "blocked"
               and r.get("code") == code for r in gw.gw.audit())


def test_wrong_placeholder_is_refused(pg_gateway):
    f = _refusal(pg_gateway, password="not-the-placeholder")
    assert (f["S"], f["C"]) == ("FATAL", "28P01")
    assert f["M"].startswith("auth_failed: ")
    assert "auth_failed: password" in str(_error(pg_gateway.dsn(password="nope-nope")))
    assert _audited(pg_gateway, "auth_failed")


def test_real_password_is_not_accepted_from_the_agent(pg_gateway):
    assert _refusal(pg_gateway, password=PASSWORDS["agent_ro"])["C"] == "28P01"


def test_other_database_is_refused(pg_gateway):
    f = _refusal(pg_gateway, database="other")
    assert (f["S"], f["C"]) == ("FATAL", "3D000")
    assert f["M"].startswith("blocked: ")
    assert "blocked: this gateway port serves only" in str(_error(pg_gateway.dsn(db="other")))


@pytest.mark.parametrize("param", ["options", "replication"])
def test_refused_startup_parameters(pg_gateway, param):
    value = "-c statement_timeout=0" if param == "options" else "database"
    f = _refusal(pg_gateway, **{param: value})
    assert f["C"] == "42501"
    assert f["M"].startswith("blocked: ") and param in f["M"]


def test_upstream_off_the_allowlist_is_refused(pg_gateway):
    f = _refusal(pg_gateway, "offlist")
    assert f["C"] == "08004"
    assert f["M"].startswith("blocked: ") and "not allowed" in f["M"]
    assert _audited(pg_gateway, "blocked")
    # The egress addon audits the refused dial itself too.
    assert any(r.get("kind") == "connection" and r.get("decision") == "blocked"
               for r in pg_gateway.gw.audit())


def test_unverifiable_server_certificate_is_refused(pg_gateway):
    f = _refusal(pg_gateway, "badcert")
    assert f["C"] == "08001"
    assert f["M"].startswith("upstream_error: ") and "verify failed" in f["M"]


def test_tls_disable_against_hostssl_only_fails_clearly(pg_gateway):
    f = _refusal(pg_gateway, "plain")
    assert f["C"] == "28000"
    assert f["M"].startswith("upstream_auth_failed: ")


def test_the_placeholder_is_what_the_agent_holds(pg_gateway):
    # The agent's connection string never contains the real password.
    assert PASSWORDS["agent_ro"] not in pg_gateway.dsn()
    assert PLACEHOLDER in pg_gateway.dsn()
    assert PASSWORDS["agent_ro"] not in pg_gateway.gw.log_text()


def test_real_password_in_a_query_is_refused_and_http_guard_knows_it(pg_gateway):
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"SELECT '{PASSWORDS['agent_ro']}'")
    assert "credential_leak:" in str(ei.value)
    assert PASSWORDS["agent_ro"] not in pg_gateway.gw.log_text()
    assert PASSWORDS["agent_ro"] not in pg_gateway.gw.audit_path.read_text()


def test_http_leak_guard_refuses_the_database_password(pg_gateway):
    import httpx

    r = httpx.get(f"http://127.0.0.1:9/x?p={PASSWORDS['agent_ro']}", proxy=pg_gateway.gw.proxy,
                  timeout=30)
    assert r.status_code == 403 and r.headers["x-egress-gateway"] == "credential_leak"
