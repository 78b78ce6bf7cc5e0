"""Presidio recognizers of the gateway: tuned PII built-ins, secret formats, organisation rules.

Each class documents the false positives it avoids. Secrets come from two back-ends that can
run side by side (``DetectionSettings.secret_backends``):

* ``patterns``: one ``PatternRecognizer`` subclass per secret class below (formats Presidio
  lacks; each has ``PATTERNS``, optional ``CONTEXT`` and a ``validate_result`` that rejects
  placeholders, templates and sequential strings);
* ``detect_secrets``: Yelp detect-secrets' own regexes (``detect_secrets_backend.py``), which
  that project maintains for many vendor formats.

Patterns may contain a named group ``secret``: only that group is reported (e.g. the value of
``password=...``, not the keyword), so the rewritten text keeps its structure.
"""

from __future__ import annotations

import logging
import math
import string
from collections.abc import Iterable

import phonenumbers
import regex as re
from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsBankRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)

logger = logging.getLogger(__name__)

REGEX_TIMEOUT_SECONDS = 5.0

# --------------------------------------------------------------------------------------------
# Shared value heuristics
# --------------------------------------------------------------------------------------------

#: Values that are obviously not a real credential (documentation placeholders).
PLACEHOLDER_WORDS = frozenset(
    {
        "password", "passwd", "pass", "pwd", "secret", "token", "apikey", "api_key", "key",
        "changeme", "change_me", "example", "sample", "dummy", "fake", "test", "testing",
        "null", "none", "nil", "true", "false", "undefined", "empty", "string", "value",
        "username", "user", "admin", "root", "guest", "foo", "bar", "foobar", "redacted",
        "hidden", "xxx", "yyy", "your_password", "yourpassword", "mypassword", "my_password",
        "somefakekey", "real_secret", "hopenobodyfindsthisone", "default", "required",
    }
)  # fmt: skip

#: Whole-value templates: ``${VAR}``, ``$VAR``, ``$(cmd)``, ``{{ var }}``, ``<placeholder>``,
#: ``%(name)s``, ``%s``, ``[PASSWORD]``, ``{secret}``, ``****``, ``...``.
TEMPLATE_RE = re.compile(
    r"^(?:\$[{(].*|\{\{.*\}\}|\$[A-Za-z_]\w*|\$\d|<[^<>]*>|%\(\w+\)s|%s|"
    r"\[[A-Za-z_ \-]+\]|\{[^{}]*\}|\*+|\.{3,}|…)$",
    re.DOTALL,
)
# Keywords that name a credential, and affixes that make the name something else.
_KEYWORD = (
    r"(?:passw(?:or)?d|passwd|passphrase|pass|pwd|pw|psw(?:r)?d|pswrd|psswo?rd|paswo?rd|"
    r"secret|secrete|client_?secret|token|auth_?token|access_?token|refresh_?token|"
    r"api_?key|apikey|access_?key|private_?key|credentials?|user_auth|비번|암호)"
)
KEYWORD_RE = re.compile("(?i)[\\w.\\-]{0,20}" + _KEYWORD + "[\\w.\\-]{0,20}")

#: Long runs of one placeholder character: ``xxxx``, ``XXXX``, ``****``, ``####``, ``0000``.
PLACEHOLDER_RUN_RE = re.compile(r"(?i)(?:x{6,}|\*{4,}|#{4,}|\.{4,}|0{16,}|_{6,})")
#: Dotted identifiers (``config.password``, ``X25519.secret_length``, ``os.environ.get(``).
CODE_REF_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(.*)?$")


def char_classes(value: str) -> int:
    """Number of character classes present: lower, upper, digit, other."""
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


