"""End to end: SIGTERM to a gateway with PostgreSQL connections open and statements in flight.

A statement that finishes within the grace is answered; one still running when it ends is
audited (``shutdown: closed``) and its connection ended with FATAL 57P01 "gateway stopping", as
PostgreSQL does on its own shutdown; an idle connection is ended the same way.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time

import psycopg
from egress_gateway.recording import verify as verify_mod
from gwharness import Gateway, free_port, policy_yaml
from pgharness import PASSWORDS, PLACEHOLDER

GRACE = 2.0


def test_sigterm_with_postgres_connections(pg_server, tmp_path, confdir):
    port = free_port()
    entry = {"name": "crm", "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{pg_server.port}",
             "database": "crm", "user": "agent_ro", "password_env": "GW_PG_AGENT_RO",
             "placeholder": PLACEHOLDER, "tls": "verify-full", "ca": pg_server.ca}
    policy = policy_yaml([{"cidr": "127.0.0.1/32", "ports": [pg_server.port]}], postgres=[entry])
    gw = Gateway(tmp_path, policy, confdir=confdir, env={"GW_PG_AGENT_RO": PASSWORDS["agent_ro"]},
                 extra_args=["--set", f"gateway_recordings={tmp_path}",
                             "--set", f"gateway_shutdown_grace={GRACE:g}"])
    dsn = f"postgresql://pg-agent:{PLACEHOLDER}@127.0.0.1:{port}/crm?sslmode=disable&connect_timeout=10"
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        idle = psycopg.connect(dsn, autocommit=True)
        assert idle.execute("SELECT 1").fetchone() == (1,)
        quick = psycopg.connect(dsn, autocommit=True)
        slow = psycopg.connect(dsn, autocommit=True)

        def run(conn, sql):
            try:
                return conn.execute(sql).fetchall(), None
            except psycopg.Error as e:
                return None, (type(e).__name__, getattr(e, "sqlstate", None), str(e)[:200])

        drained = pool.submit(run, quick, "SELECT pg_sleep(1), 'drained'")
        stuck = pool.submit(run, slow, "SELECT pg_sleep(8), 'stuck'")
        time.sleep(0.3)  # both statements are running upstream
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        rows, err = drained.result(20)
        assert err is None and rows == [("", "drained")]  # finished within the grace
        rows, err = stuck.result(20)
        ended = time.monotonic() - t0
        # ended as PostgreSQL itself ends connections when it shuts down
        assert rows is None and err[:2] == ("AdminShutdown", "57P01"), err
        assert "gateway stopping" in err[2] and GRACE <= ended < GRACE + 2
        rows, err = run(idle, "SELECT 2")
        assert err is not None and err[1] == "57P01", err  # the idle connection was ended too
        gw.proc.wait(20)
        print(f"\nPostgreSQL: statement ended {ended:.2f} s, exit {time.monotonic() - t0:.2f} s "
              f"after SIGTERM (grace {GRACE:g} s; loaded machine)")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        gw.stop()
    assert gw.proc.returncode == 0
    log = gw.log_text()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    lines = gw.audit(everything=True)
    statements = [x for x in lines if x.get("kind") == "postgres" and x.get("statement") == "SELECT"]
    ok = [x for x in statements if x.get("decision") == "allowed"]
    cut = [x for x in statements if x.get("shutdown") == "closed"]
    assert len(ok) == 2 and len(cut) == 1  # SELECT 1 and the drained one; the stuck one
    assert cut[0]["code"] == "gateway_unavailable" and cut[0]["decision"] == "blocked"
    ended_conns = [x for x in lines if x.get("kind") == "postgres" and x.get("event") == "connection"
                   and x.get("code") == "gateway_unavailable"]
    assert len(ended_conns) == 3
    stop = lines[-1]
    assert stop["kind"] == "gateway" and stop["postgres_connections_ended"] == 3
    res = verify_mod.verify(tmp_path, gw.audit_path)
    assert res.ok, res.problems
