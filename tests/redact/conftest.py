"""Fixtures for the redaction tests: a deterministic fake engine and the real one (built once)."""

from __future__ import annotations

import pytest
from redact_fakes import FakeEngine


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture(scope="session")
def real_engine():
    from egress_gateway.detection import DetectionEngine, DetectionSettings

    return DetectionEngine.get(DetectionSettings())
