"""Scan worker processes, end to end: a real gateway, its real workers, a raw-logging upstream.

The gateway process loads neither spaCy nor Presidio; a worker killed or hung refuses only the
flows it was analysing (500 internal_error, nothing unscanned leaves) and is replaced; a policy
reload rebuilds the workers' engines before it applies (a bad one keeps the last good policy);
``gateway_scan_workers=0`` analyses in the gateway process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from canaries import CANARIES, RawUpstream
from gwharness import Gateway, policy_yaml

RAW = "raw.test.example"
EMAIL, SSN = CANARIES["email"], CANARIES["ssn"]


def _policy(up, **detection) -> str:
    sections = {"detection": detection} if detection else {}
    return policy_yaml(allow=[{"host": RAW, "ports": [up.port]}], resolve={RAW: "127.0.0.1"},
                       **sections)


def worker_pids(gw) -> list[int]:
    """The gateway's live scan worker processes (its children running the worker module)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == gw.proc.pid and b"egress_gateway.detection.worker" in cmd:
            out.append(int(name))
    return sorted(out)


def wait_workers(gw, n: int, exclude=(), timeout: float = 60) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = worker_pids(gw)
        if len(pids) == n and not set(pids) & set(exclude):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"expected {n} workers (not {exclude}), have {worker_pids(gw)}")


def post(gw, up, text: str, timeout: float = 30) -> httpx.Response:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    return httpx.post(f"http://{RAW}:{up.port}/v1/messages", content=body, proxy=gw.proxy,
                      headers={"content-type": "application/json"}, timeout=timeout)


def fresh(tag: str) -> str:
    return f"Please email {EMAIL} about SSN {SSN} (ticket {tag}-{time.time_ns()})."


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = RawUpstream()
    work = tmp_path_factory.mktemp("workers")
    gw = Gateway(work, _policy(up), confdir=confdir)
    yield gw, up, work
    gw.stop()
    up.close()


def test_analysis_runs_in_two_worker_processes_not_in_the_gateway(env):
    gw, up, _ = env
    pids = wait_workers(gw, 2)
    r = post(gw, up, fresh("a"))
    assert r.status_code == 200
    assert not up.leaks({"email": EMAIL, "ssn": SSN})
    maps = open(f"/proc/{gw.proc.pid}/maps").read()
    assert "/spacy/" not in maps and "/thinc/" not in maps  # no NER in the gateway process
    for pid in pids:
        assert "/spacy/" in open(f"/proc/{pid}/maps").read()
    assert re.search(r"2 scan worker process\(es\) started", gw.log_text())


def test_a_killed_worker_refuses_its_flows_and_is_replaced(env):
    gw, up, _ = env
    pids = wait_workers(gw, 2)
    start = len(gw.log_text())
    os.kill(pids[0], signal.SIGKILL)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: post(gw, up, fresh(f"k{i}")), range(16)))
    for r in results:  # served by the other worker, or refused while this one was lost
        assert r.status_code in (200, 500), r.text
        if r.status_code == 500:
            assert r.headers["x-egress-gateway"] == "internal_error"
    assert not up.leaks({"email": EMAIL, "ssn": SSN})
    gw.wait_for("scan worker 0 replaced", 60, start=start)
    wait_workers(gw, 2, exclude=[pids[0]])
    r = post(gw, up, fresh("after"))
    assert r.status_code == 200 and not up.leaks({"email": EMAIL, "ssn": SSN})


def test_a_reload_rebuilds_the_workers_engines(env):
    gw, up, work = env
    marker = f"ZEBRA{time.time_ns() % 10**6}"
    r = post(gw, up, f"code name {marker} ships")
    assert r.status_code == 200 and marker.encode() in bytes(up.raw)
    start = len(gw.log_text())
    time.sleep(1.1)  # a new mtime
    gw.policy_path.write_text(_policy(up, custom=[
        {"name": "codenames", "entity": "CODENAME", "deny_list": [marker.lower()]}]))
    gw.wait_for("reloaded", 30, start=start)
    with up._lock:
        up.raw.clear()
    r = post(gw, up, f"code name {marker} ships again")
    assert r.status_code == 200 and marker.encode() not in bytes(up.raw)
    assert b"<CODENAME>" in bytes(up.raw)
    # a policy the workers cannot build (a model that is not installed) keeps the last good one
    start = len(gw.log_text())
    time.sleep(1.1)
    gw.policy_path.write_text(_policy(up, model="md", custom=[
        {"name": "codenames", "entity": "CODENAME", "deny_list": [marker.lower()]}]))
    gw.wait_for("policy reload FAILED", 30, start=start)
    assert "cannot build the detection engine" in gw.log_text()[start:]
    r = post(gw, up, f"{marker} still redacted")
    assert r.status_code == 200 and b"<CODENAME>" in bytes(up.raw)


@pytest.fixture
def one_worker(tmp_path, confdir):
    up = RawUpstream()
    gw = Gateway(tmp_path, _policy(up), confdir=confdir,
                 extra_args=["--set", "gateway_scan_workers=1", "--set", "gateway_scan_timeout=2"])
    yield gw, up
    gw.stop()
    up.close()


def test_a_hung_worker_refuses_within_the_budget_and_is_replaced(one_worker):
    gw, up = one_worker
    (pid,) = wait_workers(gw, 1)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = post(gw, up, fresh("hung"))
        took = time.monotonic() - t0
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # already killed as hung
            pass
    assert (r.status_code, r.headers["x-egress-gateway"]) == (500, "internal_error")
    assert "time budget" in r.json()["reason"]
    assert took < 4  # the 2 s budget, not the hang
    assert not up.leaks({"email": EMAIL, "ssn": SSN})
    gw.wait_for("killing and replacing it", 30)
    wait_workers(gw, 1, exclude=[pid])
    gw.wait_for("scan worker 0 replaced", 60)
    r = post(gw, up, fresh("after-hang"))
    assert r.status_code == 200 and not up.leaks({"email": EMAIL, "ssn": SSN})


def test_zero_workers_analyse_in_the_gateway_process(tmp_path, confdir):
    up = RawUpstream()
    gw = Gateway(tmp_path, _policy(up), confdir=confdir,
                 extra_args=["--set", "gateway_scan_workers=0"])
    try:
        r = post(gw, up, fresh("zero"))
        assert r.status_code == 200 and not up.leaks({"email": EMAIL, "ssn": SSN})
        assert worker_pids(gw) == []
        assert "/spacy/" in open(f"/proc/{gw.proc.pid}/maps").read()
        assert "scan worker" not in gw.log_text()
    finally:
        gw.stop()
        up.close()


def test_a_policy_without_redaction_starts_no_worker(tmp_path, confdir):
    up = RawUpstream()
    policy = policy_yaml(allow=[{"host": RAW, "ports": [up.port]}], resolve={RAW: "127.0.0.1"},
                         redact={"enabled": False})
    gw = Gateway(tmp_path, policy, confdir=confdir)
    try:
        assert httpx.get(f"http://{RAW}:{up.port}/x", proxy=gw.proxy, timeout=10).status_code == 200
        assert worker_pids(gw) == []
    finally:
        gw.stop()
        up.close()
