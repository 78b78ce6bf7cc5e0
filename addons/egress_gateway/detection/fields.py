"""Context from where a value stands: the JSON key, form field or column name above it.

A value's key says more than the value: ``"first_name": "Lena"`` is a person even though one
word is no sentence for NER, and ``"name": "Aurora Desk Lamp"`` beside ``price`` and ``sku`` is
a product, not a person. `classify_key` turns a key (plus the keys beside it) into one of:

* ``PERSON``: the key names a person (``first_name``, ``customer``, ``ship_to``, ``name``
  beside ``email``/``phone``): a name-shaped value is a PERSON at 0.9;
* ``LOCATION``: the key names a place (``city``, ``country``, ``birthplace``): a
  place-shaped value is a LOCATION at 0.9;
* ``THING``: the key names a thing (``product_name``, ``title``, ``sku``; ``name`` beside
  ``price``/``sku``/``version``): a guess (spaCy, the place list: score <= 0.9) of
  PERSON/LOCATION that is (nearly) the whole value, or any such guess in a title-case
  value, is dropped ("Aurora Desk Lamp", "Georgia Cotton Tee"); a name inside a sentence
  ("Call with Lena Varga about the launch") and every other entity are kept;
* ``None``: no opinion; the value is analysed as any text.

Keys are split into lower-case words (``shipToName`` -> ship, to, name; ``last-name`` ->
last, name); the last word decides most cases, so ``customer_id`` and ``city_code`` are not
person or place keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from egress_gateway.detection.findings import Finding

#: Score of a value typed by its key (above spaCy's 0.85).
FIELD_SCORE = 0.9
#: Guesses (spaCy 0.85, listed places 0.8-0.9) at or below this score are dropped under a
#: THING key.
NER_GUESS_MAX = 0.9


@dataclass(frozen=True, slots=True)
class FieldContext:
    """Where a value stands: its key and the other keys of the same object, form or row."""

    key: str
    siblings: frozenset[str] = frozenset()

    def digest(self) -> bytes:
        """Stable bytes for cache keys."""
        return ("\x1f".join([self.key, *sorted(self.siblings)])).encode("utf-8", "surrogatepass")


class FieldText(str):
    """A string that knows the key it stands under (``text.field``), so JSON and form walkers
    can hand their leaves to ``redact_many`` unchanged."""

    field: FieldContext | None

    def __new__(cls, value: str, field: FieldContext | None) -> FieldText:
        obj = super().__new__(cls, value)
        obj.field = field
        return obj


def field_text(value: str, key: str, keys) -> FieldText:
    """``value`` as a `FieldText` under ``key``, beside the other ``keys`` of its object."""
    return FieldText(value, FieldContext(key, frozenset(keys) - {key}))


# Words of a key ------------------------------------------------------------------------------

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEP = re.compile(r"[^A-Za-z0-9]+")


def key_words(key: str) -> tuple[str, ...]:
    """``"shipToName"`` -> ``("ship", "to", "name")``; ``"billing.last-name"`` -> ...name."""
    words: list[str] = []
    for part in _SEP.split(key):
        words += [w.lower() for w in _CAMEL.split(part) if w]
    # "firstname", "lastname", "fullname", "username": glued compounds of "name"
    out: list[str] = []
    for w in words:
        if len(w) > 4 and w.endswith("name") and w[:-4] in _NAME_QUALIFIERS | _THING_NAME_WORDS:
            out += [w[:-4], "name"]
        else:
            out.append(w)
    return tuple(out)


#: "<qualifier> name" is a person's name.
_NAME_QUALIFIERS = frozenset(
    "first last given family middle full sur maiden nick legal birth real display contact "
    "customer person holder card cardholder owner author recipient sender guest passenger "
    "patient employee driver buyer seller applicant beneficiary spouse parent guardian "
    "father mother emergency billing shipping".split()
)
#: "<word> name" is a thing's name (``product_name``, ``file_name``, ``host_name``).
_THING_NAME_WORDS = frozenset(
    "product item file host user app application service project repo repository package "
    "module class function method field column table database db schema bucket branch tag "
    "company org organization organisation business brand model device server cluster "
    "domain team group channel room queue topic event job task key secret "
    "variable var env image container pod node zone street store shop "
    "merchant vendor category plan tier role policy".split()
)
#: Last words of person keys (``customer``, ``ship_to``, ``assignee``).
_PERSON_WORDS = frozenset(
    "customer contact recipient sender author owner assignee reporter attendee passenger "
    "patient employee driver guest buyer seller applicant cardholder beneficiary signatory "
    "requester approver reviewer spouse guardian person surname forename nickname addressee "
    "consignee insured subscriber tenant landlord maintainer maintainers developer "
    "presenter speaker host_name interviewer interviewee".split()
)
#: Last words of place keys.
_PLACE_WORDS = frozenset(
    "city town country state province county region place location destination origin "
    "birthplace hometown locality municipality village suburb district venue".split()
)
#: Keys of things: a PERSON/LOCATION guess in their value is a product, title or id.
_THING_WORDS = frozenset(
    "product title sku model brand label description summary subject category tag tags "
    "version filename file path url uri slug hostname host repo package library module "
    "command tool function method class type kind status company organization organisation "
    "org team project app service plan".split()
)
#: Siblings that make a bare ``name`` a person's name.
_PERSON_SIBLINGS = frozenset(
    "email mail phone mobile telephone address street dob birthday birth birthdate age gender "
    "ssn salutation firstname lastname surname nationality passport".split()
)
#: Siblings that make a bare ``name`` a thing's name.
_THING_SIBLINGS = frozenset(
    "price sku qty quantity stock currency brand model version category inventory unit "
    "weight dimensions color colour size rating reviews license dependencies repository "
    "homepage tags variant barcode upc ean manufacturer cost amount".split()
)

#: Keys the word rules get wrong (``state`` of a workflow is handled by value shape).
_NOT_PERSON = frozenset({("user", "name"), ("username",), ("screen", "name"), ("login",)})


def classify_key(key: str, siblings: frozenset[str] | set[str] = frozenset()) -> str | None:
    """``"PERSON"``, ``"LOCATION"``, ``"THING"`` or None for a value's key (see module doc)."""
    words = key_words(key)
    if not words or words in _NOT_PERSON:
        return None
    last = words[-1]
    before = words[-2] if len(words) > 1 else ""
    if last == "name":
        if before in _NAME_QUALIFIERS:
            return "PERSON"
        if before in _THING_NAME_WORDS:
            return "THING"
        if before in _PLACE_WORDS:
            return "LOCATION"
        if before in ("", "display"):
            return _by_siblings(siblings)
        if words[-3:-1] in (("ship", "to"), ("bill", "to"), ("sold", "to")):
            return "PERSON"
        return None
    if last in _PERSON_WORDS or words[-2:] in (("ship", "to"), ("bill", "to"), ("sold", "to")):
        return "PERSON"
    if last in _PLACE_WORDS:
        return "LOCATION"
    if last in _THING_WORDS:
        return "THING"
    return None


