"""Shapes that cannot carry what the gateway's patterns find, for when nothing is analysed.

A refused request's host and path and an agent's session id are checked by the detection
engine while the gateway analyses anything. A policy that scans nothing runs no engine, and
starting one (two worker processes, ~300 MB, seconds) for a refused URL is out of proportion:
then a value is kept only when its shape rules out every pattern: words, short numbers and a
few separators (no ``@``, no digit runs that could be a phone, card, IP address or IBAN, no
long mixed-case or mixed-digit runs that could be a token). Everything else is withheld (fail
closed). Names in plain words pass either way: the engine's check of these values runs
patterns only, no NER.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_PART = r"(?:[A-Za-z]{1,16}[0-9]{0,3}|[0-9]{1,3})"
_PLAIN = re.compile(rf"{_PART}(?:[._~\-]{_PART})*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_CHARS = 64
MAX_DIGITS = 3
MAX_INNER_CAPITALS = 3


def plain(value: str) -> bool:
    """True when `value` is words and short numbers joined by ``. _ ~ -`` (at most 64
    characters, 3 digits, and 3 capitals inside words: ``getUserById`` is plain,
    ``AbCdEfGhIjKl`` is not)."""
    if not value or len(value) > MAX_CHARS or not _PLAIN.fullmatch(value):
        return False
    if sum(c.isdigit() for c in value) > MAX_DIGITS:
        return False
    inner = sum(1 for i, c in enumerate(value) if c.isupper() and i and value[i - 1].isalpha())
    return inner <= MAX_INNER_CAPITALS


def plain_id(value: str) -> bool:
    """A session id: `plain`, or a lower-case UUID."""
    return plain(value) or bool(_UUID.fullmatch(value))


def plain_path(path: str) -> str | None:
    """`path` (no query) with every segment that is not `plain` (percent-decoded) replaced by
    ``withheld``; None when every segment is plain."""
    segments = path.split("/")
    out = [s if not s or plain(unquote(s)) else "withheld" for s in segments]
    return "/".join(out) if out != segments else None


def plain_host(host: str) -> str | None:
    """``withheld.<last two labels>`` (or ``withheld``) when a label of `host` is not
    `plain` (the format of the engine's check); None when every label is."""
    labels = host.rstrip(".").split(".")
    if all(plain(label) for label in labels):
        return None
    keep = labels[-2:] if len(labels) > 2 and all(plain(x) for x in labels[-2:]) else []
    return ".".join(["withheld", *keep])


_HOSTLIKE = re.compile(r"(?<![\w.-])[\w-]+(?:\.[\w-]+)+\.?(?![\w-])")


def scrub_hosts(text: str) -> str:
    """`text` (a refusal's reason) with each host name in it that is not plain by shape
    replaced by its withheld form (`plain_host`): for what is written before any scan, such as
    the gateway's log line about a blocked destination."""
    def one(m: re.Match) -> str:
        name = m.group()
        return plain_host(name) or name

    return _HOSTLIKE.sub(one, text)
