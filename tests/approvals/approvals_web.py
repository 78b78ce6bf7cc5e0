"""Helpers for the approvals end-to-end and browser tests (fixtures are in conftest.py)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time

import httpx
from gwharness import RUN

PIN = "api.test.example"
REVIEW = "review.test.example"  # an allowed name that resolves to mitmweb's own address
CARD = "4111 1111 1111 1111"


def send(pool, gw, method: str, path: str, **kw) -> concurrent.futures.Future:
    """Send a request through the gateway in a thread: a future of (response, time it arrived)."""
    def go():
        r = httpx.request(method, f"http://{PIN}:{gw.upstream_port}{path}", proxy=gw.proxy,
                          timeout=60, **kw)
        return r, time.monotonic()
    return pool.submit(go)


def wait_held(gw, path: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for h in gw.client.held():
            if h["path"] == path:
                return h
        time.sleep(0.02)
    raise AssertionError(f"{path} was not held:\n{gw.log_text()[-3000:]}")


def reached(upstream, path: str) -> int:
    return sum(1 for r in upstream.requests if r["path"].split("?")[0] == path)


def cli(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN), "approvals", "--port", str(gw.web_port), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **gw.env})


def audit_for(gw, path: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [a for a in gw.audit() if a.get("path") == path]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {path}")


def assert_denied(r: httpx.Response, rule: str) -> dict:
    assert r.status_code == 403, r.text
    assert r.headers["x-egress-gateway"] == "denied"
    doc = r.json()
    assert doc["error"] == "denied" and doc["rule"] == rule and doc["reason"]
    return doc
