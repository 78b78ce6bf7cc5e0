"""Credential injection with a leak guard: the agent holds a placeholder, never the real secret.

The policy's ``credentials`` section binds a secret to a destination (host glob, optional
methods and path glob) and says how it is presented (a header: raw, ``Bearer`` or ``Basic``;
or a query parameter). The value comes from an environment variable or a file, read when the
policy is loaded: a missing variable or file is a policy error naming the entry, so start-up
stops and a hot reload keeps the last good policy (`core.Core` handles `PolicyError`).

Where the real value lives
--------------------------
Only in three places: the validated policy object (a `Secret` with a masked ``repr``), a
throw-away copy of the request built at the moment its head is handed to the upstream
connection layer, and that layer's own state (the HTTP/1 client keeps the copy until the
request is done; the HTTP/2 client's HPACK table holds the encoded header). It is never
written into ``flow.request``.

Why: mitmweb's ``View`` addon runs after the script's hooks and publishes the live flow
objects; ``GET /flows`` and the flow's content endpoints read them at any moment, while the
upstream is still answering. Recording, audit and flow comments read the flow too. So the
`request` hook only *marks* the request (``_MARKS``, a weak map from the Request object to its
binding, no value). `install_wire_injection` wraps mitmproxy's ``HttpLayer.event_to_child``,
the one place where an HTTP stream's ``RequestHeaders`` event is handed to an upstream
connection layer (HTTP/1, HTTP/2 and HTTP/3 clients alike). For a marked request the event is
replaced by one carrying a *copy* of the request with the real value set; the flow keeps the
placeholder. Before substituting, the copy is checked again: the request must still match the
binding (host, method, path: a mitmweb user may have edited an intercepted flow), the server
connection must be to that host, over TLS unless the binding allows plain HTTP, and
``proxy_debug`` (which logs raw bytes sent) must be off. Anything unexpected: the placeholder
goes out unchanged (the upstream answers 401; the secret stays home).

Leak guard
----------
Every placeholder and real value, in the request's headers (names and values), URL (host,
raw and percent-decoded path and query) and body (raw and, for gzip/deflate/br/zstd,
decoded), literally, percent-encoded, base64-encoded at any alignment, any case, refuses a
request to a destination it is not bound to: ``403 credential_leak``, plus an ``alert`` audit
line. A response that echoes a real value gets it replaced by the placeholder (headers at
``responseheaders``, buffered bodies at ``response`` before any other response hook, streamed
bodies of injected flows in the stream callable).

Two addons: `CredentialGuard` early in the bundle (leak check before approvals hold a flow,
response scrubbing before anything reads the response) and `CredentialInjector` last before
the recorder (final leak check and marking, after approvals and redaction changed the
request; wrapping of response streams other addons set up).
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import logging
import os
import re
import weakref
import zlib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, quote_plus, unquote, unquote_plus, unquote_to_bytes

from mitmproxy import ctx, http
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from egress_gateway.flowstate import refuse
from egress_gateway.net import hosts
from egress_gateway.recording import audit

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 8
BODY_LIMIT = 32 * 1024 * 1024  # decoded bytes the leak guard inspects before refusing
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "proxy-authorization", "proxy-connection", "content-encoding",
})


# --- settings ---------------------------------------------------------------------------------
class Secret:
    """A credential value: ``repr``/``str`` never show it; `reveal` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a credential secret is not serialisable")


