"""End to end: `run_gateway.sh web` (mitmweb), real clients, decisions through mitmweb's REST API.

One gateway for the module (mitmweb + Presidio start-up is the slow part); each test uses its own
paths so that the upstream's record shows exactly what reached it.
"""

from __future__ import annotations

import json
import stat
import time

import httpx
import pytest
from approvals_web import CARD, PIN, REVIEW, assert_denied, audit_for, cli, reached, send, wait_held
from egress_gateway.cli.approvals import ApiError, WebClient
from gwharness import RUN, Gateway, free_port, policy_yaml


def test_password_file_is_private_and_required(web):
    assert stat.S_IMODE(web.pwfile.stat().st_mode) == 0o600
    cmdline = open(f"/proc/{web.proc.pid}/cmdline", "rb").read().decode()  # run_gateway.sh execs mitmweb
    assert "web_password=$argon2id$" in cmdline and web.client.password not in cmdline
    with pytest.raises(ApiError, match="HTTP 403"):
        WebClient(f"http://127.0.0.1:{web.web_port}", "wrong-password").held()


def test_held_then_approved_through_rest(web, approvals_upstream, pool):
    fut = send(pool, web, "POST", "/admin/users", json={"name": "bob"})
    held = wait_held(web, "/admin/users")
    assert held["rule"] == "admin-writes" and held["reason"] == "writes to admin endpoints need a human"
    time.sleep(0.3)
    assert not fut.done() and reached(approvals_upstream, "/admin/users") == 0  # held before it left
    # mitmweb shows it intercepted, with the reason in the comment
    flows = {f["id"]: f for f in web.client._call("GET", "/flows")}
    shown = flows[held["id"]]
    assert shown["intercepted"] is True and "writes to admin endpoints need a human" in shown["comment"]
    listed = cli(web, "list")
    assert listed.returncode == 0 and held["id"] in listed.stdout and "admin-writes" in listed.stdout
    t0 = time.monotonic()
    web.client.resume(held["id"])
    r, t1 = fut.result(10)
    assert r.status_code == 200 and r.json()["path"] == "/admin/users"
    print(f"\napprove (REST resume) -> upstream response at the client: {(t1 - t0) * 1000:.0f} ms")
    assert reached(approvals_upstream, "/admin/users") == 1
    a = audit_for(web, "/admin/users")["approval"]
    assert a["rule"] == "admin-writes" and a["outcome"] == "approved"
    assert a["decided_by"] == "reviewer:mitmweb" and a["wait_seconds"] > 0.3


def test_denied_through_rest_kill_within_a_second(web, approvals_upstream, pool):
    fut = send(pool, web, "DELETE", "/admin/db")
    held = wait_held(web, "/admin/db")
    t0 = time.monotonic()
    web.client.kill(held["id"])
    r, t1 = fut.result(5)
    latency = t1 - t0
    print(f"\ndeny (REST kill) -> 403 at the client: {latency * 1000:.0f} ms")
    assert latency < 1.0
    doc = assert_denied(r, "admin-writes")
    assert "writes to admin endpoints need a human" in doc["reason"]
    assert reached(approvals_upstream, "/admin/db") == 0
    line = audit_for(web, "/admin/db")
    assert line["status"] == 403 and line["code"] == "denied"
    assert (line["approval"]["outcome"], line["approval"]["decided_by"]) == ("denied", "reviewer:mitmweb")


def test_cli_deny_and_approve(web, approvals_upstream, pool):
    f1 = send(pool, web, "POST", "/admin/cli-deny", content=b"x")
    h1 = wait_held(web, "/admin/cli-deny")
    res = cli(web, "deny", h1["id"][:8])  # a unique prefix is enough
    assert res.returncode == 0 and h1["id"] in res.stdout, res.stderr
    assert_denied(f1.result(10)[0], "admin-writes")
    f2 = send(pool, web, "POST", "/admin/cli-approve", content=b"x")
    h2 = wait_held(web, "/admin/cli-approve")
    assert cli(web, "approve", h2["id"]).returncode == 0
    assert f2.result(10)[0].status_code == 200
    assert reached(approvals_upstream, "/admin/cli-deny") == 0
    assert reached(approvals_upstream, "/admin/cli-approve") == 1
    assert audit_for(web, "/admin/cli-approve")["approval"]["decided_by"] == "reviewer:command"
    bad = cli(web, "approve", "no-such-id")
    assert bad.returncode == 1 and "no request is held" in bad.stderr


