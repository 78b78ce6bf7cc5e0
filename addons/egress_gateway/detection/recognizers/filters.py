"""Value heuristics shared by recognizers: placeholders, templates, entropy, identifiers."""

from __future__ import annotations

import math

import regex as re
from detect_secrets.filters.heuristic import is_sequential_string

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
#: ``%(name)s``, ``%s``, ``[PASSWORD]``, ``{secret}``, ``****``, ``...``, ``%WINDOWS_VAR%``.
TEMPLATE_RE = re.compile(
    r"^(?:\$[{(].*|\{\{.*\}\}|\$[A-Za-z_]\w*|\$\d|<[^<>]*>|%\(\w+\)s|%s|"
    r"\[[A-Za-z_ \-]+\]|\{[^{}]*\}|\*+|\.{3,}|…|%[A-Za-z_]\w*%)$",
    re.DOTALL,
)
# Keywords that name a credential, and affixes that make the name something else.
CREDENTIAL_KEYWORD = (
    r"(?:passw(?:or)?d|passwd|passphrase|pass|pwd|pw|psw(?:r)?d|pswrd|psswo?rd|paswo?rd|"
    r"secret|secrete|client_?secret|token|auth_?token|access_?token|refresh_?token|"
    r"api_?key|apikey|access_?key|private_?key|credentials?|user_auth|비번|암호)"
)
KEYWORD_RE = re.compile("(?i)[\\w.\\-]{0,20}" + CREDENTIAL_KEYWORD + "[\\w.\\-]{0,20}")

#: Long runs of one placeholder character: ``xxxx``, ``XXXX``, ``****``, ``####``, ``0000``.
PLACEHOLDER_RUN_RE = re.compile(r"(?i)(?:x{6,}|\*{4,}|#{4,}|\.{4,}|0{16,}|_{6,})")
#: Dotted identifiers (``config.password``, ``X25519.secret_length``, ``os.environ.get(``,
#: ``os.environ["X"]``).
CODE_REF_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:[(\[].*)?$")
#: Words that mark documentation values (``AKIAIOSFODNN7EXAMPLE``, ``your_api_key``).
PLACEHOLDER_MARKERS = ("example", "placeholder", "your_", "your-", "dummy", "fake")
_MARKER_RE = re.compile("(?i)" + "|".join(re.escape(m) for m in PLACEHOLDER_MARKERS))
#: 40 hex digits: a git commit or SHA-1, everywhere in agent traffic, never "random-looking".
HEX40_RE = re.compile(r"[0-9a-fA-F]{40}")


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


def looks_random(value: str) -> bool:
    """A real secret's shape: 16+ characters of 3+ character classes at 3.5+ bits of entropy
    per character (a random 16-char token has ~3.8, a 40-char one ~4.9). 40-hex strings (git
    SHAs) never are."""
    if len(value) < 16 or HEX40_RE.fullmatch(value):
        return False
    return char_classes(value) >= 3 and shannon_entropy(value) >= 3.5


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
    if _MARKER_RE.search(v) and not looks_random(_MARKER_RE.sub("", v)):
        # A marker makes a value a documentation example only when the rest of it does not
        # have a real secret's shape and entropy: "wJalr...EXAMPLEKEY" is still redacted.
        return True
    if len(v) >= 16 and len(set(v)) <= 4:  # AIzaaaaaaaa..., 1111111111...
        return True
    return is_sequential_string(v)



def letters_in_enclosing_token(text: str, start: int, end: int) -> bool:
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

