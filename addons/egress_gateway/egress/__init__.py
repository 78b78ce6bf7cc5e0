"""Default-deny egress: the allowlist section, its pure decisions, and the addon checking every identity."""
