"""Work skipped because it cannot change a finding: NER on texts that cannot hold a name, the
phone matcher on bare digit runs that no context word can lift over the threshold."""

from __future__ import annotations

import phonenumbers
import pytest
from egress_gateway.detection import DetectionSettings
from egress_gateway.detection.chunkanalysis import ChunkAnalyzer
from egress_gateway.detection.chunks import may_hold_name
from egress_gateway.detection.recognizers import pii

NAME_GATE = [
    # (case, text, may hold a name)
    ("lower case only", "can you draft a short reply for the team", False),
    ("sentence-initial function word", "Can you draft a short reply?", False),
    ("every sentence starts with one", "Please send it. The file is here! What now", False),
    ("pronoun I anywhere", "I think i said I'm fine and I'll go", False),
    ("after a bullet or quote", '- The list\n* Then more\n"What is it', False),
    ("after a colon", "note: The build is green", False),
    ("lower-case names are dropped by the recognizer", "call john smith in paris", False),
    ("caseless script", "李明 在 北京", False),
    ("lower-case non-ASCII", "über straße", False),
    ("a capitalised noun at the start", "Deployment failed on build 4931421.", True),
    ("a name-like starter is not ignored", "Will you come", True),
    ("a name mid-sentence", "the meeting with Jane moved", True),
    ("a function word mid-sentence", "ask them The way", True),
    ("capital inside a word", "buy an iPhone", True),
    ("all caps", "ok THE END", True),
    ("apostrophe name", "ask o'Brien", True),
    ("non-ASCII capital", "Émile wrote", True),
    ("title after a sentence end", "thanks. Mr smith", True),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in NAME_GATE],
                         ids=[c[0] for c in NAME_GATE])
def test_may_hold_name(text, expected):
    assert may_hold_name(text) is expected


@pytest.fixture(scope="module")
def analyzer() -> ChunkAnalyzer:
    return ChunkAnalyzer(DetectionSettings())


@pytest.mark.parametrize("text", [c[1] for c in NAME_GATE if not c[2]],
                         ids=[c[0] for c in NAME_GATE if not c[2]])
def test_ner_adds_nothing_where_no_name_can_be(analyzer, text):
    """The gate is exact on these texts: NER run anyway finds nothing the recognizer keeps."""
    (with_ner, without), _ = analyzer.run([(text, text, True, None), (text, text, False, None)], [])
    assert with_ner == without


def test_gate_skips_ner_but_not_where_dates_are_wanted(make_engine):
    assert not make_engine()._use_ner("see you tomorrow in the office", None)
    dates = make_engine(entities=["PERSON", "DATE_TIME"])
    assert dates._use_ner("see you tomorrow in the office", None)
    assert [f.entity_type for f in dates.analyze("see you tomorrow", prose=True)] == ["DATE_TIME"]


def test_gate_still_finds_names(engine):
    assert [f.entity_type for f in engine.analyze("the meeting with Barack Obama moved")] == [
        "PERSON"]


PHONES = [
    # (case, text, outside context words, PHONE_NUMBER found)
    ("bare id, no context", "ticket #4931421 is closed", (), False),
    ("bare run, context word", "my mobile is 4155552671 today", (), True),
    ("bare run, a stop word is no context", "call me on 4155552671 today", (), False),
    ("bare run, context word inside another word", "locally 4155552671", (), True),
    ("bare run, context from the field key", "4155552671", ("phone",), True),
    ("formatted, no context", "reach (415) 555-2671 or 415-555-2671", (), True),
    ("international with a space after +", "ring + 4155552671", (), False),
    ("international", "+1 415 555 2671", (), True),
]


@pytest.mark.parametrize(("text", "context", "found"), [c[1:] for c in PHONES],
                         ids=[c[0] for c in PHONES])
def test_bare_run_skip_changes_no_finding(analyzer, text, context, found):
    phone = next(r for r in analyzer._analyzer.registry.recognizers
                 if isinstance(r, pii.GatewayPhoneRecognizer))
    job = [(text, text, False, context or None)]
    (skipping,), _ = analyzer.run(job, [])
    phone._bare_needs_context = False
    try:
        (full,), _ = analyzer.run(job, [])
    finally:
        phone._bare_needs_context = True
    assert skipping == full
    assert any(e == "PHONE_NUMBER" for e, *_ in skipping) is found


def test_bare_run_without_context_never_reaches_the_matcher(analyzer, monkeypatch):
    calls = []
    real = phonenumbers.PhoneNumberMatcher

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(pii.phonenumbers, "PhoneNumberMatcher", counting)
    analyzer.run([("build 4931421 and order 5550001234 shipped", "", False, None)], [])
    assert calls == []
    analyzer.run([("phone 4931421", "", False, None)], [])
    assert calls  # a context word: the matcher decides


def test_low_phone_threshold_keeps_bare_runs():
    low = ChunkAnalyzer(DetectionSettings(thresholds={"PHONE_NUMBER": 0.3}))
    (found,), _ = low.run([("ticket 4155552671 closed", "", False, None)], [])
    assert [e for e, *_ in found] == ["PHONE_NUMBER"]


KEYWORD_TEXTS = [
    # (case, text, a key word present)
    ("prose", "Ship it to Jane Roe, 10 Market Street, by Tuesday.", False),
    ("assignment", 'db_password = "Tr0ub4dor&3xyz"', True),
    ("upper case key", 'SECRET: "x9Kq2LmN8pR4sT6v"', True),
    ("comparison", 'if ("s3cr3tValue9" == my_api_key) {}', True),
    ("spanish", "contraseña: 'Qw3rtyUiop9'", True),
    ("near miss", "pass the pwdx value along; apikey is unset", True),
]


@pytest.mark.parametrize(("text", "has_word"), [c[1:] for c in KEYWORD_TEXTS],
                         ids=[c[0] for c in KEYWORD_TEXTS])
def test_keyword_prefilter_changes_no_finding(text, has_word):
    from egress_gateway.detection.entities import ENTITIES
    from egress_gateway.detection.recognizers.detect_secrets_backend import DetectSecretsRecognizer

    rec = DetectSecretsRecognizer(set(ENTITIES))
    assert rec._keyword_words is not None  # detect-secrets' regexes all embed its word list
    assert bool(rec._keyword_words.search(text)) is has_word
    fast = sorted((r.entity_type, r.start, r.end) for r in rec.analyze(text, list(ENTITIES)))
    rec._keyword_words = None
    full = sorted((r.entity_type, r.start, r.end) for r in rec.analyze(text, list(ENTITIES)))
    assert fast == full

