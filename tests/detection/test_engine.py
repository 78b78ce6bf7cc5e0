"""Engine API: result shapes, chunking, prose detection, batching, threads, settings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from egress_gateway.detection import (
    ENTITIES,
    SECRET_ENTITIES,
    DetectionEngine,
    DetectionSettings,
    Finding,
    TextResult,
    looks_like_prose,
)
from egress_gateway.detection.chunks import split_chunks
from egress_gateway.detection.findings import merge_findings
from pydantic import ValidationError


def test_nothing_found_returns_same_object(engine):
    text = "nothing to see here, just words"
    res = engine.redact(text)
    assert isinstance(res, TextResult)
    assert res.text is text and res.findings == [] and res.counts == {} and res.blocked == set()


def test_findings_sorted_non_overlapping(engine):
    text = "Jane Smith <jane@example.org>, 415-555-2671, https://u:pw0rdX1@db.example.com/"
    fs = engine.analyze(text)
    assert all(isinstance(f, Finding) for f in fs)
    assert fs == sorted(fs, key=lambda f: f.start)
    assert all(a.end <= b.start for a, b in zip(fs, fs[1:], strict=False))


def test_engine_is_cached_and_shares_nlp(engine):
    assert DetectionEngine.get(DetectionSettings()) is engine
    other = DetectionEngine.get(DetectionSettings(allow_list=["x"]))
    assert other is not engine and other._heavy is engine._heavy


def test_entities_constants():
    assert set(SECRET_ENTITIES) <= set(ENTITIES)
    assert "PEM_PRIVATE_KEY" in SECRET_ENTITIES and "PERSON" in ENTITIES


def test_merge_prefers_secret_and_unions_span():
    merged = merge_findings([Finding("EMAIL_ADDRESS", 5, 20, 1.0), Finding("URL_PASSWORD", 2, 10, 0.9)])
    assert merged == [Finding("URL_PASSWORD", 2, 20, 0.9)]


PROSE = [
    ("sentence", "My name is Jane and I live in Paris.", True),
    ("name_pair", "Directed By: Johannes Varvio", True),
    ("model_id", "claude-sonnet-4-5-20250929", False),
    ("uuid", "550e8400-e29b-41d4-a716-446655440000", False),
    ("number", "1718000000", False),
    ("base64", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=", False),
    ("code_tokens", "a_b=1 c_d=2 e_f=3 g_h=4", False),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PROSE], ids=[c[0] for c in PROSE])
def test_looks_like_prose(text, expected):
    assert looks_like_prose(text) is expected


def test_prose_hint_controls_ner(engine):
    assert [f.entity_type for f in engine.analyze("Barack Obama", prose=True)] == ["PERSON"]
    assert engine.analyze("Barack Obama", prose=False) == []


def test_chunks_overlap_and_cover():
    text = ("word " * 5000).strip()
    chunks = split_chunks(text, 2000, 200)
    assert chunks[0][0] == 0 and chunks[-1][0] + len(chunks[-1][1]) == len(text)
    for (o1, c1), (o2, _) in zip(chunks, chunks[1:], strict=False):
        assert o2 < o1 + len(c1)  # overlap
        assert all(len(c) <= 2000 for _, c in chunks)


def test_entity_on_chunk_boundary_found(make_engine):
    eng = make_engine(chunk_size=1000, chunk_overlap=200)
    for pad in range(960, 1010, 7):
        text = "x " * (pad // 2) + "mail jane.doe@example.org now " + "y " * 400
        fs = [f for f in eng.analyze(text) if f.entity_type == "EMAIL_ADDRESS"]
        assert len(fs) == 1 and text[fs[0].start : fs[0].end] == "jane.doe@example.org"


def test_pem_longer_than_chunk_is_one_finding(make_engine):
    eng = make_engine(chunk_size=1000, chunk_overlap=100)
    body = "\n".join(["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDAC4AWkdwKYSd8"] * 60)
    text = "before\n-----BEGIN PRIVATE KEY-----\n" + body + "\n-----END PRIVATE KEY-----\nafter"
    fs = eng.analyze(text)
    assert [f.entity_type for f in fs] == ["PEM_PRIVATE_KEY"]
    assert text[fs[0].start :].startswith("-----BEGIN") and text[: fs[0].end].endswith("KEY-----")


def test_redact_many_matches_redact(engine):
    texts = ["claude-opus-4-1-20250805", "call 415-555-2671", "Barack Obama spoke", "", "ok"]
    many = engine.redact_many(texts)
    assert [r.text for r in many] == [engine.redact(t).text for t in texts]
    assert many[0].text is texts[0]


def test_thread_pool(engine):
    texts = [f"Mail user{i}@example.org, Barack Obama, 415-555-26{i % 10}1" for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(engine.redact, texts))
    assert all("example.org" not in r.text for r in results)
    assert [r.text for r in results] == [engine.redact(t).text for t in texts]


SETTINGS_ERRORS = [
    ("unknown_field", {"entitiez": []}, "entitiez"),
    ("unknown_entity", {"entities": ["NOPE"]}, "unknown entities"),
    ("bad_operator", {"operators": {"PERSON": {"type": "shred"}}}, "shred"),
    ("bad_mask_param", {"operators": {"PERSON": {"type": "mask", "chars_to_keep": -1}}}, "chars_to_keep"),
    ("threshold_range", {"thresholds": {"PERSON": 1.5}}, "between 0 and 1"),
    ("bad_regex", {"custom": [{"name": "x", "entity": "X_Y", "regex": "("}]}, "invalid regex"),
    ("regex_and_deny", {"custom": [{"name": "x", "entity": "X_Y", "regex": "a+", "deny_list": ["b"]}]},
     "exactly one"),
    ("lower_entity", {"custom": [{"name": "x", "entity": "ticket", "regex": "a+"}]}, "UPPER_SNAKE"),
    ("hash_env_name", {"hash_key_env": "not valid"}, "hash_key_env"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in SETTINGS_ERRORS],
                         ids=[c[0] for c in SETTINGS_ERRORS])
def test_settings_errors_are_clear(data, message):
    with pytest.raises(ValidationError) as err:
        DetectionSettings(**data)
    assert message in str(err.value)


def test_settings_defaults_and_schema():
    s = DetectionSettings()
    assert s.entities == list(ENTITIES) and s.operator("PERSON").type == "replace"
    schema = DetectionSettings.model_json_schema()
    assert "operators" in schema["properties"] and schema["additionalProperties"] is False
