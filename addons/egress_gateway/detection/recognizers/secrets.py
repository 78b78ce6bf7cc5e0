"""Vendor secret formats: one recognizer per provider (fixed prefix and shape)."""

from __future__ import annotations

import regex as re
from presidio_analyzer import Pattern

from egress_gateway.detection.recognizers.base import SecretPatternRecognizer
from egress_gateway.detection.recognizers.filters import (
    PLACEHOLDER_RUN_RE,
    char_classes,
    is_placeholder,
    shannon_entropy,
)

# Boundaries for tokens: not preceded/followed by another token character.
_B = r"(?<![A-Za-z0-9_\-])"
_E = r"(?![A-Za-z0-9_\-])"


class AwsAccessKeyIdRecognizer(SecretPatternRecognizer):
    """AWS access key ids: documented 4-letter prefixes + 16 upper-case base32 characters."""

    ENTITY = "AWS_ACCESS_KEY_ID"
    PATTERNS = [
        Pattern(
            "aws_key_id",
            _B + r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)"
            r"[A-Z0-9]{16}(?![A-Za-z0-9])",
            0.9,
        )
    ]


class AwsSecretAccessKeyRecognizer(SecretPatternRecognizer):
    """AWS secret access keys: exactly 40 base64 characters.

    * assigned to an aws/secret-ish key (``aws_secret_access_key = ...``, YAML, env files,
      ``"SecretAccessKey": "..."``, a Kubernetes ``name: AWS_SECRET_ACCESS_KEY`` /
      ``value: ...`` pair) at 0.9;
    * bare (a key pasted into a prompt) at 0.6, only when it has the shape and entropy of a
      real key: upper and lower case, digits and at least one ``+`` or ``/``, and 3.5+ bits of
      entropy per character. 40-hex strings (git SHAs) and paths (no digits) never match.

    A placeholder marker inside a value of that shape (``...EXAMPLE...``) does not make it
    pass (``filters.is_placeholder``).
    """

    ENTITY = "AWS_SECRET_ACCESS_KEY"
    _KEY40 = r"(?P<secret>(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
    PATTERNS = [
        Pattern(
            "aws_secret_assignment",
            r"(?i:(?:aws|amazon|secret_?access|secretaccess)[\w.\-]{0,30})[\"'\]]{0,2}\s{0,3}"
            r"(?:=>|:=|=|:)\s{0,3}[\"']?" + _KEY40,
            0.9,
        ),
        Pattern(
            "aws_secret_env_pair",
            r"(?i:aws_secret_access_key)[\"']?[ \t]*\r?\n[ \t]*(?:-[ \t]*)?value:[ \t]*[\"']?" + _KEY40,
            0.9,
        ),
        Pattern(
            "aws_secret_bare",
            r"(?<![\w/+=.\-])(?=[A-Za-z0-9]{0,39}[+/])(?P<secret>[A-Za-z0-9/+]{40})(?![\w/+=\-]|\.\w)",
            0.6,
        ),
    ]

    VENDOR_FORMAT = False

    def validate_result(self, pattern_text: str) -> bool | None:
        if is_placeholder(pattern_text) or char_classes(pattern_text) < 3:
            return False
        return None

    def accept_span(self, text: str, start: int, end: int) -> bool:
        value = text[start:end]
        bare = not re.search(r"[=:][ \t\"']*$|value:[ \t\"']*$", text[max(0, start - 12) : start])
        if bare:
            return char_classes(value) == 4 and shannon_entropy(value) >= 4.0 and bool(
                re.search(r"\d", value)
            )
        return True


class GoogleApiKeyRecognizer(SecretPatternRecognizer):
    """Google / Firebase API keys (``AIza`` + 35 url-safe base64 characters) and OAuth
    client credentials (``<digits>-<32>.apps.googleusercontent.com`` ids, ``GOCSPX-`` secrets).
    """

    ENTITY = "GOOGLE_API_KEY"
    PATTERNS = [
        Pattern("google_api_key", _B + r"AIza[0-9A-Za-z_\-]{35}" + _E, 0.9),
        Pattern(
            "google_oauth_client_id",
            r"(?<![\w\-])\d{6,14}-[a-z0-9]{32}\.apps\.googleusercontent\.com(?![\w\-])",
            0.8,
        ),
        Pattern("google_oauth_secret", _B + r"GOCSPX-[A-Za-z0-9_\-]{28}" + _E, 0.95),
    ]


class GitHubTokenRecognizer(SecretPatternRecognizer):
    """GitHub classic (``ghp_`` ...), server/app (``ghs_`` incl. the JWT-bearing kind) and
    fine-grained (``github_pat_``) tokens."""

    ENTITY = "GITHUB_TOKEN"
    PATTERNS = [
        Pattern("github_token", _B + r"gh[pousr]_[A-Za-z0-9_]{36,251}" + _E, 0.95),
        Pattern("github_app_jwt", _B + r"ghs_[0-9]{6,10}_eyJ[A-Za-z0-9_\-.]{20,}", 0.95),
        Pattern("github_pat", _B + r"github_pat_[A-Za-z0-9_]{22,255}" + _E, 0.95),
    ]


