"""`PooledStream`: a response stream's analysis on the scan pool, off the event loop."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from egress_gateway.detection.budget import check_deadline
from egress_gateway.redact.stream import StreamRedactor
from egress_gateway.redact.streams.ndjson import NdjsonRedactor
from egress_gateway.redact.streams.pooled import PooledStream


class Inner:
    """A stream redactor stand-in: wraps each chunk, optionally blocked on a gate."""

    error_chunk = staticmethod(StreamRedactor.error_chunk)

    def __init__(self, gate: threading.Event | None = None, raise_on: bytes | None = None):
        self.gate = gate
        self.raise_on = raise_on
        self.seen: list[bytes] = []
        self.threads: set[str] = set()
        self.failed = None
        self.counts = {"EMAIL_ADDRESS": 1}
        self.events = self.restored = self.unknown_tokens = 0

    def __call__(self, chunk):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        if self.raise_on is not None and chunk == self.raise_on:
            raise RuntimeError("boom")
        self.seen.append(chunk)
        self.events += 1
        return b"<end>" if not chunk else [b"<" + chunk + b">"]


@pytest.fixture
def pool():
    p = ThreadPoolExecutor(2, thread_name_prefix="test-scan")
    yield p
    p.shutdown(wait=False, cancel_futures=True)


def _collect(stream, chunks):
    outs = [stream(c) for c in chunks]
    end = stream(b"")
    return outs, end


def test_chunks_are_analysed_in_order_on_a_pool_thread(pool):
    inner = Inner()
    stream = PooledStream(inner, pool.submit, timeout=5)
    outs, end = _collect(stream, [b"a", b"b", b"c", b"d"])
    assert isinstance(end, bytes)
    released = b"".join(b"".join(o) for o in outs) + end
    assert released == b"<a><b><c><d><end>"
    assert inner.seen == [b"a", b"b", b"c", b"d", b""]
    assert inner.threads and all(t.startswith("test-scan") for t in inner.threads)
    assert stream.counts == {"EMAIL_ADDRESS": 1} and stream.events == 5 and not stream.failed


def test_the_first_chunk_is_released_by_its_own_call(pool):
    stream = PooledStream(Inner(), pool.submit, timeout=5)
    assert stream(b"first") == [b"<first>"]


def test_a_busy_worker_returns_an_empty_list_never_empty_bytes(pool):
    gate = threading.Event()
    stream = PooledStream(Inner(gate), pool.submit, timeout=5)
    stream.first_wait = 0.01
    got = [stream(b"x"), stream(b"y")]  # the worker is blocked: nothing is released yet
    assert got == [[], []]
    gate.set()
    end = stream(b"")
    assert end == b"<x><y><end>"


def test_a_chunk_past_its_budget_ends_the_stream_with_the_error_event(pool):
    gate = threading.Event()  # never set: the analysis hangs
    now = [100.0]
    stream = PooledStream(Inner(gate), pool.submit, timeout=1, clock=lambda: now[0])
    stream.first_wait = stream.wait = 0.01
    assert stream(b"slow") == []
    now[0] += 0.5
    assert stream(b"more") == []  # within the budget: still waiting, the loop is not held
    now[0] += 1.0
    out = stream(b"after")
    assert len(out) == 1 and b"event: error" in out[0] and b"slow" not in out[0]
    assert "TimeoutError" in stream.failed
    assert stream(b"later") == [] and stream(b"") == b""
    gate.set()


def test_the_end_waits_within_the_budget_then_fails_closed(pool):
    gate = threading.Event()
    stream = PooledStream(Inner(gate), pool.submit, timeout=0.2)
    stream.first_wait = 0.0
    assert stream(b"secret") == []
    end = stream(b"")
    assert end.startswith(b"event: error") and b"secret" not in end
    gate.set()


def test_the_end_waits_at_most_end_wait_on_the_loop(pool):
    # a 30 s budget, a worker that takes longer than end_wait: the loop is held 0.3 s, not 30
    gate = threading.Event()
    stream = PooledStream(Inner(gate), pool.submit, timeout=30)
    stream.first_wait, stream.end_wait = 0.0, 0.3
    assert stream(b"secret") == []
    t0 = time.monotonic()
    end = stream(b"")
    took = time.monotonic() - t0
    gate.set()
    assert end.startswith(b"event: error") and b"secret" not in end
    assert "end was not scanned within 0.3 s" in stream.failed
    assert 0.25 < took < 2


def test_a_failing_worker_ends_the_stream(pool):
    stream = PooledStream(Inner(raise_on=b"bad"), pool.submit, timeout=5)
    assert stream(b"ok") == [b"<ok>"]
    out = stream(b"bad")
    out += [] if out else stream(b"next")
    assert out[-1].startswith(b"event: error") and "RuntimeError" in stream.failed
    assert stream(b"") == b""


def test_a_pool_that_refuses_the_job_ends_the_stream():
    def refuse(fn):
        raise RuntimeError("cannot schedule new futures after shutdown")

    stream = PooledStream(Inner(), refuse, timeout=5)
    out = stream(b"x")
    assert len(out) == 1 and out[0].startswith(b"event: error")
    assert "pool unavailable" in stream.failed


def _slow_analyze(text):
    while True:  # a detector that only stops at the engine's deadline check
        check_deadline()


def test_the_engine_deadline_stops_a_real_sse_redactor(pool):
    inner = StreamRedactor(_slow_analyze, lambda t, f: (t, {}, set()),
                           lambda d: (d, {}, set()))
    stream = PooledStream(inner, pool.submit, timeout=0.2)
    stream.first_wait = 0.0
    delta = json.dumps({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": "Jane Roe wrote " * 10}})
    first = stream(f"event: content_block_delta\ndata: {delta}\n\n".encode())
    end = stream(b"")
    sent = b"".join(first) + end
    assert b"event: error" in sent and b"Jane Roe" not in sent
    assert stream.failed


def test_ndjson_redactor_error_chunk_is_a_json_line():
    line = NdjsonRedactor.error_chunk("stopped")
    assert json.loads(line) == {"error": {"type": "egress_gateway_error", "message": "stopped"}}
