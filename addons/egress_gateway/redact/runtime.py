"""The redact section compiled for one policy: merged rules per (rule, direction) and engines."""

from __future__ import annotations

import threading
from collections.abc import Callable

from egress_gateway.net import urlpath
from egress_gateway.redact.provider import ProviderPolicy
from egress_gateway.redact.settings import DirectionRules, RedactSettings

DIRECTIONS = ("request", "response")
RULE_CACHE = 4096  # (host, path) pairs whose rule index is remembered (cleared when full)
RULE_KEY_CHARS = 1024  # longer host + path pairs are looked up each time, never remembered


class RedactRuntime:
    """Built once when a policy loads (``core.compiled["redact"]``), replaced with the policy.

    The merged rules of every (rule, direction) are computed here, once; the detection engine of
    each is built on first use (on a worker thread: building one takes ~0.4 s) and kept for the
    life of this policy.
    """

    def __init__(self, policy, engine_factory: Callable) -> None:
        self.settings: RedactSettings = getattr(policy, "redact", None) or RedactSettings()
        detection = getattr(policy, "detection", None)
        if detection is None:
            from egress_gateway.detection.settings import DetectionSettings

            detection = DetectionSettings()
        self.detection = detection
        self.provider = ProviderPolicy.from_egress(getattr(policy, "egress", None))
        self._factory = engine_factory
        rules = self.settings.rules
        self.merged: dict[tuple[int, str], DirectionRules] = {
            (i, d): self.settings._merged(rules[i] if i >= 0 else None, d)
            for i in range(-1, len(rules)) for d in DIRECTIONS
        }
        self._engines: dict[tuple[int, str], object] = {}
        self._rule_of: dict[tuple[str, str], int] = {}  # (host, path) -> rule index
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def for_flow(self, host: str, path: str, direction: str) -> tuple[int, DirectionRules]:
        """(rule index or -1, the rules for one direction of a flow to `host` and `path`);
        remembered per (host, path without its query, which rules never look at) for paths
        up to RULE_KEY_CHARS: every hook of every flow asks."""
        path = urlpath.strip_query(path)
        key = (host, path)
        idx = self._rule_of.get(key)
        if idx is None:
            idx = self.settings.rule_index(host, path)
            if len(host) + len(path) <= RULE_KEY_CHARS:  # a hostile URL costs no memory
                if len(self._rule_of) >= RULE_CACHE:
                    self._rule_of.clear()
                self._rule_of[key] = idx
        return idx, self.merged[(idx, direction)]

    def restores(self, idx: int) -> bool:
        """True when rule `idx` (-1: no rule) uses reversible pseudonyms."""
        return idx >= 0 and self.settings.rules[idx].restore

    @property
    def any_restore(self) -> bool:
        return self.enabled and any(r.restore for r in self.settings.rules)

    def engine(self, idx: int, direction: str):
        """The detection engine for one direction of one rule (built once; thread-safe)."""
        key = (idx, direction)
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:
                engine = self._engines.get(key)
                if engine is None:
                    engine = self._factory(self.merged[key].detection(self.detection))
                    self._engines[key] = engine
        return engine

    def enabled_keys(self) -> list[tuple[int, str]]:
        """Every (rule, direction) that scans (to build their engines before traffic)."""
        if not self.enabled:
            return []
        return [k for k, rules in self.merged.items() if rules.enabled]
