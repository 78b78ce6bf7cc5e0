"""The leak scanner: every form a credential value may travel in, and where a request carries one.

Every placeholder and real value, in the request's headers (names and values), URL (host, raw
and percent-decoded path and query) and body (raw and, for gzip/deflate/br/zstd content or
transfer codings, decoded with the one bounded decoder of `net.codecs`), literally,
percent-encoded, base64-encoded at any alignment, hex-encoded, reversed, or spelled out with a
separator between its characters (``a b c``, ``a-b-c``), any case, is a leak unless the request
goes to a destination it is bound to. The forms are computed once per policy load.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus, unquote_to_bytes

from mitmproxy import http

from egress_gateway.credentials.settings import CredentialBinding
from egress_gateway.net import codecs

BODY_LIMIT = 32 * 1024 * 1024  # decoded bytes the leak guard inspects before refusing


def _b64_fragments(value: bytes) -> set[bytes]:
    """Base64 text that appears whenever `value` is base64-encoded, at any of 3 alignments."""
    out: set[bytes] = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + value)
        start = -(-8 * k // 6)  # ceil: characters that also depend on the prefix
        end = (8 * (k + len(value))) // 6  # characters entirely inside the value
        frag = enc[start:end]
        if len(frag) >= 8:
            out.add(frag)
            out.add(frag.replace(b"+", b"-").replace(b"/", b"_"))
    return out


#: Separators an agent may put between the characters of a value to spell it out.
SPELL_SEPARATORS = (" ", "-", ".", "_", ",", "\n", "\t", ", ")


def variants(value: str) -> set[bytes]:
    """Forms in which `value` may travel: literal, percent-encoded, base64 (any alignment), hex,
    reversed (and its encodings), spelled out with a separator."""
    out: set[bytes] = set()
    for v in (value, value[::-1]):
        raw = v.encode()
        out |= {raw, quote(v, safe="").encode(), quote_plus(v, safe="").encode(), raw.hex().encode()}
        out |= _b64_fragments(raw)
    if len(value) >= 6:
        out |= {sep.join(value).encode() for sep in SPELL_SEPARATORS}
    return {v for v in out if v}


@dataclasses.dataclass(frozen=True)
class Needle:
    kind: str  # "placeholder" | "secret"
    names: tuple[str, ...]  # the bindings this value belongs to
    value: str


@dataclasses.dataclass(frozen=True)
class Leak:
    needle: Needle
    where: str

    @property
    def name(self) -> str:
        return self.needle.names[0]

    def reason(self) -> str:
        what = "the placeholder" if self.needle.kind == "placeholder" else "the real value"
        names = ", ".join(repr(n) for n in self.needle.names)
        return (f"the request carries {what} of credential {names} in {self.where}, but the "
                "credential is not bound to this destination")


class Scanner:
    """All needles of a policy, compiled into one case-insensitive regex."""

    def __init__(self, bindings: list[CredentialBinding]) -> None:
        by_value: dict[tuple[str, str], list[str]] = {}
        for b in bindings:
            by_value.setdefault(("secret", b.secret.reveal()), []).append(b.name)
            by_value.setdefault(("placeholder", b.placeholder), []).append(b.name)
        self.needles = [Needle(k, tuple(n), v) for (k, v), n in by_value.items()]
        self._lookup: dict[bytes, Needle] = {}
        for needle in self.needles:
            for form in variants(needle.value):
                # a secret wins over a placeholder sharing a form (validation forbids overlap)
                self._lookup.setdefault(form.lower(), needle)
        forms = sorted(self._lookup, key=len, reverse=True)
        self._re = re.compile(b"|".join(re.escape(f) for f in forms), re.IGNORECASE) if forms \
            else None

    def find(self, data: bytes, allowed: set[str]) -> Needle | None:
        """The first needle in `data` whose value is not in `allowed`."""
        if self._re is None or not data:
            return None
        for m in self._re.finditer(data):
            needle = self._lookup.get(m.group().lower())
            if needle is not None and needle.value not in allowed:
                return needle
        return None


def request_parts(request: http.Request):
    """(where, bytes) of everything a request carries, for the leak scan."""
    yield "the URL", request.host.encode("utf-8", "replace")
    if request.authority:
        yield "the URL", request.authority.encode("utf-8", "replace")
    path = request.path
    yield "the URL", path.encode("utf-8", "replace")
    yield "the URL", unquote(path).encode("utf-8", "replace")
    yield "the URL", unquote_plus(path).encode("utf-8", "replace")
    for name, value in request.headers.fields:
        yield f"header {name.decode('latin-1')}", name + b": " + value
    for name, value in (request.trailers.fields if request.trailers else ()):
        yield f"trailer {name.decode('latin-1')}", name + b": " + value
    body = request.raw_content
    if body:
        enc = request.headers.get("content-encoding") or ""
        te = [c for c in request.headers.get("transfer-encoding", "").split(",")
              if c.strip().lower() not in ("", "chunked", "identity")]
        if te:  # "Transfer-Encoding: gzip, chunked": mitmproxy undoes only the chunking
            enc = ", ".join([c for c in [enc] if c] + te)
        if enc and enc.strip().lower() != "identity":
            yield "the body", body
            # raises codecs.TooLarge or codecs.BadEncoding: the caller refuses
            body = codecs.decode(body, codecs.parse_encodings(enc), BODY_LIMIT)
        yield "the body", body
        if b"%" in body:  # form bodies, or anything percent-encoded on purpose
            yield "the body", unquote_to_bytes(body.replace(b"+", b" "))


def find_leak(request: http.Request, bindings: list[CredentialBinding], scanner: Scanner,
              *, body: bool = True) -> Leak | None:
    """The first credential value in `request` that is not bound to its destination."""
    allowed: set[str] = set()
    for b in bindings:
        if b.matches(request):
            allowed.add(b.placeholder)
            allowed.add(b.secret.reveal())
    for where, data in request_parts(request):
        if where == "the body" and not body:
            break
        needle = scanner.find(data, allowed)
        if needle is not None:
            return Leak(needle, where)
    return None
