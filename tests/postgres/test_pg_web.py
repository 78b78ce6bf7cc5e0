"""End to end under mitmweb: a held statement is approved or denied through the REST API."""

from __future__ import annotations

import concurrent.futures
import time

import psycopg
import pytest
from egress_gateway.cli.approvals import WebClient
from gwharness import RUN, Gateway, free_port, policy_yaml
from pgharness import PASSWORDS, PLACEHOLDER


@pytest.fixture(scope="module")
def web_pg(pg_server, tmp_path_factory, confdir):
    tmp = tmp_path_factory.mktemp("pg-web")
    port, web_port = free_port(), free_port()
    pwfile = tmp / "web-password"
    policy = policy_yaml(
        [{"cidr": "127.0.0.1/32", "ports": [pg_server.port]}],
        postgres=[{"name": "crm", "listen": f"127.0.0.1:{port}",
                   "upstream": f"127.0.0.1:{pg_server.port}", "database": "crm",
                   "user": "agent_ro", "password_env": "GW_PG_AGENT_RO",
                   "placeholder": PLACEHOLDER, "ca": pg_server.ca}],
        approve=[{"name": "bulk-write", "reason": "changes every row", "postgres": ["crm"],
                  "statements": ["DELETE", "UPDATE"], "without_where": True, "timeout": 30}],
    )
    (tmp / "policy.yaml").write_text(policy)
    env = {"GATEWAY_WEB_PASSWORD_FILE": str(pwfile), "GATEWAY_WEB_PASSWORD": "",
           "GW_PG_AGENT_RO": PASSWORDS["agent_ro"]}
    gw = Gateway(tmp, tmp / "policy.yaml", confdir=confdir, command=[str(RUN), "web"],
                 extra_args=["--set", f"web_port={web_port}"], env=env, timeout=120)
    gw.client = WebClient(f"http://127.0.0.1:{web_port}", pwfile.read_text().strip())
    gw.dsn = f"postgresql://agent-web:{PLACEHOLDER}@127.0.0.1:{port}/crm?sslmode=disable"
    yield gw
    gw.stop()


def _held(gw, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in gw.client._call("GET", "/flows"):
            if f.get("type") == "tcp" and f.get("intercepted") and "HELD" in (f.get("comment") or ""):
                return f
        time.sleep(0.05)
    raise AssertionError(f"no held statement:\n{gw.log_text()[-3000:]}")


def _delete(dsn: str):
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            return c.execute("DELETE FROM scratch").rowcount, None
        except psycopg.Error as e:
            return None, e
        finally:
            assert c.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("verdict", ["resume", "kill"])
def test_held_delete_is_approved_or_denied_in_mitmweb(web_pg, pg_server, verdict):
    pg_server.psql("DROP TABLE IF EXISTS scratch; CREATE TABLE scratch (id int);"
                   "INSERT INTO scratch VALUES (1), (2); GRANT ALL ON scratch TO agent_ro")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_delete, web_pg.dsn)
        held = _held(web_pg)
        assert "bulk-write" in held["comment"] and "changes every row" in held["comment"]
        web_pg.client._call("POST", f"/flows/{held['id']}/{verdict}")
        rows, err = fut.result(timeout=30)
    left = int(pg_server.psql("SELECT count(*) FROM scratch"))
    if verdict == "resume":
        assert err is None and rows == 2 and left == 0
    else:
        assert err is not None and err.sqlstate == "42501" and left == 2
        assert str(err).startswith("denied: approval rule 'bulk-write'")
