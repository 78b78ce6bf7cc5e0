"""Server-sent events redacted while they stream (the ``flow.response.stream`` callable).

- `HoldBack`: text that arrives in pieces (an e-mail split over two deltas) is released only up
  to a safe boundary: whitespace at least `window` characters before the end, and never
  inside something the detector found. The tail is held until more text or the end.
- `StreamRedactor`: the callable mitmproxy calls per chunk. Messages API
  ``content_block_delta`` events (``text_delta``, ``input_json_delta``) go through a `HoldBack`
  per content block; other events' ``data`` are redacted whole (JSON or text). It never returns
  ``b""`` before the end (mitmproxy would write a zero-length chunk, which ends a chunked
  response): when everything is held back it returns an empty list.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from egress_gateway.net.sse import Event, SSEParser

# Findings for a text: anything with .start and .end (detection.Finding).
Analyze = Callable[[str], list]
# Rewrite a text with findings computed on it (or on a longer text it starts):
# -> (new text, counts per entity, entity types whose operator is "block").
Apply = Callable[[str, list], tuple[str, dict[str, int], set[str]]]
# Redact one event's whole data payload: -> (new data, counts, blocked).
RedactData = Callable[[str], tuple[str, dict[str, int], set[str]]]


class HoldBack:
    """Releases streamed text up to a safe boundary, redacted; holds the rest.

    The pending text is analysed once per release (with the held tail as context); the cut
    moves back to the start of any finding it would split, and the released prefix is
    rewritten with the findings inside it.
    """

    def __init__(self, analyze: Analyze, apply: Apply, window: int = 40, min_release: int = 24,
                 max_hold: int = 4096) -> None:
        self.analyze, self.apply = analyze, apply
        self.window, self.min_release, self.max_hold = window, min_release, max_hold
        self.pending = ""
        self.counts: Counter[str] = Counter()
        self.blocked: set[str] = set()

    def _candidate_cut(self) -> int:
        text = self.pending
        limit = len(text) - self.window
        if limit < self.min_release:
            return 0
        for i in range(limit, 0, -1):
            if text[i - 1].isspace():
                return i
        return limit if len(text) > self.max_hold else 0  # a very long run with no space

    def _release(self, cut: int, findings: list) -> str:
        part, self.pending = self.pending[:cut], self.pending[cut:]
        if not part:
            return ""
        new, counts, blocked = self.apply(part, [f for f in findings if f.end <= cut])
        self.counts.update(counts)
        self.blocked |= blocked
        return new

    def push(self, text: str) -> str:
        self.pending += text
        cut = self._candidate_cut()
        if cut == 0:
            return ""
        findings = self.analyze(self.pending)
        for f in findings:
            if f.start < cut < f.end:
                cut = f.start
        return self._release(cut, findings) if cut > 0 else ""

    def flush(self) -> str:
        if not self.pending:
            return ""
        return self._release(len(self.pending), self.analyze(self.pending))


_DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json"}


class StreamRedactor:
    """``flow.response.stream`` callable for ``text/event-stream`` bodies."""

    def __init__(self, analyze: Analyze, apply: Apply, redact_data: RedactData,
                 window: int = 40) -> None:
        self.parser = SSEParser()
        self.analyze, self.apply, self.window = analyze, apply, window
        self.redact_data = redact_data
        self.blocks: dict[int, tuple[HoldBack, str]] = {}  # index -> (hold-back, delta type)
        self.counts: Counter[str] = Counter()
        self.blocked: set[str] = set()
        self.events = 0
        self.failed: str | None = None

    # -- per event -----------------------------------------------------------------------
    def _delta_event(self, index: int, dtype: str, text: str) -> bytes:
        doc = {"type": "content_block_delta", "index": index,
               "delta": {"type": dtype, _DELTA_FIELDS[dtype]: text}}
        return b"event: content_block_delta\ndata: " + json.dumps(doc).encode() + b"\n\n"

    def _flush_block(self, index: int) -> bytes:
        entry = self.blocks.pop(index, None)
        if entry is None:
            return b""
        hold, dtype = entry
        text = hold.flush()
        self.counts.update(hold.counts)
        self.blocked |= hold.blocked
        return self._delta_event(index, dtype, text) if text else b""

    def _handle(self, ev: Event) -> bytes:
        if ev.only_comments or not ev.data_lines:
            return ev.raw()
        self.events += 1
        data = ev.data
        doc = None
        if data.startswith("{"):
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
        if isinstance(doc, dict) and doc.get("type") == "content_block_delta":
            delta = doc.get("delta") or {}
            dtype = delta.get("type")
            index = doc.get("index")
            if dtype in _DELTA_FIELDS and isinstance(index, int) \
                    and isinstance(delta.get(_DELTA_FIELDS[dtype]), str):
                hold, _ = self.blocks.setdefault(
                    index, (HoldBack(self.analyze, self.apply, self.window), dtype))
                released = hold.push(delta[_DELTA_FIELDS[dtype]])
                self.counts.update(hold.counts)
                hold.counts.clear()
                self.blocked |= hold.blocked
                return self._delta_event(index, dtype, released) if released else b""
        prefix = b""
        if isinstance(doc, dict) and doc.get("type") == "content_block_stop" \
                and isinstance(doc.get("index"), int):
            prefix = self._flush_block(doc["index"])
        elif isinstance(doc, dict) and doc.get("type") in ("message_stop", "message_delta"):
            prefix = b"".join(self._flush_block(i) for i in sorted(self.blocks))
        new, counts, blocked = self.redact_data(data)
        self.counts.update(counts)
        self.blocked |= blocked
        return prefix + (ev.raw() if new is data or new == data else ev.with_data(new))

    # -- mitmproxy's stream interface ------------------------------------------------------
    def _events(self, chunk: bytes) -> bytes:
        out = b""
        for ev in self.parser.feed(chunk) if chunk else []:
            out += self._handle(ev)
            if self.blocked:
                raise StreamBlocked
        if not chunk:  # end of the stream
            tail = self.parser.close()
            if tail is not None and not tail.only_comments:
                out += self._handle(tail)
            out += b"".join(self._flush_block(i) for i in sorted(self.blocks))
            if self.blocked:
                raise StreamBlocked
        return out

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.failed:
            return []
        try:
            out = self._events(chunk)
        except Exception as e:  # fail closed: stop forwarding anything from this stream
            if isinstance(e, StreamBlocked):
                self.failed = "blocked: " + ", ".join(sorted(self.blocked))
                message = ("the gateway stopped this stream: it carried "
                           + ", ".join(sorted(self.blocked)))
            else:
                self.failed = f"{type(e).__name__}: {e}"
                message = "the gateway stopped this stream: it could not be scanned"
            self.blocks.clear()
            return [b"event: error\ndata: " + json.dumps({
                "type": "error", "error": {"type": "egress_gateway_error",
                                           "message": message}}).encode() + b"\n\n"]
        if not chunk:
            return out
        return [out] if out else []


class StreamBlocked(Exception):
    """An entity whose operator is ``block`` appeared in a stream: it is cut off."""
