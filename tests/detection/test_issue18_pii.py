"""Issue 18's PII rules, one table of true and one of false positives per rule."""

from __future__ import annotations

import pytest
from detection_helpers import found
from egress_gateway.detection.chunks import headline_copy

TRUE_POSITIVES = [
    # InternalEmailRecognizer: internal and reserved domains
    ("ops-oncall@payments.internal", "EMAIL_ADDRESS", "mail ops-oncall@payments.internal now"),
    ("x@corp.example", "EMAIL_ADDRESS", "from x@corp.example"),
    ("build-bot@ci.local", "EMAIL_ADDRESS", "build-bot@ci.local: done"),
    ("lena.fischer@eng.corp", "EMAIL_ADDRESS", "cc lena.fischer@eng.corp"),
    ("k.ito@home.lan", "EMAIL_ADDRESS", "<k.ito@home.lan>"),
    # GatewayPhoneRecognizer.SSN_SHAPE: SSNs with dots or spaces are SSNs, not phones
    ("078.05.1123", "US_SSN", "SSN 078.05.1123"),
    ("536 22 8726", "US_SSN", "social security number 536 22 8726"),
    # phones that look like rows of numbers but are not
    ("06 12 34 56 78", "PHONE_NUMBER", "Mobile: 06 12 34 56 78"),
    ("0490 75 40 81", "PHONE_NUMBER", "Phone: 0490 75 40 81"),
    # GatewayCreditCardRecognizer: Mastercard 2-series without a context word
    ("2221 0000 0000 0009", "CREDIT_CARD", "charge 2221 0000 0000 0009 today"),
    ("2720992700000014", "CREDIT_CARD", "number 2720992700000014"),
    ("3782 822463 10005", "CREDIT_CARD", "Charge 3782 822463 10005 for the plan."),
    # headline_copy: short all-caps lines go through NER
    ("LISBON", "LOCATION", "LISBON 2024-03-02"),
    ("BRAZIL", "LOCATION", "SOCCER - BRAZIL BEAT CHILE IN QUALIFIER"),
]

FALSE_POSITIVES = [
    # InternalEmailRecognizer: not addresses
    "file.local@2x.png",
    "see README.local and x@y",
    # GatewayPhoneRecognizer.TABLE_ROW: sports tables, lottery draws
    "Arsenal 12 9 2 1 27 9 29",
    "Rovers 10 7 2 1 19 8 23",
    "Lottery numbers: 07 19 23 31 42 48",
    # cards: a 2-series-looking number that fails Luhn, a timestamp
    "2221 0000 0000 0001",
    "ts 1733112000123",
    # headline_copy: identifiers keep their case
    "MAX_RETRIES=5",
]


@pytest.mark.parametrize(("value", "entity", "text"), TRUE_POSITIVES)
def test_true_positives(engine, value, entity, text):
    assert (entity, value) in found(engine, text)


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positives(engine, text):
    assert found(engine, text) == []


def test_headline_copy_keeps_length_and_identifiers():
    assert headline_copy("LONDON 1996-12-06") == "London 1996-12-06"
    assert headline_copy("AWS_REGION EU") is None or "AWS_REGION" in headline_copy("AWS_REGION EU")
    assert headline_copy("London is big") is None
    assert headline_copy("A" * 200) is None


PLACE_TRUE_POSITIVES = [
    ("Dhaka", "Floods hit the north, officials in Dhaka said."),
    ("Copenhagen", "The bridge linking Malmö and Copenhagen reopened."),
    ("Porto Alegre", "The event moved to Porto Alegre."),
    ("Denmark", "Group A: 1. Norway 7 2. Sweden 5 3. Denmark 4"),
    ("OSLO", "OSLO 2022-06-09"),
    ("Braga", "He moved to Braga last year."),  # a one-word city after a place preposition
]
PLACE_FALSE_POSITIVES = [
    "Split the file into two parts.",  # a city that is a common verb
    "Nice work on the parser.",
    "region = eu-west-1",
    "open Paris.json and london_test.py",
    "the mobile app",
    "Results: Benfica 2 Sporting 1, Celtic 0 Rangers 0",  # one-word cities nothing points at
]


@pytest.mark.parametrize(("value", "text"), PLACE_TRUE_POSITIVES)
def test_place_list_true_positives(engine, value, text):
    assert ("LOCATION", value) in found(engine, text)


@pytest.mark.parametrize("text", PLACE_FALSE_POSITIVES)
def test_place_list_false_positives(engine, text):
    assert [v for e, v in found(engine, text) if e == "LOCATION"] == []


NAME_LIST_TRUE_POSITIVES = [
    ("Ines", "Invited: John Smith, Mary, Paul and Ines."),  # spaCy alone: Ines is an ORG
]
NAME_LIST_FALSE_POSITIVES = [
    "We ship to Portugal, Spain, France and Italy.",  # a list of places stays places
    "Use Python, Rust, Go and Java.",  # no person in the list, nothing changes
]


@pytest.mark.parametrize(("value", "text"), NAME_LIST_TRUE_POSITIVES)
def test_name_list_true_positives(engine, value, text):
    assert ("PERSON", value) in found(engine, text)


@pytest.mark.parametrize("text", NAME_LIST_FALSE_POSITIVES)
def test_name_list_false_positives(engine, text):
    assert [v for e, v in found(engine, text) if e == "PERSON"] == []


def test_weak_frame_does_not_take_a_common_word(engine):
    assert found(engine, "Police said no one was injured in the blast.") == []
    assert ("PERSON", "Amara") in found(engine, "Amara said she would call back.")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("The import failed for customer Jane Whitfield again", ["Jane Whitfield"]),
        ("Maintainer: Priya Raman <priya.raman@acme-corp.com>.", ["Priya Raman"]),
        ("ask the customer Service Desk", []),
    ],
)
def test_role_frame(engine, text, names):
    assert [v for e, v in found(engine, text) if e == "PERSON"] == names
