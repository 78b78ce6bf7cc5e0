"""Helpers for the detection tests (importable by name; conftest modules are not)."""

from __future__ import annotations

from egress_gateway.detection import DetectionEngine


def found(engine: DetectionEngine, text: str, prose: bool | None = None) -> list[tuple[str, str]]:
    """(entity, value) pairs found in text."""
    return [(f.entity_type, text[f.start : f.end]) for f in engine.analyze(text, prose=prose)]
