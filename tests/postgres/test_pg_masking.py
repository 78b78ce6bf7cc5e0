"""End to end: what the server returns is masked before the agent sees it."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from pgharness import CUSTOMERS, PASSWORDS, RAW_VALUES

MASKED = {"name": "<PERSON>", "email": "<EMAIL_ADDRESS>", "phone": "<PHONE_NUMBER>",
          "ssn": "<US_SSN>", "card": "<CREDIT_CARD>"}


def _check_rows(rows) -> None:
    assert [r[0] for r in rows] == [c[0] for c in CUSTOMERS]  # ids and count intact
    for row, orig in zip(rows, CUSTOMERS, strict=True):
        assert list(row[1:6]) == list(MASKED.values())
        assert row[6] == orig[6]  # NULL stays NULL, a harmless note stays as it was


def _no_raw_values(text: str) -> None:
    for v in RAW_VALUES + list(PASSWORDS.values()):
        assert v not in text


@pytest.fixture
def conn(pg_gateway):
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as c:
        yield c


def test_select_star_extended_protocol(conn):
    _check_rows(conn.execute("SELECT * FROM customers ORDER BY id").fetchall())


def test_select_star_simple_protocol(conn):
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT * FROM customers ORDER BY id")
    _check_rows(cur.fetchall())


def test_multi_statement_simple_query(conn):
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT 1; SELECT * FROM customers ORDER BY id")
    assert cur.nextset()
    _check_rows(cur.fetchall())


def test_parameterised_query(conn):
    row = conn.execute("SELECT * FROM customers WHERE id = %s", (2,)).fetchone()
    assert row[0] == 2 and list(row[1:6]) == list(MASKED.values()) and row[6] == "prefers e-mail"


def test_server_side_cursor(conn):
    with conn.transaction(), conn.cursor(name="agent_cursor") as cur:
        cur.itersize = 1
        cur.execute("SELECT * FROM customers ORDER BY id")
        _check_rows(list(cur))


def test_binary_text_columns_are_masked(conn):
    cur = conn.cursor(binary=True)
    rows = cur.execute("SELECT id, name, email FROM customers ORDER BY id").fetchall()
    assert rows == [(c[0], "<PERSON>", "<EMAIL_ADDRESS>") for c in CUSTOMERS]


def test_binary_column_of_other_type_is_refused_and_connection_stays_usable(conn):
    cur = conn.cursor(binary=True)
    with pytest.raises(psycopg.Error) as ei:
        cur.execute("SELECT convert_to(email, 'UTF8') FROM customers").fetchall()
    assert ei.value.sqlstate == "0A000"
    assert str(ei.value).startswith("unsupported_content: ")
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_to_stdout(conn):
    with conn.cursor() as cur, cur.copy("COPY (SELECT * FROM customers ORDER BY id) TO STDOUT") as cp:
        data = b"".join(bytes(b) for b in cp).decode()
    lines = data.splitlines()
    assert len(lines) == len(CUSTOMERS)
    for line, orig in zip(lines, CUSTOMERS, strict=True):
        fields = line.split("\t")
        assert fields[0] == str(orig[0])
        assert fields[1:6] == list(MASKED.values())
        assert fields[6] == (orig[6] or "\\N")


def test_error_detail_is_masked(conn):
    with pytest.raises(psycopg.errors.UniqueViolation) as ei:
        # the duplicate comes from the table itself: the server's DETAIL quotes a stored value
        conn.execute("INSERT INTO customers (id, email) SELECT 99, email FROM customers "
                     "WHERE id = 1")
    detail = ei.value.diag.message_detail or ""
    assert "<EMAIL_ADDRESS>" in detail and "jane.roe@example.com" not in detail


def test_notice_is_masked(conn):
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("DO $$ BEGIN RAISE NOTICE 'call John Smith at +1 212-555-0148'; END $$")
    assert notices and "John Smith" not in notices[0] and "212-555-0148" not in notices[0]


def test_psql_select_star(pg_gateway):
    out = subprocess.run(["psql", pg_gateway.dsn(), "-XAtF", "|", "-c",
                          "SELECT * FROM customers ORDER BY id"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("|")[0] for line in lines] == ["1", "2", "3"]
    _no_raw_values(out.stdout)
    assert "<EMAIL_ADDRESS>" in out.stdout


def test_large_result_is_masked_in_batches(conn):
    rows = conn.execute("SELECT * FROM big ORDER BY id").fetchall()
    assert len(rows) == 1000
    assert rows[0][0] == 1 and rows[-1][0] == 1000
    assert all(r[2] == "<EMAIL_ADDRESS>" for r in rows)


def test_no_raw_value_in_logs_or_audit(pg_gateway, conn):
    conn.execute("SELECT * FROM customers").fetchall()
    _no_raw_values(pg_gateway.gw.log_text())
    _no_raw_values(pg_gateway.gw.audit_path.read_text())


def test_block_operator_refuses_the_result(pg_gateway):
    with psycopg.connect(pg_gateway.dsn("strict"), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT id, ssn FROM customers").fetchall()
        assert ei.value.sqlstate == "42501"
        assert str(ei.value).startswith("sensitive_data: ") and "US_SSN" in str(ei.value)
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_skip_and_mask_columns(pg_gateway):
    with psycopg.connect(pg_gateway.dsn("strict"), autocommit=True) as c:
        rows = c.execute("SELECT name, note, email FROM customers ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [c[1] for c in CUSTOMERS]  # skipped: as stored
    assert [r[1] for r in rows] == [None, "<REDACTED>", None]  # always masked; NULL kept
    assert {r[2] for r in rows} == {"<EMAIL_ADDRESS>"}


def test_notification_payload_is_masked(pg_gateway, conn):
    conn.execute("LISTEN agent_channel")
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as other:
        # the payload comes from the table (the agent's own literal would be redacted on the way in)
        other.execute("SELECT pg_notify('agent_channel', 'new customer ' || email) "
                      "FROM customers WHERE id = 1")
    got = next(conn.notifies(timeout=10, stop_after=1))
    assert got.payload == "new customer <EMAIL_ADDRESS>"


def test_cancel_request_reaches_the_server(pg_gateway, conn):
    import threading

    timer = threading.Timer(1.0, conn.cancel_safe)
    timer.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(20)")
    timer.join()
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_prepared_statement_executed_without_portal_describe(pg_gateway):
    """asyncpg's way: Parse + Describe(statement) once, then Bind + Execute with no Describe."""
    import socket
    import struct

    def msg(t: bytes, body: bytes = b"") -> bytes:
        return t + struct.pack("!i", len(body) + 4) + body

    def read_until_z(s) -> list[tuple[bytes, bytes]]:
        out, buf = [], b""
        while True:
            while len(buf) < 5 or len(buf) < 1 + struct.unpack("!i", buf[1:5])[0]:
                buf += s.recv(65536)
            n = struct.unpack("!i", buf[1:5])[0]
            out.append((buf[:1], buf[5:n + 1]))
            buf = buf[n + 1:]
            if out[-1][0] == b"Z":
                return out

    from pgharness import PLACEHOLDER

    with socket.create_connection(("127.0.0.1", pg_gateway.ports["crm"]), timeout=10) as s:
        params = b"user\0agent-raw\0database\0crm\0\0"
        body = struct.pack("!i", 196608) + params
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        read_until_z_auth = s.recv(64)
        assert read_until_z_auth[:1] == b"R"
        s.sendall(msg(b"p", PLACEHOLDER.encode() + b"\0"))
        read_until_z(s)
        q = b"SELECT id, email FROM customers ORDER BY id\0"
        s.sendall(msg(b"P", b"s1\0" + q + b"\0\0") + msg(b"D", b"Ss1\0") + msg(b"S"))
        kinds = [t for t, _ in read_until_z(s)]
        assert kinds == [b"1", b"t", b"T", b"Z"]
        bind = b"\0s1\0" + struct.pack("!hhh", 0, 0, 0)
        s.sendall(msg(b"B", bind) + msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S"))
        answer = read_until_z(s)
    rows = [b for t, b in answer if t == b"D"]
    assert len(rows) == 3
    raw = b"".join(rows)
    assert b"<EMAIL_ADDRESS>" in raw and b"jane.roe" not in raw