def shannon_entropy(value: str) -> float:
    if not value:
        return 0.0
    counts: dict[str, int] = {}
    for c in value:
        counts[c] = counts.get(c, 0) + 1
    n = len(value)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def is_placeholder(value: str) -> bool:
    """True for template references, placeholder words/runs and low-variety strings."""
    v = value.strip().strip("'\"`")
    if not v or TEMPLATE_RE.match(v) or PLACEHOLDER_RUN_RE.search(v):
        return True
    low = v.lower()
    if low in PLACEHOLDER_WORDS or low.strip("_-") in PLACEHOLDER_WORDS:
        return True
    if KEYWORD_RE.fullmatch(low):  # access_token=ACCESS_TOKEN
        return True
    if any(w in low for w in ("example", "placeholder", "your_", "your-", "dummy", "fake")):
        return True
    if len(v) >= 16 and len(set(v)) <= 4:  # AIzaaaaaaaa..., 1111111111...
        return True
    return is_sequential_string(v)


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


def _letters_in_enclosing_token(text: str, start: int, end: int) -> bool:
    """True when the match is part of a larger identifier that contains letters.

    ``claude-sonnet-4-5-20250929``, ``order_20250805``, UUIDs, hashes, version strings: digits
    inside such a token are never a phone, bank or passport number.
    """
    stops = " \t\r\n\"'`,;()[]{}<>=|"
    i = start
    while i > 0 and text[i - 1] not in stops:
        i -= 1
    j = end
    # "555-0100-Office": a hyphenated word after the number is a label, not an identifier.
    while j < len(text) and text[j] not in stops and not (
        text[j] == "-" and text[j + 1 : j + 2].isalpha() and j == end
    ):
        j += 1
    token = text[i:j]
    # "tel:+1 555..." / "phone:555-..." prefixes are labels, not identifiers.
    token = re.sub(r"^(?i:tel|phone|fax|mobile|cell|ssn|acct|account|passport)[:#]", "", token)
    token = token.rstrip(".:!?")
    return any(c.isalpha() for c in token if c not in "xX") or (
        token.count(".") >= 2 and "." not in text[start:end]
    )


# --------------------------------------------------------------------------------------------
# Base class for secret recognizers
# --------------------------------------------------------------------------------------------


