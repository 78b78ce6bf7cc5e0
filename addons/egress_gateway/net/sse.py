"""Server-sent events framing: the one SSE parser, for streams and for buffered bodies.

`SSEParser` is fed arbitrary chunks (``\\n``, ``\\r\\n`` or ``\\r`` line ends; comments;
multi-line ``data``; ``event``/``id``/``retry``) and yields complete `Event`s, each keeping its
bytes as received so that an event nothing changed in is forwarded byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass
class Event:
    """One SSE event: its lines (without line ends), the parsed fields, and its bytes as received."""

    lines: list[bytes] = field(default_factory=list)
    event: str = "message"
    data_lines: list[str] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)  # the lines and the blank line ending it
    complete: bool = False  # ended by a blank line (False: the unterminated tail of a stream)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    @property
    def only_comments(self) -> bool:
        return all(line.startswith(b":") for line in self.lines)

    @property
    def newline(self) -> bytes:
        """The line end this event was written with (``\\n`` when it has none)."""
        r = bytes(self.received)
        if b"\r\n" in r:
            return b"\r\n"
        return b"\r" if b"\r" in r and b"\n" not in r else b"\n"

    def raw(self) -> bytes:
        """The event's bytes exactly as received."""
        if self.received:
            return bytes(self.received)
        return b"".join(line + b"\n" for line in self.lines) + b"\n"

    def with_data(self, data: str) -> bytes:
        """The event with new ``data`` at its first data line's place (other lines kept in
        order, its line ends kept; an unterminated tail stays unterminated)."""
        nl = self.newline
        out: list[bytes] = []
        placed = False
        new = [b"data: " + d.encode() for d in data.split("\n")]
        for line in self.lines:
            if line.split(b":", 1)[0] == b"data":
                if not placed:
                    out += new
                    placed = True
                continue
            out.append(line)
        if not placed:
            out += new
        body = nl.join(out)
        if self.complete or not self.received:
            return body + nl + nl
        return body + (nl if self.received.endswith((b"\n", b"\r")) else b"")


class SSEParser:
    """Incremental SSE parser: `feed(chunk)` returns the events completed by that chunk."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = b""
        self._current = Event()
        self._skip_lf = False
        self.max_line = max_line

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk:
            # the previous chunk ended in \r: a \n starting this one belongs to that line end
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
            self._skip_lf = False
        self._buf += chunk
        events: list[Event] = []
        pos = 0
        while True:
            m = _LINE.search(self._buf, pos)
            if m is None:
                break
            line = self._buf[pos:m.start()]
            self._current.received += self._buf[pos:m.end()]
            pos = m.end()
            if m.group() == b"\r" and pos == len(self._buf):
                self._skip_lf = True
            if line == b"":
                if self._current.lines:
                    self._current.complete = True
                    events.append(self._current)
                    self._current = Event()
                else:  # blank lines between events belong to no event
                    self._current.received.clear()
                continue
            self._add_line(line)
        self._buf = self._buf[pos:]
        if len(self._buf) > self.max_line:
            raise ValueError(f"SSE line longer than {self.max_line} bytes")
        return events

    def _add_line(self, line: bytes) -> None:
        ev = self._current
        ev.lines.append(line)
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            ev.data_lines.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            ev.event = value.decode("utf-8", "replace")

    def close(self) -> Event | None:
        """At the end of the stream: the unfinished event (incl. an unterminated last line)."""
        if self._buf:
            self._current.received += self._buf
            self._add_line(self._buf.rstrip(b"\r"))
            self._buf = b""
        ev, self._current = self._current, Event()
        return ev if ev.lines else None


def side_values(event: Event, keep_data: bool = False) -> list:
    """The text of an event's lines other than ``data``: comments (after the colon) and the
    values of ``id``, ``event``, ``retry`` and unknown fields (which parsers ignore but which
    reach whoever reads the raw stream). With `keep_data`, one entry per line (None for data
    lines)."""
    out: list = []
    for line in event.lines:
        name, _, value = line.partition(b":")
        if name == b"data":
            if keep_data:
                out.append(None)
            continue
        text = (value if line.startswith(b":") or value else name).decode("utf-8", "replace")
        out.append(text[1:] if text.startswith(" ") else text)
    return out


def parse_all(data: bytes) -> list[Event]:
    """Every event of a whole (buffered) body, the unterminated tail included."""
    parser = SSEParser(max_line=len(data) + 1)
    events = parser.feed(data)
    tail = parser.close()
    return events + ([tail] if tail is not None else [])
