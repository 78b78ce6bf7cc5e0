"""Operators: how a detected value is rewritten, as one function per entity (`rewrite.py`).

Not Presidio's operators: its ``mask`` counts characters to *mask* (not to keep), its ``hash``
salts randomly per call unless given a salt (so it is not stable), it has no session-scoped
pseudonyms, and importing its anonymizer imports the analyzer and spaCy (~75 MB), which the
gateway process does not load when analysis runs in scan worker processes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

from egress_gateway.detection.settings import (
    BlockOperator,
    DetectionSettings,
    HashOperator,
    MaskOperator,
    PseudonymOperator,
    ReplaceOperator,
)

logger = logging.getLogger(__name__)

_PROCESS_KEY = secrets.token_bytes(32)
_warned_envs: set[str] = set()


def hash_key(env_name: str, warn: bool = True) -> bytes:
    """The HMAC key from ``env_name``; a random per-process key (with one warning) if unset."""
    value = os.environ.get(env_name, "")
    if value:
        return value.encode()
    if warn and env_name not in _warned_envs:
        _warned_envs.add(env_name)
        logger.warning(
            "%s is not set: hash operator uses a random per-process key (not stable across "
            "restarts)",
            env_name,
        )
    return _PROCESS_KEY


def keyed_digest(key: bytes, entity: str, value: str) -> str:
    return hmac.new(key, f"{entity}\x00{value}".encode(), hashlib.sha256).hexdigest()


def mask_value(value: str, chars_to_keep: int, from_end: bool, masking_char: str) -> str:
    """Mask letters and digits, keeping ``chars_to_keep`` of them at one end; separators stay
    (``4111-1111-1111-1111`` -> ``****-****-****-1111``)."""
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    keep = set(positions[-chars_to_keep:] if from_end else positions[:chars_to_keep])
    if chars_to_keep == 0:
        keep = set()
    return "".join(c if (i in keep or not c.isalnum()) else masking_char for i, c in enumerate(value))


def _normalise(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip()).casefold()


class PseudonymTable:
    """value digest -> ``<ENTITY_n>`` for one session; bounded (oldest entries dropped)."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._labels: OrderedDict[str, str] = OrderedDict()
        self._counters: dict[str, int] = {}

    def label(self, entity: str, digest: str) -> str:
        key = f"{entity}:{digest}"
        found = self._labels.get(key)
        if found is not None:
            self._labels.move_to_end(key)
            return found
        n = self._counters.get(entity, 0) + 1
        self._counters[entity] = n
        found = f"<{entity}_{n}>"
        self._labels[key] = found
        if len(self._labels) > self.max_values:
            self._labels.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._labels)


class PseudonymStore:
    """Per-session pseudonym tables, LRU-bounded. Values are stored only as keyed digests.

    The empty session id means "no session": each call gets a fresh table, so nothing links
    two anonymous calls.
    """

    def __init__(self, max_sessions: int, max_values: int) -> None:
        self.max_sessions = max_sessions
        self.max_values = max_values
        self._tables: OrderedDict[str, PseudonymTable] = OrderedDict()
        self.lock = threading.RLock()  # re-entered by the pseudonym operator

    def table(self, session: str) -> PseudonymTable:
        if not session:
            return PseudonymTable(self.max_values)
        with self.lock:
            t = self._tables.get(session)
            if t is None:
                t = self._tables[session] = PseudonymTable(self.max_values)
                while len(self._tables) > self.max_sessions:
                    self._tables.popitem(last=False)
            else:
                self._tables.move_to_end(session)
            return t

    def __len__(self) -> int:
        return len(self._tables)


def rewriter(
    entity: str,
    settings: DetectionSettings,
    key: bytes,
    table: Callable[[], PseudonymTable],
    lock: threading.RLock,
) -> Callable[[str], str]:
    """value -> its replacement, for ``entity`` under ``settings``."""
    spec = settings.operator(entity)
    if isinstance(spec, ReplaceOperator):
        new_value = (spec.new_value or "<{entity}>").replace("{entity}", entity)
        return lambda v: new_value
    if isinstance(spec, BlockOperator):
        return lambda v: f"<{entity}>"
    if isinstance(spec, MaskOperator):
        keep, from_end, char = spec.chars_to_keep, spec.from_end, spec.masking_char
        return lambda v: mask_value(v, keep, from_end, char)
    if isinstance(spec, HashOperator):
        n = spec.length
        return lambda v: f"<{entity}:{keyed_digest(key, entity, v)[:n]}>"
    if isinstance(spec, PseudonymOperator):

        def pseudonym(v: str) -> str:
            digest = keyed_digest(key, entity, _normalise(v))
            with lock:
                return table().label(entity, digest)

        return pseudonym
    raise TypeError(f"unknown operator {spec!r}")  # pragma: no cover


def token_rewriter(entity: str, tokenize: Callable[[str, str], str]) -> Callable[[str], str]:
    """A restore rule's operator: the value becomes its session token (``pseudonyms``)."""
    return lambda v: tokenize(entity, v)


def is_blocking(entity: str, settings: DetectionSettings) -> bool:
    return isinstance(settings.operator(entity), BlockOperator)
