"""Yelp detect-secrets plugins wrapped as one Presidio recognizer (secret backend ``detect_secrets``).

We use the plugins' *maintained regexes* (``denylist`` of every ``RegexBasedDetector``, the
``KeywordDetector`` expressions, the entropy plugins' charsets and limits) and detect-secrets'
own false-positive heuristics (``detect_secrets.filters.heuristic``), but never
``analyze_line``: that path may call a plugin's ``verify()``, which contacts the vendor's API
over the network. Spans are recovered from the regex match (the capture group the plugin
yields, else the whole match trimmed of its delimiters).

``PrivateKeyDetector`` is not used: it matches only the ``BEGIN ... PRIVATE KEY`` header, so
the key material would pass; the engine always uses its own PEM block recognizer.
``IPPublicDetector`` is not used either (IP_ADDRESS comes from Presidio).
"""

from __future__ import annotations

import logging
import re

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters.heuristic import (
    is_indirect_reference,
    is_likely_id_string,
    is_potential_uuid,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins import keyword as ds_keyword
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import (
    Base64HighEntropyString,
    HexHighEntropyString,
)
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from egress_gateway.detection.recognizers.assignments import PasswordAssignmentRecognizer
from egress_gateway.detection.recognizers.base import make_result
from egress_gateway.detection.recognizers.filters import TEMPLATE_RE, is_placeholder

logger = logging.getLogger(__name__)

#: detect-secrets plugin class name -> canonical entity (None: not used).
PLUGIN_ENTITY: dict[str, str | None] = {
    "AWSKeyDetector": "AWS_ACCESS_KEY_ID",  # its 2nd regex (keyword + 40 chars): secret key
    "ArtifactoryDetector": "API_TOKEN",
    "AzureStorageKeyDetector": "API_TOKEN",
    "BasicAuthDetector": "URL_PASSWORD",
    "CloudantDetector": "API_TOKEN",
    "DiscordBotTokenDetector": "API_TOKEN",
    "GitHubTokenDetector": "GITHUB_TOKEN",
    "GitLabTokenDetector": "GITLAB_TOKEN",
    "IbmCloudIamDetector": "API_TOKEN",
    "IbmCosHmacDetector": "API_TOKEN",
    "JwtTokenDetector": "JWT",
    "MailchimpDetector": "API_TOKEN",
    "NpmDetector": "API_TOKEN",
    "OpenAIDetector": "OPENAI_API_KEY",
    "PypiTokenDetector": "API_TOKEN",
    "SendGridDetector": "API_TOKEN",
    "SlackDetector": "SLACK_TOKEN",
    "SoftlayerDetector": "API_TOKEN",
    "SquareOAuthDetector": "API_TOKEN",
    "StripeDetector": "STRIPE_KEY",
    "TelegramBotTokenDetector": "API_TOKEN",
    "TwilioKeyDetector": "API_TOKEN",
    "PrivateKeyDetector": None,
    "IPPublicDetector": None,
}
_TRIM = " \t\r\n=:\"'`,;"


def _keyword_regexes() -> list[tuple[re.Pattern, int]]:
    """Every (regex, group) pair KeywordDetector uses for any file type, deduplicated."""
    seen: dict[re.Pattern, int] = {}
    for table in (
        ds_keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
        ds_keyword.CONFIG_DENYLIST_REGEX_TO_GROUP,
        ds_keyword.GOLANG_DENYLIST_REGEX_TO_GROUP,
        ds_keyword.C_PLUS_PLUS_REGEX_TO_GROUP,
        ds_keyword.COMMON_C_DENYLIST_REGEX_TO_GROUP,
    ):
        for rx, group in table.items():
            seen.setdefault(rx, group)
    return list(seen.items())


def _keyword_prefilter(regexes: list[tuple[re.Pattern, int]]) -> re.Pattern | None:
    """One search for detect-secrets' key words (``password``, ``api_key``, ``secret``...):
    every keyword regex requires one of them, so a text without any cannot match (~10 full
    scans saved: 4 ms on 2 KB of prose). None if some regex does not embed the word list (a
    changed detect-secrets): then every regex runs, as before."""
    words = "|".join(ds_keyword.DENYLIST)
    if not regexes or any(words not in rx.pattern for rx, _ in regexes):
        return None
    return re.compile(words, re.IGNORECASE)  # a superset of the case-sensitive ones too


def _line_of(text: str, start: int, end: int) -> str:
    ls = text.rfind("\n", 0, start) + 1
    le = text.find("\n", end)
    return text[ls : le if le >= 0 else len(text)]


class DetectSecretsRecognizer(EntityRecognizer):
    """All detect-secrets plugins as one recognizer; emits canonical entity names."""

    def __init__(
        self,
        entities: set[str],
        entropy: bool = False,
        gateway_filters: bool = True,
        report_placeholders: bool = True,
    ) -> None:
        """``gateway_filters``: also apply the gateway's placeholder / key-name / value checks
        (the ones the own patterns use) on top of detect-secrets' heuristics."""
        self._gateway_filters = gateway_filters
        self._report_placeholders = report_placeholders
        self._assignment = PasswordAssignmentRecognizer()
        self._regex_plugins: list[tuple[str, list[re.Pattern]]] = []
        for cls in get_mapping_from_secret_type_to_class().values():
            entity = PLUGIN_ENTITY.get(cls.__name__)
            if entity and issubclass(cls, RegexBasedDetector):
                self._regex_plugins.append((cls.__name__, list(cls.denylist)))
        self._keyword = _keyword_regexes()
        self._keyword_words = _keyword_prefilter(self._keyword)
        self._entropy = (
            [(Base64HighEntropyString(), 4.5), (HexHighEntropyString(), 3.0)] if entropy else []
        )
        supported = sorted(
            {e for e in PLUGIN_ENTITY.values() if e}
            | {"AWS_SECRET_ACCESS_KEY", "PASSWORD_ASSIGNMENT", "HIGH_ENTROPY_SECRET"}
        )
        self._wanted = set(entities)
        super().__init__(supported_entities=supported, name="DetectSecretsRecognizer")

    def load(self) -> None:  # noqa: D102
        pass

    def _result(self, entity: str, start: int, end: int, score: float) -> RecognizerResult:
        return make_result(self, entity, start, end, score)

    @staticmethod
    def _filtered(secret: str, line: str) -> bool:
        """detect-secrets' default heuristic filters (plus placeholder runs like xxxx)."""
        return (
            len(secret) < 4
            or is_sequential_string(secret)
            or is_potential_uuid(secret)
            or is_templated_secret(secret)
            or is_prefixed_with_dollar_sign(secret)
        )

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        for name, regexes in self._regex_plugins:
            for idx, rx in enumerate(regexes):
                entity = PLUGIN_ENTITY[name]
                if name == "AWSKeyDetector" and idx == 1:
                    entity = "AWS_SECRET_ACCESS_KEY"
                if entity not in self._wanted:
                    continue
                for m in rx.finditer(text):
                    start, end = m.span()
                    for g in range(1, (rx.groups or 0) + 1):
                        if m.group(g):
                            start, end = m.span(g)
                            break
                    while start < end and text[start] in _TRIM:
                        start += 1
                    while end > start and text[end - 1] in _TRIM:
                        end -= 1
                    secret = text[start:end]
                    if end <= start or self._filtered(secret, ""):
                        continue
                    if self._gateway_filters and (
                        TEMPLATE_RE.match(secret)
                        or (not self._report_placeholders and is_placeholder(secret))
                    ):
                        continue
                    out.append(self._result(entity, start, end, 0.9))
        if "PASSWORD_ASSIGNMENT" in self._wanted and (
            self._keyword_words is None or self._keyword_words.search(text)
        ):
            for rx, group in self._keyword:
                for m in rx.finditer(text):
                    start, end = m.span(group)
                    while end > start and text[end - 1] in _TRIM:
                        end -= 1
                    secret = text[start:end]
                    line = _line_of(text, start, end)
                    if (
                        end <= start
                        or self._filtered(secret, line)
                        or is_indirect_reference(line)
                        or is_likely_id_string(secret, line)
                    ):
                        continue
                    if self._gateway_filters and (
                        self._assignment.validate_result(secret) is False
                        or PasswordAssignmentRecognizer.names_no_credential(text, start)
                    ):
                        continue
                    out.append(self._result("PASSWORD_ASSIGNMENT", start, end, 0.7))
        if "HIGH_ENTROPY_SECRET" in self._wanted:
            for plugin, limit in self._entropy:
                for m in plugin.regex.finditer(text):
                    start, end = m.span(2)
                    secret = text[start:end]
                    if (
                        plugin.calculate_shannon_entropy(secret) > limit
                        and not self._filtered(secret, "")
                    ):
                        out.append(self._result("HIGH_ENTROPY_SECRET", start, end, 0.6))
        return EntityRecognizer.remove_duplicates(out)
