"""Fixtures of the fleet tests (implemented in `fleet_harness`)."""

from __future__ import annotations

from fleet_harness import fleet  # noqa: F401 - fixtures (puts tests/postgres on sys.path)
from pgharness import pg_server  # noqa: F401,E402
