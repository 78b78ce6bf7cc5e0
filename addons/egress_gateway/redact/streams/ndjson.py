"""NDJSON response streams (``application/x-ndjson`` ...) redacted while they stream: one JSON
document per line, reassembled by JSON path like SSE events (`generic.Reassembler`). Like the
SSE callable it never returns ``b""`` before the end, and fails closed: an error line, then
nothing more."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from egress_gateway.redact.stream import Analyze, Apply, HoldBack, RedactData
from egress_gateway.redact.streams import paths
from egress_gateway.redact.streams.generic import Item, Reassembler

MAX_LINE = 1 << 20


class NdjsonRedactor:
    """``flow.response.stream`` callable for NDJSON bodies."""

    def __init__(self, analyze: Analyze, apply: Apply, redact_data: RedactData,
                 window: int = 40, restorer: Callable | None = None) -> None:
        self.re = Reassembler(lambda key: HoldBack(
            analyze, apply, window, per_piece=paths.separate_pieces(key)), redact_data, restorer)
        self.buf = b""
        self.events = 0
        self.failed: str | None = None
        self.counts: Counter[str] = Counter()
        self.blocked: set[str] = set()
        self.restored = self.unknown_tokens = 0

    def _line(self, line: bytes) -> bytes:
        body = line.rstrip(b"\r\n")
        end = line[len(body):]
        if not body.strip():
            return line
        self.events += 1
        text = body.decode("utf-8", "replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, (dict, list)):
            doc = text
        return self.re.feed(Item(doc, lambda d, end=end: (
            d if isinstance(d, str) else json.dumps(d)).encode() + (end or b"\n"), line))

    def _note(self) -> None:
        self.counts.update(self.re.counts)
        self.re.counts.clear()
        self.blocked |= self.re.blocked
        self.restored, self.unknown_tokens = self.re.counts_restored()
        if self.blocked:
            raise ValueError("blocked: " + ", ".join(sorted(self.blocked)))

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.failed:
            return []
        try:
            out = b""
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                out += self._line(line + b"\n")
                self._note()
            if len(self.buf) > MAX_LINE:
                raise ValueError(f"NDJSON line longer than {MAX_LINE} bytes")
            if not chunk:
                if self.buf:
                    out += self._line(self.buf)
                    self.buf = b""
                out += self.re.close()
                self._note()
                return out
            return [out] if out else []
        except Exception as e:  # fail closed: stop forwarding anything from this stream
            self.failed = f"{type(e).__name__}: {e}"
            return [self.error_chunk("the gateway stopped this stream")]

    @staticmethod
    def error_chunk(message: str) -> bytes:
        """The NDJSON error line that ends a stream the gateway stopped."""
        return json.dumps({"error": {"type": "egress_gateway_error",
                                     "message": message}}).encode() + b"\n"
