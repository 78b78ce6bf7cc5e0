"""The vault on the fleet's store (``gateway_state``): every instance restores every session.

Rows of ``gateway_vault`` are keyed by (session, token) and hold the value encrypted with
AES-256-GCM under a key derived from the vault key (the session and token are the associated
data: a row moved to another key cannot be decrypted); the store never holds a clear value.
The interface is synchronous (scan threads call it): one small psycopg connection, guarded by
a lock, opened from the same URL and password rules as the store. A `MemoryVault` is the
write-through cache (a value is in the store before its token is used). When the store is
unreachable (`healthy()` false, or a query fails) every call raises `StoreDown`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable

from egress_gateway.fleet.store import StoreDown
from egress_gateway.pseudonyms.tokens import TOKEN_RE, derive, normalise
from egress_gateway.pseudonyms.vault import MemoryVault

MAX_ATTEMPTS = 8  # token collisions within a session (40-bit tokens) before giving up
PRUNE_SECONDS = 60.0


class StoreVault:
    """See the module docstring. `connect()` -> a sync psycopg connection (autocommit)."""

    def __init__(self, key: bytes, connect: Callable, display: str, ttl: float = 3600.0,
                 healthy: Callable[[], bool] = lambda: True) -> None:
        self.cache = MemoryVault(key, ttl=ttl)
        self.key = key
        self._connect = connect
        self.display = display
        self.healthy = healthy
        self._conn = None
        self._lock = threading.Lock()
        self._aead_key = hmac.new(key, b"egress-gateway vault store v1", hashlib.sha256).digest()
        self._pruned = 0.0

    @property
    def ttl(self) -> float:
        return self.cache.ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self.cache.ttl = value

    # -- encryption ---------------------------------------------------------------------
    @staticmethod
    def _aad(session: str, token: str) -> bytes:
        return f"{session}\x00{token}".encode("utf-8", "surrogatepass")

    def seal(self, session: str, token: str, value: str) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        return nonce + AESGCM(self._aead_key).encrypt(
            nonce, value.encode("utf-8", "surrogatepass"), self._aad(session, token))

    def open(self, session: str, token: str, blob: bytes) -> str | None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        blob = bytes(blob)
        try:
            return AESGCM(self._aead_key).decrypt(
                blob[:12], blob[12:], self._aad(session, token)).decode("utf-8", "surrogatepass")
        except (InvalidTag, ValueError):
            return None  # another key's row (or tampered): unknown here

    # -- the store ----------------------------------------------------------------------
    def _down(self) -> StoreDown:
        return StoreDown(f"the fleet's store {self.display} is unreachable")

    def _query(self, sql: str, args: tuple) -> list:
        if not self.healthy():
            raise self._down()
        with self._lock:
            # a kept connection may have died with a store that is back: one fresh retry
            for fresh in (False, True):
                try:
                    if self._conn is None or self._conn.closed or self._conn.broken:
                        self._conn, fresh = self._connect(), True
                    cur = self._conn.execute(sql, args)
                    return cur.fetchall() if cur.description else []
                except Exception:
                    self._drop()
                    if fresh:
                        raise self._down() from None
            raise self._down()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def check(self) -> None:
        """Raises StoreDown when the store is known to be unreachable."""
        if not self.healthy():
            raise self._down()

    # -- the interface ------------------------------------------------------------------
    def tokenize(self, session: str, entity: str, value: str) -> str:
        self.check()
        norm = normalise(value)
        token = self.cache.cached(session, entity, norm)
        if token is not None:
            return token
        self._prune()
        for attempt in range(MAX_ATTEMPTS):
            token = derive(self.key, session, entity, norm, attempt)
            rows = self._query(
                "INSERT INTO gateway_vault AS v (session, token, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (session, token) DO UPDATE SET used = now() RETURNING v.value",
                (session, token, self.seal(session, token, value)))
            stored = self.open(session, token, rows[0][0]) if rows else None
            if stored is not None and normalise(stored) == norm:
                self.cache.put(session, entity, norm, token, stored)
                return token
        raise ValueError("restore vault: too many token collisions in one session")

    def lookup(self, session: str, token: str) -> str | None:
        self.check()
        value = self.cache.lookup(session, token)
        if value is not None:
            return value
        m = TOKEN_RE.fullmatch(token)
        if m is None:
            return None
        rows = self._query(
            "SELECT value FROM gateway_vault WHERE session = %s AND token = %s "
            "AND used > now() - make_interval(secs => %s)", (session, token, self.ttl))
        value = self.open(session, token, rows[0][0]) if rows else None
        if value is not None:
            self.cache.put(session, m.group(1), normalise(value), token, value)
        return value

    def forget(self, session: str) -> None:
        self.cache.forget(session)
        self._query("DELETE FROM gateway_vault WHERE session = %s", (session,))

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_SECONDS:
            return
        self._pruned = now
        self._query("DELETE FROM gateway_vault WHERE used < now() - make_interval(secs => %s)",
                    (self.ttl,))

    def close(self) -> None:
        with self._lock:
            self._drop()
