"""The JSON walker: every string value and key at any depth, bytes kept where unchanged."""

from __future__ import annotations

import json

import pytest
from egress_gateway.redact.jsonpath import Scope
from egress_gateway.redact.walker import JsonError, JsonTrailing, TextJob, string_spans
from redact_fakes import FakeEngine, fake_redact_many


def redact_json(text: str, scope: Scope | None = None):
    job = TextJob()
    node = job.add_json(text, scope) if scope else job.add_json(text)
    job.run(fake_redact_many)
    return job.result(node), job


CASES = [
    ("flat", '{"a": "x@example.com"}', '{"a": "<EMAIL_ADDRESS>"}'),
    ("nested lists of objects",
     '{"m":[{"c":[{"t":"mail a@b.co"},{"t":"ok"}]},[["z@y.io"]]]}',
     '{"m":[{"c":[{"t":"mail <EMAIL_ADDRESS>"},{"t":"ok"}]},[["<EMAIL_ADDRESS>"]]]}'),
    ("top-level list", '["a@b.co", 1, null]', '["<EMAIL_ADDRESS>", 1, null]'),
    ("top-level string", '"a@b.co"', '"<EMAIL_ADDRESS>"'),
    ("keys rewritten", '{"a@b.co": "a@b.co"}', '{"<EMAIL_ADDRESS>": "<EMAIL_ADDRESS>"}'),
    ("nested key rewritten", '{"users": {"x@y.io": {"n": 1}}}', '{"users": {"<EMAIL_ADDRESS>": {"n": 1}}}'),
    ("escaped key decoded", '{"a\\u0040b.co": 1}', '{"<EMAIL_ADDRESS>": 1}'),
    ("NaN and Infinity accepted", '{"n": NaN, "i": -Infinity, "s": "a@b.co"}',
     '{"n": NaN, "i": -Infinity, "s": "<EMAIL_ADDRESS>"}'),
    ("raw control character in a string", '{"s": "tab\x01 a@b.co"}',
     '{"s": "tab\\u0001 <EMAIL_ADDRESS>"}'),
    ("whitespace and order kept", '{ "z" :\n  "a@b.co" ,\t"a": 1 }',
     '{ "z" :\n  "<EMAIL_ADDRESS>" ,\t"a": 1 }'),
    ("huge ints and floats kept",
     '{"n": 1234567890123456789012345678901234567890, "f": 1.10, "e": 1E+400, "s": "a@b.co"}',
     '{"n": 1234567890123456789012345678901234567890, "f": 1.10, "e": 1E+400, '
     '"s": "<EMAIL_ADDRESS>"}'),
    ("unicode", '{"t": "caf\\u00e9 \u00e9\u4e2d\U0001F600 a@b.co", "u": "\\ud83d\\ude00"}',
     '{"t": "caf\u00e9 \u00e9\u4e2d\U0001F600 <EMAIL_ADDRESS>", "u": "\\ud83d\\ude00"}'),
    ("escapes", '{"t": "line\\nx@y.co\\t\\"q\\""}', '{"t": "line\\n<EMAIL_ADDRESS>\\t\\"q\\""}'),
    ("encoded JSON in a string (tool-call arguments)",
     '{"arguments": "{\\"to\\": \\"a@b.co\\", \\"n\\": 12345678901234567890}"}',
     '{"arguments": "{\\"to\\": \\"<EMAIL_ADDRESS>\\", \\"n\\": 12345678901234567890}"}'),
    ("doubly encoded JSON",
     '{"a": "{\\"b\\": \\"[\\\\\\"a@b.co\\\\\\"]\\"}"}',
     '{"a": "{\\"b\\": \\"[\\\\\\"<EMAIL_ADDRESS>\\\\\\"]\\"}"}'),
    ("string that looks like JSON but is not", '{"a": "[a@b.co] said {hi}"}',
     '{"a": "[<EMAIL_ADDRESS>] said {hi}"}'),
    ("empty containers", '{"a": [], "b": {}, "c": [{}], "d": "a@b.co"}',
     '{"a": [], "b": {}, "c": [{}], "d": "<EMAIL_ADDRESS>"}'),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in CASES], ids=[c[0] for c in CASES])
def test_rewrite(text, expected):
    new, _ = redact_json(text)
    assert new == expected
    json.loads(new)  # valid JSON out


@pytest.mark.parametrize("text", [
    '{"a": "nothing here", "n": 1.0000000000000001, "big": 123456789012345678901234567890}',
    '[1, 2, {"x": ["y", "z"]}]',
    '{"arguments": "{\\"q\\": \\"no pii\\"}"}',
], ids=["plain", "numbers-only", "encoded-no-pii"])
def test_nothing_found_means_no_rewrite(text):
    new, job = redact_json(text)
    assert new is None and not job.counts