def test_timeouts_deny_and_allow(web, approvals_upstream, pool):
    t0 = time.monotonic()
    deny = send(pool, web, "GET", "/slow-deny/x")
    allow = send(pool, web, "GET", "/slow-allow/x")
    r_deny, t_deny = deny.result(10)
    r_allow, t_allow = allow.result(10)
    assert "no reviewer decided within 1s" in assert_denied(r_deny, "slow-deny")["reason"]
    assert r_allow.status_code == 200
    assert 1.0 <= t_deny - t0 < 3 and 1.0 <= t_allow - t0 < 3
    assert reached(approvals_upstream, "/slow-deny/x") == 0
    assert reached(approvals_upstream, "/slow-allow/x") == 1
    assert audit_for(web, "/slow-deny/x")["approval"]["decided_by"] == "timeout"


def test_approve_always_lets_the_next_identical_request_through(web, approvals_upstream, pool):
    first = send(pool, web, "POST", "/always/x", content=b"same")
    held = wait_held(web, "/always/x")
    assert cli(web, "approve", "--always", held["id"]).returncode == 0
    assert first.result(10)[0].status_code == 200
    t0 = time.monotonic()
    r, t1 = send(pool, web, "POST", "/always/x", content=b"same").result(10)
    assert r.status_code == 200 and t1 - t0 < 0.5
    assert web.client.held() == []
    assert reached(approvals_upstream, "/always/x") == 2
    assert audit_for(web, "/always/x")["approval"]["decided_by"] == "always"


def test_detected_card_is_held_with_counts_and_placeholders(web, approvals_upstream, pool):
    fut = send(pool, web, "POST", "/pay/1", json={"note": f"charge card {CARD} please"})
    held = wait_held(web, "/pay/1", timeout=30)
    assert held["rule"] == "card-data" and held["detected"].get("CREDIT_CARD") == 1
    body = web.client._call("GET", f"/flows/{held['id']}/request/content.data")
    body = body if isinstance(body, str) else json.dumps(body)
    assert CARD not in body and "4111" not in body  # the reviewer sees the redacted request
    web.client.kill(held["id"])
    assert_denied(fut.result(10)[0], "card-data")
    assert reached(approvals_upstream, "/pay/1") == 0


def test_security_options_cannot_change_at_run_time(web):
    before = web.client._call("GET", "/options")["scripts"]["value"]
    with pytest.raises(ApiError, match="HTTP 400.*'scripts' is protected"):
        web.client.put_options(scripts=["/tmp/evil.py"])
    for name, value in (("ignore_hosts", [".*"]), ("connection_strategy", "eager"),
                        ("gateway_policy", "/tmp/other.yaml"), ("web_host", "0.0.0.0")):
        with pytest.raises(ApiError, match="protected"):
            web.client.put_options(**{name: value})
    with pytest.raises(ApiError, match="protected"):
        web.client.command("set", "scripts=/tmp/evil.py")
    with pytest.raises(ApiError, match="HTTP 403"):
        web.client.command("script.run", "@all", "/tmp/evil.py")
    with pytest.raises(ApiError, match="refused"):
        web.client.command("options.reset")
    opts = web.client._call("GET", "/options")
    assert opts["scripts"]["value"] == before and opts["connection_strategy"]["value"] == "lazy"
    web.client.put_options(intercept="~q ~d nothing.test.example")  # the reviewer's own options work
    assert web.client._call("GET", "/options")["intercept"]["value"] == "~q ~d nothing.test.example"
    web.client.put_options(intercept="")


def test_review_channel_unreachable_through_the_gateway(web):
    r = httpx.get(f"http://{REVIEW}:{web.web_port}/flows", proxy=web.proxy, timeout=10,
                  headers={"Authorization": f"Bearer {web.client.password}"})
    assert r.status_code != 200 and "review channel" in r.text
    assert "refused a dial to the review channel" in web.log_text()


def test_web_refuses_a_non_loopback_ui(tmp_path, confdir):
    policy = policy_yaml(allow=[{"host": PIN}])
    gw = Gateway(tmp_path, policy, confdir=confdir, command=[str(RUN), "web"], wait=False,
                 extra_args=["--set", f"web_port={free_port()}", "--web-host", "0.0.0.0"],
                 env={"GATEWAY_WEB_PASSWORD": "x" * 20})
    try:
        assert gw.proc.wait(60) != 0
        assert "mitmweb must listen on loopback only" in gw.log_text()
    finally:
        gw.stop()
