"""Property-based tests (hypothesis) of the JSON redaction path (walker + rebuild).

Output parses iff the input parsed; the structure (keys, nesting, non-string values) is
preserved; no detected value survives; nothing found means the bytes are untouched.
"""

from __future__ import annotations

import json
import re

from egress_gateway.redact.addon import scan_message
from egress_gateway.redact.settings import DirectionRules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redact_fakes import FakeEngine

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
RULES = DirectionRules()

plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="@"),
                     max_size=20)
emails = st.sampled_from(["ann@example.com", "bo.b+x@mail.example.org", "z@q.io"])
leaf_text = st.one_of(plain_text, st.builds(lambda a, e, b: a + " " + e + " " + b,
                                            plain_text, emails, plain_text))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | leaf_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(plain_text, inner, max_size=5),
    max_leaves=25,
)


def scan(body: bytes):
    return scan_message(body, "application/json", None, None, RULES, 10_000_000,
                        FakeEngine().redact_many)


def redacted(value):
    if isinstance(value, str):
        return EMAIL.sub("<EMAIL_ADDRESS>", value)
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from([None, 2]))
def test_json_structure_preserved_and_nothing_survives(value, indent):
    body = json.dumps(value, indent=indent, ensure_ascii=indent is None).encode()
    out = scan(body)
    assert out.refusal is None
    new = out.body if out.body is not None else body
    doc = json.loads(new)  # output parses
    assert doc == redacted(value)  # same structure, every e-mail replaced
    if out.body is None:
        assert not EMAIL.search(json.dumps(value, ensure_ascii=False))  # untouched only if clean


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_becomes_json_and_never_raises(body):
    out = scan(body)
    try:
        json.loads(body)
        parsed = True
    except ValueError:
        parsed = False
    new = out.body if out.body is not None else body
    if not parsed and out.refusal is None:
        try:
            json.loads(new)
            became_json = True
        except ValueError:
            became_json = False
        assert not became_json or new == body  # output parses iff input parsed
