"""Per-policy runtime state: built once when a policy loads and swapped atomically with it.

Each feature registers a compiler (``policy -> its compiled state``: matchers, globs, scanners,
merged settings) with the core. A policy is only accepted once every compiler has run, so a
problem found while compiling is a load error, never a per-flow surprise; addons then read
``core.compiled["feature"]`` instead of caching by ``id(policy)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egress_gateway.policy.loader import PolicyError
from egress_gateway.policy.model import Policy

Compiler = Callable[[Policy], Any]


class Compiled:
    """A policy together with every feature's compiled state for it."""

    __slots__ = ("policy", "_parts")

    def __init__(self, policy: Policy, parts: dict[str, Any]) -> None:
        self.policy = policy
        self._parts = parts

    def __getitem__(self, name: str) -> Any:
        return self._parts[name]

    def __contains__(self, name: str) -> bool:
        return name in self._parts


def compile_policy(policy: Policy, compilers: dict[str, Compiler], source: str = "<policy>") -> Compiled:
    """Run every compiler on `policy`; a ValueError becomes a PolicyError naming the feature."""
    parts: dict[str, Any] = {}
    for name, build in compilers.items():
        try:
            parts[name] = build(policy)
        except ValueError as e:
            raise PolicyError([f"{source}: {name}: {e}"]) from None
    return Compiled(policy, parts)
