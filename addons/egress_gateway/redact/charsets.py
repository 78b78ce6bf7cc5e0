"""Honest reading of text bytes: the charset a receiver will really use, or a refusal.

A label is a claim: ASCII bytes labelled UTF-16 or EBCDIC (``cp500``) decode under the label to
text nothing is found in, while the upstream (or a log behind it) may read them as the ASCII
they are. Gzip bytes labelled ``text/plain; charset=latin-1`` decode to latin-1 garbage.

* `read` decodes with the declared charset and also returns the *other readings* a receiver
  might plausibly use: the UTF-8 reading when the declared charset is not ASCII-compatible and
  the bytes are plausible UTF-8 text. The caller scans them too (analysed, never rewritten: a
  finding there refuses the message). Bytes that are not valid under such a label but are
  plausible UTF-8 are read (and rewritten) as UTF-8.
* bytes whose reading is mostly control characters are binary (`NotText`), not text;
* compressed data (gzip, zstd, xz, bzip2, zip magic bytes) without a Content-Encoding is not
  text either (`compressed_magic`);
* `json_codec`: the encoding of a JSON text by its BOM or its NUL pattern (RFC 4627 section 3),
  as Python's ``json.loads`` on bytes and many upstreams detect it.
"""

from __future__ import annotations

import codecs as pycodecs
import re

#: More than this share of C0 control characters (other than tab, line ends, form feed)
#: makes a reading binary.
MAX_CONTROL_RATIO = 0.10
#: ... and at least this many of them: a short text with one DEL (``"\x7f"`` as a JSON body)
#: is text, scanned as such (scanning is the safe side of the call).
MIN_CONTROL_CHARS = 4
_PROBE = "azAZ09 @.:/-_\"{}=%&+"

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"PK\x03\x04", "zip"),
)


_C0 = re.compile("[\x00-\x08\x0b\x0e-\x1f]")  # C0 controls but tab, LF, CR and FF


class NotText(ValueError):
    """The bytes are not text in any charset the gateway can stand behind."""


def _controls(text: str) -> int:
    """C0 control characters other than tab, line ends and form feed. DEL and C1 are not
    counted: JSON allows them raw in strings (``json.dumps(..., ensure_ascii=False)`` writes
    them), and binary bytes that decode as UTF-8 show C0 (NULs above all)."""
    return len(_C0.findall(text))


def looks_binary(text: str) -> bool:
    """Mostly control characters: more than MAX_CONTROL_RATIO, and at least MIN_CONTROL_CHARS."""
    n = _controls(text)
    return n >= MIN_CONTROL_CHARS and n / len(text) > MAX_CONTROL_RATIO


def compressed_magic(data: bytes) -> str | None:
    """The name of the compression format `data` starts with, if any."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            if name == "bzip2" and not (len(data) > 3 and data[3:4].isdigit()):
                continue
            return name
    return None


def ascii_compatible(charset: str) -> bool:
    """ASCII bytes read as the same ASCII characters in `charset`."""
    try:
        return _PROBE.encode("ascii").decode(charset) == _PROBE
    except (LookupError, UnicodeDecodeError):
        return False


def normal_name(charset: str) -> str:
    try:
        return pycodecs.lookup(charset).name
    except LookupError:
        raise NotText(f"unknown charset {charset!r}") from None


def read(data: bytes, declared: str | None) -> tuple[str, str, list[str]]:
    """``(text, charset used, other plausible readings)``. Raises NotText."""
    name = compressed_magic(data)
    if name:
        raise NotText(f"{name}-compressed bytes without a Content-Encoding")
    cs = (declared or "utf-8").strip().lower()
    normal_name(cs)
    alt = None
    if not ascii_compatible(cs):
        try:
            alt = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if alt is not None and looks_binary(alt):
            alt = None
    try:
        text = data.decode(cs)
    except UnicodeDecodeError:
        if alt is not None:  # not valid under its label, plausible UTF-8: it is UTF-8
            return alt, "utf-8", []
        raise NotText(f"body is not valid {cs} text") from None
    others = [alt] if alt is not None and alt != text else []
    if looks_binary(text) and not others:
        raise NotText(f"bytes read as {cs} are mostly control characters (binary)")
    return text, cs, others


def json_codec(data: bytes) -> tuple[str, bool]:
    """``(codec, has BOM)`` of a JSON text: BOM first, else the NUL pattern, else UTF-8."""
    boms = (
        (pycodecs.BOM_UTF32_LE, "utf-32-le"), (pycodecs.BOM_UTF32_BE, "utf-32-be"),
        (pycodecs.BOM_UTF8, "utf-8"), (pycodecs.BOM_UTF16_LE, "utf-16-le"),
        (pycodecs.BOM_UTF16_BE, "utf-16-be"),
    )
    for bom, codec in boms:
        if data.startswith(bom):
            return codec, True
    head = data[:4]
    if len(head) == 4:
        if head[:3] == b"\x00\x00\x00":
            return "utf-32-be", False
        if head[1:] == b"\x00\x00\x00":
            return "utf-32-le", False
    if len(head) >= 2:
        if head[0] == 0 and head[1] != 0:
            return "utf-16-be", False
        if head[0] != 0 and head[1] == 0:
            return "utf-16-le", False
    return "utf-8", False