@pytest.mark.parametrize("text", [
    "", "{", '{"a": 1,}', "[1,]", '{"a" 1}', "{'a': 1}", '{"a": 1} x', '{"a": 01}',
    '{"a": tru}', "[1 2]", '{"a": "\\x"}', '{1: 2}', "]", '{"a": nan}',
], ids=["empty", "truncated", "trailing-comma-obj", "trailing-comma-arr", "missing-colon",
        "single-quotes", "extra-data", "leading-zero", "bad-literal",
        "missing-comma", "bad-escape", "number-key", "close-only", "lowercase-nan"])
def test_invalid_json_raises(text):
    with pytest.raises(JsonError):
        string_spans(text)


@pytest.mark.parametrize("text,at", [
    ('{"a": 1} x', 9), ('[1]\n{"b": "a@b.co"}', 4), ('"s"  tail', 5), ('{"a": 1} ]', 9),
], ids=["word", "second-document", "after-string", "stray-bracket"])
def test_trailing_data_says_where_it_starts(text, at):
    with pytest.raises(JsonTrailing) as e:
        string_spans(text)
    assert e.value.at == at


def test_valid_json_agrees_with_stdlib():
    doc = {"a": [1, {"b": "x", "c": [None, True, False, -1.5e3]}], "d": "é\n\"", "e": {}}
    text = json.dumps(doc, ensure_ascii=False)
    values = [v for _, _, v, _ in string_spans(text)]
    assert values == ["x", "é\n\""]


def test_100k_levels_of_nesting_scan_iteratively():
    depth = 100_000
    text = "[" * depth + '"a@b.co"' + "]" * depth
    new, job = redact_json(text)
    assert new == "[" * depth + '"<EMAIL_ADDRESS>"' + "]" * depth
    assert job.counts == {"EMAIL_ADDRESS": 1}
    deep_obj = '{"a":' * depth + '"a@b.co"' + "}" * depth
    new, _ = redact_json(deep_obj)
    assert new.count("<EMAIL_ADDRESS>") == 1


def test_one_batch_for_all_leaves():
    eng = FakeEngine()
    job = TextJob()
    a = job.add_json('{"x": ["a@b.co", "b", "{\\"c\\": \\"d@e.fr\\"}"]}')
    b = job.add_text("free text with f@g.de")
    job.run(eng.redact_many)
    assert len(eng.calls) == 1 and eng.calls[0] == ["a@b.co", "b", "d@e.fr", "free text with f@g.de"]
    assert job.result(a) == '{"x": ["<EMAIL_ADDRESS>", "b", "{\\"c\\": \\"<EMAIL_ADDRESS>\\"}"]}'
    assert job.result(b) == "free text with <EMAIL_ADDRESS>"
    assert job.counts == {"EMAIL_ADDRESS": 3}


ANTHROPIC = Scope(["messages[*].content"], ["messages[*].content[*].id", "**.type"])


def test_scope_limits_what_is_scanned():
    body = json.dumps({
        "model": "a@b.co",
        "system": [{"type": "text", "text": "maintainer a@b.co"}],
        "tools": [{"name": "t", "description": "mail a@b.co"}],
        "messages": [
            {"role": "user", "content": "to a@b.co"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "a@b.co", "input": {"to": "a@b.co"}}]},
        ],
    })
    eng = FakeEngine()
    job = TextJob()
    node = job.add_json(body, ANTHROPIC)
    job.run(eng.redact_many)
    assert eng.calls == [["to a@b.co", "a@b.co"]]  # nothing outside the scope reaches the engine
    out = json.loads(job.result(node))
    assert out["model"] == "a@b.co" and out["system"][0]["text"] == "maintainer a@b.co"
    assert out["tools"][0]["description"] == "mail a@b.co"
    assert out["messages"][0]["content"] == "to <EMAIL_ADDRESS>"
    block = out["messages"][1]["content"][0]
    assert block["id"] == "a@b.co" and block["input"]["to"] == "<EMAIL_ADDRESS>"


def test_scope_continues_into_encoded_json():
    body = json.dumps({"calls": [{"arguments": json.dumps({"to": "a@b.co", "cc": "c@d.co"})}]})
    new, _ = redact_json(body, Scope(["calls[*].arguments.to"]))
    args = json.loads(json.loads(new)["calls"][0]["arguments"])
    assert args == {"to": "<EMAIL_ADDRESS>", "cc": "c@d.co"}


def test_blocked_entities_are_reported():
    job = TextJob()
    job.add_json('{"k": "-----BEGIN PRIVATE KEY----- abc"}')
    job.run(fake_redact_many)
    assert job.blocked == {"PEM_PRIVATE_KEY"}


def test_real_engine_keeps_model_id_and_catches_pii(real_engine):
    body = json.dumps({"model": "claude-sonnet-4-5-20250929", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Email jane.doe@example.com now"}]}]})
    job = TextJob()
    node = job.add_json(body)
    job.run(lambda texts: real_engine.redact_many(texts, session="t"))
    out = json.loads(job.result(node))
    assert out["model"] == "claude-sonnet-4-5-20250929"
    assert out["messages"][0]["content"][0]["text"] == "Email <EMAIL_ADDRESS> now"
