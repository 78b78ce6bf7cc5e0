"""Redact the strings of JSON documents and texts in place, in one batch.

The JSON walker is a small iterative tokenizer (no recursion: 100k levels of nesting are fine).
It records the span of every string value and every object key, so a rewrite splices only
the strings that changed into the original text: key order, whitespace, escapes and numbers
(huge integers, ``1.10``) stay exactly as they were, and a document in which nothing was found is
returned as the very same object.

It reads JSON as leniently as common upstreams do (Python's ``json.loads``, JSON5-ish servers):
``NaN``, ``Infinity``, ``-Infinity`` and raw control characters inside strings are accepted, so
such a document is still walked string by string (its escapes decoded) instead of being scanned
as raw text. Data after a complete document raises `JsonTrailing` (the caller scans it as text).
Object keys are analysed without NER (``plain``; keys of letters, ``_`` and ``-`` only are
skipped: nothing a pattern finds fits in them); a key that holds a finding is rewritten in
place like a value (a data key such as an e-mail address must not leave either).

A string value that itself holds a JSON object or array (tool-call ``arguments``, a tool result
that is an API response) is walked as JSON too, and its paths continue from the string's path
(``tool_calls[*].function.arguments.email``).

`TextJob` collects texts and JSON documents from any part of a message (JSON body, form values,
query values, SSE event data, WebSocket messages), redacts all their strings with one
``redact_many`` call per analysis kind (one batched NER pass), and gives back the rewritten
pieces. Each JSON string is analysed as its field mode says (``redact/fields.py``): ``prose``
strings in one call, strings analysed without NER in a second ``redact_many(texts, prose=False)``
call; ``signed`` and fixed-format strings are never rewritten, a finding there (or a value not in
its format) is listed in ``refused``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from egress_gateway.detection.fields import field_text
from egress_gateway.redact import fields
from egress_gateway.redact.jsonpath import EVERYTHING, Scope, State

#: JSON encoded inside JSON strings is walked up to this many levels deep.
MAX_ENCODED_DEPTH = 4


class JsonError(ValueError):
    """Not a (complete) JSON document, even read leniently."""


class JsonTrailing(JsonError):
    """A complete JSON document followed by other data, which starts at `at`."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.at = at


_TOKEN = re.compile(
    r"[ \t\n\r]*(?:"
    r'(?P<s>"[^"\\]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\]*)*")'
    r"|(?P<p>[{}\[\]:,])"
    r"|(?P<n>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<l>true|false|null|NaN|-?Infinity)"
    r")"
)
_TRAILING_WS = re.compile(r"[ \t\n\r]*\Z")
#: Keys of letters, ``_`` and ``-`` only (schema names) cannot hold what patterns find (no
#: digit, ``@`` or ``.``) and keys get no NER: they are not sent to the engine.
_WORD_KEY = re.compile(r"[A-Za-z_-]{1,64}")

# Parser expectations.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE = range(6)


def decode_string(token: str) -> str:
    """The value of a JSON string token (with its quotes)."""
    if "\\" not in token:
        return token[1:-1]
    return json.loads(token, strict=False)


