"""Latency added per SELECT of 1,000 rows (masked) against a direct connection, and memory.

Skipped unless GATEWAY_PG_BENCH=1 (it prints figures, it asserts nothing about speed):
    GATEWAY_PG_BENCH=1 ./run_gateway.sh test tests/postgres/test_pg_bench.py -s -q
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg
import pytest
from pgharness import PASSWORDS

pytestmark = pytest.mark.skipif(os.environ.get("GATEWAY_PG_BENCH") != "1",
                                reason="benchmark: set GATEWAY_PG_BENCH=1")


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) // 1024
    return out


def _gateway_pid(gw) -> int:
    # run_gateway.sh execs mitmdump: the process itself
    return gw.proc.pid


def _time(dsn: str, sql: str, n: int) -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql).fetchall()  # connection warm
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            rows = c.execute(sql).fetchall()
            out.append((time.perf_counter() - t0) * 1000)
            assert len(rows) == 1000
    return out


def test_latency_and_memory(pg_gateway):
    srv = pg_gateway.server
    direct = (f"postgresql://agent_ro:{PASSWORDS['agent_ro']}@127.0.0.1:{srv.port}/crm"
              f"?sslmode=verify-full&sslrootcert={srv.ca}")
    srv.psql("DROP TABLE IF EXISTS bench; CREATE TABLE bench AS SELECT i AS id, "
             "'Customer ' || i AS name, 'user' || i || '@example.com' AS email, "
             "'+1 415-555-' || lpad((i % 10000)::text, 4, '0') AS phone, "
             "'note ' || md5(i::text) AS note FROM generate_series(1, 1000) i; "
             "GRANT SELECT ON bench TO agent_ro")
    pid = _gateway_pid(pg_gateway.gw)
    before = _status(pid)
    sql = "SELECT * FROM bench ORDER BY id"
    d = _time(direct, sql, 10)
    g_cold = _time(pg_gateway.dsn(), sql + " LIMIT 1000", 1)  # new texts: nothing cached
    g = _time(pg_gateway.dsn(), sql, 10)
    after = _status(pid)
    # A large result streamed (single-row mode: the server sends every row at once).
    srv.psql("DROP TABLE IF EXISTS bench_big; CREATE TABLE bench_big AS SELECT i AS id, "
             "'user' || i || '@example.com' AS email, repeat('x', 200) AS pad "
             "FROM generate_series(1, 30000) i; GRANT SELECT ON bench_big TO agent_ro")
    t0 = time.perf_counter()
    n = 0
    with psycopg.connect(pg_gateway.dsn(), autocommit=True) as c:
        for row in c.cursor().stream("SELECT * FROM bench_big"):
            n += 1
            assert row[1] == "<EMAIL_ADDRESS>"
    big_s = time.perf_counter() - t0
    big = _status(pid)
    assert n == 30000
    print(f"\n30,000 rows x 230 bytes streamed through the gateway: {big_s:.1f} s; "
          f"gateway RSS {big['VmRSS']} MB, peak {big['VmHWM']} MB (was {after['VmHWM']} MB)")
    print(f"\nSELECT of 1,000 rows x 5 columns (4 scanned), median of 10:"
          f"\n  direct (TLS verify-full): {statistics.median(d):.1f} ms"
          f"\n  gateway, first (cold):   {g_cold[0]:.1f} ms"
          f"\n  gateway, repeated:        {statistics.median(g):.1f} ms "
          f"(min {min(g):.1f}, max {max(g):.1f})"
          f"\n  gateway RSS before {before['VmRSS']} MB, after {after['VmRSS']} MB, "
          f"peak {after['VmHWM']} MB")
