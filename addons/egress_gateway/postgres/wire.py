"""PostgreSQL frontend/backend protocol 3.0: message framing, parsing and building (pure).

Parsers raise `ProtocolError` (a ValueError) on anything malformed; the layer refuses then.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_STARTUP = 10_000
MAX_MESSAGE = 256 * 1024 * 1024  # larger messages are refused, never buffered

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")


class ProtocolError(ValueError):
    """Bytes that are not a valid PostgreSQL protocol message."""


@dataclass(frozen=True, slots=True)
class Message:
    """One typed message: its type byte and body (without the length)."""

    type: bytes
    body: bytes

    def encode(self) -> bytes:
        return self.type + _I32.pack(len(self.body) + 4) + self.body


def build(type_: bytes, body: bytes = b"") -> bytes:
    return type_ + _I32.pack(len(body) + 4) + body


class Framer:
    """Splits a byte stream into messages; startup packets (no type byte) while `startup`."""

    def __init__(self, startup: bool) -> None:
        self.buf = bytearray()
        self.startup = startup

    def feed(self, data: bytes) -> None:
        self.buf += data

    def __len__(self) -> int:
        return len(self.buf)

    def next_startup(self) -> bytes | None:
        """The body of the next startup packet (code + payload), or None if incomplete."""
        if len(self.buf) < 4:
            return None
        (n,) = _I32.unpack_from(self.buf, 0)
        if not 8 <= n <= MAX_STARTUP:
            raise ProtocolError(f"invalid startup packet length {n}")
        if len(self.buf) < n:
            return None
        body = bytes(self.buf[4:n])
        del self.buf[:n]
        return body

    def next(self) -> Message | None:
        """The next complete typed message, or None."""
        if len(self.buf) < 5:
            return None
        (n,) = _I32.unpack_from(self.buf, 1)
        if n < 4 or n > MAX_MESSAGE:
            raise ProtocolError(f"invalid message length {n}")
        if len(self.buf) < n + 1:
            return None
        msg = Message(bytes(self.buf[0:1]), bytes(self.buf[5:n + 1]))
        del self.buf[:n + 1]
        return msg


# --- reading fields -----------------------------------------------------------------------------
class Reader:
    """Sequential reads from a message body; ProtocolError past its end."""

    def __init__(self, body: bytes) -> None:
        self.b = body
        self.i = 0

    def i32(self) -> int:
        if self.i + 4 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _I32.unpack_from(self.b, self.i)
        self.i += 4
        return v

    def i16(self) -> int:
        if self.i + 2 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _I16.unpack_from(self.b, self.i)
        self.i += 2
        return v

    def u32(self) -> int:
        return self.i32() & 0xFFFFFFFF

    def byte(self) -> bytes:
        if self.i >= len(self.b):
            raise ProtocolError("message too short")
        v = self.b[self.i:self.i + 1]
        self.i += 1
        return v

    def cstr(self) -> bytes:
        j = self.b.find(b"\x00", self.i)
        if j < 0:
            raise ProtocolError("unterminated string")
        v = self.b[self.i:j]
        self.i = j + 1
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise ProtocolError("field runs past the end of the message")
        v = self.b[self.i:self.i + n]
        self.i += n
        return v

    def rest(self) -> bytes:
        v = self.b[self.i:]
        self.i = len(self.b)
        return v

    def end(self) -> None:
        if self.i != len(self.b):
            raise ProtocolError("trailing bytes in message")


def cstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if b"\x00" in b:
        raise ProtocolError("NUL in a string field")
    return b + b"\x00"


# --- startup ------------------------------------------------------------------------------------
def parse_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """(protocol code, parameters) of a startup packet body."""
    r = Reader(body)
    code = r.i32()
    params: dict[str, str] = {}
    if code != PROTOCOL_3:
        return code, params
    while True:
        key = r.cstr()
        if not key:
            break
        value = r.cstr()
        try:
            params[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("startup parameter is not UTF-8") from None
    r.end()
    return code, params


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST)


# --- authentication -----------------------------------------------------------------------------
def auth_request(code: int, data: bytes = b"") -> bytes:
    return build(b"R", _I32.pack(code) + data)


def parse_auth(body: bytes) -> tuple[int, bytes]:
    r = Reader(body)
    return r.i32(), r.rest()


def password_message(data: bytes) -> bytes:
    return build(b"p", data)


def sasl_initial(mechanism: str, data: bytes) -> bytes:
    return build(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    r = Reader(data)
    out = []
    while True:
        m = r.cstr()
        if not m:
            return out
        out.append(m.decode("ascii", "replace"))


def parse_password(body: bytes) -> bytes:
    """The cleartext password of a PasswordMessage."""
    r = Reader(body)
    pw = r.cstr()
    r.end()
    return pw


# --- backend messages ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Column:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


def parse_row_description(body: bytes) -> list[Column]:
    r = Reader(body)
    n = r.i16()
    if n < 0:
        raise ProtocolError("negative column count")
    cols = []
    for _ in range(n):
        name = r.cstr().decode("utf-8", "replace")
        cols.append(Column(name, r.u32(), r.i16(), r.u32(), r.i16(), r.i32(), r.i16()))
    r.end()
    return cols


def parse_data_row(body: bytes) -> list[bytes | None]:
    r = Reader(body)
    n = r.i16()
    if n < 0:
        raise ProtocolError("negative column count")
    out: list[bytes | None] = []
    for _ in range(n):
        ln = r.i32()
        if ln == -1:
            out.append(None)
        elif ln < 0:
            raise ProtocolError("invalid value length")
        else:
            out.append(r.raw(ln))
    r.end()
    return out


def data_row(values: list[bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(v)) + v)
    return build(b"D", b"".join(parts))


def parse_fields(body: bytes) -> list[tuple[bytes, bytes]]:
    """The (code, value) fields of an ErrorResponse or NoticeResponse."""
    r = Reader(body)
    out = []
    while True:
        code = r.byte()
        if code == b"\x00":
            break
        out.append((code, r.cstr()))
    r.end()
    return out


def fields(type_: bytes, items: list[tuple[bytes, bytes]]) -> bytes:
    return build(type_, b"".join(c + cstr(v) for c, v in items) + b"\x00")


def error_response(sqlstate: str, message: str, severity: str = "ERROR",
                   detail: str | None = None) -> bytes:
    items = [(b"S", severity.encode()), (b"V", severity.encode()), (b"C", sqlstate.encode()),
             (b"M", message.encode())]
    if detail:
        items.append((b"D", detail.encode()))
    return fields(b"E", items)


def ready_for_query(status: bytes) -> bytes:
    return build(b"Z", status)


def parse_notification(body: bytes) -> tuple[int, bytes, bytes]:
    r = Reader(body)
    pid = r.i32()
    channel = r.cstr()
    payload = r.cstr()
    r.end()
    return pid, channel, payload


def notification(pid: int, channel: bytes, payload: bytes) -> bytes:
    return build(b"A", _I32.pack(pid) + cstr(channel) + cstr(payload))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    r = Reader(body)
    k, v = r.cstr(), r.cstr()
    r.end()
    return k.decode("utf-8", "replace"), v.decode("utf-8", "replace")


def parameter_status(key: str, value: str) -> bytes:
    return build(b"S", cstr(key) + cstr(value))


def parse_copy_response(body: bytes) -> tuple[int, list[int]]:
    """(overall format, per-column formats) of CopyInResponse/CopyOutResponse."""
    r = Reader(body)
    overall = r.raw(1)[0]
    n = r.i16()
    cols = [r.i16() for _ in range(max(n, 0))]
    r.end()
    return overall, cols


# --- frontend messages --------------------------------------------------------------------------
def parse_query(body: bytes) -> str:
    r = Reader(body)
    q = r.cstr()
    r.end()
    return q.decode("utf-8", "replace")


@dataclass(slots=True)
class Parse:
    name: bytes
    query: str
    param_types: list[int]


def parse_parse(body: bytes) -> Parse:
    r = Reader(body)
    name = r.cstr()
    q = r.cstr().decode("utf-8", "replace")
    n = r.i16()
    types = [r.u32() for _ in range(max(n, 0))]
    r.end()
    return Parse(name, q, types)


def build_parse(p: Parse) -> bytes:
    body = cstr(p.name) + cstr(p.query) + _I16.pack(len(p.param_types))
    body += b"".join(struct.pack("!I", t) for t in p.param_types)
    return build(b"P", body)


@dataclass(slots=True)
class Bind:
    portal: bytes
    statement: bytes
    param_formats: list[int]
    params: list[bytes | None]
    result_formats: list[int]


def parse_bind(body: bytes) -> Bind:
    r = Reader(body)
    portal, stmt = r.cstr(), r.cstr()
    pf = [r.i16() for _ in range(max(r.i16(), 0))]
    params: list[bytes | None] = []
    for _ in range(max(r.i16(), 0)):
        ln = r.i32()
        params.append(None if ln == -1 else r.raw(ln))
    rf = [r.i16() for _ in range(max(r.i16(), 0))]
    r.end()
    return Bind(portal, stmt, pf, params, rf)


def build_bind(b: Bind) -> bytes:
    parts = [cstr(b.portal), cstr(b.statement), _I16.pack(len(b.param_formats))]
    parts += [_I16.pack(f) for f in b.param_formats]
    parts.append(_I16.pack(len(b.params)))
    for v in b.params:
        parts.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    parts.append(_I16.pack(len(b.result_formats)))
    parts += [_I16.pack(f) for f in b.result_formats]
    return build(b"B", b"".join(parts))


def param_format(b: Bind, i: int) -> int:
    if not b.param_formats:
        return 0
    if len(b.param_formats) == 1:
        return b.param_formats[0]
    return b.param_formats[i] if i < len(b.param_formats) else 0
