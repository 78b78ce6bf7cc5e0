"""Response scrubbing: a real credential value echoed by an upstream is replaced by its placeholder.

Each real value is scrubbed in the forms computed at load: literal, percent-encoded, base64
(standard and URL-safe, padded or not), hex (either case), reversed, and spelled out with a
separator (``leak.SPELL_SEPARATORS``); each becomes the same form of the placeholder. In bodies
and streams alike (`ScrubStream` holds back a tail that could begin any of them).
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from mitmproxy import http

from egress_gateway.credentials.leak import SPELL_SEPARATORS
from egress_gateway.credentials.settings import CredentialBinding


def _forms(value: str) -> list[bytes]:
    """The scrubbed forms of `value`, in a fixed order (so a placeholder's forms line up)."""
    raw = value.encode()
    b64, url = base64.b64encode(raw), base64.urlsafe_b64encode(raw)
    out = [raw, quote(value, safe="").encode(), b64, b64.rstrip(b"="), url, url.rstrip(b"="),
           raw.hex().encode(), raw.hex().upper().encode(), value[::-1].encode()]
    out += [sep.join(value).encode() for sep in SPELL_SEPARATORS]
    return out


def replacements(bindings: list[CredentialBinding]) -> list[tuple[bytes, bytes]]:
    """(real form, placeholder) pairs to scrub from responses, longest first."""
    out: dict[bytes, bytes] = {}
    for b in bindings:
        value, ph = b.secret.reveal(), b.placeholder
        for real, fake in zip(_forms(value), _forms(ph), strict=True):
            if len(real) >= 6:
                out.setdefault(real, fake)
    return sorted(out.items(), key=lambda kv: len(kv[0]), reverse=True)


def scrub(data: bytes, pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    """`data` with every real form replaced by its placeholder form, and how many were."""
    n = 0
    for real, ph in pairs:
        if real in data:
            n += data.count(real)
            data = data.replace(real, ph)
    return data, n


def scrub_headers(headers: http.Headers, pairs: list[tuple[bytes, bytes]]) -> int:
    """Replace real values in header values by their placeholders (in place); how many were."""
    n = 0
    fields = []
    for name, value in headers.fields:
        new, k = scrub(value, pairs)
        n += k
        fields.append((name, new))
    if n:
        headers.fields = tuple(fields)
    return n


class ScrubStream:
    """Wraps a response's ``stream`` (True or a callable) and scrubs real values from it.

    Scrubs the bytes as the upstream sent them, *before* the inner callable (the redactor may
    re-cut text deltas at word boundaries, which would split a spelled-out value across
    events). Holds back only a tail that could begin a real value (usually nothing), and
    returns a list of chunks (possibly empty) rather than ``b""``, which would end a chunked
    response early.
    """

    def __init__(self, inner, pairs: list[tuple[bytes, bytes]], on_hit=None) -> None:
        self.inner = inner
        self.pairs = pairs
        self.buf = b""
        self.on_hit = on_hit

    def _held(self, data: bytes) -> int:
        longest = 0
        for real, _ in self.pairs:
            for k in range(min(len(real) - 1, len(data)), longest, -1):
                if data.endswith(real[:k]):
                    longest = k
                    break
        return longest

    def _inner(self, data: bytes) -> list[bytes]:
        if not callable(self.inner):
            return [data] if data else []
        out = self.inner(data)
        parts = [out] if isinstance(out, bytes) else list(out)
        return [p for p in parts if p]

    def __call__(self, chunk: bytes):
        data, n = scrub(self.buf + chunk, self.pairs)
        if n and self.on_hit:
            try:
                self.on_hit(n)
            except Exception:  # a note must never break the stream
                pass
        if not chunk:  # end of the stream: flush everything, then end the inner stream
            self.buf = b""
            out = self._inner(data) if data else []
            return out + (self._inner(b"") if callable(self.inner) else [])
        hold = self._held(data)
        emit, self.buf = (data[:-hold], data[-hold:]) if hold else (data, b"")
        return self._inner(emit) if emit else []
