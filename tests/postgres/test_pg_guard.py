"""End to end: statements classified by PostgreSQL's parser; read_only; approvals (mitmdump)."""

from __future__ import annotations

import psycopg
import pytest


def _count(pg_gateway) -> int:
    return int(pg_gateway.server.psql("SELECT count(*) FROM customers"))


@pytest.fixture
def conn(pg_gateway):
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as c:
        yield c


def _statements(pg_gateway) -> list[dict]:
    return [r for r in pg_gateway.gw.audit() if r.get("event") == "statement"]


def test_delete_without_where_is_denied_unattended(pg_gateway, conn):
    before = _count(pg_gateway)
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("DELETE FROM customers")
    assert ei.value.sqlstate == "42501"
    assert str(ei.value).startswith("denied: approval rule 'bulk-write'")
    assert _count(pg_gateway) == before
    assert conn.execute("SELECT 1").fetchone() == (1,)
    line = [r for r in _statements(pg_gateway) if r.get("code") == "denied"][-1]
    assert line["statement"] == "DELETE" and line["tables"] == ["customers"]
    assert line["without_where"] is True and line["approval"]["outcome"] == "denied"


def test_simple_protocol_multi_statement_is_refused_whole(pg_gateway, conn):
    cur = psycopg.ClientCursor(conn)
    with pytest.raises(psycopg.Error) as ei:
        cur.execute("SELECT 1; UPDATE customers SET note = 'x'")
    assert ei.value.sqlstate == "42501"
    assert pg_gateway.server.psql("SELECT count(*) FROM customers WHERE note = 'x'") == "0"
    assert cur.execute("SELECT 2").fetchone() == (2,)


def test_delete_with_where_runs(conn):
    cur = conn.execute("DELETE FROM customers WHERE id = %s", (999,))
    assert cur.rowcount == 0


def test_drop_of_a_named_table_is_denied(pg_gateway, conn):
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("DROP TABLE customers")
    assert "drop-customers" in str(ei.value)
    assert _count(pg_gateway) == 3


def test_refusal_inside_a_transaction_keeps_its_status(pg_gateway):
    with psycopg.connect(pg_gateway.dsn()) as c:
        c.execute("SELECT 1")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(psycopg.Error):
            c.execute("DELETE FROM customers")
        # the server's transaction was never aborted: the gateway reports its real status
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (3,)
        c.rollback()


def test_unparseable_statement_is_refused(conn):
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("SELEC 1")
    assert ei.value.sqlstate == "0A000"
    assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("sql", [
    "INSERT INTO customers (id) VALUES (50)",
    "UPDATE customers SET note = 'x' WHERE id = 1",
    "DROP TABLE big",
    "WITH d AS (DELETE FROM big WHERE id = 1 RETURNING id) SELECT * FROM d",
    "SET default_transaction_read_only = off",
    "COPY big FROM STDIN",
    "DO $$ BEGIN DELETE FROM big; END $$",
])
def test_read_only_refuses_writes(pg_gateway, sql):
    with psycopg.connect(pg_gateway.dsn("crm_ro"), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        assert ei.value.sqlstate == "25006"
        assert str(ei.value).startswith("read_only: ")
        assert c.execute("SELECT count(*) FROM big").fetchone() == (1000,)


def test_read_only_allows_reads_and_the_server_enforces_it_too(pg_gateway):
    with psycopg.connect(pg_gateway.dsn("crm_ro"), autocommit=True) as c:
        assert c.execute("SELECT id FROM customers ORDER BY id").fetchall() == [(1,), (2,), (3,)]
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_audit_lines_carry_no_values(pg_gateway, conn):
    conn.execute("SELECT id FROM customers WHERE email = %s", ("jane.roe@example.com",)).fetchall()
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT id FROM customers WHERE email = 'john.smith@example.org'")
    cur.fetchall()
    lines = _statements(pg_gateway)
    texts = [r["text"] for r in lines]
    assert "SELECT id FROM customers WHERE email = $1" in texts
    raw = pg_gateway.gw.audit_path.read_text()
    assert "jane.roe@example.com" not in raw and "john.smith@example.org" not in raw
    sel = [r for r in lines if r["text"] == "SELECT id FROM customers WHERE email = $1"][-1]
    assert sel["decision"] == "allowed" and sel["database"] == "crm"
    assert sel["session"] == "agent-1" and "duration_ms" in sel
    # the agent's e-mail address was itself redacted before the lookup (request direction)
    assert sel["redactions"]["request"] == {"EMAIL_ADDRESS": 1} and sel["rows"] == 0
    conn.execute("SELECT id FROM customers WHERE id < %s", (3,)).fetchall()
    two = [r for r in _statements(pg_gateway) if r["text"].endswith("WHERE id < $1")][-1]
    assert two["rows"] == 2 and two["statement"] == "SELECT" and two["tables"] == ["customers"]


def test_refusal_inside_a_pipeline_keeps_the_connection_in_step(pg_gateway, conn):
    before = _count(pg_gateway)
    with pytest.raises(psycopg.Error) as ei:
        with conn.pipeline():
            first = conn.execute("SELECT 41 + 1")
            conn.execute("DELETE FROM customers")
            conn.execute("SELECT 2")
    assert ei.value.sqlstate == "42501"
    assert first.fetchone() == (42,)
    assert _count(pg_gateway) == before
    assert conn.execute("SELECT 3").fetchone() == (3,)
