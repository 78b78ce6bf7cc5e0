"""The vault: per-session mapping token -> original value.

`Vault` is the interface (a fleet backend, e.g. PostgreSQL, implements the same three methods);
`MemoryVault` is the in-process backend: thread-safe, bounded per session and in total (oldest
values, then least recently used sessions dropped), a session expires ``ttl`` seconds after its
last use, and it can be saved to / loaded from a file encrypted with AES-GCM under a key derived
from the vault key. Values are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from typing import Protocol

from egress_gateway.pseudonyms.tokens import derive, normalise


class Vault(Protocol):
    def tokenize(self, session: str, entity: str, value: str) -> str:
        """The session's token for `value` (created on first use)."""

    def lookup(self, session: str, token: str) -> str | None:
        """The value behind `token` in `session`; None: unknown (invented, another session's,
        expired or evicted)."""

    def forget(self, session: str) -> None:
        """Drop a session's values."""


class _Session:
    __slots__ = ("values", "by_norm", "used")

    def __init__(self) -> None:
        self.values: OrderedDict[str, str] = OrderedDict()  # token -> value as first seen
        self.by_norm: dict[tuple[str, str], str] = {}  # (entity, normalised) -> token
        self.used = time.monotonic()


class MemoryVault:
    """The in-process vault (see the module docstring)."""

    def __init__(self, key: bytes, max_values: int = 10_000, max_total: int = 200_000,
                 ttl: float = 3600.0, clock=time.monotonic) -> None:
        if not key:
            raise ValueError("the vault needs a non-empty key")
        self.key = key
        self.max_values, self.max_total, self.ttl = max_values, max_total, ttl
        self.clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    # -- the interface ------------------------------------------------------------------
    def tokenize(self, session: str, entity: str, value: str) -> str:
        norm = normalise(value)
        with self._lock:
            s = self._session(session, create=True)
            token = s.by_norm.get((entity, norm))
            if token is not None:
                s.values.move_to_end(token)
                return token
            attempt = 0
            token = derive(self.key, session, entity, norm)
            while token in s.values:  # a collision with another value of this session
                attempt += 1
                token = derive(self.key, session, entity, norm, attempt)
            s.values[token] = value
            s.by_norm[(entity, norm)] = token
            self._total += 1
            self._bound(s)
            return token

    def cached(self, session: str, entity: str, norm: str) -> str | None:
        """The token already given to (entity, normalised value) in `session`, if cached."""
        with self._lock:
            s = self._session(session, create=False)
            token = None if s is None else s.by_norm.get((entity, norm))
            if token is not None:
                s.values.move_to_end(token)
            return token

    def put(self, session: str, entity: str, norm: str, token: str, value: str) -> None:
        """Cache a (token, value) known elsewhere (a store backend's write-through cache)."""
        with self._lock:
            s = self._session(session, create=True)
            if token not in s.values:
                self._total += 1
            s.values[token] = value
            s.by_norm[(entity, norm)] = token
            self._bound(s)

    def lookup(self, session: str, token: str) -> str | None:
        with self._lock:
            s = self._session(session, create=False)
            return None if s is None else s.values.get(token)

    def forget(self, session: str) -> None:
        with self._lock:
            s = self._sessions.pop(session, None)
            if s is not None:
                self._total -= len(s.values)

    # -- bounds and expiry --------------------------------------------------------------
    def _session(self, session: str, create: bool) -> _Session | None:
        now = self.clock()
        self._expire(now)
        s = self._sessions.get(session)
        if s is None:
            if not create:
                return None
            s = self._sessions[session] = _Session()
        self._sessions.move_to_end(session)
        s.used = now
        return s

    def _expire(self, now: float) -> None:
        while self._sessions:
            sid, oldest = next(iter(self._sessions.items()))
            if now - oldest.used <= self.ttl:
                break
            self._sessions.pop(sid)
            self._total -= len(oldest.values)

    def _bound(self, s: _Session) -> None:
        while len(s.values) > self.max_values:
            self._drop_oldest(s)
        while self._total > self.max_total and self._sessions:
            sid, lru = next(iter(self._sessions.items()))
            if lru is s and len(self._sessions) == 1:
                self._drop_oldest(s)
                continue
            if lru is s:  # the session in use goes last
                self._sessions.move_to_end(sid)
                continue
            self._sessions.pop(sid)
            self._total -= len(lru.values)

    def _drop_oldest(self, s: _Session) -> None:
        token, value = s.values.popitem(last=False)
        s.by_norm = {k: t for k, t in s.by_norm.items() if t != token}
        self._total -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": len(self._sessions), "values": self._total}

    # -- encrypted persistence ----------------------------------------------------------
    def _file_key(self) -> bytes:
        return hmac.new(self.key, b"egress-gateway vault file v1", hashlib.sha256).digest()

    def save(self, path: str) -> None:
        """Write every live session, encrypted (AES-256-GCM), atomically (mode 0600)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        now = self.clock()
        with self._lock:
            self._expire(now)
            doc = {sid: {"age": now - s.used, "values": list(s.values.items()),
                         "norm": [[e, n, t] for (e, n), t in s.by_norm.items()]}
                   for sid, s in self._sessions.items()}
        nonce = os.urandom(12)
        blob = nonce + AESGCM(self._file_key()).encrypt(nonce, json.dumps(doc).encode(), b"v1")
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)

    def load(self, path: str) -> int:
        """Read a file written by `save` with the same key; -> sessions loaded. Raises
        ValueError when it cannot be decrypted (another key, or tampered)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        with open(path, "rb") as f:
            blob = f.read()
        try:
            doc = json.loads(AESGCM(self._file_key()).decrypt(blob[:12], blob[12:], b"v1"))
        except (InvalidTag, ValueError):
            raise ValueError(f"{path}: cannot decrypt the vault file (another key?)") from None
        now = self.clock()
        with self._lock:
            for sid, d in doc.items():
                if d["age"] > self.ttl:
                    continue
                s = _Session()
                s.values = OrderedDict((t, v) for t, v in d["values"])
                s.by_norm = {(e, n): t for e, n, t in d["norm"]}
                s.used = now - d["age"]
                self._sessions[sid] = s
                self._total += len(s.values)
            self._sessions = OrderedDict(sorted(self._sessions.items(), key=lambda kv: kv[1].used))
        return len(doc)
