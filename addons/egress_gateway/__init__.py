"""Egress gateway for AI agents: mitmproxy addons that allowlist, redact, record and hold."""
