"""End to end: what the agent sends is scanned too (literals, Bind parameters, COPY FROM)."""

from __future__ import annotations

import psycopg
import pytest


@pytest.fixture
def conn(pg_gateway):
    pg_gateway.server.psql("TRUNCATE inbox")
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as c:
        yield c


def _stored(pg_gateway) -> list[str]:
    out = pg_gateway.server.psql("SELECT coalesce(note, 'NULL') FROM inbox ORDER BY id")
    return out.splitlines()


def test_query_literal_is_redacted_before_it_reaches_the_database(pg_gateway, conn):
    cur = psycopg.ClientCursor(conn)
    cur.execute("INSERT INTO inbox VALUES (1, 'write to jane.roe@example.com today')")
    assert _stored(pg_gateway) == ["write to <EMAIL_ADDRESS> today"]
    line = [r for r in pg_gateway.gw.audit() if r.get("statement") == "INSERT"][-1]
    assert line["redactions"]["request"] == {"EMAIL_ADDRESS": 1}
    assert "jane.roe" not in pg_gateway.gw.audit_path.read_text()


def test_bind_parameters_are_redacted(pg_gateway, conn):
    conn.execute("INSERT INTO inbox VALUES (%s, %s)", (2, "card 4111 1111 1111 1111"))
    assert _stored(pg_gateway) == ["card <CREDIT_CARD>"]


def test_copy_from_stdin_is_redacted(pg_gateway, conn):
    with conn.cursor() as cur, cur.copy("COPY inbox FROM STDIN") as cp:
        cp.write("3\tcall +1 212-555-0148\n4\tmail john.smith@exa")
        cp.write("mple.org please\n5\t\\N\n")
    assert _stored(pg_gateway) == ["call <PHONE_NUMBER>", "mail <EMAIL_ADDRESS> please", "NULL"]


def test_block_operator_refuses_the_statement(pg_gateway):
    pg_gateway.server.psql("TRUNCATE inbox")
    with psycopg.connect(pg_gateway.dsn("strict"), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("INSERT INTO inbox VALUES (%s, %s)", (6, "ssn 536-22-8451"))
        assert ei.value.sqlstate == "42501"
        assert str(ei.value).startswith("sensitive_data: ")
        assert c.execute("SELECT count(*) FROM inbox").fetchone() == (0,)
