"""A policy reload that changes a database entry's upstream: its port refuses, never relays."""

from __future__ import annotations

import psycopg
import pytest
import yaml
from gwharness import Gateway, free_port, policy_yaml
from pgharness import PASSWORDS, PLACEHOLDER, raw_login


def test_changed_entry_refuses_until_restart(pg_server, tmp_path, confdir):
    port = free_port()
    entry = {"name": "crm", "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{pg_server.port}",
             "database": "crm", "user": "agent_ro", "password_env": "GW_PG_AGENT_RO",
             "placeholder": PLACEHOLDER, "ca": pg_server.ca}
    allow = [{"cidr": "127.0.0.1/32", "ports": [pg_server.port]}]
    gw = Gateway(tmp_path, policy_yaml(allow, postgres=[entry]), confdir=confdir,
                 env={"GW_PG_AGENT_RO": PASSWORDS["agent_ro"]})
    try:
        dsn = f"postgresql://agent-r:{PLACEHOLDER}@127.0.0.1:{port}/crm?sslmode=disable"
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        doc = yaml.safe_load(gw.policy_path.read_text())
        doc["postgres"][0]["upstream"] = f"127.0.0.1:{free_port()}"
        mark = len(gw.log_text())
        gw.policy_path.write_text(yaml.safe_dump(doc))
        gw.wait_for("reloaded", timeout=15, start=mark)
        fields = raw_login(port, {"user": "agent-r", "database": "crm"}, PLACEHOLDER)
        assert fields["S"] == "FATAL" and fields["C"] == "08004"
        assert fields["M"].startswith("blocked: ")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn).close()
    finally:
        gw.stop()
