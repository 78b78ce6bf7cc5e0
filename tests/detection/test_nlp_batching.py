"""`SharedNlp.artifacts`: NER texts of concurrent callers go through one spaCy batch."""

from __future__ import annotations

import threading
import time

import pytest
from egress_gateway.detection import nlp as nlp_mod
from egress_gateway.detection.nlp import get_heavy

TEXTS = ["Jane Roe flew from Boston to Paris last Tuesday.",
         "Please forward this to Dr. Ahmed Khan at the Lisbon office.",
         "nothing to see here, just lower case words and numbers 12345",
         "Angela Merkel met Emmanuel Macron in Berlin on 3 March 2021."]


def _ents(art):
    return [(e.start_char, e.end_char, e.label_) for e in art.entities]


@pytest.fixture(scope="module")
def heavy():
    return get_heavy("sm")


def _concurrently(heavy, calls):
    """Run `calls` (lists of texts) in threads that all queue while the lock is held."""
    results: dict[int, object] = {}

    def call(i, texts):
        try:
            results[i] = heavy.artifacts(texts, [True] * len(texts))
        except BaseException as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=call, args=(i, t)) for i, t in enumerate(calls)]
    with heavy.lock:  # every caller queues behind the lock: one batch takes them all
        for t in threads:
            t.start()
        for _ in range(500):
            if len(heavy._waiting) == len(calls):
                break
            time.sleep(0.01)
        assert len(heavy._waiting) == len(calls)
    for t in threads:
        t.join(30)
    return [results[i] for i in range(len(calls))]


def test_concurrent_callers_share_one_batch_with_the_same_entities(heavy, monkeypatch):
    alone = [_ents(heavy.artifacts([t], [True])[0]) for t in TEXTS]
    batches = []
    pipe = heavy.nlp.pipe

    def counting_pipe(texts, **kw):
        texts = list(texts)
        batches.append(len(texts))
        return pipe(texts, **kw)

    monkeypatch.setattr(heavy.nlp, "pipe", counting_pipe)
    got = _concurrently(heavy, [[t] for t in TEXTS])
    assert batches == [len(TEXTS)]
    assert [_ents(r[0]) for r in got] == alone
    assert any(alone)  # the texts do carry entities


def test_a_batch_holds_at_most_the_char_budget(heavy, monkeypatch):
    batches = []
    pipe = heavy.nlp.pipe

    def counting_pipe(texts, **kw):
        texts = list(texts)
        batches.append(len(texts))
        return pipe(texts, **kw)

    monkeypatch.setattr(heavy.nlp, "pipe", counting_pipe)
    monkeypatch.setattr(nlp_mod, "NER_BATCH_CHARS", 2 * max(map(len, TEXTS)))
    got = _concurrently(heavy, [[t] for t in TEXTS])
    assert sum(batches) == len(TEXTS) and max(batches) <= 2 and len(batches) >= 2
    assert all(not isinstance(r, BaseException) for r in got)


def test_a_failing_batch_fails_every_caller_in_it(heavy, monkeypatch):
    def broken_pipe(texts, **kw):
        raise RuntimeError("spaCy broke")

    monkeypatch.setattr(heavy.nlp, "pipe", broken_pipe)
    got = _concurrently(heavy, [[t] for t in TEXTS[:3]])
    assert all(isinstance(r, RuntimeError) for r in got)
    assert heavy._waiting == []


def test_tokens_only_texts_are_not_sent_to_ner(heavy, monkeypatch):
    monkeypatch.setattr(heavy.nlp, "pipe", lambda *a, **kw: pytest.fail("NER ran"))
    art = heavy.artifacts(["Jane Roe"], [False])[0]
    assert art.entities == [] and [t.text for t in art.tokens] == ["Jane", "Roe"]
