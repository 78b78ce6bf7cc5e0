"""Tokens replaced back by the session's values: in whole strings, in JSON documents and in text
that arrives in pieces (a token split across stream events).

Two contexts: ``text`` (a decoded string: the value goes in as is; the caller re-encodes) and
``json`` (a fragment of JSON source, e.g. a ``partial_json`` or ``arguments`` delta: the token
may be written ``\\u003c...\\u003e`` and the value goes in JSON-string-escaped). Tokens the vault
does not know (invented by the model, another session's, expired) stay as they are and are
counted as ``unknown``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from egress_gateway.pseudonyms.tokens import MAX_TOKEN_LEN, TOKEN_RE, could_start_token

Lookup = Callable[[str], "str | None"]  # token -> value, or None

_BODY = r"([A-Z][A-Z0-9_]{0,47})_([a-z2-7]{8})"
_JSON_TOKEN_RE = re.compile(r"(?:<|\\u003[cC])" + _BODY + r"(?:>|\\u003[eE])")
_LT_ESCAPES = ("\\", "\\u", "\\u0", "\\u00", "\\u003", "\\u003c", "\\u003C")
# Fields whose bytes are signed by the provider: never rewritten.
SIGNED_KEYS = frozenset({"signature", "thinking", "redacted_thinking"})


class Restorer:
    """Replaces tokens in one text; `push` pieces of a stream, then `flush` at its end.

    Only a tail that could start a token is held back (at most one token's length)."""

    def __init__(self, lookup: Lookup, context: str = "text") -> None:
        self.lookup = lookup
        self.json = context == "json"
        self.pending = ""
        self.restored = 0
        self.unknown = 0

    def _replace(self, m: re.Match) -> str:
        token = f"<{m.group(1)}_{m.group(2)}>"
        value = self.lookup(token)
        if value is None:
            self.unknown += 1
            return m.group(0)
        self.restored += 1
        return json.dumps(value)[1:-1] if self.json else value

    def restore(self, text: str) -> str:
        """`text` with every known token replaced (a whole text: nothing held)."""
        if "<" not in text and not (self.json and "\\u003" in text):
            return text
        return (_JSON_TOKEN_RE if self.json else TOKEN_RE).sub(self._replace, text)

    def _could_start(self, tail: str) -> bool:
        if not self.json:
            return could_start_token(tail)
        if tail[:6].lower() == "\\u003c":
            tail = "<" + tail[6:]
        elif tail in _LT_ESCAPES:
            return True
        if could_start_token(tail):
            return True
        # a complete body whose closing \u003e is still cut: <PERSON_abcdefgh\u00
        m = re.fullmatch(r"<" + _BODY + r"(\\(?:u(?:0(?:0(?:3)?)?)?)?)", tail)
        return m is not None

    def _held_from(self, text: str) -> int:
        """Where the tail that could still become a token starts (len(text): nothing held)."""
        lo = max(0, len(text) - MAX_TOKEN_LEN - 12)
        for i in range(lo, len(text)):
            if text[i] in "<\\" and self._could_start(text[i:]):
                return i
        return len(text)

    def push(self, piece: str) -> str:
        text = self.pending + piece
        cut = self._held_from(text)  # on the raw text: a restored value is never read again
        self.pending = text[cut:]
        return self.restore(text[:cut])

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return self.restore(out)


def restore_json(text: str, lookup: Lookup) -> tuple[str, int, int]:
    """A JSON document with the tokens in its string values restored (signed fields kept).
    -> (new text or the same object, restored, unknown). Raises JsonError if not JSON."""
    from egress_gateway.redact.walker import encode_string, splice, string_spans

    if "<" not in text and "\\u003" not in text:
        return text, 0, 0
    keys: list = []
    spans = string_spans(text, keys=keys)
    r = Restorer(lookup)
    edits = []
    for (start, end, value, _), (key, siblings) in zip(spans, keys, strict=True):
        if key in SIGNED_KEYS or (key == "data" and "type" in siblings
                                  and '"redacted_thinking"' in text[max(0, start - 200):start]):
            continue
        new = r.restore(value)
        if new != value:
            edits.append((start, end, encode_string(new)))
    if not edits:
        return text, r.restored, r.unknown
    return splice(text, edits), r.restored, r.unknown


def _restore_json_or_text(text: str, lookup: Lookup) -> tuple[str, int, int]:
    from egress_gateway.redact.walker import JsonError

    try:
        return restore_json(text, lookup)
    except JsonError:
        r = Restorer(lookup)
        return r.restore(text), r.restored, r.unknown


def restore_message(text: str, kind: str, lookup: Lookup) -> tuple[str | None, int, int]:
    """A whole (buffered) body of content kind `kind` (``redact.bodies.content_kind``) with
    its tokens restored: -> (new text, or None when nothing changed; restored; unknown)."""
    if kind not in ("json", "ndjson", "sse", "text"):
        return None, 0, 0
    restored = unknown = 0
    if kind == "json":
        new, restored, unknown = _restore_json_or_text(text, lookup)
    elif kind == "text":
        r = Restorer(lookup)
        new, restored, unknown = r.restore(text), r.restored, r.unknown
    else:  # one JSON (or text) document per line / per data line
        lines = text.split("\n")
        for i, line in enumerate(lines):
            prefix, payload = "", line
            if kind == "sse":
                if not line.startswith("data:"):
                    continue
                prefix = "data: " if line.startswith("data: ") else "data:"
                payload = line[len(prefix):]
            body = payload.rstrip("\r")
            new_body, n, u = _restore_json_or_text(body, lookup)
            restored, unknown = restored + n, unknown + u
            if new_body != body:
                lines[i] = prefix + new_body + payload[len(body):]
        new = "\n".join(lines)
    return (None if new == text else new), restored, unknown
