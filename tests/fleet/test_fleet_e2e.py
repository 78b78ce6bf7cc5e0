"""End to end: a real PostgreSQL as the store, three gateways (mitmdump) sharing its review queue,
the reviewer's CLI (`run_gateway.sh approvals --state URL`), real clients and a loopback upstream.

The tests run in file order on one fleet: the store outage and the kill -9 come last.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
from egress_gateway.fleet.queue import ReviewQueue
from egress_gateway.fleet.settings import parse_state_url
from fleet_harness import CARD, HOOK_HOST, HOOK_PATH, NAMES, REVIEWER, REVIEWER_PW, audit_for, reached


def _denied(r: httpx.Response, rule: str) -> dict:
    assert r.status_code == 403, r.text
    assert r.headers["x-egress-gateway"] == "denied"
    doc = r.json()
    assert doc["error"] == "denied" and doc["rule"] == rule
    return doc


def test_three_instances_beat_into_one_store(fleet):
    rows = json.loads(fleet.sql("SELECT json_agg(i) FROM gateway_instances i"))
    seen = {r["id"] for r in rows}
    assert set(NAMES) <= seen
    age = float(fleet.sql("SELECT max(extract(epoch FROM now() - seen)) FROM gateway_instances "
                          "WHERE id IN ('gw-a', 'gw-b', 'gw-c')"))
    assert age < 3, age
    from egress_gateway.fleet.schema import LATEST

    assert fleet.sql("SELECT max(version) FROM gateway_schema") == str(LATEST)


def test_hold_on_b_approved_from_the_cli(fleet):
    fut = fleet.send("gw-b", "POST", "/admin/approve-me", json={"note": "hi"})
    row = fleet.wait_held("/admin/approve-me", "gw-b")
    assert row["rule"] == "admin-writes" and row["reason"] == "writes to admin endpoints need a human"
    time.sleep(0.3)
    assert not fut.done() and reached(fleet.upstream, "/admin/approve-me") == 0
    listed = fleet.cli("list", "--state", fleet.state_url())  # options after the action
    assert listed.returncode == 0, listed.stderr
    assert row["id"] in listed.stdout and "[gw-b]" in listed.stdout
    t0 = time.monotonic()
    res = fleet.cli("--state", fleet.state_url(), "approve", row["id"][:10])  # options before
    t_cli = time.monotonic()
    assert res.returncode == 0 and "on instance gw-b" in res.stdout, res.stderr
    r, t1 = fut.result(10)
    assert r.status_code == 200 and r.json()["path"] == "/admin/approve-me"
    print(f"\nCLI approve (process start) -> upstream answer at the client: {(t1 - t0) * 1000:.0f} ms;"
          f" after the CLI exited: {max(t1 - t_cli, 0) * 1000:.0f} ms")
    assert t1 - t_cli < 2.0
    a = audit_for(fleet.gw["gw-b"], "/admin/approve-me")["approval"]
    assert (a["outcome"], a["decided_by"]) == ("approved", f"reviewer:store:{REVIEWER}")
    ended = fleet.row(row["id"])
    assert (ended["state"], ended["outcome"]) == ("ended", "approved")


def test_decision_to_release_in_process(fleet, monkeypatch):
    """The time from a committed decision to the upstream's answer at the client."""
    monkeypatch.setenv("PGPASSWORD", REVIEWER_PW)  # libpq reads it (this process reviews)
    q = ReviewQueue(parse_state_url(fleet.state_url()))
    times = []
    try:
        for i in range(5):
            fut = fleet.send("gw-a", "POST", f"/admin/timed-{i}")
            row = fleet.wait_held(f"/admin/timed-{i}", "gw-a")
            t0 = time.monotonic()
            q.decide(row["id"], "approve")
            r, t1 = fut.result(10)
            assert r.status_code == 200
            times.append(t1 - t0)
    finally:
        q.close()
    times.sort()
    print(f"\ndecision committed -> upstream answer at the client (5 holds, loaded machine): "
          f"median {times[2] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
    assert times[-1] < 1.0


def test_hold_denied_and_a_late_decision_refused(fleet):
    fut = fleet.send("gw-c", "DELETE", "/admin/deny-me")
    row = fleet.wait_held("/admin/deny-me", "gw-c")
    res = fleet.cli("deny", row["id"], "--state", fleet.state_url())
    assert res.returncode == 0, res.stderr
    doc = _denied(fut.result(10)[0], "admin-writes")
    assert "a reviewer denied it" in doc["reason"]
    assert reached(fleet.upstream, "/admin/deny-me") == 0
    line = audit_for(fleet.gw["gw-c"], "/admin/deny-me")
    assert line["approval"]["decided_by"] == f"reviewer:store:{REVIEWER}"
    # the hold is over: approving it now is refused with a clear message
    late = fleet.cli("approve", row["id"], "--state", fleet.state_url())
    assert late.returncode == 1
    assert "can no longer be decided" in late.stderr and "already ended: denied" in late.stderr


def test_queue_rows_carry_no_values(fleet):
    fut = fleet.send("gw-a", "POST", "/pay/card", json={"card": CARD, "name": "Jane Roe"})
    row = fleet.wait_held("/pay/card", "gw-a")
    assert row["detected"].get("CREDIT_CARD") == 1
    dump = fleet.sql("SELECT string_agg(h::text, ' ') FROM gateway_holds h")
    for value in (CARD, CARD.replace(" ", ""), "Jane Roe"):
        assert value not in dump
    assert fleet.cli("deny", row["id"], "--state", fleet.state_url()).returncode == 0
    _denied(fut.result(10)[0], "card-data")


def test_webhook_reaches_the_receiver_without_values(fleet):
    fut = fleet.send("gw-b", "POST", "/pay/hooked", json={"card": CARD, "name": "Jane Roe"},
                     session="s-hook")
    row = fleet.wait_held("/pay/hooked", "gw-b")
    deadline = time.monotonic() + 5
    while not [h for h in fleet.hook.requests if row["id"] in h["body"]]:
        assert time.monotonic() < deadline, f"no webhook for {row['id']}: {fleet.hook.requests}"
        time.sleep(0.05)
    hit = next(h for h in fleet.hook.requests if row["id"] in h["body"])
    assert hit["method"] == "POST" and hit["path"] == HOOK_PATH
    assert hit["headers"]["host"] == f"{HOOK_HOST}:{fleet.hook.port}"
    text = json.loads(hit["body"])["text"]  # Slack's incoming-webhook format
    assert "on gw-b" in text and "Rule card-data: card data leaving" in text
    assert "CREDIT_CARD x1" in text and "s-hook" in text
    assert f"approvals approve {row['id']}" in text and "--state postgresql://127.0.0.1:" in text
    for value in (CARD, CARD.replace(" ", ""), "Jane Roe", "/pay/hooked"):
        assert value not in hit["body"]
    assert fleet.cli("deny", row["id"], "--state", fleet.state_url()).returncode == 0
    _denied(fut.result(10)[0], "card-data")
    # agents cannot post to the webhook service: it is not on the allowlist
    before = len(fleet.hook.requests)
    r = httpx.post(f"http://{HOOK_HOST}:{fleet.hook.port}{HOOK_PATH}", json={"text": "x"},
                   proxy=fleet.gw["gw-a"].proxy, timeout=20)
    assert r.status_code == 403 and r.headers["x-egress-gateway"] == "blocked", r.text
    assert len(fleet.hook.requests) == before


def test_approve_always_applies_to_that_session_and_rule_on_every_instance(fleet):
    fut = fleet.send("gw-b", "POST", "/admin/always-1", session="s-always")
    row = fleet.wait_held("/admin/always-1", "gw-b")
    res = fleet.cli("approve", "--always", row["id"], "--state", fleet.state_url())
    assert res.returncode == 0 and "always" in res.stdout, res.stderr
    assert fut.result(10)[0].status_code == 200
    # same session and rule on gw-b: not held
    r, _ = fleet.send("gw-b", "POST", "/admin/always-2", session="s-always").result(10)
    assert r.status_code == 200
    assert audit_for(fleet.gw["gw-b"], "/admin/always-2")["approval"]["decided_by"] == "always"
    # ... and on the other instances (the decision is shared through the store)
    for name in ("gw-a", "gw-c"):
        r, _ = fleet.send(name, "POST", f"/admin/always-on-{name}", session="s-always").result(10)
        assert r.status_code == 200, r.text
        line = audit_for(fleet.gw[name], f"/admin/always-on-{name}")["approval"]
        assert (line["decided_by"], line["held"]) == ("always", False)
    assert fleet.sql("SELECT count(*) FROM gateway_holds WHERE path LIKE '/admin/always-on-%'") == "0"
    # another session on gw-b is held again
    fut3 = fleet.send("gw-b", "POST", "/admin/always-3", session="s-other")
    row3 = fleet.wait_held("/admin/always-3", "gw-b")
    assert fleet.cli("deny", row3["id"], "--state", fleet.state_url()).returncode == 0
    _denied(fut3.result(10)[0], "admin-writes")


def test_watch_prints_new_holds_and_their_end(fleet):
    import subprocess

    from gwharness import RUN

    env = {**os.environ, "PGPASSWORD": REVIEWER_PW}
    proc = subprocess.Popen([str(RUN), "approvals", "watch", "--json", "--state", fleet.state_url()],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.5)
        fut = fleet.send("gw-a", "POST", "/admin/watched")
        row = fleet.wait_held("/admin/watched", "gw-a")
        first = json.loads(proc.stdout.readline())
        while first["id"] != row["id"]:
            first = json.loads(proc.stdout.readline())
        assert first["event"] == "held" and first["instance"] == "gw-a"
        assert fleet.cli("deny", row["id"], "--state", fleet.state_url()).returncode == 0
        _denied(fut.result(10)[0], "admin-writes")
        nxt = json.loads(proc.stdout.readline())
        while nxt["id"] != row["id"]:
            nxt = json.loads(proc.stdout.readline())
        assert nxt["event"] == "ended" and nxt["outcome"] == "denied"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_agents_cannot_reach_the_store(fleet):
    r = httpx.get(f"http://127.0.0.1:{fleet.server.port}/", proxy=fleet.gw["gw-a"].proxy, timeout=20)
    assert r.status_code == 502 and "review store" in r.text, r.text
    assert "refused a dial to the review store" in fleet.gw["gw-a"].log_text()


def test_store_down_denies_holds_then_recovers(fleet):
    fut = fleet.send("gw-a", "POST", "/admin/before-outage")
    row = fleet.wait_held("/admin/before-outage", "gw-a")
    fleet.stop_store()
    try:
        doc = _denied(fut.result(15)[0], "admin-writes")
        assert "review store postgresql://gwfleet@127.0.0.1" in doc["reason"]
        r, _ = fleet.send("gw-b", "POST", "/admin/during-outage").result(15)
        doc = _denied(r, "admin-writes")
        assert "unreachable" in doc["reason"]
        assert "unreachable" in fleet.gw["gw-b"].log_text()
    finally:
        fleet.start_store()
    assert reached(fleet.upstream, "/admin/before-outage") == 0
    assert reached(fleet.upstream, "/admin/during-outage") == 0
    # recovery: holds work again once the instance has reconnected
    deadline = time.monotonic() + 20
    while True:
        fut = fleet.send("gw-b", "POST", "/admin/after-outage")
        try:
            row = fleet.wait_held("/admin/after-outage", "gw-b", timeout=3)
            break
        except AssertionError:
            _denied(fut.result(10)[0], "admin-writes")
            assert time.monotonic() < deadline, fleet.gw["gw-b"].log_text()[-2000:]
    assert fleet.cli("approve", row["id"], "--state", fleet.state_url()).returncode == 0
    assert fut.result(10)[0].status_code == 200
    assert fleet.row(row["id"])["outcome"] == "approved"


def test_kill_9_of_a_holding_instance_ends_its_hold_denied(fleet):
    gw = fleet.gw["gw-c"]
    fut = fleet.send("gw-c", "POST", "/admin/orphan")
    row = fleet.wait_held("/admin/orphan", "gw-c")
    os.killpg(gw.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    while fleet.row(row["id"])["state"] != "ended":
        assert time.monotonic() - t0 < 12, "hold not ended"
        time.sleep(0.1)
    lost_after = time.monotonic() - t0
    ended = fleet.row(row["id"])
    print(f"\nkill -9 -> hold ended 'denied (instance lost)' after {lost_after:.1f} s")
    assert (ended["outcome"], ended["decided_by"]) == ("denied", "instance lost")
    assert lost_after < 10.5
    try:
        fut.result(10)
    except Exception:
        pass  # the client's connection died with the instance
    q_err = fleet.cli("approve", row["id"], "--state", fleet.state_url())
    assert q_err.returncode == 1 and "denied (instance lost)" in q_err.stderr


def test_verify_and_audit_over_the_three_instances(fleet, tmp_path):
    for name in NAMES:  # session s-1 crosses every instance (gw-c may be gone: kill -9 above)
        if fleet.gw[name].proc.poll() is None:
            r, _ = fleet.send(name, "GET", "/plain", session="s-1").result(20)
            assert r.status_code == 200
    if fleet.gw["gw-c"].proc.poll() is None:
        time.sleep(6)  # gw-c's next head checkpoint to the store (every 5 s)
    # a hold pending when its instance stops: its row ends too (denied by shutdown)
    fut = fleet.send("gw-a", "POST", "/admin/at-shutdown")
    row = fleet.wait_held("/admin/at-shutdown", "gw-a")
    for name in ("gw-a", "gw-b"):
        fleet.gw[name].stop()  # a stop checkpoints the chain's head to the store
    r, _ = fut.result(20)
    assert r.status_code == 503 and r.headers["x-egress-gateway"] == "gateway_unavailable"
    ended = fleet.row(row["id"])
    assert (ended["state"], ended["outcome"], ended["decided_by"]) == ("ended", "denied", "shutdown")
    dirs = [str(fleet.gw[n].workdir / "recordings") for n in NAMES]
    heads = json.loads(fleet.sql("SELECT json_object_agg(instance, seq) FROM gateway_audit_heads"))
    assert set(heads) == set(NAMES) and all(v > 0 for v in heads.values()), heads
    res = fleet.cli_any("verify", *dirs, "--state", fleet.state_url())
    assert res.returncode == 0, res.stdout + res.stderr
    for name in NAMES:
        assert f"OK: instance {name}:" in res.stdout
    for name in NAMES:  # the instance id is in every line of its chain
        lines = fleet.gw[name].audit()
        assert lines and all(line.get("instance") == name for line in lines)
    rep = fleet.cli_any("audit", *dirs, "--json", str(tmp_path / "r.json"))
    assert rep.returncode == 0, rep.stderr
    assert "session s-1: instances gw-a, gw-b" in rep.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["integrity"]["ok"] and len(doc["instances"]) == 3
    s1 = next(s for s in doc["sessions"] if s["session"] == "s-1")
    assert {"gw-a", "gw-b"} <= set(s1["instances"])  # one session across instances
    # cut gw-b's last line and fix its local checkpoint: only the store's head still shows it
    log = fleet.gw["gw-b"].audit_path
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))
    prev = json.loads(lines[-2])
    (log.parent / "audit.jsonl.checkpoint").write_text(json.dumps(
        {"log": "audit.jsonl", "seq": prev["seq"], "hash": prev["hash"], "alg": "sha256",
         "time": "2026-01-01T00:00:00Z"}) + "\n")
    alone = fleet.cli_any("verify", dirs[1])
    assert alone.returncode == 0, alone.stderr  # the cut is invisible without the store
    cut = fleet.cli_any("verify", *dirs, "--state", fleet.state_url())
    assert cut.returncode == 1 and "instance gw-b" in cut.stderr and "lines were cut" in cut.stderr


def test_store_cost_per_hold(fleet):
    """What a hold adds with a store: its row written (INSERT + NOTIFY) and ended (UPDATE), over
    loopback; printed, not asserted (a loaded machine)."""
    import psycopg

    with psycopg.connect(host=str(fleet.server.dir), port=fleet.server.port, user="postgres",
                         dbname="gwstate", autocommit=True) as conn:
        times = []
        for i in range(50):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO gateway_holds (id, instance, rule, reason, deadline, "
                         "on_timeout) VALUES (%s, 'bench', 'r', 'x', now(), 'deny')", (f"bench-{i}",))
            conn.execute("SELECT pg_notify('gateway_holds', %s)", (f"bench-{i}",))
            conn.execute("UPDATE gateway_holds SET state = 'ended', outcome = 'denied', "
                         "ended_at = now() WHERE id = %s", (f"bench-{i}",))
            times.append(time.perf_counter() - t0)
        conn.execute("DELETE FROM gateway_holds WHERE instance = 'bench'")
    times.sort()
    print(f"\nstore work per hold (insert+notify+end, 50 runs, loaded machine): median "
          f"{times[25] * 1000:.1f} ms, p90 {times[45] * 1000:.1f} ms")
    assert len(times) == 50
