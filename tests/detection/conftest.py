"""Fixtures for the detection tests: the engine (Presidio + spaCy) is built once per session."""

from __future__ import annotations

import pytest
from egress_gateway.detection import DetectionEngine, DetectionSettings


@pytest.fixture(scope="session")
def engine() -> DetectionEngine:
    return DetectionEngine.get(DetectionSettings())


@pytest.fixture(scope="session")
def make_engine():
    """Engines for other settings: they share the session's spaCy model and NLP engine."""

    def make(**settings) -> DetectionEngine:
        return DetectionEngine.get(DetectionSettings(**settings))

    return make
