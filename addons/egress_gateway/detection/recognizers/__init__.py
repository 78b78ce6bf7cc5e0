"""The gateway's Presidio recognizers, grouped by kind, and the one function that builds them.

Modules (each recognizer is one class with ``PATTERNS``, optional ``CONTEXT`` and a
``validate_result``, documented beside its code):

* ``filters``: value heuristics (placeholders, templates, entropy, identifier tokens);
* ``base``: ``SecretPatternRecognizer``, which reports only the ``secret`` group and
  validates it;
* ``secrets``: vendor token formats (AWS, Google, GitHub, Slack, ..., JWT, PEM blocks);
* ``assignments``: credentials found by position (``password=...``, URL passwords,
  ``curl -u``, authorization headers);
* ``pii``: Presidio's PII built-ins with the gateway's precision fixes;
* ``names``: the spaCy NER recognizer's filters, name frames, ORG-to-PERSON relabelling;
* ``places``: listed places (countries, capitals, US states, large cities);
* ``keyed``: values under person/place keys inside a text (``city: Galway``, CSV columns);
* ``custom``: organisation recognizers from the policy (``detection.custom``).

Secrets come from two back-ends that can run side by side (``DetectionSettings.secret_backends``):
``patterns`` (the classes in ``SECRET_PATTERN_RECOGNIZERS``) and ``detect_secrets`` (Yelp
detect-secrets' maintained regexes, ``detection/detect_secrets_backend.py``).
"""

from __future__ import annotations

from presidio_analyzer import EntityRecognizer

from egress_gateway.detection.entities import NER_ENTITIES
from egress_gateway.detection.recognizers.assignments import (
    BearerTokenRecognizer,
    CurlUserRecognizer,
    PasswordAssignmentRecognizer,
    UrlPasswordRecognizer,
)
from egress_gateway.detection.recognizers.base import SecretPatternRecognizer
from egress_gateway.detection.recognizers.custom import (
    OrganisationDenyListRecognizer,
    OrganisationRegexRecognizer,
)
from egress_gateway.detection.recognizers.detect_secrets_backend import DetectSecretsRecognizer
from egress_gateway.detection.recognizers.keyed import KeyedValueRecognizer
from egress_gateway.detection.recognizers.names import (
    DEFAULT_NER_ALLOW_LIST,
    GatewaySpacyRecognizer,
    NameIntroRecognizer,
)
from egress_gateway.detection.recognizers.pii import pii_recognizers
from egress_gateway.detection.recognizers.places import PlaceListRecognizer
from egress_gateway.detection.recognizers.secrets import (
    AnthropicKeyRecognizer,
    AwsAccessKeyIdRecognizer,
    AwsSecretAccessKeyRecognizer,
    AzureStorageKeyRecognizer,
    DiscordTokenRecognizer,
    GitHubTokenRecognizer,
    GitLabTokenRecognizer,
    GoogleApiKeyRecognizer,
    HuggingFaceTokenRecognizer,
    JwtRecognizer,
    OpenAIKeyRecognizer,
    PackageRegistryTokenRecognizer,
    PemPrivateKeyRecognizer,
    SlackTokenRecognizer,
    StripeKeyRecognizer,
)
from egress_gateway.detection.settings import DetectionSettings

#: All own secret recognizers (backend ``patterns``). PEM blocks are not here: the engine runs
#: ``PemPrivateKeyRecognizer`` on whole texts, never on chunks.
SECRET_PATTERN_RECOGNIZERS: tuple[type[SecretPatternRecognizer], ...] = (
    AwsAccessKeyIdRecognizer,
    AwsSecretAccessKeyRecognizer,
    GoogleApiKeyRecognizer,
    GitHubTokenRecognizer,
    GitLabTokenRecognizer,
    SlackTokenRecognizer,
    StripeKeyRecognizer,
    OpenAIKeyRecognizer,
    AnthropicKeyRecognizer,
    HuggingFaceTokenRecognizer,
    AzureStorageKeyRecognizer,
    DiscordTokenRecognizer,
    PackageRegistryTokenRecognizer,
    JwtRecognizer,
    UrlPasswordRecognizer,
    PasswordAssignmentRecognizer,
    CurlUserRecognizer,
    BearerTokenRecognizer,
)


def build_recognizers(
    settings: DetectionSettings,
    entities: set[str],
    common_words: frozenset[str] = frozenset(),
    english_words: frozenset[str] = frozenset(),
) -> list[EntityRecognizer]:
    """The chunk recognizers for ``entities`` under ``settings`` (PEM blocks excluded).

    ``common_words`` (English verbs/adjectives/adverbs) and ``english_words`` (all English
    words) come from the spaCy model's lemma tables: see ``names.py`` for how they are used.
    """
    recs: list[EntityRecognizer] = pii_recognizers(entities, settings.threshold("PHONE_NUMBER"))
    ner = entities & NER_ENTITIES
    if ner:
        recs.append(GatewaySpacyRecognizer(sorted(ner), common_words, english_words))
        if "PERSON" in ner:
            recs.append(NameIntroRecognizer(english_words, common_words))
        if "LOCATION" in ner:
            recs.append(PlaceListRecognizer(common_words))
        if ner & {"PERSON", "LOCATION"}:
            recs.append(KeyedValueRecognizer())
    if "patterns" in settings.secret_backends:
        recs += [
            cls(report_placeholders=settings.report_placeholder_tokens)
            for cls in SECRET_PATTERN_RECOGNIZERS
            if cls.ENTITY in entities
        ]
    if "detect_secrets" in settings.secret_backends or "HIGH_ENTROPY_SECRET" in entities:
        ds_entities = set(entities) if "detect_secrets" in settings.secret_backends else set()
        if "HIGH_ENTROPY_SECRET" in entities:
            ds_entities.add("HIGH_ENTROPY_SECRET")
        recs.append(
            DetectSecretsRecognizer(
                ds_entities,
                entropy="HIGH_ENTROPY_SECRET" in entities,
                report_placeholders=settings.report_placeholder_tokens,
            )
        )
    for rule in settings.custom:
        if rule.regex:
            recs.append(
                OrganisationRegexRecognizer(
                    rule.name, rule.entity, rule.regex, rule.context,
                    rule.effective_score, rule.case_sensitive,
                )
            )  # fmt: skip
        else:
            recs.append(
                OrganisationDenyListRecognizer(
                    rule.name, rule.entity, list(rule.deny_list or []),
                    rule.effective_score, rule.case_sensitive,
                )
            )  # fmt: skip
    return recs


__all__ = [
    "DEFAULT_NER_ALLOW_LIST",
    "SECRET_PATTERN_RECOGNIZERS",
    "PemPrivateKeyRecognizer",
    "SecretPatternRecognizer",
    "build_recognizers",
    "pii_recognizers",
]
