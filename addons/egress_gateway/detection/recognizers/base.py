"""The base class of pattern recognizers that report one validated value (``secret`` group)."""

from __future__ import annotations

import logging

import regex as re
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts

from egress_gateway.detection.recognizers.filters import TEMPLATE_RE, is_placeholder

logger = logging.getLogger(__name__)

REGEX_TIMEOUT_SECONDS = 5.0


def make_result(
    recognizer: EntityRecognizer, entity: str, start: int, end: int, score: float
) -> RecognizerResult:
    """A RecognizerResult with the metadata Presidio's context enhancer expects."""
    return RecognizerResult(
        entity_type=entity,
        start=start,
        end=end,
        score=score,
        analysis_explanation=AnalysisExplanation(
            recognizer=recognizer.name, original_score=score, textual_explanation=None
        ),
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


class SecretPatternRecognizer(PatternRecognizer):
    """PatternRecognizer that reports the ``secret`` group and validates the value.

    Regexes are case-sensitive (token prefixes like ``AKIA`` are) unless they say ``(?i)``.
    ``validate_result`` returns False for placeholders; subclasses add format checks.
    ``accept_span`` sees the value where it stands (the key before it, the block around it).
    """

    ENTITY: str = ""
    PATTERNS: list[Pattern] = []
    CONTEXT: list[str] = []
    FLAGS = re.MULTILINE
    #: A strict vendor format (fixed prefix + shape). With ``report_placeholders`` such a
    #: match is reported even when its body looks like a placeholder (``ghp_xxxx…``,
    #: ``AKIAZZZZ…``): the prefix and shape alone identify a credential slot, and redacting a
    #: placeholder costs nothing. Generic formats (assignments, headers) always filter them.
    VENDOR_FORMAT = True

    def __init__(self, name: str | None = None, report_placeholders: bool = True) -> None:
        self.report_placeholders = report_placeholders
        super().__init__(
            supported_entity=self.ENTITY,
            name=name or type(self).__name__,
            patterns=[Pattern(p.name, p.regex, p.score) for p in self.PATTERNS],
            context=list(self.CONTEXT) or None,
            global_regex_flags=self.FLAGS,
        )
        self._compiled = [(p, re.compile(p.regex, self.FLAGS)) for p in self.patterns]

    def validate_result(self, pattern_text: str) -> bool | None:
        if self.VENDOR_FORMAT and self.report_placeholders:
            return False if TEMPLATE_RE.match(pattern_text) else None
        return False if is_placeholder(pattern_text) else None

    def accept_span(self, text: str, start: int, end: int) -> bool:
        """Whether a valid value at ``text[start:end]`` is reported (default: always)."""
        return True

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for pattern, rx in self._compiled:
            try:
                matches = list(rx.finditer(text, timeout=REGEX_TIMEOUT_SECONDS))
            except TimeoutError:
                logger.warning("pattern %s timed out", pattern.name)
                continue
            for m in matches:
                start, end = m.span("secret") if "secret" in rx.groupindex else m.span()
                if start < 0 or end <= start:
                    continue
                value = text[start:end]
                valid = self.validate_result(value)
                if valid is False or not self.accept_span(text, start, end):
                    continue
                score = EntityRecognizer.MAX_SCORE if valid else pattern.score
                results.append(make_result(self, self.ENTITY, start, end, score))
        return EntityRecognizer.remove_duplicates(results)
