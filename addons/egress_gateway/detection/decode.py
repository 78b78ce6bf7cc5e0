"""Decoded views of a text: what a receiver reads once it undoes encodings inside the text.

An agent can hide a value from a scanner that reads only the literal characters:
``jane&#64;corp.example``, ``jane%40corp.example``, ``\\u006a\\u0061ne@...``, a base64 or hex
run of the value, zero-width characters inside it, fullwidth digits. `view` builds one decoded
copy of a text and a map from each of its characters back to a span of the original, so the
engine analyses both and every finding in the copy becomes a finding on the original: on the
*whole* encoded run that holds it (a base64 run is replaced entire, never cut in half).

What is decoded (each bounded):

* HTML/XML character references: numeric (``&#64;``, ``&#x40;``) and named (``&commat;``,
  with the semicolon);
* percent-encoding: runs of ``%XX`` that form UTF-8;
* JSON/JavaScript escapes outside a JSON parser: ``\\uXXXX`` (pairs included) and ``\\xXX``;
* hex runs of at least `MIN_HEX` digits and base64 runs (standard or URL-safe) of at least
  `MIN_BASE64` characters, kept only when the bytes are plausible text (valid UTF-8, almost all
  printable): base64 image data, hashes, UUIDs and git SHAs decode to binary and stay as they are;
* `MAX_LEVELS` levels (base64 of a percent-encoded value); deeper nesting is not undone;
* then Unicode: NFKC per character (fullwidth digits and ``＠``, ligatures) and removal of
  default-ignorable characters (zero-width space/joiners, soft hyphen, bidi controls,
  variation selectors, tags). Look-alike letters of other scripts (Cyrillic ``а``) are not
  mapped.

The output is bounded: at most `BUDGET_FACTOR` times the input plus `BUDGET_SLACK`
characters; past the budget the rest of the text is copied as it is.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import unicodedata
from dataclasses import dataclass

MIN_BASE64 = 12  # characters (9 bytes: a US SSN is 15)
MIN_HEX = 16  # digits (8 bytes)
MAX_LEVELS = 2
BUDGET_FACTOR = 2
BUDGET_SLACK = 4096
PRINTABLE_RATIO = 0.95

_RUN = re.compile(
    r"(?P<ref>&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});?|&[A-Za-z][A-Za-z0-9]{1,31};)"
    r"|(?P<pct>(?:%[0-9A-Fa-f]{2})+)"
    r"|(?P<esc>(?:\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2})+)"
    rf"|(?<![A-Za-z0-9+/_=-])(?P<b64>[A-Za-z0-9+/_-]{{{min(MIN_BASE64, MIN_HEX)},}}={{0,2}})"
    r"(?![A-Za-z0-9+/_=-])"
)
_HEX = re.compile(r"[0-9a-fA-F]+")
_IGNORABLE_RANGES = ((0xFE00, 0xFE0F), (0xE0000, 0xE0FFF), (0x180B, 0x180F))
_IGNORABLE_EXTRA = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0}


def is_ignorable(ch: str) -> bool:
    """A default-ignorable code point: rendered as nothing, so removed before detection."""
    o = ord(ch)
    if o < 0xAD:
        return False
    if unicodedata.category(ch) == "Cf" or o in _IGNORABLE_EXTRA:
        return True
    return any(a <= o <= b for a, b in _IGNORABLE_RANGES)


def plausible_text(s: str) -> bool:
    """Mostly printable characters (what a decoded run must be to count as text)."""
    if not s:
        return False
    good = sum(1 for c in s if c.isprintable() or c in "\t\n\r")
    return good >= PRINTABLE_RATIO * len(s)


def _bytes_text(data: bytes) -> str | None:
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return s if plausible_text(s) else None


def _from_base64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) < MIN_BASE64 or len(body) % 4 == 1:
        return None
    if ("-" in body or "_" in body) and ("+" in body or "/" in body):
        return None
    pad = "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            data = base64.urlsafe_b64decode(body + pad)
        else:
            data = base64.b64decode(body + pad, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _bytes_text(data)


def _decode_run(kind: str, run: str) -> list[tuple[int, int, str]]:
    """``[(start, end, decoded)]`` inside `run` (offsets relative to it); [] if not decodable."""
    if kind == "ref":
        out = html.unescape(run)
        return [(0, len(run), out)] if out != run else []
    if kind == "pct":
        try:
            out = bytes.fromhex(run.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            return []
        return [(0, len(run), out)]
    if kind == "esc":
        if "\\x" in run:
            parts = re.findall(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})", run)
            if all(x for _, x in parts):
                out = _bytes_text(bytes.fromhex("".join(x for _, x in parts)))
            else:
                out = "".join(chr(int(u or x, 16)) for u, x in parts)
        else:
            out = json.loads('"' + run + '"')
        return [(0, len(run), out)] if out else []
    # b64 (or hex)
    body = run.rstrip("=")
    if len(body) >= MIN_HEX and len(body) % 2 == 0 and _HEX.fullmatch(body):
        out = _bytes_text(bytes.fromhex(body))
        if out is not None:
            return [(0, len(run), out)]
    out = _from_base64(run) if len(body) >= MIN_BASE64 else None
    if out is not None:
        return [(0, len(run), out)]
    if "/" in run:  # a path with a base64 segment: try the segments
        found, pos = [], 0
        for seg in run.split("/"):
            if len(seg) >= MIN_BASE64:
                dec = _decode_run("b64", seg)
                found += [(pos + s, pos + e, d) for s, e, d in dec]
            pos += len(seg) + 1
        return found
    return []


@dataclass(slots=True)
class View:
    """A decoded copy of a text; character ``i`` of `text` stands for
    ``original[starts[i]:ends[i]]``."""

    text: str
    starts: list[int]
    ends: list[int]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original that view characters ``start:end`` stand for."""
        return self.starts[start], self.ends[max(end, start + 1) - 1]


