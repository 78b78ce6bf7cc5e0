"""Server-sent events redacted while they stream (the ``flow.response.stream`` callable).

- `HoldBack`: text that arrives in pieces (an e-mail split over two deltas) is released only up
  to a safe boundary: whitespace at least `window` characters before the end, and never
  inside something the detector found, nor between a keyword (``password: ``, a PEM header)
  and its value (`streams.keywords.guard`). The tail is held until more text or the end.
- `StreamRedactor`: the callable mitmproxy calls per chunk. Messages API
  ``content_block_delta`` events (``text_delta``, ``input_json_delta``) go through a `HoldBack`
  per content block; other events' ``data`` are redacted whole (JSON or text). It never returns
  ``b""`` before the end (mitmproxy would write a zero-length chunk, which ends a chunked
  response): when everything is held back it returns an empty list.
- With a `restorer` factory (a restore rule), released text then goes through a `Restorer` per
  content block (``text_delta``: decoded text; ``input_json_delta``: a JSON fragment), which
  holds back only a tail that could start a token; other events' JSON has its tokens restored
  whole (signed fields kept).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable

from egress_gateway.net import sse
from egress_gateway.net.sse import Event, SSEParser
from egress_gateway.pseudonyms.restore import Restorer, restore_json
from egress_gateway.redact.streams import paths
from egress_gateway.redact.streams.generic import Item, Reassembler
from egress_gateway.redact.streams.keywords import guard

# Findings for a text: anything with .start and .end (detection.Finding).
Analyze = Callable[[str], list]
# Rewrite a text with findings computed on it (or on a longer text it starts):
# -> (new text, counts per entity, entity types whose operator is "block").
Apply = Callable[[str, list], tuple[str, dict[str, int], set[str]]]
# Redact one event's whole data payload: -> (new data, counts, blocked).
RedactData = Callable[[str], tuple[str, dict[str, int], set[str]]]

_WORD = re.compile(r"[A-Za-z_-]{1,64}")  # event names, "ping": nothing to find


class HoldBack:
    """Releases streamed text up to a safe boundary, redacted; holds the rest.

    The pending text is analysed once per release (with the held tail as context); the cut
    moves back to the start of any finding it would split, and the released prefix is
    rewritten with the findings inside it.
    """

    def __init__(self, analyze: Analyze, apply: Apply, window: int = 40, min_release: int = 24,
                 max_hold: int = 4096, per_piece: bool = False) -> None:
        self.analyze, self.apply = analyze, apply
        self.per_piece = per_piece  # pieces that may be separate texts: scanned alone too
        self.window, self.min_release, self.max_hold = window, min_release, max_hold
        self.pending = ""
        self.pieces: list[tuple[int, int]] = []  # spans of the pushed pieces in `pending`
        self.counts: Counter[str] = Counter()
        self.blocked: set[str] = set()

    def add(self, text: str) -> None:
        """Append a piece without releasing anything."""
        if text:
            self.pieces.append((len(self.pending), len(self.pending) + len(text)))
            self.pending += text

    def _findings(self) -> list:
        """Findings on the joined text, and on each piece alone (an event's own text is never
        scanned less than event by event: joining can glue a value to its neighbour)."""
        found = list(self.analyze(self.pending))
        for start, end in self.pieces if self.per_piece else ():
            if end - start >= 3 and (start, end) != (0, len(self.pending)):
                found += [_shifted(f, start) for f in self.analyze(self.pending[start:end])]
        return _merged(found) if len(self.pieces) > 1 else found

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
        self.pieces = [(max(s, cut) - cut, e - cut) for s, e in self.pieces if e > cut]
        if not part:
            return ""
        new, counts, blocked = self.apply(part, [f for f in findings if f.end <= cut])
        self.counts.update(counts)
        self.blocked |= blocked
        return new

    def push(self, text: str) -> str:
        self.add(text)
        cut = self._candidate_cut()
        if cut == 0:
            return ""
        findings = self._findings()
        for _ in range(3):  # a finding and a keyword may each move the cut back
            before = cut
            for f in findings:
                if f.start < cut < f.end:
                    cut = f.start
            cut = guard(self.pending, cut)
            if cut == before:
                break
        return self._release(cut, findings) if cut > 0 else ""

    def flush(self) -> str:
        if not self.pending:
            return ""
        return self._release(len(self.pending), self._findings())


def _shifted(f, offset: int, end: int | None = None):
    new_end = f.end + offset if end is None else end
    if dataclasses.is_dataclass(f):
        return dataclasses.replace(f, start=f.start + offset, end=new_end)
    g = copy.copy(f)
    g.start, g.end = f.start + offset, new_end
    return g


def _merged(findings: list) -> list:
    """Sorted, overlapping findings joined into one (the first one's type, the union span)."""
    out: list = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if out and f.start < out[-1].end:
            if f.end > out[-1].end:
                out[-1] = _shifted(out[-1], 0, f.end)
            continue
        out.append(f)
    return out


_DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json"}
MESSAGES_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta",
                             "content_block_stop", "message_delta", "message_stop", "ping",
                             "error"})