class _CredModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(b: CredentialBinding) -> str:
    if b.env is not None:
        value = os.environ.get(b.env)
        if value is None:
            raise ValueError(f"credential {b.name!r}: environment variable {b.env} is not set")
        where = f"environment variable {b.env}"
    else:
        path = Path(b.file or "").expanduser()
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ValueError(f"credential {b.name!r}: cannot read file {path}: {reason}") from None
        value = value.rstrip("\r\n")
        where = f"file {path}"
    if not value:
        raise ValueError(f"credential {b.name!r}: {where} is empty")
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"credential {b.name!r}: the value in {where} is shorter than "
                         f"{MIN_SECRET_LENGTH} characters (too short to guard against leaks)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isprintable():
        raise ValueError(f"credential {b.name!r}: the value in {where} contains control or "
                         "non-printable characters")
    if b.header is not None and b.format != "basic" and value != value.strip():
        raise ValueError(f"credential {b.name!r}: the value in {where} has surrounding whitespace")
    low, ph = value.lower(), b.placeholder.lower()
    if ph in low or low in ph:
        raise ValueError(f"credential {b.name!r}: the placeholder and the value in {where} overlap; "
                         "choose a placeholder that shares nothing with the secret")
    if b.format == "basic" and ":" not in value:
        raise ValueError(f"credential {b.name!r}: format basic needs 'user:password' in {where}")
    return value


class CredentialBinding(_CredModel):
    """A secret bound to a destination, presented by the gateway in place of a placeholder."""

    name: str = Field(description="Unique name of the entry (letters, digits, '_', '.', '-'); "
                      "appears in logs, audit lines and refusals, never the value.")
    host: str = Field(description="Destination host: exact or '*.domain' (any depth below).")
    methods: list[str] | None = Field(
        None, min_length=1, description="HTTP methods (default: any).")
    path: str | None = Field(
        None, description="Path glob (fnmatch; '*' also matches '/'), matched against the path "
        "without the query, e.g. '/v1/*'. Default: any path.")
    header: str | None = Field(None, description="Header that carries the credential, e.g. "
                               "x-api-key or Authorization. Give exactly one of header/query.")
    query: str | None = Field(None, description="Query parameter that carries the credential.")
    format: Literal["raw", "bearer", "basic"] = Field(
        "raw", description="How a header presents the value: raw, 'Bearer <value>', or "
        "'Basic base64(<value>)' where the value is 'user:password'.")
    env: str | None = Field(None, description="Environment variable holding the value. Give "
                            "exactly one of env/file. Missing at load: the policy is refused.")
    file: str | None = Field(None, description="Absolute path of a file holding the value "
                             "(trailing newline stripped), read when the policy is loaded.")
    placeholder: str = Field(description="What the agent is configured with instead of the "
                             "secret, e.g. 'gateway-placeholder-anthropic' (8-256 visible ASCII "
                             "characters). Seen anywhere else: refused as a leak.")
    allow_plain_http: bool = Field(False, description="Also inject over plain HTTP (default: "
                                   "only over TLS to the upstream; plain HTTP is refused).")

    _secret: Secret | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _v_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '_', '.', '-' (at most 64)")
        return v

    @field_validator("host")
    @classmethod
    def _v_host(cls, v: str) -> str:
        return hosts.validate_host_glob(v)

    @field_validator("methods")
    @classmethod
    def _v_methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = []
        for m in v:
            if not _TOKEN.match(m):
                raise ValueError(f"{m!r} is not an HTTP method")
            out.append(m.upper())
        return out

    @field_validator("path")
    @classmethod
    def _v_path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r}: a path glob starts with '/'")
        return v

    @field_validator("header")
    @classmethod
    def _v_header(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not _TOKEN.match(v):
            raise ValueError(f"{v!r} is not a header name")
        if v.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"{v!r} cannot carry a credential")
        return v

    @field_validator("query")
    @classmethod
    def _v_query(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "&=#? ")):
            raise ValueError(f"{v!r} is not a query parameter name")
        return v

    @field_validator("env")
    @classmethod
    def _v_env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @field_validator("file")
    @classmethod
    def _v_file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_absolute():
            raise ValueError(f"{v!r}: give an absolute path")
        return v

    @field_validator("placeholder")
    @classmethod
    def _v_placeholder(cls, v: str) -> str:
        if not 8 <= len(v) <= 256 or any(not 0x21 <= ord(c) <= 0x7E for c in v):
            raise ValueError("a placeholder is 8-256 visible ASCII characters (no spaces)")
        return v

    @model_validator(mode="after")
    def _v_entry(self) -> CredentialBinding:
        if (self.header is None) == (self.query is None):
            raise ValueError(f"credential {self.name!r}: give exactly one of 'header' or 'query'")
        if self.query is not None and self.format != "raw":
            raise ValueError(f"credential {self.name!r}: a query parameter takes format raw")
        if (self.env is None) == (self.file is None):
            raise ValueError(f"credential {self.name!r}: give exactly one of 'env' or 'file'")
        # The value is read here, at load time: a missing one refuses the whole policy.
        self._secret = Secret(_read_secret(self))
        return self

    # --- behaviour ------------------------------------------------------------------------
    @property
    def secret(self) -> Secret:
        assert self._secret is not None
        return self._secret

    def matches(self, request: http.Request) -> bool:
        """Whether this binding applies to `request` (host, method, path without query)."""
        try:
            host = hosts.normalize_host(request.host)
        except Exception:
            return False
        if not hosts.host_matches(self.host, host):
            return False
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        if self.path is not None:
            path = request.path.split("?", 1)[0]
            if not fnmatch.fnmatchcase(path, self.path):
                return False
        return True

    def carried_by(self, request: http.Request) -> bool:
        """Whether the agent sent this binding's header (or query parameter): what is replaced."""
        if self.header is not None:
            return self.header in request.headers
        return self.query in request.query

    def presented(self) -> str:
        """The header value or query value the upstream receives."""
        value = self.secret.reveal()
        if self.format == "bearer":
            return f"Bearer {value}"
        if self.format == "basic":
            return "Basic " + base64.b64encode(value.encode()).decode()
        return value

    def apply(self, request: http.Request) -> None:
        """Set the real value on `request` (a throw-away copy, never the flow's request)."""
        if self.header is not None:
            request.headers[self.header] = self.presented()
        else:
            request.query[self.query] = self.presented()


