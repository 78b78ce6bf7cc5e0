"""Unit tests of the pure PostgreSQL modules: wire codec, classification, masking, login."""

from __future__ import annotations

import pytest
from egress_gateway.detection.engine import Finding, TextResult
from egress_gateway.postgres import agent, auth, classify, mask, track, wire


def fake_redact(texts):
    """Masks 'SECRET' as <X>; 'BLOCK' is a blocking entity."""
    out = []
    for t in texts:
        i = t.find("SECRET")
        if i >= 0:
            out.append(TextResult(t[:i] + "<X>" + t[i + 6:], [Finding("X", i, i + 6, 1.0)],
                                  {"X": 1}))
        elif "BLOCK" in t:
            j = t.find("BLOCK")
            out.append(TextResult(t, [Finding("B", j, j + 5, 1.0)], {"B": 1}, {"B"}))
        else:
            out.append(TextResult(t))
    return out


def test_framer_reassembles_across_chunks():
    f = wire.Framer(startup=False)
    raw = wire.build(b"Q", b"SELECT 1\x00") + wire.build(b"S")
    for i in range(len(raw)):
        f.feed(raw[i:i + 1])
    msgs = []
    while (m := f.next()) is not None:
        msgs.append(m)
    assert [m.type for m in msgs] == [b"Q", b"S"] and msgs[0].body == b"SELECT 1\x00"


@pytest.mark.parametrize("bad", [b"D\x00\x00\x00\x02", b"D\x7f\xff\xff\xff"])
def test_framer_refuses_impossible_lengths(bad):
    f = wire.Framer(startup=False)
    f.feed(bad)
    with pytest.raises(wire.ProtocolError):
        f.next()


def test_data_row_round_trip_keeps_nulls():
    body = wire.data_row([b"1", None, b"x"])[5:]
    assert wire.parse_data_row(body) == [b"1", None, b"x"]
    with pytest.raises(wire.ProtocolError):
        wire.parse_data_row(body + b"junk")


def _cols(*specs):
    return [wire.Column(n, 0, 0, oid, -1, -1, fmt) for n, oid, fmt in specs]


def test_mask_rows_rewrites_values_with_valid_lengths():
    cols = _cols(("id", 23, 0), ("note", 25, 0))
    rows = [wire.data_row([b"1", b"a SECRET b"])[5:], wire.data_row([b"2", None])[5:]]
    out = mask.mask_rows(cols, rows, fake_redact)
    assert [wire.parse_data_row(m[5:]) for m in out.messages] == [[b"1", b"a <X> b"], [b"2", None]]
    assert out.counts == {"X": 1} and out.rows == 2


def test_binary_non_text_columns_are_refused():
    with pytest.raises(mask.Unscannable):
        mask.check_columns(_cols(("blob", 17, 1)))
    mask.check_columns(_cols(("name", 25, 1), ("n", 23, 1)))


def test_finding_in_the_context_prefix_masks_the_whole_value():
    cols = _cols(("SECRET", 25, 0))
    out = mask.mask_rows(cols, [wire.data_row([b"harmless"])[5:]], fake_redact)
    assert wire.parse_data_row(out.messages[0][5:]) == [mask.WHOLE.encode()]


def test_copy_text_fields():
    out = mask.mask_copy([b"1\tSECRET\t\\N\n"], False, fake_redact)
    assert out.messages == [wire.build(b"d", b"1\t<X>\t\\N\n")]


def test_error_fields_masked():
    body = wire.error_response("23505", "dup", detail="Key (e)=(SECRET) exists")[5:]
    out = mask.mask_fields(b"E", body, fake_redact)
    fields = dict(wire.parse_fields(out.messages[0][5:]))
    assert fields[b"D"] == b"Key (e)=(<X>) exists" and fields[b"C"] == b"23505"