class StreamRedactor:
    """``flow.response.stream`` callable for ``text/event-stream`` bodies."""

    def __init__(self, analyze: Analyze, apply: Apply, redact_data: RedactData,
                 window: int = 40, restorer: Callable[[str], Restorer] | None = None) -> None:
        self.parser = SSEParser()
        self.restorer = restorer
        self.restorers: dict[int, Restorer] = {}  # index -> the block's restorer
        self.data_restorer = restorer("text") if restorer else None
        self.restored = self.unknown_tokens = 0
        # every other shape (OpenAI chat and Responses, NDJSON-like JSON, text data)
        self.generic = Reassembler(lambda key: HoldBack(
            analyze, apply, window, per_piece=paths.separate_pieces(key)), redact_data, restorer)
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

    def _restore(self, index: int, dtype: str, text: str, end: bool = False) -> str:
        if self.restorer is None:
            return text
        r = self.restorers.get(index)
        if r is None:
            r = self.restorers[index] = self.restorer(
                "json" if dtype == "input_json_delta" else "text")
        out = r.push(text)
        if end:
            out += r.flush()
            del self.restorers[index]
        return out

    def _count_restores(self) -> None:
        rs = [*self.restorers.values(), *([self.data_restorer] if self.data_restorer else [])]
        g_restored, g_unknown = self._generic_restores
        self.restored = sum(r.restored for r in rs) + self._restored_done + g_restored
        self.unknown_tokens = sum(r.unknown for r in rs) + self._unknown_done + g_unknown

    _restored_done = _unknown_done = 0
    _generic_restores = (0, 0)

    def _flush_block(self, index: int) -> bytes:
        entry = self.blocks.pop(index, None)
        if entry is None:
            return b""
        hold, dtype = entry
        text = hold.flush()
        self.counts.update(hold.counts)
        self.blocked |= hold.blocked
        r = self.restorers.get(index)
        text = self._restore(index, dtype, text, end=True)
        if r is not None:
            self._restored_done += r.restored
            self._unknown_done += r.unknown
        self._count_restores()
        return self._delta_event(index, dtype, text) if text else b""

    def _side_lines(self, ev: Event) -> Event:
        """Comments and fields other than ``data`` (``id``, ``event``, unknown ones) reach the
        agent verbatim: each is redacted like data (``sse.side_values``); an event in which
        one changed is rebuilt with the new value (``\n`` line ends)."""
        lines, changed = [], False
        for line, text in zip(ev.lines, sse.side_values(ev, keep_data=True), strict=True):
            if text is not None and len(text) >= 3 and not _WORD.fullmatch(text):
                new, counts, blocked = self.redact_data(text)
                self.counts.update(counts)
                self.blocked |= blocked
                if new != text:
                    name = line.partition(b":")[0]
                    line = (b": " if line.startswith(b":") else name + b": ") + new.encode()
                    changed = True
            lines.append(line)
        if not changed:
            return ev
        return Event(lines=lines, event=ev.event, data_lines=ev.data_lines, complete=True)

    def _handle(self, ev: Event) -> bytes:
        ev = self._side_lines(ev)
        if ev.only_comments or not ev.data_lines:
            return ev.raw()
        self.events += 1
        data = ev.data
        doc = None
        if data.startswith(("{", "[")):
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
        if not (isinstance(doc, dict) and doc.get("type") in MESSAGES_EVENTS):
            out = self.generic.feed(Item(data if doc is None else doc,
                                         lambda d, ev=ev: ev.with_data(
                                             d if isinstance(d, str) else json.dumps(d)),
                                         ev.raw()))
            self._count_generic()
            return out
        generic_tail = self.generic.close() if self.generic.pending else b""
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
                if released:
                    released = self._restore(index, dtype, released)
                    self._count_restores()
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
        if self.data_restorer is not None and doc is not None:
            restored, n, u = restore_json(new, self.data_restorer.lookup)
            if n or u:
                self._restored_done += n
                self._unknown_done += u
                self._count_restores()
                new = restored
        return generic_tail + prefix + (ev.raw() if new is data or new == data
                                        else ev.with_data(new))

    def _count_generic(self) -> None:
        g = self.generic
        self.counts.update(g.counts)
        g.counts.clear()
        self.blocked |= g.blocked
        self._generic_restores = g.counts_restored()
        self._count_restores()

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
            out += self.generic.close()
            self._count_generic()
            if self.blocked:
                raise StreamBlocked
        return out

    @staticmethod
    def error_chunk(message: str) -> bytes:
        """The SSE ``error`` event that ends a stream the gateway stopped."""
        return b"event: error\ndata: " + json.dumps({
            "type": "error", "error": {"type": "egress_gateway_error",
                                       "message": message}}).encode() + b"\n\n"

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
            return [self.error_chunk(message)]
        if not chunk:
            return out
        return [out] if out else []


class StreamBlocked(Exception):
    """An entity whose operator is ``block`` appeared in a stream: it is cut off."""