def _unique_names(v: list[CredentialBinding]) -> list[CredentialBinding]:
    seen: set[str] = set()
    for b in v:
        if b.name in seen:
            raise ValueError(f"credential name {b.name!r} is used twice")
        seen.add(b.name)
    return v


Credentials = Annotated[list[CredentialBinding], AfterValidator(_unique_names)]


def bindings_of(policy) -> list[CredentialBinding]:
    return list(getattr(policy, "credentials", None) or ())


# --- leak detection ---------------------------------------------------------------------------
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


def variants(value: str) -> set[bytes]:
    """Forms in which `value` may travel: literal, percent-encoded, base64 (any alignment)."""
    raw = value.encode()
    out = {raw, quote(value, safe="").encode(), quote_plus(value, safe="").encode()}
    out |= _b64_fragments(raw)
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


class TooLarge(ValueError):
    pass


class BadEncoding(ValueError):
    pass


def bounded_decode(data: bytes, content_encoding: str | None, limit: int = BODY_LIMIT) -> bytes:
    """Decode a body (gzip, deflate, br, zstd; applied in order) without exceeding `limit`."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed([c for c in codings if c != "identity"]):
        if coding in ("gzip", "x-gzip", "deflate"):
            wbits = 31 if coding != "deflate" else (15 if data[:1] and data[0] & 0x0F == 8 else -15)
            out, rest = bytearray(), data
            while rest:
                d = zlib.decompressobj(wbits)
                try:
                    out += d.decompress(rest, limit + 1 - len(out))
                except zlib.error as e:
                    raise BadEncoding(f"corrupt {coding} body: {e}") from None
                if len(out) > limit or d.unconsumed_tail:
                    raise TooLarge(f"decoded body exceeds {limit} bytes")
                if not d.eof:
                    raise BadEncoding(f"truncated {coding} body")
                rest = d.unused_data if wbits == 31 else b""
            data = bytes(out)
        elif coding == "br":
            import brotli

            dec = brotli.Decompressor()
            try:
                out_b = dec.process(data, output_buffer_limit=limit + 1)
            except brotli.error as e:
                raise BadEncoding(f"corrupt br body: {e}") from None
            if len(out_b) > limit or not dec.is_finished():
                raise TooLarge(f"decoded body exceeds {limit} bytes (or is truncated)")
            data = out_b
        elif coding == "zstd":
            try:
                from compression import zstd  # type: ignore[import-not-found]
            except ImportError:
                from backports import zstd  # type: ignore[no-redef]
            out, rest = bytearray(), data
            while rest:
                d = zstd.ZstdDecompressor()
                try:
                    out += d.decompress(rest, limit + 1 - len(out))
                except zstd.ZstdError as e:
                    raise BadEncoding(f"corrupt zstd body: {e}") from None
                if len(out) > limit or not d.needs_input and not d.eof:
                    raise TooLarge(f"decoded body exceeds {limit} bytes")
                if not d.eof:
                    raise BadEncoding("truncated zstd body")
                rest = d.unused_data
            data = bytes(out)
        else:
            raise BadEncoding(f"unsupported content encoding {coding!r}")
    return data


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
        enc = request.headers.get("content-encoding")
        if enc and enc.strip().lower() != "identity":
            yield "the body", body
            body = bounded_decode(body, enc)  # raises: the caller refuses
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


# --- response scrubbing -----------------------------------------------------------------------
def replacements(bindings: list[CredentialBinding]) -> list[tuple[bytes, bytes]]:
    """(real form, placeholder) pairs to scrub from responses, longest first."""
    out: dict[bytes, bytes] = {}
    for b in bindings:
        value, ph = b.secret.reveal(), b.placeholder
        out[value.encode()] = ph.encode()
        out[quote(value, safe="").encode()] = quote(ph, safe="").encode()
        if b.format == "basic":
            out[base64.b64encode(value.encode())] = base64.b64encode(ph.encode())
    return sorted(out.items(), key=lambda kv: len(kv[0]), reverse=True)


def scrub(data: bytes, pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    n = 0
    for real, ph in pairs:
        if real in data:
            n += data.count(real)
            data = data.replace(real, ph)
    return data, n


class ScrubStream:
    """Wraps a response's ``stream`` (True or a callable) and scrubs real values from it.

    Holds back only a tail that could begin a real value (usually nothing), and returns a list
    of chunks (possibly empty) rather than ``b""``, which would end a chunked response early.
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

    def __call__(self, chunk: bytes):
        out = self.inner(chunk) if callable(self.inner) else chunk
        parts = [out] if isinstance(out, bytes) else list(out)
        data, n = scrub(self.buf + b"".join(parts), self.pairs)
        if n and self.on_hit:
            try:
                self.on_hit(n)
            except Exception:  # a note must never break the stream
                pass
        if not chunk:  # end of the stream: flush everything
            self.buf = b""
            return [data] if data else []
        hold = self._held(data)
        emit, self.buf = (data[:-hold], data[-hold:]) if hold else (data, b"")
        return [emit] if emit else []


