"""Masking of what the server returns: result rows, COPY data, error/notice fields (pure).

Each value is scanned as ``"<column>: <value>"`` so that the column name is context for the
detection engine (a column ``email`` or ``ssn`` raises confidence); the prefix is cut off again
afterwards. A finding reaching into the prefix masks the whole value. NULLs, row counts, column
order and types stay as they were; rewritten values get valid lengths.

`redact_many(texts) -> [TextResult]` is the detection engine's batched call (run on a worker).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from egress_gateway.postgres import wire

WHOLE = "<REDACTED>"

# Types whose binary send format is their text (UTF-8): text, varchar, bpchar, name, unknown,
# json (jsonb's binary form is a version byte 1 then the text).
TEXT_LIKE_BINARY = {25: 0, 1043: 0, 1042: 0, 19: 0, 705: 0, 114: 0, 3802: 1}
# Types that cannot carry free text: scanned never (ints, floats, bool, oid, dates, uuid...).
NO_TEXT_TYPES = frozenset({16, 20, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1186, 2950})
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,40}$")
# ErrorResponse/NoticeResponse fields that can quote data: message, detail, hint, context,
# internal query, and the column/constraint names are left as they are.
SCANNED_FIELDS = frozenset({b"M", b"D", b"H", b"W", b"q", b"P"})


class Unscannable(ValueError):
    """Content the gateway cannot scan (refused with 0A000 unsupported_content)."""


@dataclass
class Outcome:
    """What masking decided: new messages, counts by entity type, blocking entity types."""

    messages: list[bytes] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    blocked: set[str] = field(default_factory=set)
    rows: int = 0


# Context for a value without a usable column name (COPY data has none): the usual PII words.
GENERIC = "name, email, phone, ssn or card number"


def _prefix(name: str | None) -> str:
    """``"<column>: "`` as context; the generic words for unnamed values; None: no context."""
    if name is None:
        return ""
    return f"{name}: " if _WORD.match(name) else f"{GENERIC}: "


def _rewrite(text: str, prefix: str, res) -> str:
    if not res.findings:
        return text
    if any(f.start < len(prefix) for f in res.findings) or not res.text.startswith(prefix):
        return WHOLE
    return res.text[len(prefix):]


class Batch:
    """Texts to scan in one call, each with a callback receiving its rewritten value."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.slots: list[tuple[str, str, Callable[[str], None]]] = []

    def add(self, value: str, context: str | None, put: Callable[[str], None]) -> None:
        prefix = _prefix(context)
        self.texts.append(prefix + value)
        self.slots.append((value, prefix, put))

    def run(self, redact_many, out: Outcome) -> None:
        if not self.texts:
            return
        results = redact_many(self.texts)
        for (value, prefix, put), res in zip(self.slots, results, strict=True):
            out.counts.update(res.counts)
            out.blocked |= set(res.blocked)
            put(_rewrite(value, prefix, res))


def decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unscannable("a value is not UTF-8 (use client_encoding UTF8)") from None


def check_columns(columns: list[wire.Column]) -> None:
    """Refuse result columns in binary format whose type is not text-like."""
    for c in columns:
        if c.format == 1 and c.type_oid not in TEXT_LIKE_BINARY and c.type_oid not in NO_TEXT_TYPES:
            raise Unscannable(f"column {c.name!r} is requested in binary format (type oid "
                              f"{c.type_oid}), which the gateway cannot scan")
        if c.format not in (0, 1):
            raise Unscannable(f"column {c.name!r} has an unknown format code {c.format}")


def mask_rows(columns: list[wire.Column], bodies: list[bytes], redact_many,
              skip: frozenset[str] = frozenset(), always: frozenset[str] = frozenset()) -> Outcome:
    """DataRow bodies -> masked DataRow messages."""
    out = Outcome()
    rows = [wire.parse_data_row(b) for b in bodies]
    batch = Batch()
    for row in rows:
        if len(row) != len(columns):
            raise wire.ProtocolError("a row does not match its row description")
        for i, (col, raw) in enumerate(zip(columns, row, strict=True)):
            if raw is None or col.type_oid in NO_TEXT_TYPES:
                continue
            lname = col.name.lower()
            if lname in skip:
                continue
            head = b""
            if col.format == 1:
                skip_bytes = TEXT_LIKE_BINARY.get(col.type_oid)
                if skip_bytes is None:
                    raise Unscannable(f"column {col.name!r}: binary value of a non-text type")
                head, raw = raw[:skip_bytes], raw[skip_bytes:]
            if lname in always:
                row[i] = head + WHOLE.encode()
                out.counts["COLUMN"] += 1
                continue

            def put(v: str, row=row, i=i, head=head) -> None:
                row[i] = head + v.encode("utf-8")

            batch.add(decode_text(raw), col.name, put)
    batch.run(redact_many, out)
    out.messages = [wire.data_row(r) for r in rows]
    out.rows = len(rows)
    return out


def mask_copy(chunks: list[bytes], csv: bool, redact_many) -> Outcome:
    """CopyData bodies of a text or CSV COPY TO STDOUT -> masked CopyData messages.

    Text format: each tab-separated field is scanned (``\\N`` is NULL). CSV: each line is
    scanned whole (quoting makes fields ambiguous without the options). COPY carries no column
    names: values get the generic PII context words."""
    out = Outcome()
    parts: list[list[str]] = []
    batch = Batch()
    for chunk in chunks:
        text = decode_text(chunk)
        if csv:
            fields = [text]
        else:
            nl = text.endswith("\n")
            fields = (text[:-1] if nl else text).split("\t")
        parts.append(fields)
        for i, v in enumerate(fields):
            if v in ("", "\\N"):
                continue

            def put(new: str, fields=fields, i=i) -> None:
                fields[i] = new

            batch.add(v, "", put)
        if not csv and text.endswith("\n"):
            fields.append("\n")
    batch.run(redact_many, out)
    for fields in parts:
        if fields and fields[-1] == "\n" and not csv:
            data = "\t".join(fields[:-1]) + "\n"
        else:
            data = "\t".join(fields) if not csv else fields[0]
        out.messages.append(wire.build(b"d", data.encode("utf-8")))
    out.rows = len(chunks)
    return out


def mask_fields(type_: bytes, body: bytes, redact_many) -> Outcome:
    """An ErrorResponse/NoticeResponse with its data-bearing fields masked."""
    out = Outcome()
    items = [list(x) for x in wire.parse_fields(body)]
    batch = Batch()
    for item in items:
        if item[0] in SCANNED_FIELDS:
            def put(v: str, item=item) -> None:
                item[1] = v.encode("utf-8")

            batch.add(item[1].decode("utf-8", "replace"), None, put)
    batch.run(redact_many, out)
    out.messages = [wire.fields(type_, [(c, v) for c, v in items])]
    return out


def mask_notification(body: bytes, redact_many) -> Outcome:
    out = Outcome()
    pid, channel, payload = wire.parse_notification(body)
    new = [payload]
    batch = Batch()

    def put(v: str) -> None:
        new[0] = v.encode("utf-8")

    batch.add(payload.decode("utf-8", "replace"), "payload", put)
    batch.run(redact_many, out)
    out.messages = [wire.notification(pid, channel, new[0])]
    return out