class GitLabTokenRecognizer(SecretPatternRecognizer):
    """GitLab personal/deploy/runner/... tokens (prefixes from GitLab's token docs)."""

    ENTITY = "GITLAB_TOKEN"
    PATTERNS = [
        Pattern(
            "gitlab_token",
            _B + r"(?:glpat|gldt|glrt|glcbt|glptt|glft|glimt|glagent|gloas|glsoat|glffct)-"
            r"(?:[0-9a-fA-F]{2}_)?[A-Za-z0-9_\-]{20,64}(?![A-Za-z0-9_\-])",
            0.95,
        ),
        Pattern("gitlab_runner_reg", _B + r"GR1348941[A-Za-z0-9_\-]{20,50}" + _E, 0.95),
    ]


class SlackTokenRecognizer(SecretPatternRecognizer):
    """Slack bot/user/app/config/refresh tokens and incoming-webhook / workflow URLs.

    ``validate_result`` rejects the documentation forms (``xoxb-xxx``, ``xoxp-1234-1234``,
    ``xoxe.xoxp-1-RANDOMSTRINGHERE``): a real token has a long numeric team/user id or a long
    random tail.
    """

    ENTITY = "SLACK_TOKEN"
    PATTERNS = [
        Pattern(
            "slack_token",
            _B + r"xox(?:e\.xox[bp]|[abposre])-[A-Za-z0-9\-]{8,400}" + _E,
            0.9,
        ),
        Pattern("slack_app_token", _B + r"xapp-\d-[A-Z0-9]{8,}-\d{8,}-[a-z0-9]{32,}" + _E, 0.95),
        Pattern(
            "slack_webhook",
            r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,}",
            0.95,
        ),
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        placeholder = bool(PLACEHOLDER_RUN_RE.search(pattern_text))
        if "hooks.slack.com" in pattern_text or pattern_text.startswith("xapp-"):
            return False if placeholder and not self.report_placeholders else None
        if placeholder:
            return None if self.report_placeholders else False
        parts = pattern_text.split("-")[1:]
        digit_groups = [p for p in parts if p.isdigit()]
        tail = parts[-1] if parts else ""
        if any(len(p) >= 8 for p in digit_groups) and len(tail) >= 8 and not tail.isdigit():
            return None
        if len(digit_groups) >= 3 and all(len(p) >= 5 for p in digit_groups) and len(tail) >= 8:
            return None
        if len(tail) >= 40 and char_classes(tail) >= 3:  # xoxe-1-<base64>, xoxp-1-<base64>
            return None
        return False


class StripeKeyRecognizer(SecretPatternRecognizer):
    """Stripe secret/publishable/restricted keys and webhook signing secrets."""

    ENTITY = "STRIPE_KEY"
    PATTERNS = [
        Pattern("stripe_key", _B + r"(?:sk|pk|rk)_(?:live|test|prod)_[A-Za-z0-9]{20,247}" + _E, 0.95),
        Pattern("stripe_webhook", _B + r"whsec_[A-Za-z0-9]{32,64}" + _E, 0.95),
    ]


