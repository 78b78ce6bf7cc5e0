"""Organisation recognizers defined by the policy (``detection.custom``): regexes, deny-lists."""

from __future__ import annotations

import regex as re
from presidio_analyzer import Pattern, PatternRecognizer

from egress_gateway.detection.recognizers.base import SecretPatternRecognizer


class OrganisationRegexRecognizer(SecretPatternRecognizer):
    """A policy regex (``detection.custom[].regex``) with optional context words."""

    def __init__(self, name: str, entity: str, regex: str, context: list[str], score: float,
                 case_sensitive: bool) -> None:  # fmt: skip
        self.ENTITY = entity
        self.PATTERNS = [Pattern(name, regex, score)]
        self.CONTEXT = list(context)
        self.FLAGS = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
        super().__init__(name=f"custom:{name}")

    def validate_result(self, pattern_text: str) -> bool | None:
        return None


class OrganisationDenyListRecognizer(PatternRecognizer):
    """Exact internal identifiers / code names (``detection.custom[].deny_list``), matched as
    whole words; case-insensitive unless ``case_sensitive``."""

    def __init__(self, name: str, entity: str, deny_list: list[str], score: float,
                 case_sensitive: bool) -> None:  # fmt: skip
        flags = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
        super().__init__(
            supported_entity=entity,
            name=f"custom:{name}",
            deny_list=list(deny_list),
            deny_list_score=score,
            global_regex_flags=flags,
        )