def _by_siblings(siblings: frozenset[str] | set[str]) -> str | None:
    words = {w for s in siblings for w in key_words(s)}
    if words & _PERSON_SIBLINGS:
        return "PERSON"
    if words & _THING_SIBLINGS:
        return "THING"
    return None


# Value shapes --------------------------------------------------------------------------------

#: 1-4 words of letters (any script), initials, hyphens and apostrophes: "Lena Ó Briain".
_NAME_VALUE = re.compile(r"[^\W\d_][\w'’.\-]*(?:[ \t]+[^\W\d_][\w'’.\-]*){0,3}")
#: 1-5 words of letters, commas allowed between them: "Porto Alegre", "Lyon, France".
_PLACE_VALUE = re.compile(r"[^\W\d_][\w'’.\-]*(?:,?[ \t]+[^\W\d_][\w'’.\-]*){0,4}")


def is_title_case(value: str) -> bool:
    """Every word starts with a capital or digit ("Georgia Cotton Tee"): how products are named."""
    words = value.split()
    return bool(words) and all(w[0].isupper() or w[0].isdigit() or w in ("&", "-") for w in words)


#: Lower-case words inside names and places ("Pieter van Dijk", "Rio de Janeiro").
_PARTICLES = frozenset(
    "van von der den de da das do dos del della di du la le bin ibn al el y e of upon am "
    "sur".split()
)
#: Values that fill a field without naming anyone.
_EMPTY_VALUES = frozenset(
    "n/a na none null nil unknown anonymous redacted test tbd todo true false yes no "
    "default guest admin user customer".split()
)


def typed_span(value: str, kind: str) -> tuple[int, int] | None:
    """The span of ``value`` that a PERSON/LOCATION key types, or None if it is not shaped
    like a name or place: 1-4 (places 1-5) capitalised words, particles allowed; no digits,
    e-mail, placeholder or lower-case phrase ("Customer record")."""
    stripped = value.strip()
    if not stripped or len(stripped) > 60 or stripped.lower() in _EMPTY_VALUES:
        return None
    rx = _NAME_VALUE if kind == "PERSON" else _PLACE_VALUE
    if not rx.fullmatch(stripped) or not any(c.isupper() for c in stripped):
        return None
    words = stripped.replace(",", " ").split()
    if any(w[0].islower() and w not in _PARTICLES for w in words):
        return None  # "Customer record", "Porto is nice": a phrase, not a name
    start = value.index(stripped)
    return start, start + len(stripped)


def apply_field(
    value: str, findings: list[Finding], ctx: FieldContext, entities: set[str] | frozenset[str]
) -> list[Finding]:
    """``findings`` of ``value`` corrected by what its key says (see the module doc)."""
    kind = classify_key(ctx.key, ctx.siblings)
    if kind in ("PERSON", "LOCATION") and kind in entities:
        span = typed_span(value, kind)
        if span is not None:
            return [*findings, Finding(kind, span[0], span[1], FIELD_SCORE)]
    elif kind == "THING":
        whole = len(value.strip())
        titled = is_title_case(value)
        return [
            f for f in findings
            if not (f.entity_type in ("PERSON", "LOCATION") and f.score <= NER_GUESS_MAX
                    and (titled or f.end - f.start >= 0.8 * whole))
        ]  # fmt: skip
    return findings
