"""The gateway's vault and its options (declared and configured by the Redactor addon).

``gateway_vault_key_env`` names the environment variable holding the vault key (default
``GATEWAY_VAULT_KEY``): a policy with a ``restore`` rule does not start without it.
``gateway_vault_ttl``: seconds a session's values live after its last use.
``gateway_vault_file``: keep the vault across restarts, encrypted with a key derived from the
vault key (empty: in memory only).
With ``gateway_state`` set (a fleet) the vault lives in the store (``pgvault.StoreVault``, the
memory vault as its write-through cache) and ``gateway_vault_file`` is not used; while the store
is unreachable restore flows are refused ``503 state_unavailable``.
"""

from __future__ import annotations

import logging
import os

from egress_gateway.pseudonyms.pgvault import StoreVault
from egress_gateway.pseudonyms.restore import Restorer
from egress_gateway.pseudonyms.vault import MemoryVault

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "GATEWAY_VAULT_KEY"
DEFAULT_TTL = 3600.0


def parse_ttl(value: str) -> float:
    try:
        ttl = float(value)
    except ValueError:
        raise ValueError(f"gateway_vault_ttl: not a number of seconds: {value!r}") from None
    if not ttl > 0:
        raise ValueError(f"gateway_vault_ttl must be positive, not {value!r}")
    return ttl


class VaultKeeper:
    """Holds the vault (created when a policy with a restore rule loads) for a session's use."""

    OPTIONS = ("gateway_vault_key_env", "gateway_vault_ttl", "gateway_vault_file")

    def __init__(self, healthy=None) -> None:
        self.vault: MemoryVault | StoreVault | None = None
        self.file = ""
        self.state = ""  # gateway_state when the vault lives in the store
        self.healthy = healthy or (lambda: True)  # the fleet's store is up

    @property
    def shared(self) -> bool:
        return isinstance(self.vault, StoreVault)

    def load(self, loader) -> None:
        loader.add_option(
            "gateway_vault_key_env", str, DEFAULT_KEY_ENV,
            "Environment variable holding the key of restore tokens (redact.rules[i].restore); "
            "a policy with a restore rule refuses to start without it.",
        )
        loader.add_option(
            "gateway_vault_ttl", str, f"{DEFAULT_TTL:g}",
            "Seconds a session's restore values are kept after its last use.",
        )
        loader.add_option(
            "gateway_vault_file", str, "",
            "Keep restore values across restarts in this file, encrypted with a key derived "
            "from the vault key (empty: memory only).",
        )

    def configure(self, options, needed: bool) -> None:
        """Create (or re-create on a key change) the vault; ValueError names the problem."""
        ttl = parse_ttl(options.gateway_vault_ttl)
        env = options.gateway_vault_key_env
        key = os.environ.get(env, "").encode()
        if not needed:
            if self.vault is not None:
                self.vault.ttl = ttl
            return
        if not key:
            raise ValueError(f"a redact rule uses restore, but the vault key is missing: set the "
                             f"environment variable {env} (option gateway_vault_key_env)")
        state = getattr(options, "gateway_state", "").strip()
        if self.vault is None or self.vault.key != key or state != self.state:
            self.close()
            self.vault = self._store_vault(state, key, ttl) if state else MemoryVault(key, ttl=ttl)
            self.state = state
        self.vault.ttl = ttl
        self.file = "" if state else options.gateway_vault_file
        if self.file and os.path.exists(self.file):
            n = self.vault.load(self.file)
            log.info(f"egress gateway: restore vault loaded ({n} sessions)")

    def _store_vault(self, state: str, key: bytes, ttl: float) -> StoreVault:
        from egress_gateway.fleet.settings import parse_state_url

        url = parse_state_url(state)  # ValueError: named by the fleet addon too

        def connect():
            import psycopg

            return psycopg.connect(**url.conninfo(options="-c statement_timeout=5000"),
                                   autocommit=True)
        return StoreVault(key, connect, url.display, ttl=ttl, healthy=self.healthy)

    def close(self) -> None:
        if isinstance(self.vault, StoreVault):
            self.vault.close()

    def check(self) -> None:
        """Raises StoreDown when the vault lives in an unreachable store."""
        if isinstance(self.vault, StoreVault):
            self.vault.check()

    def done(self) -> None:
        self.close()
        if self.vault is not None and self.file:
            try:
                self.vault.save(self.file)
            except OSError as e:
                log.error(f"egress gateway: could not save the restore vault: {e}")

    # -- per flow -------------------------------------------------------------------------
    def tokenizer(self, session: str):
        vault = self.vault
        if vault is None:
            raise RuntimeError("restore rule without a vault")
        return lambda entity, value: vault.tokenize(session, entity, value)

    def restorer(self, session: str, context: str = "text") -> Restorer:
        vault = self.vault
        if vault is None:
            raise RuntimeError("restore rule without a vault")
        return Restorer(lambda token: vault.lookup(session, token), context)

    def lookup(self, session: str):
        vault = self.vault
        if vault is None:
            raise RuntimeError("restore rule without a vault")
        return lambda token: vault.lookup(session, token)