class SecretPatternRecognizer(PatternRecognizer):
    """PatternRecognizer that reports the ``secret`` group and validates the value.

    Regexes are case-sensitive (token prefixes like ``AKIA`` are) unless they say ``(?i)``.
    ``validate_result`` returns False for placeholders; subclasses add format checks.
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
                if valid is False:
                    continue
                score = EntityRecognizer.MAX_SCORE if valid else pattern.score
                results.append(make_result(self, self.ENTITY, start, end, score))
        return EntityRecognizer.remove_duplicates(results)


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
    """AWS secret keys: exactly 40 base64 characters assigned to an aws/secret-ish keyword.

    Without the keyword any 40-char base64 string (git SHAs are hex, but many ids are not)
    would match, so the keyword is part of the regex rather than optional context.
    """

    ENTITY = "AWS_SECRET_ACCESS_KEY"
    PATTERNS = [
        Pattern(
            "aws_secret_assignment",
            r"(?i:(?:aws|amazon|secret_?access|secretaccess)[\w.\-]{0,30})[\"'\]]{0,2}\s{0,3}"
            r"(?:=>|:=|=|:)\s{0,3}[\"']?"
            r"(?P<secret>(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
            0.9,
        )
    ]

    VENDOR_FORMAT = False

    def validate_result(self, pattern_text: str) -> bool | None:
        if is_placeholder(pattern_text) or char_classes(pattern_text) < 3:
            return False
        return None


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

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = []
        for r in super().analyze(text, entities, nlp_artifacts, regex_flags):
            body = text[r.start : r.end].split("-----", 2)[-1]
            body = re.sub(r"\\[nr]|[\s\"'+#*\\]", "", body)
            if self.BASE64_RUN.search(body):
                results.append(r)
        return results

    def validate_result(self, pattern_text: str) -> bool | None:
        return None


class UrlPasswordRecognizer(SecretPatternRecognizer):
    """The password part of ``scheme://user:password@host`` (only the password is reported).

    Only template references are rejected: a literal ``user:password@`` in a URL is still
    sent as a credential.
    """

    VENDOR_FORMAT = False
    ENTITY = "URL_PASSWORD"
    PATTERNS = [
        Pattern(
            "url_password",
            r"(?i)\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/?#'\"<>]{1,100}:"
            r"(?P<secret>[^\s@/?#'\"<>]{1,200})@(?=[A-Za-z0-9.\-\[])",
            0.9,
        )
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        v = pattern_text
        if TEMPLATE_RE.match(v) or PLACEHOLDER_RUN_RE.search(v) or v.isdigit() and len(v) <= 5:
            return False
        return None


_NAME_SUFFIX_RE = re.compile(
    r"(?i)(?:_|-|\b|(?<=[a-z]))(?:id|ids|name|names|url|uri|path|file|type|length|len|size|"
    r"count|limit|num|index|field|policy|format|endpoint|expires?|expiry|ttl|version|header|"
    r"prefix|hint|label|ref|arn|store|vault|pressed|selector|mapping|chars|str|hash|key_?id|"
    r"usage|_?tokens)$"
)
_NAME_PREFIX_RE = re.compile(r"(?i)^(?:public|publishable|csrf|xsrf|max|min|total|num|input|output)")


class PasswordAssignmentRecognizer(SecretPatternRecognizer):
    """Values assigned to credential-named keys: ``password=...``, ``"secret": "..."``,
    ``PWD:...``, ``curl -u user:pass``, ``IDENTIFIED BY '...'``, ``"..." == password``.

    Only the value is reported. Rejected: placeholders/templates (``${PASS}``, ``<password>``,
    ``xxx``), dotted code references, values with a single character class (``secret: you``,
    ``max_tokens: 1024``), and keys that merely *name* a credential (``password_length``,
    ``credentialsId``, ``public_key``, ``csrf-token``).
    """

    VENDOR_FORMAT = False
    ENTITY = "PASSWORD_ASSIGNMENT"
    PATTERNS = [
        Pattern(
            "keyword_assignment",
            r"(?i)(?P<key>(?<![A-Za-z0-9])[\w.\-]{0,40}?" + _KEYWORD + r"[\w.\-]{0,30}?)"
            r"[\"'`\]]{0,2}[ \t]{0,3}(?:=>|:=|::|==|=|:|[ \t]+is[ \t]+)[ \t]{0,3}"
            r"(?:(?:String|str)[ \t]*=[ \t]*)?"
            r"(?:\"(?P<secret>[^\"\n]{4,200})\"|'(?P<secret>[^'\n]{4,200})'|`(?P<secret>[^`\n]{4,200})`"
            r"|(?P<secret>[^\s\"'`,;)}\]<>&]{4,200}))",
            0.7,
        ),
        Pattern(
            "define_password",
            r"(?i)#define[ \t\\t]+" + _KEYWORD + r"[ \t\\t]+\\?\"(?P<secret>[^\"\\\s]{4,200})",
            0.7,
        ),
        Pattern(
            "sql_identified_by",
            r"(?i)identified[ \t]+by[ \t]+['\"](?P<secret>[^'\"\s]{4,200})['\"]",
            0.8,
        ),
        Pattern(
            "compared_to_password",
            r"[\"'](?P<secret>[^\"'\n]{6,200})[\"'][ \t]*[!=]==?[ \t]*[\w.]*"
            r"(?i:passw(?:or)?d|passwd|secret|private_key|pw)\b",
            0.7,
        ),
        Pattern(
            "openssl_pass",
            r"(?i)-pass(?:in|out)?[ \t]+[\"']?pass:(?P<secret>[^\s\"']{4,200})",
            0.8,
        ),
    ]

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not self.names_no_credential(text, r.start)]

    @classmethod
    def names_no_credential(cls, text: str, start: int) -> bool:
        """True if the key assigned at ``start`` only names a credential (``password_length``)."""
        key = cls._key_before(text, start)
        return key is not None and bool(_NAME_SUFFIX_RE.search(key) or _NAME_PREFIX_RE.search(key))

    @staticmethod
    def _key_before(text: str, start: int) -> str | None:
        """The key name of a ``key = value`` assignment ending just before ``start``."""
        head = text[max(0, start - 80) : start]
        m = re.search(r"([\w.\-]+)[\"'`\]]{0,2}[ \t]*(?:=>|:=|::|==|=|:|[ \t]is)[ \t]*"
                      r"(?:(?:String|str)[ \t]*=[ \t]*)?[\"'`]?$", head)
        if not m or not re.search("(?i)" + _KEYWORD, m.group(1)):
            return None
        return m.group(1)

    def validate_result(self, pattern_text: str) -> bool | None:
        value = pattern_text.strip()
        if len(value) < 4 or is_placeholder(value) or CODE_REF_RE.match(value):
            return False
        if is_potential_uuid(value) and len(value) <= 38:  # ids (detect-secrets' heuristic)
            return False
        if not any(c.isalnum() for c in value) or char_classes(value) < 2:
            return False
        return None


class CurlUserRecognizer(SecretPatternRecognizer):
    """``curl -u user:password`` / ``--user 'user:password'``: reported as PASSWORD_ASSIGNMENT
    (the whole ``user:password`` argument). Without a ``:`` curl prompts for the password, so
    there is nothing to redact; template or placeholder passwords are skipped."""

    VENDOR_FORMAT = False
    ENTITY = "PASSWORD_ASSIGNMENT"
    PATTERNS = [
        Pattern(
            "curl_user",
            r"(?:^|\s)(?:-u|--user)\s+(?P<secret>\"[^\"\n]*\"(?::\"[^\"\n]*\")?|'[^'\n]*'|"
            r"[^\s'\"]*:'[^'\n]*'|[^\s'\"]+)",
            0.7,
        ),
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        v = pattern_text.strip()
        if TEMPLATE_RE.match(v.strip("\"'")):
            return False
        parts = [p.strip("\"'") for p in re.split(r"[\"']?:[\"']?", v.strip("\"'"), maxsplit=1)]
        if len(parts) < 2:
            return False
        user, password = parts
        value = password or user
        if TEMPLATE_RE.match(user) or TEMPLATE_RE.match(value):
            return False
        if len(value) < 4 or is_placeholder(value) or char_classes(value) < 2:
            return False
        return None


class BearerTokenRecognizer(SecretPatternRecognizer):
    """Credentials in ``Authorization:`` style headers (any scheme) and ``X-*-Key/Token``
    headers, when the value looks random (>= 2 character classes, entropy >= 3 bits)."""

    VENDOR_FORMAT = False
    ENTITY = "BEARER_TOKEN"
    PATTERNS = [
        Pattern(
            "auth_header",
            r"(?i)(?<![A-Za-z0-9])(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?"
            r"(?:(?:bearer|basic|token|api-token|ntlm|negotiate|digest|sso-key)[ \t]+)?"
            r"(?P<secret>[A-Za-z0-9._~+/=:@!$&%*\-]{8,2048})",
            0.8,
        ),
        Pattern(
            "key_header",
            r"(?i)(?<![A-Za-z0-9])(?:x-[\w\-]{0,30}?(?:key|token|secret)|api-?key|api-token|"
            r"token|x-api-key|x-auth-token)[\"']?[ \t]*:[ \t]*[\"']?"
            r"(?P<secret>[A-Za-z0-9._~+/=\-]{8,2048})",
            0.7,
        ),
    ]

    def validate_result(self, pattern_text: str) -> bool | None:
        v = pattern_text
        if is_placeholder(v) or char_classes(v) < 2 or shannon_entropy(v) < 3.0:
            return False
        return None


#: All own secret recognizers (backend ``patterns``); PEM is also used by the engine directly.
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
    JwtRecognizer,
    UrlPasswordRecognizer,
    PasswordAssignmentRecognizer,
    CurlUserRecognizer,
    BearerTokenRecognizer,
)

# --------------------------------------------------------------------------------------------
# PII: Presidio built-ins with the gateway's precision fixes
# --------------------------------------------------------------------------------------------


class GatewayPhoneRecognizer(PhoneRecognizer):
    """python-phonenumbers matching (Presidio) plus a context-gated grouped-digits pattern.

    * Numbers inside identifiers (``claude-sonnet-4-5-20250929``, ``order-2025080512``,
      UUIDs) are dropped: the enclosing token contains letters.
    * Bare digit runs (no separators, no ``+``) are epoch timestamps and ids far more often
      than phone numbers: they keep only 0.3 and need a context word to pass the threshold.
    * International formats that phonenumbers rejects for the configured regions
      (``0490 75 40 81``, ``60-56-85-91``) are found by ``GROUPED`` at 0.3 and likewise need
      a context word (phone, call, mobile, fax, ...). Presidio's UK_NHS recognizer is not
      loaded at all (it scores 1.0 on US numbers like 415-555-2671).
    """

    CONTEXT = [
        "phone", "phones", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "desk",
        "office", "call", "calls", "calling", "dial", "text", "sms", "whatsapp", "reach",
        "contact", "answering", "messages", "message", "landline", "extension",
    ]  # fmt: skip
    SUPPORTED_REGIONS = ("US", "UK", "GB", "DE", "FR", "IL", "IN", "CA", "BR", "AU", "ES", "IT")
    FORMATTED_SCORE = 0.6
    BARE_SCORE = 0.3
    #: Anything phonenumbers could match: 7+ digits with phone punctuation in between.
    CANDIDATE = re.compile(r"[+(]?\d(?:[\d ().\-/]|\s(?=\d)){5,28}\d(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?")
    GROUPED = re.compile(
        r"(?<![\w+\-.])(?:(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}"
        r"(?:[ .\-]\d{2,6}){1,4}(?:[ ]?x\d{1,5})?|\+\d{10,14})(?!\w)(?!-\d)"
    )

    def __init__(self) -> None:
        super().__init__(context=list(self.CONTEXT), supported_regions=self.SUPPORTED_REGIONS)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        # python-phonenumbers scans the whole text once per region (75% of the engine's time
        # on a 20 KB text). Run it only on windows around digit runs that could be a number.
        for m in self.CANDIDATE.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if not 7 <= digits <= 15 or _letters_in_enclosing_token(text, m.start(), m.end()):
                continue
            s0 = max(0, m.start() - 2)
            window = text[s0 : m.end() + 2]
            for region in self.supported_regions:  # first region that parses it wins
                hits = list(phonenumbers.PhoneNumberMatcher(window, region, leniency=self.leniency))
                for hit in hits:
                    start, end = hit.start + s0, hit.end + s0
                    score = self._score(text, start, end)
                    if score:
                        results.append(
                            make_result(self, self.supported_entities[0], start, end, score)
                        )
                if hits:
                    break
        found = {(r.start, r.end) for r in results}
        for m in self.GROUPED.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if not 7 <= digits <= 15 or (m.start(), m.end()) in found:
                continue
            if self.SSN_SHAPE.fullmatch(m.group()):
                continue  # 3-2-4 is the US SSN layout, never a phone grouping
            if _letters_in_enclosing_token(text, m.start(), m.end()):
                continue
            if re.fullmatch(r"\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}|\d{4}[./\-]\d{1,2}[./\-]\d{1,2}",
                            m.group()):
                continue  # dates
            results.append(
                make_result(self, self.supported_entities[0], m.start(), m.end(), self.BARE_SCORE)
            )
        return EntityRecognizer.remove_duplicates(results)

    SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")

    def _score(self, text: str, start: int, end: int) -> float:
        if _letters_in_enclosing_token(text, start, end) or self.SSN_SHAPE.fullmatch(
            text[start:end]
        ):
            return 0.0
        value = text[start:end]
        if value.isdigit():
            return self.BARE_SCORE
        return self.FORMATTED_SCORE


class GatewayEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, minus the ``password@host`` part of a URL's userinfo
    (``https://user:s3cret@db.example.com`` is a URL_PASSWORD, not an address)."""

    USERINFO = re.compile(r"://[^\s/@:]*:[^\s/@]*$")

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [
            r for r in results if not self.USERINFO.search(text[max(0, r.start - 200) : r.end])
            or "://" not in text[max(0, r.start - 200) : r.start]
        ]


