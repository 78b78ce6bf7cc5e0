"""Scanning what the agent sends: query literals, Bind parameters, COPY FROM data (pure).

The agent must not smuggle PII out through the database (an INSERT into a table replicated
elsewhere). Found values are rewritten in place with the request direction's operators:

- query text (simple ``Query`` and ``Parse``): the inside of every string literal (any quoting:
  ``'..'``, ``E'..'``, ``U&'..'``, dollar quotes, so function bodies too), every comment, and
  integer/decimal constants of 9 or more characters (card numbers, SSNs written as numbers,
  which are replaced by a quoted placeholder); identifiers are not scanned;
- ``Bind`` parameters in text format; binary parameters only of text-like declared types (others
  are refused: they cannot be scanned);
- client ``CopyData``: reassembled into lines (messages may split them), each tab-separated field
  (CSV: each line) scanned, sent on as whole lines.
"""

from __future__ import annotations

from pglast import parser

from egress_gateway.postgres import mask, wire

_SCANNED = frozenset({"SCONST", "USCONST", "SQL_COMMENT", "C_COMMENT"})
_NUMBERS = frozenset({"ICONST", "FCONST"})


def _inner(text: str, name: str) -> tuple[int, int, str] | None:
    """(start, end, forbidden) of the scannable inside of a token's text; None: skip."""
    if name == "SQL_COMMENT":
        return 2, len(text), "\n"
    if name == "C_COMMENT":
        return 2, len(text) - 2, "*/"
    if text.startswith("$"):
        tag_end = text.index("$", 1) + 1
        tag = text[:tag_end]
        return tag_end, len(text) - len(tag), tag
    q = text.find("'")
    if q < 0:
        return None
    return q + 1, len(text) - 1, "'"


def scan_query(sql: str, redact_many) -> mask.Outcome:
    """`sql` with PII in its literals and comments rewritten; out.messages = [new text]."""
    out = mask.Outcome()
    try:
        tokens = parser.scan(sql)
    except parser.ParseError as e:
        raise mask.Unscannable(f"the statement cannot be tokenised: {e}") from None
    pieces: list[tuple[int, int, str]] = []  # (start, end exclusive, replacement)
    batch = mask.Batch()
    for t in tokens:
        text = sql[t.start:t.end + 1]
        if t.name in _NUMBERS:
            if len(text) < 9:
                continue

            def put_num(v: str, t=t, text=text) -> None:
                if v != text:
                    pieces.append((t.start, t.end + 1, "'" + v.replace("'", "") + "'"))

            batch.add(text, mask.GENERIC, put_num)
            continue
        if t.name not in _SCANNED:
            continue
        span = _inner(text, t.name)
        if span is None or span[1] <= span[0]:
            continue
        a, b, forbidden = span
        value = text[a:b]

        def put(v: str, t=t, a=a, b=b, value=value, forbidden=forbidden) -> None:
            if v == value:
                return
            if forbidden in v:
                raise mask.Unscannable("a rewritten literal would change the statement")
            pieces.append((t.start + a, t.start + b, v))

        batch.add(value, mask.GENERIC, put)
    batch.run(redact_many, out)
    if pieces:
        parts, pos = [], 0
        for start, end, rep in sorted(pieces):
            parts.append(sql[pos:start])
            parts.append(rep)
            pos = end
        parts.append(sql[pos:])
        out.messages = ["".join(parts)]
    else:
        out.messages = [sql]
    return out


def scan_bind(b: wire.Bind, param_types: list[int], redact_many) -> mask.Outcome:
    """A Bind whose text parameters are scanned; out.messages = [new Bind message]."""
    out = mask.Outcome()
    params = list(b.params)
    batch = mask.Batch()
    for i, raw in enumerate(params):
        if raw is None:
            continue
        oid = param_types[i] if i < len(param_types) else 0
        if oid in mask.NO_TEXT_TYPES:
            continue
        head = b""
        if wire.param_format(b, i) == 1:
            skip = mask.TEXT_LIKE_BINARY.get(oid)
            if skip is None:
                raise mask.Unscannable(f"parameter ${i + 1} is binary (type oid {oid}), which the "
                                       "gateway cannot scan")
            head, raw = raw[:skip], raw[skip:]

        def put(v: str, i=i, head=head) -> None:
            params[i] = head + v.encode("utf-8")

        batch.add(mask.decode_text(raw), mask.GENERIC, put)
    batch.run(redact_many, out)
    out.messages = [wire.build_bind(wire.Bind(b.portal, b.statement, b.param_formats, params,
                                              b.result_formats))]
    return out


class CopyIn:
    """Reassembles the agent's COPY FROM STDIN data into complete lines."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt  # "text" | "csv"
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        i = self.buf.rfind(b"\n")
        if i < 0:
            if len(self.buf) > wire.MAX_MESSAGE:
                raise mask.Unscannable("a COPY line is too long to scan")
            return []
        lines, self.buf = self.buf[:i + 1], self.buf[i + 1:]
        return lines.splitlines(keepends=True)

    def finish(self) -> list[bytes]:
        rest, self.buf = self.buf, b""
        return [rest] if rest else []
