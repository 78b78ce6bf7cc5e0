"""Detection engine library: PII and secret detection + redaction on Presidio/spaCy.

Public API::

    from egress_gateway.detection import (
        DetectionSettings, DetectionEngine, Finding, TextResult, ENTITIES, SECRET_ENTITIES,
    )
    engine = DetectionEngine.get(DetectionSettings(**policy["detection"]))
    engine.analyze(text) -> list[Finding]
    engine.redact(text, session="") -> TextResult
    engine.redact_many(texts, session="") -> list[TextResult]

Entity names are defined and documented in ``entities.py``.
"""

import os

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from egress_gateway.detection.entities import (  # noqa: E402
    ALL_ENTITIES,
    ENTITIES,
    OPTIONAL_ENTITIES,
    PII_ENTITIES,
    SECRET_ENTITIES,
)
from egress_gateway.detection.settings import CustomRecognizer, DetectionSettings  # noqa: E402

# The engine (Presidio + spaCy, ~2 s to import) loads on first use only: the policy model and
# `check-policy` import the settings above without paying for NER.
_ENGINE_NAMES = ("DetectionEngine", "Finding", "TextResult", "looks_like_prose")


def __getattr__(name: str):
    if name in _ENGINE_NAMES:
        from egress_gateway.detection import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_ENTITIES",
    "ENTITIES",
    "OPTIONAL_ENTITIES",
    "PII_ENTITIES",
    "SECRET_ENTITIES",
    "CustomRecognizer",
    "DetectionEngine",
    "DetectionSettings",
    "Finding",
    "TextResult",
    "looks_like_prose",
]