# --- injection on the wire --------------------------------------------------------------------
@dataclasses.dataclass
class _Mark:
    bindings: tuple[CredentialBinding, ...]
    fingerprint: tuple
    meta: dict  # flow.metadata["gateway"]["credential"]: updated when injected


_MARKS: weakref.WeakKeyDictionary[http.Request, _Mark] = weakref.WeakKeyDictionary()
_INSTALLED = "_egress_gateway_credentials"


def _fingerprint(r: http.Request) -> tuple:
    return (r.scheme, hosts.normalize_host(r.host), r.port, r.method.upper(), r.path)


def _proxy_debug() -> bool:
    """mitmproxy's proxy_debug: when on, the proxy logs every byte it sends (a real value too)."""
    try:
        return bool(ctx.options.proxy_debug)
    except (AttributeError, KeyError):
        return False


def mark(request: http.Request, bindings: list[CredentialBinding], meta: dict) -> None:
    """Have the `bindings`' values injected when `request` goes on the wire (and only then)."""
    _MARKS[request] = _Mark(tuple(bindings), _fingerprint(request), meta)


def unmark(request: http.Request) -> None:
    _MARKS.pop(request, None)


def materialise(request: http.Request, server) -> http.Request | None:
    """For a marked request: a copy with the real value (or None: send the request as is)."""
    m = _MARKS.pop(request, None)
    if m is None:
        return None
    name = ", ".join(b.name for b in m.bindings)
    try:
        if _fingerprint(request) != m.fingerprint or \
                not all(b.matches(request) and b.carried_by(request) for b in m.bindings):
            log.warning(f"credential {name!r}: the request changed after it was checked; "
                        "sent without the credential")
            return None
        address = getattr(server, "address", None)
        if not address or hosts.normalize_host(str(address[0])) != m.fingerprint[1]:
            log.warning(f"credential {name!r}: the upstream connection is not to the bound "
                        "host; sent without the credential")
            return None
        if not getattr(server, "tls", False) and not all(b.allow_plain_http for b in m.bindings):
            log.warning(f"credential {name!r}: the upstream connection is not TLS; "
                        "sent without the credential")
            return None
        if _proxy_debug():
            log.error(f"credential {name!r}: proxy_debug logs raw traffic; sent without the "
                      "credential")
            return None
        copy = request.copy()
        for b in m.bindings:
            b.apply(copy)
        m.meta["injected"] = True
        return copy
    except Exception:
        log.exception(f"credential {name!r}: injection failed; sent without the credential")
        return None