def _build(text: str, reps: list[tuple[int, int, str]]) -> View:
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    last = 0
    for s, e, new in reps:
        out.append(text[last:s])
        starts.extend(range(last, s))
        ends.extend(range(last + 1, s + 1))
        out.append(new)
        starts.extend([s] * len(new))
        ends.extend([e] * len(new))
        last = e
    out.append(text[last:])
    starts.extend(range(last, len(text)))
    ends.extend(range(last + 1, len(text) + 1))
    return View("".join(out), starts, ends)


def _decode_level(text: str, budget: int) -> list[tuple[int, int, str]]:
    reps: list[tuple[int, int, str]] = []
    spent = 0
    for m in _RUN.finditer(text):
        kind = m.lastgroup
        for s, e, new in _decode_run(kind, m.group(kind)):
            spent += len(new)
            if spent > budget:
                return reps
            reps.append((m.start() + s, m.start() + e, new))
    return reps


def _normalise(text: str, budget: int) -> list[tuple[int, int, str]]:
    if text.isascii():
        return []
    reps: list[tuple[int, int, str]] = []
    spent = 0
    for i, ch in enumerate(text):
        if ord(ch) < 0xA0:
            continue
        if is_ignorable(ch):
            reps.append((i, i + 1, ""))
            continue
        new = unicodedata.normalize("NFKC", ch)
        if new != ch:
            spent += len(new)
            if spent > budget:
                break
            reps.append((i, i + 1, new))
    return reps


def _compose(outer: View, inner: View) -> View:
    """`inner` is a view of ``outer.text``: the same view, mapped to `outer`'s original."""
    os_, oe = outer.starts, outer.ends
    starts = [os_[s] for s in inner.starts]
    ends = [oe[e - 1] for e in inner.ends]
    return View(inner.text, starts, ends)


def view(text: str) -> View | None:
    """The decoded view of `text`, or None when decoding changes nothing."""
    budget = BUDGET_FACTOR * len(text) + BUDGET_SLACK
    current: View | None = None
    cur_text = text
    for _ in range(MAX_LEVELS):
        reps = _decode_level(cur_text, budget)
        if not reps:
            break
        budget -= sum(len(r[2]) for r in reps)
        nxt = _build(cur_text, reps)
        current = nxt if current is None else _compose(current, nxt)
        cur_text = current.text
    reps = _normalise(cur_text, max(budget, 0))
    if reps:
        nxt = _build(cur_text, reps)
        current = nxt if current is None else _compose(current, nxt)
    if current is None or current.text == text:
        return None
    return current