class OpenAIKeyRecognizer(SecretPatternRecognizer):
    """OpenAI keys: the ``T3BlbkFJ`` marker (base64 of "OpenAI") or a typed long key."""

    ENTITY = "OPENAI_API_KEY"
    PATTERNS = [
        Pattern(
            "openai_marker",
            _B + r"sk-(?:[a-z]+-)?[A-Za-z0-9_\-]{8,200}T3BlbkFJ[A-Za-z0-9_\-]{8,200}" + _E,
            0.95,
        ),
        Pattern("openai_typed", _B + r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{80,300}" + _E, 0.9),
    ]


class AnthropicKeyRecognizer(SecretPatternRecognizer):
    """Anthropic API and admin keys: ``sk-ant-<kind><2 digits>-`` + ~95 url-safe characters.

    Real keys end in ``AA``; that is not required, a truncated or re-typed key is still one.
    """

    ENTITY = "ANTHROPIC_API_KEY"
    PATTERNS = [
        Pattern(
            "anthropic_key",
            _B + r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{80,120}" + _E,
            0.95,
        )
    ]


class HuggingFaceTokenRecognizer(SecretPatternRecognizer):
    """Hugging Face user tokens (``hf_`` + 34 letters) and legacy org tokens (``api_org_``)."""

    ENTITY = "HUGGINGFACE_TOKEN"
    PATTERNS = [
        Pattern("hf_token", r"(?<![A-Za-z0-9])hf_[A-Za-z]{34}(?![A-Za-z0-9])", 0.9),
        Pattern("hf_org_token", r"(?<![A-Za-z0-9])api_org_[A-Za-z]{34}(?![A-Za-z0-9])", 0.9),
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        if self.report_placeholders:
            return None
        tail = pattern_text.split("_")[-1]
        if PLACEHOLDER_RUN_RE.search(tail) or len(set(tail)) < 10:
            return False
        return None


class AzureStorageKeyRecognizer(SecretPatternRecognizer):
    """Azure storage account keys: 88 base64 characters (64 bytes, ending ``==``) after an
    ``AccountKey=`` / ``account_key`` / ``AZURE_STORAGE_KEY`` / ``--account-key`` key.

    The key is required: bare 88-character base64 strings are mostly ``sha512-`` integrity
    hashes (package-lock files), which are not secrets.
    """

    ENTITY = "API_TOKEN"
    VENDOR_FORMAT = False
    PATTERNS = [
        Pattern(
            "azure_storage_key",
            r"(?i:account_?key|azure_?storage_?(?:account_?)?key|storage_?key|--account-key)"
            r"[\"']?[ \t]*[=:]?[ \t]*[\"']?"
            r"(?P<secret>(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==)(?![A-Za-z0-9+/=])",
            0.9,
        ),
    ]


class DiscordTokenRecognizer(SecretPatternRecognizer):
    """Discord bot tokens (base64 user id ``.`` 6-char timestamp ``.`` 27-38 char HMAC) and
    webhook URLs (``discord.com/api/webhooks/<id>/<68-char token>``)."""

    ENTITY = "API_TOKEN"
    PATTERNS = [
        Pattern(
            "discord_bot_token",
            _B + r"[MNO][A-Za-z\d_\-]{23,27}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,38}" + _E,
            0.9,
        ),
        Pattern(
            "discord_webhook",
            r"https?://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{17,20}/"
            r"[A-Za-z0-9_\-]{60,68}",
            0.95,
        ),
    ]


class PackageRegistryTokenRecognizer(SecretPatternRecognizer):
    """Package registry tokens: npm (``npm_`` + 36), Clojars (``CLOJARS_`` + 60), and any
    ``_authToken=`` value in an ``.npmrc`` (legacy npm tokens are UUIDs)."""

    ENTITY = "API_TOKEN"
    PATTERNS = [
        Pattern("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, 0.95),
        Pattern("clojars_token", _B + r"CLOJARS_[a-z0-9]{60}" + _E, 0.95),
        Pattern(
            "npmrc_auth_token",
            r":_auth(?:Token)?[ \t]*=[ \t]*[\"']?(?P<secret>[^\s\"']{8,})",
            0.9,
        ),
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        return False if is_placeholder(pattern_text) else None


class JwtRecognizer(SecretPatternRecognizer):
    """JSON web tokens: base64url JSON header (``eyJ``), JSON payload (``eyJ``), signature.

    The payload must also start with ``eyJ``, which keeps arbitrary base64 that happens to
    start with ``eyJ`` out.
    """

    ENTITY = "JWT"
    PATTERNS = [
        Pattern(
            "jwt",
            r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{10,}={0,2}\.eyJ[A-Za-z0-9_\-]{10,}={0,2}"
            r"(?:\.[A-Za-z0-9_\-+/=]*)?",
            0.95,
        )
    ]


class PemPrivateKeyRecognizer(SecretPatternRecognizer):
    """PEM / OpenSSH / PGP private key blocks, also inside string literals and logs.

    The span runs from ``-----BEGIN`` to the matching ``END`` line, or (truncated block) to
    the end of the key material. A body with fewer than 32 base64 characters in a run
    (``-----BEGIN PRIVATE KEY-----\\nanything``) is not a key. The engine runs this recognizer
    on the whole text, never on chunks, so a block longer than a chunk is still one finding.
    """

    VENDOR_FORMAT = False
    ENTITY = "PEM_PRIVATE_KEY"
    PATTERNS = [
        Pattern(
            "pem_private_key",
            r"-----BEGIN[ A-Z0-9_]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"(?P<body>(?:(?!-----END)[\s\S]){0,65536}?)"
            r"(?:-----END[ A-Z0-9_]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"|(?=[\"'`]\s*[;)\]}]|\n\s*\n\s*\n)|\Z)",
            1.0,
        )
    ]
    BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{32,}")

    def accept_span(self, text: str, start: int, end: int) -> bool:
        body = text[start:end].split("-----", 2)[-1]
        return bool(self.BASE64_RUN.search(re.sub(r"\\[nr]|[\s\"'+#*\\]", "", body)))

    def validate_result(self, pattern_text: str) -> bool | None:
        return None