def install_wire_injection() -> None:
    """Wrap ``HttpLayer.event_to_child`` once per process (idempotent; survives reloads)."""
    from mitmproxy.proxy.layers import http as layers_http

    layer_cls = layers_http.HttpLayer
    if getattr(layer_cls.event_to_child, _INSTALLED, False):
        return
    original = layer_cls.event_to_child
    stream_cls = layers_http.HttpStream
    request_headers = layers_http.RequestHeaders

    def event_to_child(self, child, event):
        if _MARKS and type(event) is request_headers and not isinstance(child, stream_cls):
            server = getattr(getattr(child, "context", None), "server", None)
            copy = materialise(event.request, server)
            if copy is not None:
                event = dataclasses.replace(event, request=copy)
        return original(self, child, event)

    setattr(event_to_child, _INSTALLED, True)
    event_to_child.__wrapped__ = original
    layer_cls.event_to_child = event_to_child


# --- addons -----------------------------------------------------------------------------------
class _Base:
    def __init__(self, core) -> None:
        self.core = core
        self._scanner: tuple[object, Scanner, list] | None = None

    def _state(self) -> tuple[list[CredentialBinding], Scanner | None, list]:
        policy = self.core.policy
        if policy is None:
            raise RuntimeError("no policy loaded")
        bindings = bindings_of(policy)
        if not bindings:
            return [], None, []
        if self._scanner is None or self._scanner[0] is not policy:
            self._scanner = (policy, Scanner(bindings), replacements(bindings))
        return bindings, self._scanner[1], self._scanner[2]

    def _fail(self, flow: http.HTTPFlow, where: str) -> None:
        log.exception(f"credentials: internal error in {where}; refusing the flow")
        refuse(flow, "internal_error", f"the gateway failed while checking credentials ({where})")

    def _leak_check(self, flow: http.HTTPFlow, *, body: bool) -> bool:
        """Refuse `flow` if it leaks a credential; True if it was refused."""
        bindings, scanner, _ = self._state()
        if scanner is None:
            return False
        try:
            leak = find_leak(flow.request, bindings, scanner, body=body)
        except TooLarge as e:
            refuse(flow, "too_large", f"the request body cannot be checked for credential leaks: {e}")
            return True
        except BadEncoding as e:
            refuse(flow, "unsupported_content",
                   f"the request body cannot be checked for credential leaks: {e}")
            return True
        if leak is None:
            return False
        refuse(flow, "credential_leak", leak.reason(), credential=leak.name, where=leak.where)
        meta = flow.metadata.setdefault("gateway", {})
        meta["credential"] = {"name": leak.name, "alert": "credential_leak",
                              "kind": leak.needle.kind, "where": leak.where}
        log.warning(f"credentials: ALERT credential_leak: {leak.needle.kind} of "
                    f"{leak.name!r} in {leak.where} of a request to "
                    f"{hosts.normalize_host(flow.request.host)}; refused")
        self._audit_alert(flow, leak)
        return True

    def _audit_alert(self, flow: http.HTTPFlow, leak: Leak) -> None:
        try:
            self.core.audit.write(audit.alert_record(
                flow, "credential_leak", show_path=leak.where != "the URL",
                credential=leak.name, value=leak.needle.kind, where=leak.where))
        except Exception:
            log.exception("credentials: could not audit a credential leak")

    def _scrub_headers(self, flow: http.HTTPFlow, pairs) -> int:
        n = 0
        headers = flow.response.headers
        fields = []
        for name, value in headers.fields:
            new, k = scrub(value, pairs)
            n += k
            fields.append((name, new))
        if n:
            headers.fields = tuple(fields)
        return n

    def _note_scrub(self, flow: http.HTTPFlow, n: int, where: str) -> None:
        meta = flow.metadata.setdefault("gateway", {}).setdefault("credential_echo", {})
        meta[where] = meta.get(where, 0) + n
        log.warning(f"credentials: a response from {hosts.normalize_host(flow.request.host)} "
                    f"echoed a real credential value ({n}x in {where}); replaced by the placeholder")