class _TokenGuardMixin:
    """Drop matches that are digits inside a larger identifier (model ids, order ids)."""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not _letters_in_enclosing_token(text, r.start, r.end)]


class GatewayUsBankRecognizer(_TokenGuardMixin, UsBankRecognizer):
    """Presidio's 8-17 digit pattern scores 0.05: it only passes the threshold with a context
    word (account, bank, routing...). Digits inside identifiers are dropped."""


class GatewayUsPassportRecognizer(_TokenGuardMixin, UsPassportRecognizer):
    """9 digits / letter + 8 digits at 0.05-0.1: needs a context word (passport...)."""


class GatewayUsSsnRecognizer(_TokenGuardMixin, UsSsnRecognizer):
    """Presidio's SSN patterns (known sample SSNs such as 078-05-1120 are rejected by design)."""


class GatewayCreditCardRecognizer(_TokenGuardMixin, CreditCardRecognizer):
    """Luhn-validated card numbers; digits inside identifiers are dropped.

    Presidio's patterns cover the 3/4/5/6 (and 1) prefixes only; JCB (2131, 35), Mastercard
    2-series and 12-19 digit Maestro numbers are added by ``ANY_LENGTH``: Luhn-valid, but at
    0.3, so they need a context word (card, cc, visa...) - one random 12-19 digit number in
    ten passes Luhn (epoch-millisecond timestamps, order numbers).
    """

    ANY_LENGTH = re.compile(r"(?<![\w\-.])\d{4}(?:[ \-]?\d{2,4}){2,4}(?:[ \-]?\d{1,3})?(?![\w\-])")
    CONTEXT = [
        "credit", "card", "cards", "cc", "visa", "mastercard", "amex", "discover", "jcb",
        "diners", "maestro", "debit", "payment", "expiring", "expires",
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__(context=list(self.CONTEXT))

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        taken = [(r.start, r.end) for r in results]
        for m in self.ANY_LENGTH.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if not 12 <= len(digits) <= 19 or any(s < m.end() and m.start() < e for s, e in taken):
                continue
            if self.validate_result(m.group()) and not _letters_in_enclosing_token(
                text, m.start(), m.end()
            ):
                results.append(make_result(self, "CREDIT_CARD", m.start(), m.end(), 0.3))
        return results


class GatewayIpRecognizer(IpRecognizer):
    """IPv4/IPv6 (validated by ``ipaddress``). Drops C++/Rust paths such as ``std::vector``
    and ``a::b`` that the IPv6 pattern matches, and dotted quads preceded by ``v``/``version``
    (``v1.2.3.4`` is a version, not an address)."""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        kept = []
        for r in super().analyze(text, entities, nlp_artifacts, regex_flags):
            value = text[r.start : r.end]
            if ":" in value and sum(c in string.hexdigits for c in value) < 4:
                continue
            before = text[max(0, r.start - 9) : r.start].lower()
            if re.search(r"(?:\bv|version[ :=]*)$", before):
                continue
            kept.append(r)
        return kept


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
    }
)  # fmt: skip


