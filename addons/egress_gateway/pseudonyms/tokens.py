"""The restore token: ``<ENTITY_xxxxxxxx>``, the entity type and 8 lowercase base32 characters
of HMAC-SHA256(vault key, session NUL entity NUL normalised value [NUL attempt]).

The same value gives the same token for the whole session on any gateway holding the key; two
sessions never share a token (the session is in the MAC); without the key a token cannot be
guessed from a value. A second value whose token collides within a session takes the next
attempt (`derive(..., attempt=1)`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

TOKEN_CHARS = 8
# Entity names are upper-case identifiers (EMAIL_ADDRESS, US_SSN, AWS_ACCESS_KEY ...).
TOKEN_RE = re.compile(r"<([A-Z][A-Z0-9_]{0,47})_([a-z2-7]{8})>")
MAX_TOKEN_LEN = 1 + 48 + 1 + TOKEN_CHARS + 1


def normalise(value: str) -> str:
    """Whitespace runs collapsed and case folded: ``Jane@Example.com`` = ``jane@example.com``."""
    return " ".join(value.split()).casefold()


def derive(key: bytes, session: str, entity: str, value: str, attempt: int = 0) -> str:
    """The token for `value` (already normalised) of `entity` in `session`."""
    msg = f"{session}\x00{entity}\x00{value}"
    if attempt:
        msg += f"\x00{attempt}"
    mac = hmac.new(key, msg.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"<{entity}_{base64.b32encode(mac[:5]).decode().lower()}>"


def could_start_token(tail: str) -> bool:
    """True when `tail` (a suffix of the text seen so far) could be the start of a token."""
    if not tail or tail[0] != "<" or len(tail) >= MAX_TOKEN_LEN:
        return False
    body = tail[1:]
    entity, sep, rest = body.rpartition("_")
    if not sep:
        return re.fullmatch(r"[A-Z][A-Z0-9_]{0,47}|", body) is not None
    if re.fullmatch(r"[A-Z][A-Z0-9_]{0,47}", entity) is None:
        return False
    return re.fullmatch(r"[a-z2-7]{0,8}|[A-Z0-9_]*", rest) is not None
