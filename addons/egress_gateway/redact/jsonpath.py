"""JSON path syntax for scoping redaction to parts of a JSON body.

A path names nodes of a JSON document; a node that matches is scanned with everything below it.

    messages[*].content        the `content` of every element of the top-level `messages` list
    messages[0].content        only the first element's
    content[*].text            `text` of every element of `content`
    *.text                     `text` under any top-level key
    **.text                    `text` at any depth (``**`` = zero or more levels, keys or indices)
    a["key.with.dots"]         a quoted key
    $                          the whole document ($ may also prefix any path: $.messages)

Segments: ``name`` (letters, digits, ``_``, ``-``), ``*`` (any key of an object), ``[*]`` (any
element of a list), ``[N]`` (element N), ``["..."]`` (a quoted key, JSON string escapes) and ``**``.

Matching is incremental (`Scope.child`): a walker carries a small state per node, so subtrees
that can no longer match are pruned without being looked at.

A scope may also carry *field modes* (``fields``: an ordered list of ``(path, mode)``): a string
takes the mode of the first listed path that names it or one of its ancestors (`Scope.mode`);
strings no path names take ``prose``. The modes themselves are defined in ``redact/fields.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Token kinds of a compiled path.
KEY, ANY_KEY, INDEX, ANY_INDEX, DEEP = "key", "any_key", "index", "any_index", "deep"

_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def parse_path(path: str) -> tuple[tuple[str, object], ...]:
    """Compile a path into tokens; raise ValueError naming the problem."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("empty JSON path")
    s = path.strip()
    tokens: list[tuple[str, object]] = []
    i = 0
    if s.startswith("$"):
        i = 1
        if i < len(s) and s[i] not in ".[":
            raise ValueError(f"JSON path {path!r}: '$' must be followed by '.' or '['")
    first = i == 0
    while i < len(s):
        c = s[i]
        if c == "[":
            end = s.find("]", i)
            if s.startswith('["', i):
                m = _QUOTED.match(s, i + 1)
                if not m or not s.startswith("]", m.end()):
                    raise ValueError(f"JSON path {path!r}: unterminated quoted key at {i}")
                try:
                    tokens.append((KEY, json.loads(m.group())))
                except ValueError:
                    raise ValueError(f"JSON path {path!r}: bad quoted key at {i}") from None
                i = m.end() + 1
            elif end < 0:
                raise ValueError(f"JSON path {path!r}: missing ']' after position {i}")
            else:
                inner = s[i + 1 : end].strip()
                if inner == "*":
                    tokens.append((ANY_INDEX, None))
                elif inner.isdigit():
                    tokens.append((INDEX, int(inner)))
                else:
                    raise ValueError(
                        f"JSON path {path!r}: [{inner}] must be [*], [N] or [\"key\"]"
                    )
                i = end + 1
            first = False
            continue
        if c == ".":
            i += 1
        elif not first:
            raise ValueError(f"JSON path {path!r}: expected '.' or '[' at position {i}")
        first = False
        if s.startswith("**", i):
            tokens.append((DEEP, None))
            i += 2
        elif s.startswith("*", i):
            tokens.append((ANY_KEY, None))
            i += 1
        else:
            m = _NAME.match(s, i)
            if not m:
                raise ValueError(f"JSON path {path!r}: expected a key name at position {i}")
            tokens.append((KEY, m.group()))
            i = m.end()
        if i < len(s) and s[i] not in ".[":
            raise ValueError(f"JSON path {path!r}: unexpected {s[i]!r} at position {i}")
    return tuple(tokens)


def _matches(token: tuple[str, object], seg: str | int) -> bool:
    kind, arg = token
    if isinstance(seg, str):
        return kind == ANY_KEY or (kind == KEY and arg == seg)
    return kind == ANY_INDEX or (kind == INDEX and arg == seg)


@dataclass(frozen=True, slots=True)
class State:
    """Where a node stands: `selected` (scan it and all below), `skipped` (prune it), or still
    undecided with the positions reached in each scan / skip pattern; `mode` is the index of the
    field path deciding its mode so far (-1: none) and `fields` the positions reached in the field
    paths that could still override it."""

    selected: bool
    skipped: bool
    scan: frozenset
    skip: frozenset
    mode: int = -1
    fields: frozenset = frozenset()

    @property
    def dead(self) -> bool:
        """Nothing at or below this node can be scanned."""
        return self.skipped or (not self.selected and not self.scan)

    @property
    def final(self) -> bool:
        """Every node below has this node's state (nothing left to decide per node)."""
        return self.dead or (self.selected and not self.skip and not self.fields)


MEMO_ENTRIES = 4096  # (state, key) -> child state, per scope; cleared when full
MEMO_KEY_CHARS = 64  # longer keys are not remembered (a hostile body's keys cost no memory)


