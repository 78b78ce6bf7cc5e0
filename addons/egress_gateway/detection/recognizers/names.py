"""Person and place rules: the spaCy NER recognizer's filters and name frames."""

from __future__ import annotations

from collections.abc import Iterable

import regex as re
from presidio_analyzer import Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import SpacyRecognizer
from spacy.tokens import Span

from egress_gateway.detection.entities import DEFAULT_NER_ALLOW_LIST
from egress_gateway.detection.recognizers.base import make_result


class GatewaySpacyRecognizer(SpacyRecognizer):
    """spaCy NER (PERSON, LOCATION, optional NRP/DATE_TIME) with code-aware filters.

    Dropped: entities containing digits or code punctuation (``_/@=<>{}()[]``), all-lowercase
    entities, names on ``DEFAULT_NER_ALLOW_LIST`` ("Node", "Claude"...), single characters.
    """

    CODE_CHARS = set("_/@=<>{}()[]\\|#$%^*~`;\":")
    TITLE_BEFORE = re.compile(r"(?i)\b(?:mr|mrs|ms|miss|dr|prof|sir|madam|dear|name is|named)\.?\s*$")

    def __init__(
        self,
        supported_entities: Iterable[str],
        common_words: frozenset[str] = frozenset(),
        english_words: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(supported_entities=list(supported_entities), ner_strength=0.85)
        self.common_words = common_words
        self.english_words = english_words

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        kept = []
        for r in super().analyze(text, entities, nlp_artifacts):
            value = text[r.start : r.end].strip()
            if r.entity_type in ("PERSON", "LOCATION", "NRP") and not self._plausible(value):
                continue
            if (
                r.entity_type == "PERSON"
                and " " not in value
                and is_common_word(value, self.common_words, self.english_words)
                and not self.TITLE_BEFORE.search(text[max(0, r.start - 12) : r.start])
            ):
                continue  # "Discipline", "Officials": a common word, not a name
            kept.append(r)
        return kept

    def _plausible(self, value: str) -> bool:
        if len(value) < 2 or any(c.isdigit() or c in self.CODE_CHARS for c in value):
            return False
        if value.lower() in DEFAULT_NER_ALLOW_LIST or not any(c.isupper() for c in value):
            return False
        return True


_UP = r"\p{Lu}"
_LOW = r"[\p{Ll}'’\-]"
#: A title-case name token (any script: "Åsa", "Živković") or an initial ("J", "J.").
_TITLE_TOKEN = rf"{_UP}{_LOW}+"
_END = r"(?![\p{L}\p{N}_\-])"
_TITLE_NAME = rf"{_TITLE_TOKEN}(?:[ \t]+(?:{_UP}\.?(?![\p{{L}}])|{_TITLE_TOKEN})){{0,3}}{_END}"
#: Lower-case names ("my name is lena andersson"): 1-3 words, middle initials allowed.
_LOWER_NAME = (
    r"\p{Ll}[\p{Ll}'’\-]+(?:[ \t]+(?:\p{Ll}\.?(?![\p{L}])|\p{Ll}[\p{Ll}'’\-]+)){0,2}" + _END
)


class NameIntroRecognizer(PatternRecognizer):
    """Names in a frame that says they are a name ("my name is X", "Mr. X", "Dear X",
    "name: X", "X said", "said X"): en_core_web_sm misses many unfamiliar names in exactly
    these frames, and tags some of them LOCATION.

    * strong frames (``my/her/maiden/last name is``, ``call me``, titles, ``Dear``,
      ``Name:`` as in a form) score 0.9, above spaCy's 0.85, so "Her maiden name is Sandgreen" is a
      PERSON even when spaCy says GPE; after ``my name is`` / ``call me`` (not ``name:``,
      which is YAML and code) a lower-case name is accepted too, unless its first word is an
      English word ("my name is not important");
    * weaker frames (``called``, sign-offs, ``name:`` (YAML, code), ``contact:``, speech
      verbs next to a name) score 0.75 and accept title-case names only.
    """

    STRONG = (
        r"(?:\b(?i:(?:my|his|her|their|your|the|full|first|last|maiden|middle|sur|given)"
        r"[ \t]*name(?:[ \t]+is|'s)|call(?:s|ed)?[ \t]+me|dear)"
        r"|\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?|(?<![\w-])Name[ \t]*:)[ \t]+"
    )
    LOWER_OK = re.compile(
        r"\b(?i:(?:my|his|her|their|your|full|first|last|maiden|middle|given)[ \t]*name"
        r"(?:[ \t]+is|'s)|call(?:s|ed)?[ \t]+me)[ \t]+$"
    )
    WEAK = (
        r"(?:\b(?i:called|sincerely,?|regards,?|signed,?|(?:name|contact|patient|customer|employee)"
        r"[ \t]*:)|\b(?:said|asked|told|says|replied|wrote|thanked|shouted[ \t]+at))[ \t]+"
    )
    #: "for customer Jane Whitfield", "patient Ana Souza": a role word before a first and
    #: last name (two title-case words, not both English words: "customer Service Desk").
    ROLE = (
        r"\b(?i:customer|client|patient|employee|passenger|applicant|tenant|guest|user|"
        r"contact|maintainer|owner|author)[ \t]+"
    )
    PATTERNS = [
        Pattern("name_intro_strong", STRONG + rf"(?P<name>{_TITLE_NAME}|{_LOWER_NAME})", 0.9),
        Pattern("name_intro_weak", WEAK + rf"(?P<name>{_TITLE_NAME})", 0.75),
        Pattern("name_after_role", ROLE + rf"(?P<name>{_TITLE_TOKEN}[ \t]+{_TITLE_TOKEN}){_END}", 0.75),
        # "Jane said", "Jane Doe wrote:" (a sentence-initial name before a speech verb)
        Pattern(
            "name_speech",
            rf"(?:^|(?<=[.!?\n\"“]\s*))(?P<name>{_TITLE_NAME})[ \t]+"
            r"(?:said|says|asked|replied|wrote|shouted)\b",
            0.75,
        ),
    ]

    def __init__(
        self,
        english_words: frozenset[str] = frozenset(),
        common_words: frozenset[str] = frozenset(),
    ) -> None:
        self.common_words = common_words
        super().__init__(
            supported_entity="PERSON",
            name="NameIntroRecognizer",
            patterns=[Pattern(p.name, p.regex, p.score) for p in self.PATTERNS],
            global_regex_flags=re.MULTILINE,
        )
        self._rx = [(re.compile(p.regex, re.MULTILINE), p.score, p.name) for p in self.PATTERNS]
        self.english_words = english_words

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        out = []
        for rx, score, pattern in self._rx:
            for m in rx.finditer(text):
                start, end = m.span("name")
                name = text[start:end]
                if pattern == "name_after_role" and all(
                    w.lower() in self.english_words or w.lower()[:-1] in self.english_words
                    for w in name.split()
                ):
                    continue  # "customer Service Desk": English words, not a first and last name
                if name.lower() in DEFAULT_NER_ALLOW_LIST or name.split()[0].lower() in _NOT_NAMES:
                    continue
                if score < 0.9 and " " not in name and is_common_word(
                    name, self.common_words, self.english_words
                ):
                    continue  # "Police said", "Officials said": not a name in a weak frame
                if name[0].islower():
                    first = name.split()[0]
                    if not self.LOWER_OK.search(text[max(0, start - 40) : start]) or (
                        first in self.english_words or first in _NOT_NAMES
                    ):
                        continue
                out.append(make_result(self, "PERSON", start, end, score))
        return out


def is_common_word(word: str, common_words: frozenset[str], english_words: frozenset[str]) -> bool:
    """A lone capitalised word that is an English verb, adjective or adverb ("Police",
    "Discipline"). English nouns are not enough: WordNet lists many first names ("john",
    "logan"); nor are plurals ("Officials" and "Wildfires", but also "Burns" and "Wells")."""
    return word.lower() in common_words


#: Words that follow a name frame without being a name ("Dear Sir", "called The...").
_NOT_NAMES = frozenset(
    """sir madam madame all team everyone customer customers colleagues friends friend the a an
    this that these those it its not no none is was be just here there what who me you he she
    they we i my your his her our their unknown redacted n/a na""".split()
)


_ORG_WORDS = frozenset(
    """inc corp corporation llc ltd co company group bank university college school institute
    foundation association council department agency committee club society partners holdings
    technologies technology systems solutions labs lab services international industries
    orchestra band records studios studio news times weekly daily journal magazine press
    airlines motors pharmaceuticals capital ventures fund trust church hospital clinic center
    centre museum library council ministry office team league union party cloud code studio
    platform api sdk project program programme release initiative""".split()
)
_ORG_NAME_TOKEN = re.compile(r"^[A-Z][a-zà-ÿ'’\-]+$|^[A-Z]\.?$")


def person_from_org(doc, ent):
    """en_core_web_sm labels many unfamiliar person names ORG ("Tomomi Nishiyama",
    "Miklós Hajdu"). Relabel an ORG as PERSON when it is 2-3 title-case words (initials
    allowed) with no organisation word (Inc, Bank, University, Studio, Cloud...)."""
    if ent.label_ != "ORG":
        return ent
    tokens = [t for t in ent if not t.is_space]
    words = [t.text for t in tokens]
    if not 2 <= len(words) <= 3 or not all(_ORG_NAME_TOKEN.match(w) for w in words):
        return ent
    if any(w.lower().strip(".") in _ORG_WORDS for w in words) or not _ORG_NAME_TOKEN.match(words[-1]):
        return ent
    if len(words[-1].rstrip(".")) < 2:
        return ent
    return Span(doc, tokens[0].i, tokens[-1].i + 1, label="PERSON")



def _name_token(token) -> bool:
    return token.is_alpha and len(token.text) > 1 and token.text[0].isupper() and not token.is_stop


def extend_name_lists(doc, ents: list) -> list:
    """Lists of single capitalised words ("Efimiya, Mary, Ariana, Isabel and Jodi") in which
    at least half of the members are PERSON entities: the other members become PERSON too
    (spaCy's small model tags some members of such a list and misses or mistypes the
    others). Multi-word entities inside the list are left as they are."""
    by_token = {i: e for e in ents for i in range(e.start, e.end)}
    replace: dict[int, Span] = {}
    i, n = 0, len(doc)
    while i < n:
        members, j = [], i
        while j < n and _name_token(doc[j]):
            members.append(j)
            k = j + 1
            if k < n and doc[k].text in (",", "&"):
                k += 1
            if k < n and doc[k].lower_ == "and":
                k += 1
            if k == j + 1 or k >= n or not _name_token(doc[k]):
                break
            j = k
        if len(members) >= 3:
            single = {m: by_token.get(m) for m in members}
            persons = [m for m, e in single.items() if e is not None and e.label_ == "PERSON"]
            if 2 * len(persons) >= len(members):
                for m, e in single.items():
                    if e is None or (e.label_ != "PERSON" and len(e) == 1):
                        replace[m] = Span(doc, m, m + 1, label="PERSON")
        i = members[-1] + 1 if members else i + 1
    if not replace:
        return ents
    kept = [e for e in ents if not (len(e) == 1 and e.start in replace)]
    return sorted(kept + list(replace.values()), key=lambda s: s.start)
