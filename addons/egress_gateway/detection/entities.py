"""Canonical entity names: the ONE place where every name the engine can emit is defined.

Every recognizer, operator key, threshold key and policy entry uses these names. A finding's
``entity_type`` is always one of ``ALL_ENTITIES`` or the ``entity`` of an organisation
recognizer from the policy (``detection.custom``).

PII (Presidio built-ins, tuned in ``recognizers/pii.py``; NER in ``recognizers/names.py``)
    PERSON          person names (spaCy NER, PERSON label)
    LOCATION        places (spaCy NER: GPE, LOC and FAC labels)
    EMAIL_ADDRESS   e-mail addresses
    PHONE_NUMBER    phone numbers (python-phonenumbers, US/GB/DE/FR/IL/IN/CA/BR regions)
    CREDIT_CARD     card numbers (Luhn checked)
    US_SSN          US social security numbers
    IBAN_CODE       IBANs (checksum verified)
    IP_ADDRESS      IPv4 / IPv6 addresses
    US_BANK_NUMBER  US bank account numbers (context words required)
    US_PASSPORT     US passport numbers (context words required)

Secrets (Presidio has none; see ``recognizers/secrets.py`` and ``recognizers/assignments.py``)
    AWS_ACCESS_KEY_ID      AKIA/ASIA/... access key ids
    AWS_SECRET_ACCESS_KEY  40-char secret keys next to an aws/secret keyword, or bare with a
                           real key's shape and entropy
    GOOGLE_API_KEY         AIza... keys (Google / Firebase)
    GITHUB_TOKEN           ghp_/gho_/ghu_/ghs_/ghr_ and github_pat_ tokens
    GITLAB_TOKEN           glpat-, gldt-, glsoat-, GR1348941... tokens
    SLACK_TOKEN            xox[abposre]- tokens, xapp- tokens and Slack webhook URLs
    STRIPE_KEY             sk_/pk_/rk_ live/test keys and whsec_ webhook secrets
    OPENAI_API_KEY         sk-...T3BlbkFJ... and sk-proj-/sk-svcacct-/sk-admin- keys
    ANTHROPIC_API_KEY      sk-ant-api03-/sk-ant-admin01- keys
    HUGGINGFACE_TOKEN      hf_ and api_org_ tokens
    JWT                    JSON web tokens (eyJ... header.payload[.signature])
    PEM_PRIVATE_KEY        -----BEGIN ... PRIVATE KEY----- blocks (PEM, OpenSSH, PGP)
    URL_PASSWORD           the password in ``scheme://user:password@host``
    PASSWORD_ASSIGNMENT    the value in ``password=...``, ``secret: ...``, ``curl -u user:pass``
    BEARER_TOKEN           credentials in ``Authorization:`` style headers (Bearer/Basic/Token)
    API_TOKEN              other vendors' tokens: Azure storage keys, Discord tokens and webhooks,
                           npm/Clojars tokens (own patterns), and the formats maintained by Yelp
                           detect-secrets (npm, PyPI, SendGrid, Twilio, Discord, Telegram,
                           Mailchimp, Artifactory, Azure storage, Square, IBM, Cloudant, SoftLayer)

Optional (never emitted unless listed in ``detection.entities``)
    NRP                 nationalities, religious and political groups (spaCy NORP)
    DATE_TIME           dates and times (spaCy DATE/TIME); noisy, fires inside card numbers
    HIGH_ENTROPY_SECRET quoted base64/hex strings above detect-secrets' entropy limits; fires
                        on hashes, ids and images in ordinary API traffic
"""

from __future__ import annotations

PII_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "LOCATION",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_BANK_NUMBER",
    "US_PASSPORT",
)

SECRET_ENTITIES: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GOOGLE_API_KEY",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "SLACK_TOKEN",
    "STRIPE_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "HUGGINGFACE_TOKEN",
    "JWT",
    "PEM_PRIVATE_KEY",
    "URL_PASSWORD",
    "PASSWORD_ASSIGNMENT",
    "BEARER_TOKEN",
    "API_TOKEN",
)

#: Secrets found by where they stand (a keyword, a header, a URL's userinfo), not by a vendor's
#: fixed prefix and shape; every other secret entity is a vendor format.
POSITIONAL_SECRET_ENTITIES: frozenset[str] = frozenset(
    {"AWS_SECRET_ACCESS_KEY", "URL_PASSWORD", "PASSWORD_ASSIGNMENT", "BEARER_TOKEN"}
)

OPTIONAL_ENTITIES: tuple[str, ...] = ("NRP", "DATE_TIME", "HIGH_ENTROPY_SECRET")

#: Entities produced by default (``DetectionSettings.entities`` defaults to this).
ENTITIES: tuple[str, ...] = PII_ENTITIES + SECRET_ENTITIES

#: Every built-in name the engine knows.
ALL_ENTITIES: tuple[str, ...] = ENTITIES + OPTIONAL_ENTITIES

#: Entities found by spaCy NER (skipped for leaves that are not prose).
NER_ENTITIES: frozenset[str] = frozenset({"PERSON", "LOCATION", "NRP", "DATE_TIME"})

#: spaCy (OntoNotes) label -> canonical entity. Every other label is ignored.
SPACY_LABEL_MAP: dict[str, str] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}

#: OntoNotes labels of en_core_web_sm that are dropped (listed so Presidio does not warn).
SPACY_IGNORED_LABELS: tuple[str, ...] = (
    "ORG",
    "CARDINAL",
    "ORDINAL",
    "QUANTITY",
    "MONEY",
    "PERCENT",
    "PRODUCT",
    "EVENT",
    "WORK_OF_ART",
    "LAW",
    "LANGUAGE",
)

#: Tie-break when two findings overlap with the same score: secrets win over PII, and among
#: PII the more specific (checksum-validated) types win over NER guesses.
PRIORITY: dict[str, int] = {
    **{name: 3 for name in SECRET_ENTITIES},
    "CREDIT_CARD": 2,
    "IBAN_CODE": 2,
    "US_SSN": 2,
    "EMAIL_ADDRESS": 2,
    "IP_ADDRESS": 2,
    "PHONE_NUMBER": 1,
    "US_BANK_NUMBER": 1,
    "US_PASSPORT": 1,
}


#: Names spaCy's small model tags as PERSON/LOCATION in technical text; checked
#: case-insensitively against NER findings only (never against secrets).
DEFAULT_NER_ALLOW_LIST = frozenset(
    {
        "claude", "anthropic", "openai", "chatgpt", "gpt", "gemini", "llama", "mistral",
        "node", "node.js", "nodejs", "react", "python", "java", "javascript", "typescript",
        "rust", "go", "golang", "ruby", "rails", "django", "flask", "docker", "kubernetes",
        "linux", "ubuntu", "debian", "windows", "macos", "github", "gitlab", "git", "bash",
        "json", "yaml", "html", "css", "sql", "postgres", "mysql", "redis", "nginx", "aws",
        "azure", "gcp", "npm", "pip", "api", "http", "https", "url", "uuid", "todo", "fixme",
        "user", "assistant", "system", "human", "bot", "ok", "hi", "hello", "thanks",
        "visa", "mastercard", "amex", "maestro", "paypal",
    }
)  # fmt: skip

def is_secret(entity: str) -> bool:
    return entity in SECRET_ENTITIES or entity == "HIGH_ENTROPY_SECRET"