class GatewaySpacyRecognizer(SpacyRecognizer):
    """spaCy NER (PERSON, LOCATION, optional NRP/DATE_TIME) with code-aware filters.

    Dropped: entities containing digits or code punctuation (``_/@=<>{}()[]``), all-lowercase
    entities, names on ``DEFAULT_NER_ALLOW_LIST`` ("Node", "Claude"...), single characters.
    """

    CODE_CHARS = set("_/@=<>{}()[]\\|#$%^*~`;\":")
    TITLE_BEFORE = re.compile(r"(?i)\b(?:mr|mrs|ms|miss|dr|prof|sir|madam|dear|name is|named)\.?\s*$")

    def __init__(
        self, supported_entities: Iterable[str], common_words: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(supported_entities=list(supported_entities), ner_strength=0.85)
        self.common_words = common_words

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        kept = []
        for r in super().analyze(text, entities, nlp_artifacts):
            value = text[r.start : r.end].strip()
            if r.entity_type in ("PERSON", "LOCATION", "NRP") and not self._plausible(value):
                continue
            if (
                r.entity_type == "PERSON"
                and " " not in value
                and value.lower() in self.common_words
                and not self.TITLE_BEFORE.search(text[max(0, r.start - 12) : r.start])
            ):
                continue  # "Discipline", "React": a common word, not a name
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
    PATTERNS = [
        Pattern("name_intro_strong", STRONG + rf"(?P<name>{_TITLE_NAME}|{_LOWER_NAME})", 0.9),
        Pattern("name_intro_weak", WEAK + rf"(?P<name>{_TITLE_NAME})", 0.75),
        # "Jane said", "Jane Doe wrote:" (a sentence-initial name before a speech verb)
        Pattern(
            "name_speech",
            rf"(?:^|(?<=[.!?\n\"“]\s*))(?P<name>{_TITLE_NAME})[ \t]+"
            r"(?:said|says|asked|replied|wrote|shouted)\b",
            0.75,
        ),
    ]

    def __init__(self, english_words: frozenset[str] = frozenset()) -> None:
        super().__init__(
            supported_entity="PERSON",
            name="NameIntroRecognizer",
            patterns=[Pattern(p.name, p.regex, p.score) for p in self.PATTERNS],
            global_regex_flags=re.MULTILINE,
        )
        self._rx = [(re.compile(p.regex, re.MULTILINE), p.score) for p in self.PATTERNS]
        self.english_words = english_words

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        out = []
        for rx, score in self._rx:
            for m in rx.finditer(text):
                start, end = m.span("name")
                name = text[start:end]
                if name.lower() in DEFAULT_NER_ALLOW_LIST or name.split()[0].lower() in _NOT_NAMES:
                    continue
                if name[0].islower():
                    first = name.split()[0]
                    if not self.LOWER_OK.search(text[max(0, start - 40) : start]) or (
                        first in self.english_words or first in _NOT_NAMES
                    ):
                        continue
                out.append(make_result(self, "PERSON", start, end, score))
        return out


#: Words that follow a name frame without being a name ("Dear Sir", "called The...").
_NOT_NAMES = frozenset(
    """sir madam madame all team everyone customer customers colleagues friends friend the a an
    this that these those it its not no none is was be just here there what who me you he she
    they we i my your his her our their unknown redacted n/a na""".split()
)


def pii_recognizers(entities: set[str]) -> list[EntityRecognizer]:
    """Presidio recognizers for the PII entities requested (pattern based; NER is separate)."""
    out: list[EntityRecognizer] = []
    if "EMAIL_ADDRESS" in entities:
        out.append(GatewayEmailRecognizer())
    if "PHONE_NUMBER" in entities:
        out.append(GatewayPhoneRecognizer())
    if "CREDIT_CARD" in entities:
        out.append(GatewayCreditCardRecognizer())
    if "US_SSN" in entities:
        out.append(GatewayUsSsnRecognizer())
    if "IBAN_CODE" in entities:
        out.append(IbanRecognizer())
    if "IP_ADDRESS" in entities:
        out.append(GatewayIpRecognizer())
    if "US_BANK_NUMBER" in entities:
        out.append(GatewayUsBankRecognizer())
    if "US_PASSPORT" in entities:
        out.append(GatewayUsPassportRecognizer())
    return out


# --------------------------------------------------------------------------------------------
# Organisation recognizers from the policy
# --------------------------------------------------------------------------------------------


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
