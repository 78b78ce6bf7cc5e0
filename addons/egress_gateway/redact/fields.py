"""Field modes: how a JSON string is scanned, chosen by the field it sits in (``fields:``).

==================  ==============================================================================
``prose``           everything: patterns, secret recognizers and NER (the default)
``instructions``    patterns and secret recognizers, no NER (agent-authored text: system prompt,
                    tool descriptions and schemas); found values are rewritten
``signed``          patterns and secret recognizers, no NER; never rewritten: a finding refuses
                    the message (``thinking``: rewriting breaks its signature)
``format:<name>``   must have the format `<name>` (`FORMATS`); anything else there refuses the
                    message; formats marked ``scan`` are also scanned as ``signed``
``data``            media data (``source.data``): base64 is kept as it is (not analysed: images
                    are megabytes), anything else is text (a plain-text document) and ``prose``
``skip``            not scanned (the policy author's explicit choice)
==================  ==============================================================================

"Base64" means standard base64 (``A-Z a-z 0-9 + /``, ``=`` padding, length a multiple of 4) of
at least 32 characters using upper case, lower case and digits: short or single-case strings
(an AWS key id, ``Jane``) are not base64 data but text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROSE, INSTRUCTIONS, SIGNED, SKIP, DATA = "prose", "instructions", "signed", "skip", "data"
FORMAT_PREFIX = "format:"


@dataclass(frozen=True)
class Format:
    """A fixed format: a full-match regex, whether matching values are also scanned, a sentence."""

    regex: re.Pattern
    scan: bool
    doc: str
    separators: str = ""  # also scanned with these read as spaces (never rewritten: safe)

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


_B64 = re.compile(r"[A-Za-z0-9+/]{28,}[A-Za-z0-9+/=]{4}")
_UPPER, _LOWER, _DIGIT = re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]")


def looks_base64(value: str) -> bool:
    """Standard base64 data (see the module docstring), not a short or single-case word."""
    if len(value) % 4 or not _B64.fullmatch(value) or "=" in value.rstrip("="):
        return False
    head = value[:4096]
    return bool(_UPPER.search(head) and _LOWER.search(head) and _DIGIT.search(head))


FORMATS: dict[str, Format] = {
    "model": Format(
        re.compile(r"claude(?:-[a-z]{2,12}|-\d{1,2}(?:\.\d{1,2})?|-\d{8})+(?:\[1m\])?"), True,
        "a Claude model id: 'claude' then '-' groups of lowercase words, 1-2 digit versions and "
        "an 8-digit date (claude-sonnet-4-5-20250929); no other digit runs"),
    "id": Format(
        re.compile(r"[A-Za-z0-9_-]{1,128}"), True,
        "an API id (toolu_01..., msg_01..., file_...): letters, digits, '_' and '-', also "
        "scanned for secrets and patterns, as it is and with '_' read as a space", "_"),
    "base64": Format(
        _B64, True,
        "standard base64 (signatures, encrypted thinking), also scanned for secrets and "
        "patterns"),
    "media_type": Format(
        re.compile(r"(?:image|application|text)/[a-z0-9][a-z0-9.+-]{0,63}"), False,
        "a media type such as image/png or application/pdf"),
    "word": Format(
        re.compile(r"[a-z][a-z0-9_]{0,63}"), False,
        "a lowercase word (role, block type, cache_control type)"),
}


def parse_mode(mode: str) -> str:
    """A valid mode string (stripped); raise ValueError naming the problem."""
    m = str(mode).strip()
    if m in (PROSE, INSTRUCTIONS, SIGNED, SKIP, DATA):
        return m
    if m.startswith(FORMAT_PREFIX):
        name = m[len(FORMAT_PREFIX):]
        if name in FORMATS:
            return m
        raise ValueError(f"unknown format {name!r} in {mode!r}; known: {sorted(FORMATS)}")
    raise ValueError(f"unknown field mode {mode!r}: use prose, instructions, signed, data, skip "
                     f"or format:<name> ({', '.join(sorted(FORMATS))})")


def check(mode: str, value: str) -> tuple[str, str] | None:
    """``(kind, text to analyse)`` for a string in `mode`; kind: 'prose', 'plain' (no NER,
    rewritten), 'signed' (no NER, never rewritten: a finding refuses); None: not analysed.
    Raises ValueError for a value not in its format."""
    if mode == PROSE:
        return "prose", value
    if mode == INSTRUCTIONS:
        return "plain", value
    if mode == SIGNED:
        return "signed", value
    if mode == SKIP:
        return None
    if mode == DATA:
        return None if looks_base64(value) else ("prose", value)
    if not value:
        return None  # an empty string carries nothing (a streamed block starts with "signature": "")
    name = mode[len(FORMAT_PREFIX):]
    fmt = FORMATS[name]
    if not fmt.matches(value) or (name == "base64" and not looks_base64(value)):
        raise ValueError(f"not in the format {name}")
    if not fmt.scan:
        return None
    text = value
    for ch in fmt.separators:
        text = text.replace(ch, " ")
    return "signed", value if text == value else f"{value}\n{text}"
