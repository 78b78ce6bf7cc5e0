"""Helpers of the fleet tests: one real PostgreSQL as the store, three gateways sharing it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gwharness import RUN, Gateway, Upstream, policy_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "postgres"))
from pgharness import _as_postgres, _bin  # noqa: E402

STORE_ROLE, STORE_PW = "gwfleet", "Fleet-store-pw-5d1"
REVIEWER, REVIEWER_PW = "alice", "Reviewer-pw-8c2"
CARD = "4111 1111 1111 1111"
RULES = [
    {"name": "admin-writes", "reason": "writes to admin endpoints need a human",
     "methods": ["POST", "DELETE"], "path": "/admin/*", "timeout": 30},
    {"name": "card-data", "reason": "card data leaving", "entities": ["CREDIT_CARD"],
     "path": "/pay/*", "timeout": 30},
]
NAMES = ("gw-a", "gw-b", "gw-c")
HOOK_HOST = "hooks.test.example"  # the review webhook: pinned to loopback, not on the allowlist
HOOK_PATH = "/services/T0/B0/hook-secret-token"


class Fleet:
    def __init__(self, server, upstream, gateways, url, hook):
        self.server, self.upstream, self.url, self.hook = server, upstream, url, hook
        self.gw = dict(zip(NAMES, gateways, strict=True))
        self.pool = concurrent.futures.ThreadPoolExecutor(8)

    def send(self, name: str, method: str, path: str, session: str = "s-1", **kw):
        gw = self.gw[name]

        def go():
            r = httpx.request(method, f"http://127.0.0.1:{self.upstream.port}{path}",
                              proxy=gw.proxy, timeout=60,
                              headers={"X-Agent-Session": session}, **kw)
            return r, time.monotonic()
        return self.pool.submit(go)

    def cli(self, *args: str, role: str = REVIEWER, pw: str = REVIEWER_PW):
        env = {**os.environ, "PGPASSWORD": pw}
        return subprocess.run([str(RUN), "approvals", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    def cli_any(self, *args: str, pw: str = REVIEWER_PW):
        """Another run_gateway.sh command (verify, audit) with the reviewer's password."""
        return subprocess.run([str(RUN), *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PGPASSWORD": pw})

    def state_url(self, role: str = REVIEWER) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.server.port}/gwstate"

    def sql(self, q: str) -> str:
        return self.server.psql(q, db="gwstate")

    def row(self, flow_id: str) -> dict:
        out = self.sql(f"SELECT row_to_json(h) FROM gateway_holds h WHERE id = '{flow_id}'")
        return json.loads(out) if out else {}

    def wait_held(self, path: str, instance: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.sql("SELECT coalesce(json_agg(h), '[]') FROM gateway_holds h "
                           f"WHERE path = '{path}' AND state = 'pending'")
            rows = [r for r in json.loads(out) if r["instance"] == instance]
            if rows:
                return rows[-1]
            time.sleep(0.05)
        raise AssertionError(f"{path} not held on {instance}:\n{self.gw[instance].log_text()[-3000:]}")

    def stop_store(self):
        _as_postgres(_bin("pg_ctl"), "-D", str(self.server.dir / "data"), "-m", "fast", "-w", "stop")

    def start_store(self):
        d = self.server.dir
        _as_postgres(_bin("pg_ctl"), "-D", str(d / "data"), "-l", str(d / "server.log"), "-w",
                     "-t", "60", "-o", f"-k {d} -p {self.server.port} -h 127.0.0.1", "start")


def audit_for(gw, path: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [a for a in gw.audit() if a.get("path") == path]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {path}")


def reached(upstream, path: str) -> int:
    return sum(1 for r in upstream.requests if r["path"].split("?")[0] == path)


@pytest.fixture(scope="module")
def fleet(pg_server, tmp_path_factory, confdir):
    srv = pg_server
    srv.psql(f"CREATE ROLE {STORE_ROLE} LOGIN PASSWORD '{STORE_PW}';"
             f"CREATE ROLE {REVIEWER} LOGIN PASSWORD '{REVIEWER_PW}'", db="postgres")
    srv.psql(f"CREATE DATABASE gwstate OWNER {STORE_ROLE}", db="postgres")
    up = Upstream("fleet")
    hook = Upstream("hook")
    work = tmp_path_factory.mktemp("fleet")
    # the store's port is (wrongly) allowed: the gateway must refuse it anyway
    policy = policy_yaml([{"cidr": "127.0.0.1/32", "ports": [up.port, srv.port]}],
                         resolve={HOOK_HOST: "127.0.0.1"}, approve=RULES,
                         review={"webhook_env": "GW_REVIEW_HOOK"})
    hook_url = f"http://{HOOK_HOST}:{hook.port}{HOOK_PATH}"
    url = f"postgresql://{STORE_ROLE}@127.0.0.1:{srv.port}/gwstate"
    gws = []
    try:
        for name in NAMES:
            d = work / name
            d.mkdir()
            gws.append(Gateway(d, policy, confdir=confdir, wait=False, audit_log=False,
                               env={"PGPASSWORD": STORE_PW, "GW_REVIEW_HOOK": hook_url},
                               extra_args=["--set", f"gateway_state={url}",
                                           "--set", f"gateway_instance={name}",
                                           "--set", f"gateway_recordings={d / 'recordings'}"]))
            gw = gws[-1]  # the audit log in the recordings directory, where verify DIR finds it
            gw.audit_path = gw.workdir / "recordings" / "audit.jsonl"
            if len(gws) == 1:  # the first one writes mitmproxy's CA into the shared confdir
                gw.wait_for("gateway ready", 180)
        for gw in gws[1:]:
            gw.wait_for("gateway ready", 180)
        for gw in gws:
            gw.wait_for("connected (instance", 30)
        srv.psql(f"GRANT SELECT, UPDATE ON gateway_holds TO {REVIEWER};"
                 f"GRANT SELECT ON gateway_instances, gateway_audit_heads TO {REVIEWER}",
                 db="gwstate")
        yield Fleet(srv, up, gws, url, hook)
    finally:
        for gw in gws:
            gw.stop()
        up.close()
        hook.close()
