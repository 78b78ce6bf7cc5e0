"""Bounded decoding of compressed HTTP bodies (gzip, deflate, br, zstd) and re-encoding.

mitmproxy's own decoders inflate without a limit: a 1 MB gzip bomb becomes 1 GB in memory.
These decoders stop as soon as the output would pass `limit` bytes and raise `TooLarge`.
Never touch ``message.content`` / ``.text`` of a compressed message in the gateway: use
``raw_content`` and these functions.
"""

from __future__ import annotations

import zlib

import brotli
from mitmproxy.net import encoding as mitm_encoding

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[no-redef]

#: Output is produced in pieces of at most this size.
STEP = 1 << 16


class TooLarge(ValueError):
    """The decoded body would exceed the size limit."""


class BadEncoding(ValueError):
    """An unknown Content-Encoding or corrupt compressed data."""


def parse_encodings(header: str | None) -> list[str]:
    """Content-Encoding codings in the order they were applied (``identity`` dropped)."""
    if not header:
        return []
    out = [c.strip().lower() for c in header.split(",") if c.strip()]
    out = [c for c in out if c != "identity"]
    for c in out:
        if c not in DECODERS:
            raise BadEncoding(f"unsupported content encoding {c!r}")
    return out


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        buf = data
        while True:
            chunk = d.decompress(buf, STEP)
            out += chunk
            if len(out) > limit:
                raise TooLarge(f"decoded body exceeds {limit} bytes")
            buf = d.unconsumed_tail
            if d.eof or (not buf and not chunk):
                break
        if not d.eof:
            raise BadEncoding("truncated compressed data")
        rest = d.unused_data
        # gzip allows several members one after the other; anything else after the end is junk.
        if wbits == 31 and rest.lstrip(b"\x00"):
            data = rest
            continue
        if rest.strip(b"\x00"):
            raise BadEncoding("data after the end of the compressed stream")
        return bytes(out)


def decode_gzip(data: bytes, limit: int) -> bytes:
    try:
        return _zlib(data, limit, 31)
    except zlib.error as e:
        raise BadEncoding(f"corrupt gzip data: {e}") from None


def decode_deflate(data: bytes, limit: int) -> bytes:
    # "deflate" is meant to be zlib-wrapped, but many servers send raw deflate (as curl accepts).
    try:
        return _zlib(data, limit, 15)
    except zlib.error:
        try:
            return _zlib(data, limit, -15)
        except zlib.error as e:
            raise BadEncoding(f"corrupt deflate data: {e}") from None


def decode_brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    try:
        out += d.process(data, output_buffer_limit=STEP)
        while len(out) <= limit and not d.is_finished():
            chunk = d.process(b"", output_buffer_limit=STEP)
            if not chunk:
                break  # needs more input than there is: truncated
            out += chunk
    except brotli.error as e:
        raise BadEncoding(f"corrupt brotli data: {e}") from None
    if len(out) > limit:
        raise TooLarge(f"decoded body exceeds {limit} bytes")
    if not d.is_finished():
        raise BadEncoding("truncated brotli data")
    return bytes(out)


def decode_zstd(data: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        while True:
            d = zstd.ZstdDecompressor()
            out += d.decompress(data, max_length=STEP)
            while not d.eof and len(out) <= limit:
                if d.needs_input:
                    raise BadEncoding("truncated zstd data")
                out += d.decompress(b"", max_length=STEP)
            if len(out) > limit:
                raise TooLarge(f"decoded body exceeds {limit} bytes")
            data = d.unused_data
            if not data:
                return bytes(out)
    except zstd.ZstdError as e:
        raise BadEncoding(f"corrupt zstd data: {e}") from None


DECODERS = {
    "gzip": decode_gzip,
    "x-gzip": decode_gzip,
    "deflate": decode_deflate,
    "br": decode_brotli,
    "zstd": decode_zstd,
}


def decode(data: bytes, encodings: list[str], limit: int) -> bytes:
    """Undo `encodings` (as applied, first to last); never hold more than ~`limit` + STEP bytes
    of output per step. Raises TooLarge or BadEncoding."""
    for enc in reversed(encodings):
        data = DECODERS[enc](data, limit)
    if len(data) > limit:
        raise TooLarge(f"body exceeds {limit} bytes")
    return data


def encode(data: bytes, encodings: list[str]) -> bytes:
    """Apply `encodings` in order (mitmproxy's encoders; output is bounded by the input)."""
    for enc in encodings:
        data = mitm_encoding.encode(data, "gzip" if enc == "x-gzip" else enc)
    return data
