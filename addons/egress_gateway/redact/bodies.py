"""Rewrite message bodies in place, per content type.

Each ``plan_*`` function puts the strings of one part of a message into a `TextJob` and
returns a *finish* callable; after ``job.run(...)`` the finish callable returns the rewritten
bytes, or None when nothing changed (the caller then forwards the original bytes untouched).

Content kinds (`content_kind`):

==============  ==============================================================================
json            ``application/json``, ``*/*+json``, ``text/json``: every string value (scoped
                by JSON paths) and key, read leniently, UTF-16/32 by BOM/NUL pattern; data
                after the document and invalid JSON are scanned as plain text
ndjson          ``application/x-ndjson``, ``application/jsonl`` ...: each line as JSON
form            ``application/x-www-form-urlencoded``: values; names analysed (signed)
multipart       ``multipart/*``: text and JSON parts; binary parts are "unsupported"; part
                headers, preamble and epilogue analysed (signed)
sse             ``text/event-stream``: each event's ``data`` payload, framing kept; comments
                and other fields analysed (signed)
text            ``text/*``, XML, YAML, JavaScript, GraphQL; no Content-Type: sniffed
binary          everything else: scanned as text when the bytes are UTF-8 text, else not
                scannable ("unsupported")
==============  ==============================================================================

Text is read with `charsets.read` (other plausible readings of a mislabelled body are analysed
as signed texts; compressed magic bytes and mostly-control-character readings are binary).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from egress_gateway.net import codecs, sse
from egress_gateway.net.sse import Event
from egress_gateway.redact import charsets
from egress_gateway.redact.jsonpath import EVERYTHING, Scope
from egress_gateway.redact.walker import JsonError, JsonTrailing, TextJob

Finish = Callable[[], bytes | None]

NDJSON_TYPES = {
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonl",
    "application/jsonlines", "application/x-jsonlines",
}
TEXT_APPLICATION_TYPES = {
    "application/xml", "application/javascript", "application/x-javascript",
    "application/ecmascript", "application/yaml", "application/x-yaml", "application/toml",
    "application/graphql", "application/sql", "application/x-sh", "application/xhtml+xml",
    "application/csv", "application/x-www-form-urlencoded+text",
}
MAX_MULTIPART_DEPTH = 3
_WORD = re.compile(r"[A-Za-z_-]{1,64}")  # event names such as content_block_delta: nothing to find


class Unsupported(ValueError):
    """A body (or part) the gateway cannot scan: binary, unknown type, bad charset/encoding."""


@dataclass
class Options:
    """How to treat what is found while planning."""

    scope: Scope = EVERYTHING
    unsupported: str = "block"  # pass: skip unscannable multipart parts (noted) instead of raising
    notes: list[str] = field(default_factory=list)


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``(mime, params)`` with the mime type lowercased; ``("", {})`` if absent."""
    if not value:
        return "", {}
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in re.finditer(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', rest):
        v = item.group(2).strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[item.group(1).lower()] = v
    return mime.strip().lower(), params


def _sniff_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        sample = data[:65536].decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(data[:65536]) - 4:  # not merely a character cut by the sample's end
            return False
        sample = data[: e.start].decode("utf-8")
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f")
    return controls <= len(sample) // 100


def binary_is_text(data: bytes) -> bool:
    """Bytes labelled binary (a content type, a WebSocket binary frame) that are UTF-8 text:
    scanned as text, since whoever receives them can read them as such."""
    return bool(data) and _sniff_text(data) and not charsets.compressed_magic(data)


def content_kind(content_type: str | None, data: bytes) -> str:
    mime, _ = parse_content_type(content_type)
    if not mime:
        return "text" if _sniff_text(data) else "binary"
    major, _, minor = mime.partition("/")
    if mime in NDJSON_TYPES:
        return "ndjson"
    if minor == "json" or minor.endswith("+json") or mime == "application/x-json":
        return "json"
    if mime == "application/x-www-form-urlencoded":
        return "form"
    if major == "multipart":
        return "multipart"
    if mime == "text/event-stream":
        return "sse"
    if major == "text" or mime in TEXT_APPLICATION_TYPES or minor.endswith("+xml"):
        return "text"
    return "binary"


def _decode_text(data: bytes, charset: str | None, job: TextJob | None = None,
                 label: str = "body") -> tuple[str, str]:
    """(text, charset used); a UTF-8 BOM is kept in the text (and therefore written back).
    Other plausible readings of the bytes (``charsets.read``) are added to `job` as signed
    texts: a finding there refuses the message."""
    try:
        text, cs, others = charsets.read(data, charset)
    except charsets.NotText as e:
        raise Unsupported(str(e)) from None
    for alt in others:
        if job is None:
            raise Unsupported(f"bytes labelled {cs} read as other text too")
        job.add_signed(alt, f"{label} (read as UTF-8, labelled {cs})")
    return text, cs


def _encoder(cs: str) -> Callable[[str], bytes]:
    def enc(text: str) -> bytes:
        try:
            return text.encode(cs)
        except UnicodeEncodeError:
            # a replacement the charset cannot hold (e.g. non-Latin pseudonym in latin-1)
            return text.encode(cs, errors="xmlcharrefreplace")

    return enc


# --- per kind ------------------------------------------------------------------------------------
def plan_text(job: TextJob, data: bytes, charset: str | None, opts: Options) -> Finish:
    text, cs = _decode_text(data, charset, job)
    node = job.add_text(text, opts.scope)
    enc = _encoder(cs)

    def finish() -> bytes | None:
        new = job.result(node)
        return None if new is None else enc(new)

    return finish


def plan_json(job: TextJob, data: bytes, opts: Options) -> Finish:
    """JSON as lenient upstreams read it: UTF-16/32 by BOM or NUL pattern, ``NaN``/``Infinity``,
    raw control characters in strings (``walker``); data after the document is scanned as text;
    a body that is not JSON at all is scanned as text (decoded views undo its escapes)."""
    codec, has_bom = charsets.json_codec(data)
    text, _ = _decode_text(data, codec, job)
    bom = text.startswith("\ufeff")
    body = text[1:] if bom else text
    tail_node = None
    tail = ""
    try:
        node = job.add_json(body, opts.scope)
    except JsonTrailing as e:
        opts.notes.append("data after the JSON document scanned as text")
        body, tail = body[: e.at], body[e.at:]
        node = job.add_json(body, opts.scope)
        tail_node = job.add_text(tail, EVERYTHING)
    except JsonError as e:
        # Deliberate: a body labelled JSON that is not JSON is still text; scan it as such.
        opts.notes.append(f"invalid JSON scanned as text ({e})")
        node = job.add_text(body, EVERYTHING)

    def finish() -> bytes | None:
        new = job.result(node)
        new_tail = job.result(tail_node) if tail_node is not None else None
        if new is None and new_tail is None:
            return None
        out = ("\ufeff" if bom else "") + (body if new is None else new) \
            + (tail if new_tail is None else new_tail)
        return _encoder(codec)(out)

    return finish


_LINE = re.compile(r"([^\r\n]*)(\r\n|\n|\r|\Z)")


def plan_ndjson(job: TextJob, data: bytes, opts: Options) -> Finish:
    text, _ = _decode_text(data, "utf-8", job)
    lines: list[tuple[str, str, object]] = []
    for m in _LINE.finditer(text):
        line, end = m.group(1), m.group(2)
        if not line and not end:
            break
        node = None
        if line.strip():
            try:
                node = job.add_json(line, opts.scope)
            except JsonError:
                node = job.add_text(line, EVERYTHING)
        lines.append((line, end, node))

    def finish() -> bytes | None:
        out, changed = [], False
        for line, end, node in lines:
            new = job.result(node) if node is not None else None
            changed |= new is not None
            out.append((line if new is None else new) + end)
        return "".join(out).encode("utf-8") if changed else None

    return finish


def _unquote_plus(value: str) -> str:
    try:
        return unquote_plus(value, errors="strict")
    except UnicodeDecodeError:  # not UTF-8: scanned anyway
        return unquote_plus(value, errors="replace")


def plan_urlencoded(job: TextJob, text: str, opts: Options,
                    names: bool = False) -> Callable[[], str | None]:
    """``a=1&b=x`` (form bodies and query strings): values scanned, layout kept. With `names`
    (form bodies), field names are analysed too, never rewritten: a finding refuses (as for
    query keys, ``redact/headers.py``)."""
    pairs = []
    for pair in text.split("&"):
        key, eq, value = pair.partition("=")
        if names and key:
            job.add_signed(_unquote_plus(key), "(form field name)")
        node = None
        if eq and value:
            decoded = value
            if "%" in value or "+" in value:
                try:
                    decoded = unquote_plus(value, errors="strict")
                except UnicodeDecodeError:  # not UTF-8: scanned anyway, rewritten only if found
                    decoded = unquote_plus(value, errors="replace")
            node = job.add_text(decoded, opts.scope)
        pairs.append((key, eq, value, node))

    def finish() -> str | None:
        out, changed = [], False
        for key, eq, value, node in pairs:
            new = job.result(node) if node is not None else None
            if new is not None:
                changed = True
                value = quote_plus(new, safe="")
            out.append(key + eq + value)
        return "&".join(out) if changed else None

    return finish


def plan_path(job: TextJob, path: str) -> Callable[[], str | None]:
    """``/users/ann%40example.com/x``: each path segment decoded and scanned; a changed segment
    is percent-encoded again, the others (and the separators) stay byte for byte."""
    segments = []
    for seg in path.split("/"):
        node = None
        if seg:
            decoded = seg
            if "%" in seg:
                try:
                    decoded = unquote(seg, errors="strict")
                except UnicodeDecodeError:  # not UTF-8: scanned anyway, rewritten only if found
                    decoded = unquote(seg, errors="replace")
            node = job.add_text(decoded, EVERYTHING)
        segments.append((seg, node))

    def finish() -> str | None:
        out, changed = [], False
        for seg, node in segments:
            new = job.result(node) if node is not None else None
            if new is not None:
                changed = True
                seg = quote(new, safe="")
            out.append(seg)
        return "/".join(out) if changed else None

    return finish


def plan_form(job: TextJob, data: bytes, charset: str | None, opts: Options) -> Finish:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Unsupported("form body with raw non-ASCII bytes") from None
    inner = plan_urlencoded(job, text, opts, names=True)

    def finish() -> bytes | None:
        new = inner()
        return None if new is None else new.encode("ascii")

    return finish


# --- server-sent events (framed by net.sse, the one SSE parser) ---------------------------------
def plan_sse_event(job: TextJob, event: Event, scope: Scope = EVERYTHING) -> Callable[[], bytes | None]:
    """Plan one event: its data payload is scanned (as JSON when it is JSON); finish() gives the
    rewritten event or None. Comments and the other fields (``id``, ``event``, unknown ones) are
    analysed and never rewritten: a finding there refuses. Line ends are kept."""
    payload = event.data if event.data_lines else None
    node = job.add_text(payload, scope) if payload else None
    for text in sse.side_values(event):  # comments, id, event, unknown fields
        if len(text) >= 3 and not _WORD.fullmatch(text):
            job.add_signed(text, "(SSE comment or field other than data)")

    def finish() -> bytes | None:
        new = job.result(node) if node is not None else None
        return None if new is None else event.with_data(new)

    return finish


def redact_sse_data(data: str, redact_many: Callable, scope: Scope = EVERYTHING
                    ) -> tuple[str, dict[str, int], set[str]]:
    """Redact one event's ``data`` payload (JSON-aware, scoped): ``(text, counts, blocked)``;
    ``text`` is `data` itself when nothing was found. The seam for streaming redaction."""
    job = TextJob()
    node = job.add_text(data, scope)
    job.run(redact_many)
    new = job.result(node)
    blocked = set(job.blocked)
    if job.refused:  # a signed or fixed-format field carried something: the stream is cut
        blocked |= {f"{e} in a signed or fixed-format field" for e in job.refused_entities} \
            or {"a value out of its field's format"}
    return (data if new is None else new), dict(job.counts), blocked


def plan_sse(job: TextJob, data: bytes, charset: str | None, opts: Options) -> Finish:
    text, cs = _decode_text(data, charset, job)
    events = sse.parse_all(text.encode("utf-8"))
    plans = [(ev, plan_sse_event(job, ev, opts.scope)) for ev in events]

    def finish() -> bytes | None:
        out, changed = [], False
        for ev, fin in plans:
            new = fin()
            changed |= new is not None
            out.append(ev.raw() if new is None else new)
        return _encoder(cs)(b"".join(out).decode("utf-8")) if changed else None

    return finish


# --- multipart -----------------------------------------------------------------------------------
def _head_text(head: bytes) -> str:
    """Part headers as a receiver may read them: UTF-8 (RFC 7578 filenames) else latin-1, with
    RFC 2231/5987 ``filename*=utf-8''...`` values percent-decoded (decoded views do the rest)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    return re.sub(r"\*=([A-Za-z0-9_-]*)'[^']*'([^;\r\n]*)",
                  lambda m: "=" + unquote(m.group(2), encoding=m.group(1) or "utf-8",
                                          errors="replace"), text)


def _part_headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            out[name.strip().lower()] = value.strip()
    return out


def plan_multipart(job: TextJob, data: bytes, params: dict[str, str], opts: Options,
                   depth: int = 0) -> Finish:
    boundary = params.get("boundary")
    if not boundary or depth >= MAX_MULTIPART_DEPTH:
        raise Unsupported("multipart body without a boundary" if not boundary
                          else "multipart nested too deeply")
    delim = b"\r\n--" + boundary.encode("latin-1")
    lead = not data.startswith(delim[2:])
    pieces = (data if lead else b"\r\n" + data).split(delim)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise Unsupported("malformed multipart body (no closing boundary)")
    plans: list[tuple[bytes, bytes, Finish | None]] = []
    for i, piece in enumerate(pieces):
        if i == 0 or i == len(pieces) - 1:
            # preamble and epilogue (after the closing "--"): ignored by parsers, still sent
            edge = piece[2:] if i else piece
            if edge.strip():
                job.add_signed(edge.decode("utf-8", "replace"), "(multipart preamble/epilogue)")
            plans.append((piece, b"", None))
            continue
        head_end = piece.find(b"\r\n\r\n")
        if head_end < 0:
            raise Unsupported("malformed multipart part (no header end)")
        head, body = piece[: head_end + 4], piece[head_end + 4 :]
        headers = _part_headers(head)
        # part headers (name, filename, any extra header): analysed, never rewritten
        job.add_signed(_head_text(head), "(multipart part headers)")
        try:
            if headers.get("content-transfer-encoding", "").lower() not in ("", "7bit", "8bit",
                                                                              "binary"):
                raise Unsupported("multipart part with a transfer encoding")
            fin = plan_part(job, body, headers.get("content-type"), opts, depth + 1)
        except Unsupported as e:
            if opts.unsupported != "pass":
                raise
            opts.notes.append(f"multipart part not scanned: {e}")
            fin = None
        plans.append((head, body, fin))

    def finish() -> bytes | None:
        out, changed = [], False
        for head, body, fin in plans:
            new = fin() if fin is not None else None
            changed |= new is not None
            out.append(head + (body if new is None else new))
        if not changed:
            return None
        joined = delim.join(out)
        return joined if lead else joined[2:]

    return finish


def plan_part(job: TextJob, data: bytes, content_type: str | None, opts: Options,
              depth: int = 0) -> Finish:
    """Plan a decoded body (or multipart part) of the given Content-Type."""
    kind = content_kind(content_type, data)
    _, params = parse_content_type(content_type)
    charset = params.get("charset")
    if kind == "json":
        return plan_json(job, data, opts)
    if kind == "ndjson":
        return plan_ndjson(job, data, opts)
    if kind == "form":
        return plan_form(job, data, charset, opts)
    if kind == "multipart":
        return plan_multipart(job, data, params, opts, depth)
    if kind == "sse":
        return plan_sse(job, data, charset, opts)
    if kind == "text":
        return plan_text(job, data, charset, opts)
    mime, _ = parse_content_type(content_type)
    if binary_is_text(data):
        # labelled binary (octet-stream, image/png ...) but the bytes are text: scanned as text
        opts.notes.append(f"{mime or 'unlabelled'} content that is text scanned as text")
        return plan_text(job, data, None, opts)
    raise Unsupported(f"cannot scan {mime or 'unlabelled binary'} content")


# --- whole bodies --------------------------------------------------------------------------------
@dataclass
class BodyPlan:
    """A planned body: `finish()` returns the new raw (re-encoded) body or None if unchanged."""

    encodings: list[str]
    inner: Finish | None

    def finish(self) -> bytes | None:
        if self.inner is None:
            return None
        new = self.inner()
        return None if new is None else codecs.encode(new, self.encodings)


def plan_body(job: TextJob, raw: bytes, content_type: str | None, content_encoding: str | None,
              limit: int, opts: Options) -> BodyPlan:
    """Plan a raw body. Raises codecs.TooLarge (over `limit`, before or after decoding) or
    Unsupported (unscannable type, charset or encoding)."""
    if not raw:
        return BodyPlan([], None)
    if len(raw) > limit:
        raise codecs.TooLarge(f"body of {len(raw)} bytes exceeds the limit of {limit}")
    try:
        encodings = codecs.parse_encodings(content_encoding)
        data = codecs.decode(raw, encodings, limit)
    except codecs.BadEncoding as e:
        raise Unsupported(str(e)) from None
    return BodyPlan(encodings, plan_part(job, data, content_type, opts))
