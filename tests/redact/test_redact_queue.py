"""The scan pool is bounded and its budget covers queueing (taddons/tflow, fake engine)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from egress_gateway.core import Core
from egress_gateway.policy import parse_policy
from egress_gateway.redact import addon as addon_mod
from egress_gateway.redact.addon import Redactor
from egress_gateway.redact.scan import parse_options
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow
from redact_fakes import FakeEngine

HOST = "api.example.com"


def make(engine):
    core = Core()
    core.policy = parse_policy(f"version: 1\negress:\n  allow:\n    - host: {HOST}\n")
    return Redactor(core, engine_factory=lambda settings: engine)


def req_flow(text: str):
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.scheme = HOST, 443, "https"
    f.request.path, f.request.method = "/v1/x", "POST"
    f.request.headers.clear()
    f.request.headers["Host"] = HOST
    f.request.headers["Content-Type"] = "application/json"
    f.request.raw_content = json.dumps({"to": text}).encode()
    return f


def code(f):
    if f.response is None:
        return None
    return f.response.status_code, f.response.headers["X-Egress-Gateway"], json.loads(
        f.response.content)


def run(r, coro_fn, **options):
    async def main():
        with taddons.context(r) as tctx:
            tctx.configure(r, **options)
            try:
                return await coro_fn()
            finally:
                r.done()

    return asyncio.run(main())


def test_a_full_queue_refuses_at_once_with_overloaded():
    eng = FakeEngine(delay=0.6)
    r = make(eng)
    a, b = req_flow("a@b.co"), req_flow("c@d.co")
    took = {}

    async def both():
        async def second():
            await asyncio.sleep(0.1)  # `a` holds the only slot
            t0 = time.monotonic()
            await r.request(b)
            took["b"] = time.monotonic() - t0

        await asyncio.gather(r.request(a), second())

    run(r, both, gateway_scan_workers=1, gateway_scan_queue=1)
    assert code(a) is None and b"<EMAIL_ADDRESS>" in a.request.raw_content
    st, c, doc = code(b)
    assert (st, c) == (503, "overloaded") and "gateway_scan_queue=1" in doc["reason"]
    assert "c@d.co" not in json.dumps(doc)
    assert took["b"] < 0.4  # answered before `a`'s scan ended, not after waiting for it
    assert [c[-1] for c in eng.calls] == ["a@b.co"]  # `b` never reached the detector
    assert r.pending() == 0


def test_the_slot_comes_back_after_the_scan():
    eng = FakeEngine(delay=0.05)
    r = make(eng)
    flows = [req_flow(f"user{i}@b.co") for i in range(3)]

    async def one_by_one():
        for f in flows:
            await r.request(f)

    run(r, one_by_one, gateway_scan_workers=1, gateway_scan_queue=1)
    assert all(code(f) is None for f in flows) and len(eng.calls) == 3


def test_stream_jobs_take_scan_slots():
    """A stream's job holds a slot while it runs (counted in pending() for the drain); with no
    slot left a stream's job is refused (`Overloaded`: the stream ends with its error event)."""
    from egress_gateway.redact.addon import Overloaded

    r = make(FakeEngine())

    async def go():
        import threading

        gate = threading.Event()
        fut = r._submit(lambda: gate.wait(5))
        assert r.pending() == 1
        with pytest.raises(Overloaded):
            r._submit(lambda: None)
        gate.set()
        await asyncio.wrap_future(fut)
        await asyncio.sleep(0.01)
        assert r.pending() == 0
        r._submit(lambda: None).result(5)

    run(r, go, gateway_scan_workers=0, gateway_scan_queue=1)


def test_the_budget_covers_the_wait_for_a_worker(monkeypatch):
    """`b` waits behind `a` on the only scan thread: its budget runs out while it is queued, it
    is refused then (not a full budget after a thread picks it up) and its scan never runs."""
    monkeypatch.setattr(addon_mod, "scan_threads", lambda workers: 1)
    eng = FakeEngine(delay=1.0)
    r = make(eng)
    a, b = req_flow("a@b.co"), req_flow("c@d.co")
    took = {}

    async def both():
        async def timed(name, f):
            t0 = time.monotonic()
            await r.request(f)
            took[name] = time.monotonic() - t0

        await asyncio.gather(timed("a", a), timed("b", b))
        assert r.pending() == 1  # `a`'s worker is still busy: its slot is still held
        await asyncio.sleep(1.0)
        assert r.pending() == 0

    run(r, both, gateway_scan_workers=1, gateway_scan_queue=8, gateway_scan_timeout="0.3")
    for f in (a, b):
        st, c, doc = code(f)
        assert (st, c) == (500, "internal_error") and "time budget" in doc["reason"]
    assert took["b"] < 0.9  # refused at its budget while queued, before `a` let the worker go
    assert [c[-1] for c in eng.calls] == ["a@b.co"]  # `b` left the queue: never analysed


@pytest.mark.parametrize("name, kwargs, ok", [
    ("defaults", {}, True),
    ("queue_one", {"queue": 1}, True),
    ("queue_zero", {"queue": 0}, False),
    ("queue_not_int", {"queue": "8"}, False),
    ("max_text_small", {"max_text": 10}, False),
    ("max_text_ok", {"max_text": 4096}, True),
])
def test_parse_queue_and_text_options(name, kwargs, ok):
    args = (1 << 20, 2, "30")
    if ok:
        opts = parse_options(*args, **kwargs)
        assert opts.queue == kwargs.get("queue", 64)
    else:
        with pytest.raises(ValueError):
            parse_options(*args, **kwargs)


def test_a_bad_queue_option_is_an_options_error():
    r = make(FakeEngine())

    async def main():
        with taddons.context(r) as tctx:
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(r, gateway_scan_queue=0)
            r.done()

    asyncio.run(main())