class CredentialGuard(_Base):
    """Early: refuse leaks before approvals/redaction see the flow; scrub responses first."""

    name = "egress_gateway_credential_guard"

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        try:
            _, scanner, _ = self._state()
            if scanner is None:
                return
            self._leak_check(flow, body=False)
        except Exception:
            self._fail(flow, "http_connect")

    def _scrub_request(self, flow: http.HTTPFlow, body: bool) -> None:
        """Replace real values the agent itself sent by their placeholders, in the flow object
        (mitmweb and the recorder read it): the flow never holds a real value."""
        _, _, pairs = self._state()
        if not pairs:
            return
        req = flow.request
        n = 0
        fields = []
        for name, value in req.headers.fields:
            new, k = scrub(value, pairs)
            n += k
            fields.append((name, new))
        if n:
            req.headers.fields = tuple(fields)
        path, k = scrub(req.path.encode("utf-8", "surrogateescape"), pairs)
        if k:
            req.path = path.decode("utf-8", "surrogateescape")
            n += k
        if body and req.raw_content:
            new, k = scrub(req.raw_content, pairs)
            if k:
                req.raw_content = new
                if "content-length" in req.headers and "transfer-encoding" not in req.headers:
                    req.headers["content-length"] = str(len(new))
                n += k
        if n:
            flow.metadata.setdefault("gateway", {})["credential_scrubbed"] = True
            log.warning("credentials: the agent sent a real credential value; replaced by the "
                        "placeholder in the flow")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            self._leak_check(flow, body=False)
            self._scrub_request(flow, body=False)
        except Exception:
            self._fail(flow, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response or flow.error or not flow.live:
                if flow.response and flow.request.raw_content:
                    self._scrub_request(flow, body=True)  # refused earlier: still keep it clean
                return
            self._leak_check(flow, body=True)
            self._scrub_request(flow, body=True)
        except Exception:
            self._fail(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        try:
            _, _, pairs = self._state()
            if pairs:
                n = self._scrub_headers(flow, pairs)
                if n:
                    self._note_scrub(flow, n, "headers")
        except Exception:
            log.exception("credentials: internal error in responseheaders; dropping the response")
            flow.response = None
            refuse(flow, "internal_error", "the gateway failed while checking the response")

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flow.response.stream:
            return
        try:
            _, _, pairs = self._state()
            if not pairs:
                return
            n = self._scrub_headers(flow, pairs)
            if n:
                self._note_scrub(flow, n, "headers")
            raw = flow.response.raw_content
            if not raw:
                return
            enc = flow.response.headers.get("content-encoding")
            encoded = bool(enc and enc.strip().lower() != "identity")
            try:
                body = bounded_decode(raw, enc) if encoded else raw
            except (TooLarge, BadEncoding):
                if flow.metadata.get("gateway", {}).get("credential", {}).get("injected"):
                    raise  # a response we cannot inspect, from where the secret went: refuse
                body, encoded = raw, False
            new, n = scrub(body, pairs)
            if n:
                if encoded:
                    del flow.response.headers["content-encoding"]
                flow.response.content = new
                self._note_scrub(flow, n, "body")
        except Exception:
            log.exception("credentials: internal error in response; refusing the response")
            refuse(flow, "internal_error", "the gateway failed while checking the response")


    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A credential value in a WebSocket message the agent sends to a destination it is not
        bound to: the message is dropped and audited as an alert (the agent never holds real
        values, but a placeholder names which credential it is trying to move)."""
        try:
            if flow.websocket is None or not flow.websocket.messages:
                return
            msg = flow.websocket.messages[-1]
            if not msg.from_client or msg.dropped:
                return
            bindings, scanner, _ = self._state()
            if scanner is None:
                return
            allowed: set[str] = set()
            for b in bindings:
                if b.matches(flow.request):
                    allowed |= {b.placeholder, b.secret.reveal()}
            needle = scanner.find(msg.content, allowed)
            if needle is None:
                return
            msg.drop()
            leak = Leak(needle, "a WebSocket message")
            meta = flow.metadata.setdefault("gateway", {})
            meta["credential"] = {"name": leak.name, "alert": "credential_leak",
                                  "kind": needle.kind, "where": leak.where}
            log.warning(f"credentials: ALERT credential_leak: {needle.kind} of {leak.name!r} in a "
                        f"WebSocket message to {hosts.normalize_host(flow.request.host)}; dropped")
            self._audit_alert(flow, leak)
        except Exception:
            log.exception("credentials: internal error in websocket_message; dropping the message")
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()


class CredentialInjector(_Base):
    """Late (after approvals and redaction): final leak check, then mark for wire injection."""

    name = "egress_gateway_credentials"

    def load(self, loader) -> None:
        install_wire_injection()

    def configure(self, updated: set[str]) -> None:
        if "proxy_debug" in updated and _proxy_debug():
            log.warning("credentials: proxy_debug logs raw traffic; credential injection is "
                        "disabled while it is on (bound requests are refused)")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            bindings, _, _ = self._state()
            if flow.request.stream and any(b.matches(flow.request) for b in bindings):
                refuse(flow, "too_large", "the request body is streamed (stream_large_bodies); "
                       "credentials are injected only into requests inspected in full")
        except Exception:
            self._fail(flow, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        unmark(flow.request)
        if flow.response or flow.error or not flow.live:
            return
        try:
            bindings, _, _ = self._state()
            if not bindings or self._leak_check(flow, body=True):
                return
            matched = [b for b in bindings if b.matches(flow.request) and b.carried_by(flow.request)]
            if not matched:
                return
            name = ", ".join(b.name for b in matched)
            if flow.request.scheme != "https" and not all(b.allow_plain_http for b in matched):
                refuse(flow, "blocked", f"credential {name!r} is only sent over HTTPS",
                       credential=name)
                return
            if _proxy_debug():
                refuse(flow, "internal_error", f"credential {name!r} is not injected "
                       "while proxy_debug logs raw traffic", credential=name)
                return
            meta = flow.metadata.setdefault("gateway", {})
            meta["credential"] = {"name": name, "injected": False}
            mark(flow.request, matched, meta["credential"])
        except Exception:
            unmark(flow.request)
            self._fail(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or not flow.response.stream:
            return
        try:
            cred = flow.metadata.get("gateway", {}).get("credential") or {}
            if not cred.get("injected"):
                return
            _, _, pairs = self._state()
            if pairs:
                flow.response.stream = ScrubStream(
                    flow.response.stream, pairs,
                    on_hit=lambda n: self._note_scrub(flow, n, "stream"))
        except Exception:
            log.exception("credentials: internal error in responseheaders; killing the flow")
            flow.kill()

    def error(self, flow: http.HTTPFlow) -> None:
        unmark(flow.request)
