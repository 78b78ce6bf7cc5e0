"""`rewrite`: the gateway's own span rewriting gives what Presidio's anonymizer gave."""

from __future__ import annotations

import pytest
from egress_gateway.detection.findings import Finding
from egress_gateway.detection.rewrite import merge_space_separated, rewrite
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

F = Finding
CASES = {
    "nothing": ("plain text", []),
    "one": ("mail jane@x.com now", [F("EMAIL_ADDRESS", 5, 15, 1.0)]),
    "same type, one space": ("Jane Roe wrote", [F("PERSON", 0, 4, .8), F("PERSON", 5, 8, .8)]),
    "same type, three spaces": ("Jane   Roe", [F("PERSON", 0, 4, .8), F("PERSON", 7, 10, .8)]),
    "same type, a tab": ("Jane\tRoe", [F("PERSON", 0, 4, .8), F("PERSON", 5, 8, .8)]),
    "same type, a comma": ("Jane, Roe", [F("PERSON", 0, 4, .8), F("PERSON", 6, 9, .8)]),
    "same type, touching": ("JaneRoe", [F("PERSON", 0, 4, .8), F("PERSON", 4, 7, .8)]),
    "other types, one space": ("Jane Paris", [F("PERSON", 0, 4, .8), F("LOCATION", 5, 10, .8)]),
    "three in a row": ("A B C d", [F("PERSON", 0, 1, .8), F("PERSON", 2, 3, .8),
                                   F("PERSON", 4, 5, .8)]),
    "at both ends": ("x@y.io and z@w.io", [F("EMAIL_ADDRESS", 0, 6, 1), F("EMAIL_ADDRESS", 11, 17, 1)]),
    "unsorted input": ("Jane Roe", [F("PERSON", 5, 8, .8), F("PERSON", 0, 4, .8)]),
}


def _presidio(text, findings, fn):
    results = [RecognizerResult(f.entity_type, f.start, f.end, f.score) for f in findings]
    ops = {f.entity_type: OperatorConfig("custom", {"lambda": fn(f.entity_type)}) for f in findings}
    return AnonymizerEngine().anonymize(text=text, analyzer_results=results, operators=ops).text


@pytest.mark.parametrize("name", CASES)
def test_rewrite_matches_presidio(name):
    text, findings = CASES[name]

    def fn(entity):
        return lambda v: f"<{entity}:{len(v)}>"

    rewriters = {f.entity_type: fn(f.entity_type) for f in findings}
    assert rewrite(text, findings, rewriters) == _presidio(text, findings, fn)


def test_merged_spans():
    assert merge_space_separated("Jane Roe", [F("PERSON", 0, 4, .8), F("PERSON", 5, 8, .8)]) == [
        ("PERSON", 0, 8)]
