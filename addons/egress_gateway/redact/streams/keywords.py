"""Keyword boundaries for the stream hold-back.

A context-dependent recognizer needs its keyword and its value in the same analysed text: a
stream released at ``password: `` sends the value later without its context. `guard(text, cut)`
moves a release cut back to the start of any keyword whose value is not complete before the cut
(or still running at the end of the text), and of any PEM block not yet ended.
"""

from __future__ import annotations

import re

_KEYWORD = re.compile(
    r"(?i)(?:\b(?:aws_secret_access_key|aws_access_key_id|aws_session_token|secret[_-]?key|"
    r"client[_-]?secret|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?token|"
    r"access[_-]?token|password|passwd|passphrase|pwd|secret|token|bearer|authorization)\b)"
    r"[\"']?[ \t]*(?P<sep>[:=]|\bis\b)?[ \t]*[\"']?")
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----|-----BEGIN[A-Z0-9 -]*$")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
MAX_GUARD = 8192  # a keyword further back than this no longer holds the stream


def _value_end(text: str, m: re.Match) -> int:
    """Where the keyword's value ends; len(text)+1 when it may still be incomplete."""
    rest = text[m.end():]
    if m.group("sep") is None:
        # "password" with nothing but spaces after it: a separator may still come
        return len(text) + 1 if not rest.strip() else m.end()
    v = re.match(r"\S+", rest)
    if v is None or v.end() == len(rest):
        return len(text) + 1  # no value yet, or it runs to the end of the text
    return m.end() + v.end()


def guard(text: str, cut: int) -> int:
    """`cut` moved back so that no keyword is released without its complete value."""
    lo = max(0, len(text) - MAX_GUARD)
    for m in _KEYWORD.finditer(text, lo):
        if m.start() >= cut:
            break
        if m.start() < cut < _value_end(text, m):
            return m.start()
    for m in _PEM_BEGIN.finditer(text, lo):
        if m.start() >= cut:
            break
        end = _PEM_END.search(text, m.end())
        if end is None or m.start() < cut < end.end():
            return m.start()
    return cut
