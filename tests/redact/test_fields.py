"""Field modes: the pure parts (formats, mode precedence, the walker's per-mode batches)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
from egress_gateway.redact import fields
from egress_gateway.redact.jsonpath import Scope
from egress_gateway.redact.walker import TextJob

SIG = "EqQBCkgIARABGAIiQGVyb3VuZCB0aGUgd29ybGQgaW4gZWlnaHR5IGRheXMgMTIzNDU2Nzg5MA=="


CHECKS = [
    # (name, mode, value, expected kind or "refuse")
    ("prose", "prose", "Jane wrote", "prose"),
    ("instructions", "instructions", "You are a bot", "plain"),
    ("signed", "signed", "I think", "signed"),
    ("skip", "skip", "anything", None),
    ("model-dated", "format:model", "claude-sonnet-4-5-20250929", "signed"),
    ("model-alias", "format:model", "claude-3-5-sonnet-latest", "signed"),
    ("model-dotted", "format:model", "claude-2.1", "signed"),
    ("model-ssn", "format:model", "claude-219-09-9999", "refuse"),
    ("model-email", "format:model", "claude-x jane@example.com", "refuse"),
    ("model-other-vendor", "format:model", "gpt-4o", "refuse"),
    ("id-tool-use", "format:id", "toolu_01A09q90qw90lq917835lq9", "signed"),
    ("id-space", "format:id", "toolu 01", "refuse"),
    ("id-email", "format:id", "toolu_jane@example.com", "refuse"),
    ("id-too-long", "format:id", "x" * 129, "refuse"),
    ("base64-signature", "format:base64", SIG, "signed"),
    ("base64-short", "format:base64", "AKIAQ3EGRTLX7H2KP4MZ", "refuse"),
    ("base64-one-case", "format:base64", "A" * 64, "refuse"),
    ("base64-bad-length", "format:base64", SIG[:-1], "refuse"),
    ("base64-inner-padding", "format:base64", "Ab1=" + SIG, "refuse"),
    ("base64-with-text", "format:base64", SIG + " 219-09-9999", "refuse"),
    ("empty-signature", "format:base64", "", None),
    ("empty-id", "format:id", "", None),
    ("word-role", "format:word", "assistant", None),
    ("word-upper", "format:word", "User", "refuse"),
    ("media-type", "format:media_type", "image/png", None),
    ("media-type-junk", "format:media_type", "image/png; jane", "refuse"),
    ("data-base64", "data", SIG, None),
    ("data-text", "data", "Plain text document by Jane Roe", "prose"),
    ("data-aws-key", "data", "AKIAQ3EGRTLX7H2KP4MZ", "prose"),
]


@pytest.mark.parametrize("mode, value, expected", [c[1:] for c in CHECKS],
                         ids=[c[0] for c in CHECKS])
def test_check(mode, value, expected):
    if expected == "refuse":
        with pytest.raises(ValueError, match="not in the format"):
            fields.check(mode, value)
        return
    got = fields.check(mode, value)
    assert (got[0] if got else None) == expected


def test_id_is_scanned_with_underscores_as_spaces():
    assert fields.check("format:id", "toolu_219-09-9999") == (
        "signed", "toolu_219-09-9999\ntoolu 219-09-9999")


@pytest.mark.parametrize("mode, problem", [
    ("loud", "unknown field mode"), ("format:", "unknown format"), ("format:ssn", "unknown format"),
    ("", "unknown field mode"),
], ids=["unknown", "empty-format", "unknown-format", "empty"])
def test_parse_mode_rejects(mode, problem):
    with pytest.raises(ValueError, match=problem):
        fields.parse_mode(mode)


PRECEDENCE = [
    # (name, fields, path, mode)
    ("unnamed-is-prose", [("a", "instructions")], ("b",), "prose"),
    ("ancestor", [("a", "instructions")], ("a", "b", 0), "instructions"),
    ("first-listed-deeper", [("a.b", "signed"), ("a", "instructions")], ("a", "b"), "signed"),
    ("first-listed-ancestor", [("a", "instructions"), ("a.b", "signed")], ("a", "b"), "instructions"),
    ("sibling-keeps-ancestor", [("a.b", "signed"), ("a", "instructions")], ("a", "c"),
     "instructions"),
    ("wildcards", [("m[*].content[*].id", "format:id")], ("m", 3, "content", 0, "id"), "format:id"),
    ("deep", [("**.thinking", "signed")], ("x", 0, "y", "thinking"), "signed"),
    ("index", [("m[0]", "skip")], ("m", 1), "prose"),
]


@pytest.mark.parametrize("modes, path, mode", [c[1:] for c in PRECEDENCE],
                         ids=[c[0] for c in PRECEDENCE])
def test_mode_precedence(modes, path, mode):
    assert Scope(None, None, modes).mode_at(path) == mode


# --- the walker: one batch per analysis kind ---------------------------------------------------
@dataclass
class R:
    text: str
    findings: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    blocked: set = field(default_factory=set)


class Engine:
    """E-mail addresses by pattern; 'Jane' only by "NER" (when prose is not False)."""

    def __init__(self):
        self.calls = []

    def redact_many(self, texts, prose=None):
        self.calls.append((list(texts), prose))
        out = []
        for t in texts:
            c = Counter()
            new, n = re.subn(r"\S+@\S+\.\w+", "<EMAIL_ADDRESS>", t)
            c["EMAIL_ADDRESS"] += n
            if prose is not False:
                new, n = re.subn(r"Jane", "<PERSON>", new)
                c["PERSON"] += n
            c = +c
            out.append(R(new, [1] * sum(c.values()), dict(c)) if c else R(t))
        return out


MODES = [("system", "instructions"), ("model", "format:model"), ("m[*].id", "format:id"),
         ("m[*].thinking", "signed"), ("m[*].sig", "format:base64"), ("m[*].data", "data"),
         ("skipped", "skip")]


def run(doc: dict):
    eng = Engine()
    job = TextJob()
    raw = json.dumps(doc)
    node = job.add_json(raw, Scope(None, None, MODES))
    job.run(eng.redact_many)
    new = job.result(node)
    return job, eng, json.loads(new) if new else doc


def test_instructions_are_analysed_without_ner_and_rewritten():
    job, eng, new = run({"system": "Jane: write to a@b.com", "text": "Jane at a@b.com"})
    assert new == {"system": "Jane: write to <EMAIL_ADDRESS>", "text": "<PERSON> at <EMAIL_ADDRESS>"}
    assert sorted(eng.calls, key=repr) == [(["Jane at a@b.com"], None),
                                           (["Jane: write to a@b.com"], False)]
    assert not job.refused


def test_prose_only_is_one_call_as_before():
    _, eng, _ = run({"text": "Jane at a@b.com", "other": ["x y z"]})
    assert eng.calls == [(["Jane at a@b.com", "x y z"], None)]


def test_a_finding_in_a_signed_field_refuses_and_is_not_rewritten():
    doc = {"m": [{"thinking": "mail a@b.com", "sig": SIG, "id": "toolu_01"}]}
    job, _, new = run(doc)
    assert new == doc
    assert job.refused == [("m[*].thinking", "carries EMAIL_ADDRESS")]
    assert job.refused_entities == {"EMAIL_ADDRESS"} and not job.counts


def test_a_value_out_of_its_format_refuses_naming_the_field():
    job, eng, _ = run({"model": "claude-sonnet-4-5 a@b.com", "m": [{"id": "toolu 01"}]})
    assert sorted(f for f, _ in job.refused) == ["m[*].id", "model"]
    assert all("a@b.com" not in w for _, w in job.refused)  # never values
    assert not any("a@b.com" in t for texts, _ in eng.calls for t in texts)


def test_ids_in_format_are_scanned_with_patterns():
    job, _, _ = run({"m": [{"id": "toolu_x@y.com"}]})
    assert job.refused and job.refused[0][0] == "m[*].id"  # '@' is out of format already
    job, eng, _ = run({"m": [{"id": "toolu_01A09q90"}], "model": "claude-opus-4-1"})
    assert not job.refused
    assert ["toolu_01A09q90\ntoolu 01A09q90", "claude-opus-4-1"] in [c[0] for c in eng.calls]


def test_base64_data_is_kept_and_text_data_is_prose():
    job, eng, new = run({"m": [{"data": SIG}, {"data": "Jane's notes: a@b.com"}], "skipped": "a@b.com"})
    assert new["m"][0]["data"] == SIG and new["m"][1]["data"] == "<PERSON>'s notes: <EMAIL_ADDRESS>"
    assert new["skipped"] == "a@b.com"
    assert all(SIG not in t for texts, _ in eng.calls for t in texts)


def test_json_inside_an_instructions_string_keeps_the_mode():
    job, eng, new = run({"system": json.dumps({"note": "Jane a@b.com"})})
    assert json.loads(new["system"]) == {"note": "Jane <EMAIL_ADDRESS>"}
    assert eng.calls == [(["Jane a@b.com"], False)]


def test_signed_extra_texts_refuse_with_their_label():
    job = TextJob()
    job.add_signed("docs.example.com\n/a\njane@x.com", "$.mcp_servers[0].url")
    job.run(Engine().redact_many)
    assert job.refused == [("$.mcp_servers[0].url", "carries EMAIL_ADDRESS")]


def test_the_engine_runs_no_ner_when_told_even_with_ner_always():
    from egress_gateway.detection import DetectionEngine
    from egress_gateway.detection.settings import DetectionSettings

    engine = DetectionEngine.get(DetectionSettings(ner="always"))
    assert [f.entity_type for f in engine.analyze("Barack Obama met me.", prose=None)] == ["PERSON"]
    assert engine.analyze("Barack Obama met me.", prose=False) == []