def encode_string(value: str) -> str:
    """A JSON string token for `value` (UTF-8 output; lone surrogates as \\u escapes)."""
    out = json.dumps(value, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(value)
    return out


def string_spans(text: str, scope: Scope = EVERYTHING, root: State | None = None, keys=None,
                 key_spans=None):
    """Validate `text` as one JSON document and list its scanned string values.

    Returns ``[(start, end, value, state)]`` for every string value (not key) that the scope
    selects (``state.selected``) or that a scope path could still reach inside JSON encoded in
    the string; ``state`` is the node's scope state.
    Raises JsonError for anything that is not strict JSON. With a list ``keys``, one
    ``(key, keys of its object)`` pair per returned value is appended to it (``(None, ())``
    for array items and the root): what detection uses as the value's field context. With a
    list `key_spans`, ``(start, end, key)`` of every object key outside pruned subtrees is
    appended to it. Raises JsonTrailing for data after a complete document.
    """
    state0 = root if root is not None else scope.root()
    out: list[tuple[int, int, str, State]] = []
    # frame: [is_object, state, pending key, index, last key, keys of the object]
    stack: list[list] = []
    expect = _VALUE
    done = False
    pos = 0
    n = len(text)
    match = _TOKEN.match
    child = scope.child
    while pos < n:
        m = match(text, pos)
        if m is None:
            if _TRAILING_WS.match(text, pos) and done:
                break
            if done:
                at = len(text) - len(text[pos:].lstrip(" \t\n\r"))
                raise JsonTrailing(f"extra data after the JSON document at character {at}", at)
            raise JsonError(f"invalid JSON at character {pos}")
        if done:
            at = m.start(m.lastgroup)
            raise JsonTrailing(f"extra data after the JSON document at character {at}", at)
        pos = m.end()
        kind = m.lastgroup
        tok = m.group(kind)
        if expect in (_VALUE, _VALUE_OR_CLOSE):
            if kind == "p" and tok == "]" and expect == _VALUE_OR_CLOSE:
                stack.pop()
            elif kind == "p" and tok not in "{[":
                raise JsonError(f"expected a value at character {m.start(kind)}")
            else:
                if stack:
                    top = stack[-1]
                    parent = top[1]
                    if parent.final:
                        st = parent
                    else:
                        st = child(parent, top[2] if top[0] else top[3])
                else:
                    st = state0
                if kind == "p":  # { or [
                    is_obj = tok == "{"
                    stack.append([is_obj, st, None, 0, None, []])
                    expect = _KEY_OR_CLOSE if is_obj else _VALUE_OR_CLOSE
                    continue
                if kind == "s" and not st.dead:
                    out.append((m.start(kind), pos, decode_string(tok), st))
                    if keys is not None:
                        keys.append((stack[-1][4], stack[-1][5]) if stack and stack[-1][0] else (None, ()))
        elif expect in (_KEY, _KEY_OR_CLOSE):
            if kind == "s":
                top = stack[-1]
                st = top[1]
                # Keys are decoded only where the scope still has to decide something.
                top[2] = None if st.final else decode_string(tok)
                if key_spans is not None and not st.dead:
                    key_spans.append((m.start(kind), pos,
                                      top[2] if top[2] is not None else decode_string(tok)))
                if keys is not None:
                    top[4] = top[2] if top[2] is not None else decode_string(tok)
                    top[5].append(top[4])
                expect = _COLON
                continue
            if kind == "p" and tok == "}" and expect == _KEY_OR_CLOSE:
                stack.pop()
            else:
                raise JsonError(f"expected a key at character {m.start(kind)}")
        elif expect == _COLON:
            if tok != ":" or kind != "p":
                raise JsonError(f"expected ':' at character {m.start(kind)}")
            expect = _VALUE
            continue
        else:  # _COMMA_OR_CLOSE
            top = stack[-1]
            if kind == "p" and tok == ",":
                if top[0]:
                    expect = _KEY
                else:
                    top[3] += 1
                    expect = _VALUE
                continue
            if kind == "p" and tok == ("}" if top[0] else "]"):
                stack.pop()
            else:
                raise JsonError(f"expected ',' or a closing bracket at character {m.start(kind)}")
        # a value (or a container) is complete
        if stack:
            expect = _COMMA_OR_CLOSE
        else:
            done = True
    if not done:
        raise JsonError("truncated JSON document" if n else "empty JSON document")
    return out


def splice(text: str, replacements: list[tuple[int, int, str]]) -> str:
    """`text` with each ``(start, end, new)`` span (sorted, non-overlapping) replaced."""
    parts = []
    last = 0
    for start, end, new in replacements:
        parts.append(text[last:start])
        parts.append(new)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def looks_like_json(text: str) -> bool:
    t = text.strip()
    return len(t) >= 2 and ((t[0] == "{" and t[-1] == "}") or (t[0] == "[" and t[-1] == "]"))


# --- batching -----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Str:
    """A string to redact: plain (index into the batch) or holding a JSON document."""

    value: str
    index: int = -1
    doc: _Doc | None = None


@dataclass(slots=True)
class _Doc:
    text: str
    leaves: list[tuple[int, int, _Str]] = field(default_factory=list)


class TextJob:
    """Collect texts and JSON documents, redact all their strings in one batch.

    ``h = job.add_text(s)`` / ``h = job.add_json(s, scope)``; ``job.run(redact_many)``;
    ``job.result(h)`` is the new text, or None when nothing in it changed. ``counts`` (per entity)
    and ``blocked`` (entities whose operator is ``block``) cover everything the job rewrote;
    ``refused`` lists ``(field, why)`` for signed and fixed-format fields that carried something
    (types only, never values) and ``refused_entities`` the entity types found there.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.kinds: list[str] = []  # per text: prose | plain | signed (fields.check)
        self.labels: list[str] = []  # per text: the field path that chose its mode
        self._results: list = []
        self.counts: Counter = Counter()
        self.blocked: set[str] = set()
        self.refused: list[tuple[str, str]] = []
        self.refused_entities: set[str] = set()
        self.json_leaves = 0
        self._keys: dict[str, _Str] = {}  # object keys, analysed once per job

    # -- collecting ----------------------------------------------------------------------
    def _add(self, value: str, kind: str = "prose", label: str = "", text: str | None = None) -> _Str:
        """Queue `value` for analysis (as `text`, when detection gets it with field context)."""
        node = _Str(value, index=len(self.texts))
        self.texts.append(value if text is None else text)
        self.kinds.append(kind)
        self.labels.append(label)
        return node

    def _string(self, value: str, scope: Scope, state: State, depth: int, field=None) -> _Str | None:
        mode = scope.mode(state)
        if mode == fields.SKIP:
            return None
        node = _Str(value)
        if depth < MAX_ENCODED_DEPTH and mode in (fields.PROSE, fields.INSTRUCTIONS) \
                and looks_like_json(value):
            try:
                node.doc = self._doc(value, scope, state, depth + 1)
                return node
            except JsonError:
                pass
        if not state.selected:
            return None  # only JSON inside it could have been in scope
        try:
            how = fields.check(mode, value)
        except ValueError as e:
            self.refused.append((scope.label(state), str(e)))
            return None
        if how is None:
            return None  # base64 data, skipped: forwarded as it is
        if how[0] == "signed":  # analysed (maybe in a normalised form), never rewritten
            self._add(how[1], "signed", scope.label(state))
            return None
        text = field_text(value, *field) if field and field[0] else None
        return self._add(value, how[0], scope.label(state), text)

    def add_signed(self, text: str, label: str) -> None:
        """A text analysed without NER and never rewritten: a finding refuses (``refused``)."""
        self._add(text, "signed", label)

    def _doc(self, text: str, scope: Scope, root: State | None, depth: int) -> _Doc:
        keys: list = []
        key_spans: list = []
        spans = string_spans(text, scope, root, keys, key_spans)
        doc = _Doc(text)
        self.json_leaves += len(spans)
        for (start, end, value, st), key in zip(spans, keys, strict=True):
            node = self._string(value, scope, st, depth, key)
            if node is not None:
                doc.leaves.append((start, end, node))
        for start, end, key in key_spans:
            if len(key) < 3 or _WORD_KEY.fullmatch(key):
                continue
            node = self._keys.get(key)
            if node is None:
                node = self._keys[key] = self._add(key, "plain", "(object key)")
            doc.leaves.append((start, end, node))
        if key_spans:
            doc.leaves.sort(key=lambda leaf: leaf[0])
        return doc

    def add_text(self, text: str, scope: Scope = EVERYTHING) -> _Str:
        """A text to redact. If it is a JSON object or array, its string values are (as the
        scope selects); any other text is redacted whole, whatever the scope."""
        if looks_like_json(text):
            try:
                return _Str(text, doc=self._doc(text, scope, scope.root(), 1))
            except JsonError:
                pass
        return self._add(text)

    def add_json(self, text: str, scope: Scope = EVERYTHING) -> _Str:
        """A JSON document (raises JsonError if it is not one): its scoped string values."""
        return _Str(text, doc=self._doc(text, scope, None, 1))

    # -- redacting -----------------------------------------------------------------------
    def run(self, redact_many: Callable[..., Sequence]) -> None:
        """Analyse every collected text: prose in one ``redact_many(texts)`` call, the texts
        analysed without NER in one ``redact_many(texts, prose=False)`` call."""
        self._results = [None] * len(self.texts)
        groups: dict[bool, list[int]] = {}
        for i, kind in enumerate(self.kinds):
            groups.setdefault(kind == "prose", []).append(i)
        for prose, idx in groups.items():
            sub = [self.texts[i] for i in idx]
            res = list(redact_many(sub) if prose else redact_many(sub, prose=False))
            if len(res) != len(sub):
                raise RuntimeError("redact_many returned a result count that does not match")
            for i, r in zip(idx, res, strict=True):
                self._results[i] = r
        for i, r in enumerate(self._results):
            if self.kinds[i] == "signed":
                if r.findings:
                    types = sorted(r.counts) if r.counts else ["finding"]
                    self.refused.append((self.labels[i], "carries " + ", ".join(types)))
                    self.refused_entities |= set(types)
                continue
            if r.counts:
                self.counts.update(r.counts)
            if r.blocked:
                self.blocked |= set(r.blocked)

    def result(self, node: _Str) -> str | None:
        """The rewritten text of `node`, or None if nothing in it changed."""
        if node.doc is not None:
            doc = node.doc
            reps = []
            for start, end, leaf in doc.leaves:
                new = self.result(leaf)
                if new is not None:
                    reps.append((start, end, encode_string(new)))
            return splice(doc.text, reps) if reps else None
        if self.kinds[node.index] == "signed":
            return None  # never rewritten (a finding refuses the message)
        r = self._results[node.index]
        return r.text if r.findings and r.text != node.value else None
