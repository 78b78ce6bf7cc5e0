"""Reassembly by JSON path across consecutive events, for any stream shape (OpenAI chat chunks
``choices[i].delta.content`` / ``tool_calls[j].function.arguments``, the OpenAI Responses API,
NDJSON, unknown JSON; non-JSON ``data`` is one text per stream).

`Reassembler.feed(item)` takes one event and returns the bytes to send. Each run (the strings
at one run key, ``paths.py``) goes through a `HoldBack` (and a `Restorer` for a restore rule).
An event carrying run text is sent when the next event arrives (one event of lag), with the
text released so far at its places: a run seen in a single event (a ``done`` event, a full
message) is sent whole; a run that continues gets its held tail in its next event, or, when the
stream ends, the event type changes or an event without text arrives (OpenAI's
``finish_reason`` chunk), in a copy of its last event carrying only that tail.
Labels (ids, model, role) are redacted per event through ``redact_data``. A ``[DONE]`` data
line ends every run first.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from egress_gateway.pseudonyms.restore import Restorer, restore_json
from egress_gateway.redact.streams import paths

TERMINATORS = frozenset({"[DONE]"})


@dataclass
class Item:
    """One event: its parsed JSON (or its text when not JSON) and how to write it back."""

    doc: Any  # dict / list, or str (non-JSON data)
    render: Callable[[Any], bytes]  # new doc (or text) -> bytes
    raw: bytes = b""
    keys: dict = field(default_factory=dict)  # run key -> location
    original: Any = None  # the doc as received: unchanged events are sent byte for byte

    def __post_init__(self) -> None:
        self.original = copy.deepcopy(self.doc)

    def out(self) -> bytes:
        return self.raw if self.raw and self.doc == self.original else self.render(self.doc)

    @property
    def type(self) -> str | None:
        t = self.doc.get("type") if isinstance(self.doc, dict) else None
        return t if isinstance(t, str) else None


class _Run:
    def __init__(self, hold, restorer: Restorer | None, item: Item, text: str) -> None:
        self.hold, self.restorer = hold, restorer
        self.hold.add(text)
        self.count, self.last, self.type = 1, item, item.type

    def release(self, text: str) -> str:
        return self.restorer.push(text) if self.restorer else text

    def finish(self) -> str:
        out = self.release(self.hold.flush())
        return out + self.restorer.flush() if self.restorer else out


class Reassembler:
    """See the module docstring. `make_hold(run key)` builds a `HoldBack`; `restorer(context)` a
    `Restorer` (restore rules); `redact_data(json_text)` redacts an event's labels."""

    def __init__(self, make_hold: Callable, redact_data: Callable,
                 restorer: Callable[[str], Restorer] | None = None) -> None:
        self.make_hold, self.redact_data, self.restorer = make_hold, redact_data, restorer
        self.runs: dict[tuple, _Run] = {}
        self.pending: Item | None = None
        self.counts: Counter[str] = Counter()
        self.blocked: set[str] = set()
        self.restored = self.unknown = 0
        self._label_restorer = restorer("text") if restorer else None

    # -- helpers --------------------------------------------------------------------------
    def _labels(self, item: Item) -> None:
        """Redact (and restore) the event's label strings, in place."""
        if not isinstance(item.doc, (dict, list)):
            return
        saved = {k: paths.get(item.doc, loc) for k, loc in item.keys.items()}
        blank = copy.deepcopy(item.doc)
        for loc in item.keys.values():
            paths.put(blank, loc, "")
        before = json.dumps(blank)
        new, counts, blocked = self.redact_data(before)
        self.counts.update(counts)
        self.blocked |= blocked
        if self._label_restorer is not None:
            new, n, u = restore_json(new, self._label_restorer.lookup)
            self.restored += n
            self.unknown += u
        if new != before:
            item.doc = json.loads(new)
            for k, loc in item.keys.items():
                paths.put(item.doc, loc, saved[k])

    def _set(self, item: Item, key: tuple, text: str) -> None:
        item.doc = paths.put(item.doc, item.keys[key], text)

    def _note(self, run: _Run) -> None:
        self.counts.update(run.hold.counts)
        run.hold.counts.clear()
        self.blocked |= run.hold.blocked

    def _close(self, key: tuple) -> None:
        run = self.runs.pop(key)
        if run.restorer is not None:
            self.restored += run.restorer.restored
            self.unknown += run.restorer.unknown

    def _tail_event(self, key: tuple, run: _Run) -> bytes:
        """A copy of the run's last event carrying only the run's held tail."""
        text = run.finish()
        self._note(run)
        self._close(key)
        if not text:
            return b""
        item = Item(copy.deepcopy(run.last.doc), run.last.render, keys=dict(run.last.keys))
        item.original = None
        for k in item.keys:
            self._set(item, k, "")
        self._set(item, key, text)
        return item.out()

    # -- the stream -----------------------------------------------------------------------
    def feed(self, item: Item) -> bytes:
        if isinstance(item.doc, str) and item.doc.strip() in TERMINATORS:
            return self.close() + item.raw
        item.keys = paths.text_leaves(item.doc)
        self._labels(item)
        before, p = b"", self.pending
        for key, run in list(self.runs.items()):
            in_p = p is not None and key in p.keys
            if key in item.keys:
                piece = paths.get(item.doc, item.keys[key]) if item.keys[key] else item.doc
                if in_p:
                    self._set(p, key, run.release(run.hold.push(piece)))
                else:
                    run.hold.add(piece)
                run.count += 1
                run.last = item
            elif in_p:
                if run.count == 1 or item.type != run.type or not item.keys:
                    self._set(p, key, run.finish())
                    self._note(run)
                    self._close(key)
                    continue
                self._set(p, key, run.release(run.hold.push("")))
            elif item.type != run.type or not item.keys:
                before += self._tail_event(key, run)
            self._note(run)
        for key, loc in item.keys.items():
            if key not in self.runs:
                piece = paths.get(item.doc, loc) if loc else item.doc
                context = "json" if paths.is_json_text(key) else "text"
                self.runs[key] = _Run(self.make_hold(key),
                                      self.restorer(context) if self.restorer else None,
                                      item, piece)
        out = before + (p.out() if p is not None else b"")
        if item.keys:
            self.pending = item
        else:
            self.pending = None
            out += item.out()
        return out

    def close(self) -> bytes:
        """End of the stream (or a terminator): every run released, the pending event sent."""
        p, self.pending = self.pending, None
        before = b""
        for key, run in list(self.runs.items()):
            if p is not None and key in p.keys:
                self._set(p, key, run.finish())
                self._note(run)
                self._close(key)
            else:
                before += self._tail_event(key, run)
        return before + (p.out() if p is not None else b"")

    def counts_restored(self) -> tuple[int, int]:
        live = [r.restorer for r in self.runs.values() if r.restorer is not None]
        return (self.restored + sum(r.restored for r in live),
                self.unknown + sum(r.unknown for r in live))
