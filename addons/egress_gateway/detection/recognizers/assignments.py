"""Credentials by position: values assigned to credential keys, URL passwords, auth headers."""

from __future__ import annotations

import regex as re
from detect_secrets.filters.heuristic import is_potential_uuid
from presidio_analyzer import Pattern

from egress_gateway.detection.recognizers.base import SecretPatternRecognizer
from egress_gateway.detection.recognizers.filters import (
    CODE_REF_RE,
    CREDENTIAL_KEYWORD,
    PLACEHOLDER_RUN_RE,
    TEMPLATE_RE,
    char_classes,
    is_placeholder,
    shannon_entropy,
)  # fmt: skip


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
            r"(?i)(?P<key>(?<![A-Za-z0-9])[\w.\-]{0,40}?" + CREDENTIAL_KEYWORD + r"[\w.\-]{0,30}?)"
            r"[\"'`\]]{0,2}[ \t]{0,3}(?:=>|:=|::|==|=|:|[ \t]+is[ \t]+)[ \t]{0,3}"
            r"(?:(?:String|str)[ \t]*=[ \t]*)?"
            r"(?:\"(?P<secret>[^\"\n]{4,200})\"|'(?P<secret>[^'\n]{4,200})'|`(?P<secret>[^`\n]{4,200})`"
            r"|(?P<secret>[^\s\"'`,;)}\]<>&]{4,200}))",
            0.7,
        ),
        Pattern(
            "define_password",
            r"(?i)#define[ \t\\t]+" + CREDENTIAL_KEYWORD + r"[ \t\\t]+\\?\"(?P<secret>[^\"\\\s]{4,200})",
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
            "xml_key_value",
            r"(?i)\bkey=[\"'][\w.:\-]*" + CREDENTIAL_KEYWORD + r"[\w.:\-]*[\"'][ \t]+value="
            r"[\"'](?P<secret>[^\"'\n]{4,200})[\"']",
            0.8,
        ),
        Pattern(
            "xml_element",
            r"(?i)<(?P<tag>[\w.:\-]*" + CREDENTIAL_KEYWORD + r"[\w.:\-]*)>(?P<secret>[^<>\n]{4,200})"
            r"</(?P=tag)>",
            0.8,
        ),
        Pattern(
            "netrc_password",
            r"(?i)\bmachine[ \t]+\S+(?:[ \t]+login[ \t]+\S+)?[ \t]+password[ \t]+(?P<secret>\S{4,200})",
            0.8,
        ),
        Pattern(
            "mysql_p",
            r"\b(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n]*?[ \t]-p(?:'(?P<secret>[^'\n]{4,200})'"
            r"|\"(?P<secret>[^\"\n]{4,200})\"|(?P<secret>[^\s'\"\-][^\s'\"]{3,200}))",
            0.8,
        ),
        Pattern(
            "env_name_value",
            r"(?i)name:[ \t]*[\"']?[\w.\-]*" + CREDENTIAL_KEYWORD + r"[\w.\-]*[\"']?[ \t]*\r?\n"
            r"[ \t]*(?:-[ \t]*)?value:[ \t]*[\"']?(?P<secret>[^\s\"']{4,200})",
            0.8,
        ),
        Pattern(
            "openssl_pass",
            r"(?i)-pass(?:in|out)?[ \t]+[\"']?pass:(?P<secret>[^\s\"']{4,200})",
            0.8,
        ),
    ]

    def accept_span(self, text: str, start: int, end: int) -> bool:
        return not self.names_no_credential(text, start)

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
        if not m or not re.search("(?i)" + CREDENTIAL_KEYWORD, m.group(1)):
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