@pytest.mark.parametrize("sql,kind,tables,nowhere,writes", [
    ("SELECT * FROM customers", "SELECT", ["customers"], False, False),
    ("DELETE FROM s.t", "DELETE", ["s.t"], True, True),
    ("UPDATE t SET a = 1 WHERE id = 2", "UPDATE", ["t"], False, True),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT", ["t"], False, True),
    ("EXPLAIN ANALYZE DELETE FROM t", "DELETE", ["t"], True, True),
    ("EXPLAIN SELECT 1", "EXPLAIN", [], False, False),
    ("COPY t FROM STDIN", "COPY", ["t"], False, True),
    ("COPY (SELECT * FROM t) TO STDOUT", "COPY", ["t"], False, False),
    ("DROP TABLE customers", "DROP", ["customers"], False, True),
    ("SET default_transaction_read_only = off", "SET", [], False, True),
    ("SET search_path = public", "SET", [], False, False),
    ("SELECT * FROM t FOR UPDATE", "SELECT", ["t"], False, True),
    ("CALL p()", "CALL", [], False, True),
])
def test_classify(sql, kind, tables, nowhere, writes):
    (st,) = classify.classify(sql)
    assert (st.type, st.tables, st.without_where, st.writes) == (kind, tables, nowhere, writes)


def test_classify_multi_and_normalize():
    sts = classify.classify("SELECT 'jane@x.com', 42; DELETE FROM t WHERE a = $1 AND b = 'x'")
    assert [s.type for s in sts] == ["SELECT", "DELETE"]
    assert sts[0].text == "SELECT $1, $2"
    assert sts[1].text == "DELETE FROM t WHERE a = $1 AND b = $2"
    with pytest.raises(ValueError):
        classify.classify("SELEC 1")


def test_scan_query_rewrites_literals_comments_and_long_numbers():
    sql = "INSERT INTO t VALUES ('a SECRET', $$SECRET$$, 123456789) -- SECRET"
    out = agent.scan_query(sql, lambda ts: fake_redact([t.replace("123456789", "SECRET")
                                                        for t in ts]))
    assert out.messages[0] == "INSERT INTO t VALUES ('a <X>', $$<X>$$, '<X>') -- <X>"


def test_scan_bind_refuses_binary_untyped_parameters():
    b = wire.Bind(b"", b"", [1], [b"\x00\x01"], [])
    with pytest.raises(mask.Unscannable):
        agent.scan_bind(b, [0], fake_redact)
    ok = wire.Bind(b"", b"", [0], [b"SECRET"], [])
    out = agent.scan_bind(ok, [], fake_redact)
    assert wire.parse_bind(out.messages[0][5:]).params == [b"<X>"]


def test_copy_in_reassembles_lines():
    c = agent.CopyIn("text")
    assert c.feed(b"1\tab") == []
    assert c.feed(b"c\n2\tx\n3") == [b"1\tabc\n", b"2\tx\n"]
    assert c.finish() == [b"3"]


def test_md5_password_is_postgres_format():
    # md5(md5(password || user) || salt), as libpq computes it
    assert auth.md5_password("u", "p", b"salt") == b"md5" + \
        __import__("hashlib").md5(__import__("hashlib").md5(b"pu").hexdigest().encode()
                                  + b"salt").hexdigest().encode()


def test_login_refuses_cleartext_without_tls_and_unknown_methods():
    with pytest.raises(auth.AuthError):
        auth.UpstreamLogin("u", "p", tls=False).step(b"\x00\x00\x00\x03")
    with pytest.raises(auth.AuthError):
        auth.UpstreamLogin("u", "p", tls=True).step(b"\x00\x00\x00\x07")
    sasl = b"\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00\x00"
    with pytest.raises(auth.AuthError, match="channel binding"):
        auth.UpstreamLogin("u", "p", tls=True).step(sasl)


def test_tracker_finishes_unrun_statements_of_a_cycle():
    t = track.Tracker()
    a, b = classify.classify("SELECT 1; SELECT 2")
    t.start(a, "simple")
    t.start(b, "simple")
    t.cycle += 1
    assert t.error("42P01").statement is a
    left = t.ready()
    assert [r.statement for r in left] == [b] and left[0].outcome == "not_run"
