"""The gateway policy: the YAML model (one section per feature), its loader, compiled state.

Importing it never imports Presidio or spaCy: `check-policy` and `schema` stay fast.
"""

from egress_gateway.policy.loader import PolicyError, load_policy, parse_policy
from egress_gateway.policy.model import Policy

__all__ = ["Policy", "PolicyError", "load_policy", "parse_policy"]
