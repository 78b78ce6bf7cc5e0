"""The gateway policy: the YAML model (one section per feature), its loader, compiled state.

Importing it never imports Presidio or spaCy: `check-policy` and `schema` stay fast. The names
below are loaded lazily, so that a feature's section may import `policy.validators` without a
circular import (model -> section -> policy).
"""

__all__ = ["Policy", "PolicyError", "load_policy", "parse_policy"]


def __getattr__(name: str):
    if name == "Policy":
        from egress_gateway.policy.model import Policy

        return Policy
    if name in ("PolicyError", "load_policy", "parse_policy"):
        from egress_gateway.policy import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
