"""Context from keys (``fields.py``): what a JSON key, form field or column name changes."""

from __future__ import annotations

import pytest
from egress_gateway.detection.fields import FieldContext, FieldText, classify_key, key_words


def ctx(key: str, *siblings: str) -> FieldContext:
    return FieldContext(key, frozenset(siblings))


@pytest.mark.parametrize(
    ("key", "siblings", "kind"),
    [
        ("first_name", (), "PERSON"),
        ("lastName", (), "PERSON"),
        ("fullname", (), "PERSON"),
        ("customer", (), "PERSON"),
        ("ship_to", (), "PERSON"),
        ("shipToName", (), "PERSON"),
        ("name", ("email", "phone"), "PERSON"),
        ("city", (), "LOCATION"),
        ("birthplace", (), "LOCATION"),
        ("billing.country", (), "LOCATION"),
        ("name", ("price", "sku"), "THING"),
        ("product_name", (), "THING"),
        ("title", (), "THING"),
        # no opinion
        ("customer_id", (), None),
        ("city_code", (), None),
        ("username", (), None),
        ("user_name", (), None),
        ("name", (), None),
        ("message", (), None),
    ],
)
def test_classify_key(key, siblings, kind):
    assert classify_key(key, set(siblings)) == kind


def test_key_words():
    assert key_words("shipToName") == ("ship", "to", "name")
    assert key_words("billing.last-name") == ("billing", "last", "name")
    assert key_words("FIRSTNAME") == ("first", "name")


# True positives: the key types a value NER misses or mistypes.
FIELD_TRUE_POSITIVES = [
    ("first_name", (), "Lena", "PERSON", "Lena"),
    ("customer", (), "Tomomi Nishiyama", "PERSON", "Tomomi Nishiyama"),
    ("name", ("email",), "Ana Souza", "PERSON", "Ana Souza"),
    ("city", (), "Porto Alegre", "LOCATION", "Porto Alegre"),
    ("country", (), " Portugal ", "LOCATION", "Portugal"),
]
# False positives avoided: the key says the value is no person or place.
FIELD_FALSE_POSITIVES = [
    ("name", ("price", "sku"), "Aurora Desk Lamp"),
    ("product_name", (), "Harbor Linen Throw"),
    ("first_name", (), "N/A"),
    ("first_name", (), "user123"),
    ("customer_id", (), "Lena"),
    ("city", (), "94107"),
]


@pytest.mark.parametrize(("key", "siblings", "value", "entity", "span"), FIELD_TRUE_POSITIVES)
def test_field_true_positives(engine, key, siblings, value, entity, span):
    found = engine.analyze_many([value], fields=[ctx(key, *siblings)])[0]
    assert [(f.entity_type, value[f.start : f.end]) for f in found] == [(entity, span)]


@pytest.mark.parametrize(("key", "siblings", "value"), FIELD_FALSE_POSITIVES)
def test_field_false_positives(engine, key, siblings, value):
    found = engine.analyze_many([value], fields=[ctx(key, *siblings)])[0]
    assert [f for f in found if f.entity_type in ("PERSON", "LOCATION")] == []


def test_name_inside_a_thing_title_is_kept(engine):
    value = "Call with Barack Obama about the launch"
    found = engine.analyze_many([value], fields=[ctx("title")])[0]
    assert ("PERSON", "Barack Obama") in [(f.entity_type, value[f.start : f.end]) for f in found]


def test_field_text_carries_its_key_and_is_cached_apart(engine):
    plain = engine.analyze("Lena")
    keyed = engine.analyze_many([FieldText("Lena", ctx("first_name"))])[0]
    assert plain == [] and [f.entity_type for f in keyed] == ["PERSON"]
    assert engine.analyze("Lena") == []  # the keyed result did not leak into the plain cache entry


def test_json_walker_hands_keys_to_the_engine(engine):
    from egress_gateway.redact.walker import TextJob

    job = TextJob()
    catalog = job.add_json('{"items": [{"sku": "LMP-2210", "name": "Aurora Desk Lamp", "price": 49.0}]}')
    person = job.add_json('{"customer": {"first_name": "Lena", "city": "Porto Alegre", "id": "c-1"}}')
    job.run(lambda texts: engine.redact_many(texts))
    assert job.result(catalog) is None
    assert job.result(person) == '{"customer": {"first_name": "<PERSON>", "city": "<LOCATION>", "id": "c-1"}}'


def test_a_phrase_under_a_person_key_is_not_a_name(engine):
    found = engine.analyze_many(["Customer record"], fields=[ctx("name", "email", "card")])[0]
    assert found == []
    found = engine.analyze_many(["Pieter van Dijk"], fields=[ctx("guest")])[0]
    assert [f.entity_type for f in found] == ["PERSON"]


KEYED_TRUE_POSITIVES = [
    ("PERSON", "Aisling Byrne", "name: Aisling Byrne\ncity: Galway\nphone: 087 555 0123"),
    ("LOCATION", "Galway", "name: Aisling Byrne\ncity: Galway\nphone: 087 555 0123"),
    ("PERSON", "Kovač", "first_name,last_name,city\nHenrik,Dahl,Aarhus\nMaja,Kovač,Split"),
    ("LOCATION", "Split", "first_name,last_name,city\nHenrik,Dahl,Aarhus\nMaja,Kovač,Split"),
    ("PERSON", "Ana Souza", "customer = Ana Souza; total=12"),
]
KEYED_FALSE_POSITIVES = [
    "name: build-and-test\non: push",
    "city: 94107",
    "first_name: N/A",
]


@pytest.mark.parametrize(("entity", "value", "text"), KEYED_TRUE_POSITIVES)
def test_keyed_value_true_positives(engine, entity, value, text):
    assert (entity, value) in [(f.entity_type, text[f.start : f.end]) for f in engine.analyze(text)]


@pytest.mark.parametrize("text", KEYED_FALSE_POSITIVES)
def test_keyed_value_false_positives(engine, text):
    assert [f for f in engine.analyze(text) if f.entity_type in ("PERSON", "LOCATION")] == []
