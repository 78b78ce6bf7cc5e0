"""Bodies that cannot be scanned within the budget are answered at once; a full scan queue
answers 503 overloaded at once (real gateway, real detector, loopback upstream)."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest
from gwharness import Gateway, Upstream, policy_yaml

HOST = "internal.test.example"
EMAIL = "maria.lopez@example.com"
WORDS = ("the deployment finished after migration step dashboards look normal again please "
         "summarise attached incident report list follow up actions owner we agreed revisit "
         "caching strategy once new storage tier available").split()


def prose(chars: int, seed: int) -> str:
    """Fresh English-looking prose (no findings cache has seen it)."""
    rng = random.Random(seed)
    out, n = [], 0
    while n < chars:
        s = " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + f" {rng.randrange(10**9)}."
        out.append(s)
        n += len(s) + 1
    return " ".join(out)[:chars]


def messages_body(total: int, seed: int, extra: str = "") -> bytes:
    per = 10_000
    msgs = [{"role": "user", "content": prose(per, seed * 1000 + i)} for i in range(total // per)]
    msgs[-1]["content"] += extra
    return json.dumps({"model": "claude-sonnet-4-5-20250929", "messages": msgs}).encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = Upstream("echo")
    work = tmp_path_factory.mktemp("budget")
    policy = policy_yaml(allow=[{"host": HOST, "ports": [up.port]}], resolve={HOST: "127.0.0.1"},
                         redact={})
    # the shipped budget (30 s) and body limit (10 MB); one worker, one slot: easy to fill
    gw = Gateway(work, policy, confdir=confdir,
                 extra_args=["--set", "gateway_scan_workers=1", "--set", "gateway_scan_queue=1"])
    yield gw, up
    gw.stop()
    up.close()


def post(gw, up, body: bytes, timeout: float) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{up.port}/v1/messages", content=body,
                      headers={"Content-Type": "application/json"}, proxy=gw.proxy,
                      timeout=timeout)


def refused(r: httpx.Response, code: str, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    assert r.headers["x-egress-gateway"] == code
    doc = r.json()
    assert doc["error"] == code
    return doc


@pytest.mark.parametrize("name, body", [
    ("two_megabytes_of_prose_json", lambda: messages_body(2_000_000, 1, f" mail {EMAIL}")),
    ("five_megabyte_string", lambda: json.dumps({"blob": "a" * 5_000_000, "to": EMAIL}).encode()),
])
def test_body_too_big_to_scan_in_budget_is_answered_at_once(env, name, body):
    gw, up = env
    n = len(up.requests)
    # 15 s: half the 30 s budget, so an answer proves the budget was not burnt first
    r = post(gw, up, body(), timeout=15)
    doc = refused(r, "too_large", 413)
    assert "gateway_scan_max_text" in doc["reason"] and EMAIL not in r.text
    assert up.requests[n:] == []


def test_full_queue_answers_overloaded_at_once_and_the_first_scan_completes(env):
    gw, up = env
    n = len(up.requests)
    big = messages_body(150_000, 7, f" Write to {EMAIL} today.")  # within gateway_scan_max_text
    first: dict = {}

    def send_big():
        first["r"] = post(gw, up, big, timeout=60)

    t = threading.Thread(target=send_big)
    t.start()
    time.sleep(1.0)  # the big body holds the only scan slot for seconds
    t0 = time.monotonic()
    small = json.dumps({"messages": [{"role": "user", "content": f"{prose(100, 99)} {EMAIL}"}]})
    r = post(gw, up, small.encode(), timeout=30)
    took = time.monotonic() - t0
    still_running = t.is_alive()
    t.join(60)
    if not still_running:
        pytest.skip("the large scan finished before the second request arrived (machine too fast)")
    doc = refused(r, "overloaded", 503)
    assert "gateway_scan_queue" in doc["reason"] and EMAIL not in r.text
    assert took < 5, took
    big_r = first["r"]
    assert big_r.status_code == 200, big_r.text[:300]
    sent = [rec["body"] for rec in up.requests[n:]]
    assert len(sent) == 1 and EMAIL not in sent[0] and "<EMAIL_ADDRESS>" in sent[0]
    lines = [x for x in gw.audit() if x.get("code") == "overloaded"]
    assert lines and EMAIL not in json.dumps(lines)