class Scope:
    """Which nodes of a JSON document to scan: `scan` paths (None: the whole document) minus
    `skip` paths."""

    def __init__(self, scan: list[str] | None = None, skip: list[str] | None = None,
                 fields: list[tuple[str, str]] | None = None) -> None:
        self.scan_paths = [parse_path(p) for p in scan] if scan is not None else None
        self.skip_paths = [parse_path(p) for p in (skip or [])]
        self.field_labels = [p for p, _ in fields or []]
        self.field_modes = [m for _, m in fields or []]
        self.field_paths = [parse_path(p) for p in self.field_labels]
        self.everything = self.scan_paths is None and not self.skip_paths and not self.field_paths
        self._children: dict[tuple[State, str | int], State] = {}  # child() memo (bounded)

    def mode(self, st: State) -> str:
        """The field mode of a node (``prose`` where no field path names it)."""
        return self.field_modes[st.mode] if st.mode >= 0 else "prose"

    def label(self, st: State) -> str:
        """The field path that decided a node's mode ('' where none did)."""
        return self.field_labels[st.mode] if st.mode >= 0 else ""

    def _fields(self, states, mode: int) -> tuple[int, frozenset]:
        """(deciding field index, positions still able to override it) after a step."""
        full = [i for i, p in states if p == len(self.field_paths[i])]
        if full and (mode < 0 or min(full) < mode):
            mode = min(full)
        if mode >= 0:
            states = {(i, p) for i, p in states if i < mode}
        return mode, frozenset(states)

    def _closure(self, patterns, states) -> set:
        out = set(states)
        todo = list(states)
        while todo:
            i, p = todo.pop()
            if p < len(patterns[i]) and patterns[i][p][0] == DEEP and (i, p + 1) not in out:
                out.add((i, p + 1))
                todo.append((i, p + 1))
        return out

    def _full(self, patterns, states) -> bool:
        return any(p == len(patterns[i]) for i, p in states)

    def _step(self, patterns, states, seg) -> frozenset:
        out = set()
        for i, p in states:
            toks = patterns[i]
            if p >= len(toks):
                continue
            if toks[p][0] == DEEP:
                out.add((i, p))
            elif _matches(toks[p], seg):
                out.add((i, p + 1))
        return frozenset(self._closure(patterns, out))

    def root(self) -> State:
        skip = frozenset(self._closure(self.skip_paths, {(i, 0) for i in range(len(self.skip_paths))}))
        if self._full(self.skip_paths, skip):
            return State(False, True, frozenset(), frozenset())
        fstart = self._closure(self.field_paths, {(i, 0) for i in range(len(self.field_paths))})
        mode, fields = self._fields(fstart, -1)
        if self.scan_paths is None:
            return State(True, False, frozenset(), skip, mode, fields)
        scan = frozenset(self._closure(self.scan_paths, {(i, 0) for i in range(len(self.scan_paths))}))
        return State(self._full(self.scan_paths, scan), False, scan, skip, mode, fields)

    def child(self, parent: State, seg: str | int) -> State:
        """The state of the child `seg` (object key or list index) of a node in `parent`
        (remembered for short keys: every message of an API has the same few)."""
        if parent.final:
            return parent  # everything below is scanned alike: no more work per node
        if isinstance(seg, str) and len(seg) > MEMO_KEY_CHARS:
            return self._child(parent, seg)
        key = (parent, seg)
        got = self._children.get(key)
        if got is None:
            got = self._child(parent, seg)
            if len(self._children) >= MEMO_ENTRIES:
                self._children.clear()
            self._children[key] = got
        return got

    def _child(self, parent: State, seg: str | int) -> State:
        skip = self._step(self.skip_paths, parent.skip, seg) if parent.skip else frozenset()
        if skip and self._full(self.skip_paths, skip):
            return State(False, True, frozenset(), frozenset())
        mode, fields = parent.mode, parent.fields
        if fields:
            mode, fields = self._fields(self._step(self.field_paths, fields, seg), mode)
        if parent.selected:
            return State(True, False, frozenset(), skip, mode, fields)
        scan = self._step(self.scan_paths, parent.scan, seg)
        return State(self._full(self.scan_paths, scan), False, scan, skip, mode, fields)

    def selects(self, path: list[str | int] | tuple) -> bool:
        """Whether the node at `path` (keys and indices from the root) is scanned."""
        st = self.root()
        for seg in path:
            st = self.child(st, seg)
        return st.selected and not st.skipped

    def mode_at(self, path: list[str | int] | tuple) -> str:
        """The field mode of the node at `path` (keys and indices from the root)."""
        st = self.root()
        for seg in path:
            st = self.child(st, seg)
        return self.mode(st)


EVERYTHING = Scope()
