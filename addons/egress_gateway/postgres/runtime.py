"""The redact rules of each database entry, compiled for one policy, with their engines."""

from __future__ import annotations

import threading
from collections.abc import Callable

DIRECTIONS = ("request", "response")


def rules_for(redact, entry: str, direction: str):
    """The redact rules for `direction` of the database entry `entry` (first rule naming it)."""
    rule = next((r for r in redact.rules if entry in r.postgres), None)
    return redact._merged(rule, direction)


class PostgresRuntime:
    """Built once when a policy loads (``core.compiled["postgres"]``), replaced with the policy.

    The rules of every (entry, direction) are merged here; the detection engine of each is built
    on first use and kept for the life of this policy (None where redaction is off).
    """

    def __init__(self, policy, engine_factory: Callable) -> None:
        self.policy = policy
        self._factory = engine_factory
        redact = policy.redact
        self.rules = {(e.name, d): rules_for(redact, e.name, d)
                      for e in getattr(policy, "postgres", []) for d in DIRECTIONS}
        self._engines: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def engine(self, entry: str, direction: str = "response"):
        """The detection engine for one database and direction; None: not redacted."""
        key = (entry, direction)
        with self._lock:
            if key not in self._engines:
                rules = self.rules.get(key) or rules_for(self.policy.redact, entry, direction)
                self._engines[key] = (
                    self._factory(rules.detection(self.policy.detection))
                    if self.policy.redact.enabled and rules.enabled else None)
            return self._engines[key]
