"""Operators: replace, mask, hash, pseudonym, block."""

from __future__ import annotations

import re

import pytest
from egress_gateway.detection.operators import PseudonymStore, mask_value

TEXT = "Mail jane.doe@example.org or call 415-555-2671, card 4111-1111-1111-1111."

OPERATOR_CASES = [
    ("replace_default", {}, "EMAIL_ADDRESS", r"^Mail <EMAIL_ADDRESS> or"),
    ("replace_custom_value", {"EMAIL_ADDRESS": {"type": "replace", "new_value": "[{entity}]"}},
     "EMAIL_ADDRESS", r"^Mail \[EMAIL_ADDRESS\] or"),
    ("mask_card_last4", {"CREDIT_CARD": {"type": "mask", "chars_to_keep": 4, "from_end": True}},
     "CREDIT_CARD", r"card \*\*\*\*-\*\*\*\*-\*\*\*\*-1111\.$"),
    ("mask_from_start", {"CREDIT_CARD": {"type": "mask", "chars_to_keep": 4, "from_end": False,
                                         "masking_char": "#"}},
     "CREDIT_CARD", r"card 4111-####-####-####\.$"),
    ("hash", {"EMAIL_ADDRESS": {"type": "hash"}}, "EMAIL_ADDRESS", r"^Mail <EMAIL_ADDRESS:[0-9a-f]{12}> or"),
    ("hash_length", {"EMAIL_ADDRESS": {"type": "hash", "length": 16}}, "EMAIL_ADDRESS",
     r"^Mail <EMAIL_ADDRESS:[0-9a-f]{16}> or"),
    ("pseudonym", {"EMAIL_ADDRESS": {"type": "pseudonym"}}, "EMAIL_ADDRESS", r"^Mail <EMAIL_ADDRESS_1> or"),
    ("block", {"PHONE_NUMBER": {"type": "block"}}, "PHONE_NUMBER", r"call <PHONE_NUMBER>,"),
    ("default_key", {"default": {"type": "mask", "chars_to_keep": 0}}, "EMAIL_ADDRESS",
     r"^Mail \*\*\*\*\.\*\*\*@\*\*\*\*\*\*\*\.\*\*\* or"),
]


@pytest.mark.parametrize(
    ("operators", "entity", "pattern"), [c[1:] for c in OPERATOR_CASES], ids=[c[0] for c in OPERATOR_CASES]
)
def test_operator(make_engine, operators, entity, pattern):
    res = make_engine(operators=operators).redact(TEXT, session="s1")
    assert re.search(pattern, res.text), res.text
    assert res.counts[entity] == 1
    assert "jane.doe@example.org" not in res.text or entity != "EMAIL_ADDRESS"


def test_block_reported_and_values_not_in_result(make_engine):
    eng = make_engine(operators={"PEM_PRIVATE_KEY": {"type": "block"}})
    text = (
        "key:\n-----BEGIN PRIVATE KEY-----\n"
        "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA12FhURMjPmqRNZZl"
        "\n-----END PRIVATE KEY-----\nthanks"
    )
    res = eng.redact(text)
    assert res.blocked == {"PEM_PRIVATE_KEY"}
    assert "MIIBVQ" not in res.text and res.text.endswith("<PEM_PRIVATE_KEY>\nthanks")
    assert res.counts == {"PEM_PRIVATE_KEY": 1}
    assert all(not hasattr(f, "value") for f in res.findings)


def test_hash_is_keyed_and_stable(make_engine, monkeypatch):
    ops = {"EMAIL_ADDRESS": {"type": "hash"}}
    monkeypatch.setenv("TEST_HASH_KEY_A", "secret-a")
    monkeypatch.setenv("TEST_HASH_KEY_B", "secret-b")
    a = make_engine(operators=ops, hash_key_env="TEST_HASH_KEY_A")
    b = make_engine(operators=ops, hash_key_env="TEST_HASH_KEY_B")
    t = "to jane.doe@example.org"
    assert a.redact(t).text == a.redact(t).text  # stable within a deployment
    assert a.redact(t).text != b.redact(t).text  # depends on the gateway secret
    import hashlib

    plain = hashlib.sha256(b"jane.doe@example.org").hexdigest()[:12]
    assert plain not in a.redact(t).text  # not a bare (dictionary-reversible) hash


def test_pseudonyms_stable_within_session_and_not_shared(make_engine):
    eng = make_engine(operators={"EMAIL_ADDRESS": {"type": "pseudonym"}})
    t1 = "a@example.org then b@example.org then a@example.org"
    r1 = eng.redact(t1, session="alpha").text
    assert r1 == "<EMAIL_ADDRESS_1> then <EMAIL_ADDRESS_2> then <EMAIL_ADDRESS_1>"
    assert eng.redact("b@example.org", session="alpha").text == "<EMAIL_ADDRESS_2>"
    assert eng.redact("b@example.org", session="beta").text == "<EMAIL_ADDRESS_1>"
    # no session: every call starts afresh
    assert eng.redact("b@example.org").text == "<EMAIL_ADDRESS_1>"


def test_pseudonym_store_is_bounded():
    store = PseudonymStore(max_sessions=2, max_values=3)
    for s in ("a", "b", "c"):
        store.table(s).label("PERSON", s)
    assert len(store) == 2
    t = store.table("z")
    for i in range(5):
        t.label("PERSON", str(i))
    assert len(t) == 3


MASK_CASES = [
    ("keep_last4", "4111-1111-1111-1111", 4, True, "*", "****-****-****-1111"),
    ("keep_first2", "AB12", 2, False, "x", "ABxx"),
    ("keep_none", "abc", 0, True, "*", "***"),
    ("keep_more_than_len", "ab", 5, True, "*", "ab"),
]


@pytest.mark.parametrize(("value", "keep", "from_end", "char", "expected"),
                         [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES])
def test_mask_value(value, keep, from_end, char, expected):
    assert mask_value(value, keep, from_end, char) == expected
