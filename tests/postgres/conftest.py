"""Fixtures of the PostgreSQL-lane tests (implemented in `pgharness`)."""

from __future__ import annotations

from pgharness import pg_gateway, pg_server  # noqa: F401 - fixtures
