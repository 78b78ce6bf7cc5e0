"""Credential injection: the agent holds placeholders, the gateway presents real secrets on the wire."""
