"""The findings cache: bounded, keyed by content (and prose hint) per detection settings."""

from __future__ import annotations

from egress_gateway.detection import DetectionEngine, DetectionSettings
from egress_gateway.detection.findings import FindingsCache


def test_cache_is_bounded_by_entries_and_chars():
    c = FindingsCache(max_entries=3, max_chars=100)
    for i in range(5):
        c.put(c.key(f"text {i}", None), [], 10)
    assert len(c) == 3
    assert c.get(c.key("text 0", None)) is None and c.get(c.key("text 4", None)) == ()
    c.put(c.key("big", None), [], 90)  # 3 x 10 + 90 > 100: the oldest go
    assert c._chars <= 100
    c.put(c.key("too big", None), [], 101)  # larger than the whole cache: not kept
    assert c.get(c.key("too big", None)) is None


def test_key_depends_on_content_and_prose_hint():
    k = FindingsCache.key
    assert k("a b c", None) == k("a b c", None)
    assert k("a b c", None) != k("a b d", None)
    assert len({k("x y", None), k("x y", True), k("x y", False)}) == 3


def test_repeated_text_is_analysed_once(engine):
    text = "Please write to maria.gonzalez@example.org about the invoice from last week."
    before = engine.cache.hits
    first = engine.analyze(text)
    second = engine.analyze(text)
    assert first == second and any(f.entity_type == "EMAIL_ADDRESS" for f in first)
    assert engine.cache.hits == before + 1


def test_cached_findings_are_not_shared_by_reference(engine):
    text = "Call me on 212-555-0187 tomorrow, said Tom Baker."
    engine.analyze(text).clear()  # a caller mutating its list must not empty the cache
    assert engine.analyze(text)


def test_other_settings_have_their_own_cache():
    a = DetectionEngine.get(DetectionSettings())
    b = DetectionEngine.get(DetectionSettings(entities=["PERSON"]))
    assert a is not b and a.cache is not b.cache
    text = "Mail ops@example.com and ask for Grace Hopper."
    assert {f.entity_type for f in a.analyze(text)} >= {"EMAIL_ADDRESS"}
    assert {f.entity_type for f in b.analyze(text)} <= {"PERSON"}


def test_pseudonyms_stay_per_session_with_cache():
    e = DetectionEngine.get(DetectionSettings(operators={"PERSON": {"type": "pseudonym"}}))
    text = "Meeting notes: Grace Hopper will present, and Alan Turing will review."
    a = e.redact(text, session="s1").text
    b = e.redact(text, session="s2").text  # a cache hit: operators still applied per session
    assert "Grace" not in a and "Grace" not in b


def test_deadline_stops_analysis_between_batches(engine):
    import pytest
    from egress_gateway.detection.engine import DeadlineExceeded, deadline

    text = "Unique text for the deadline test, written by Ada Lovelace at ada@example.org. " * 400
    with deadline(-1), pytest.raises(DeadlineExceeded):
        engine.analyze(text)
    assert engine.analyze(text)  # outside the block: no deadline, analysed normally
