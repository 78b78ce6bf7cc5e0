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

from .engine import DetectionEngine, Finding, TextResult, looks_like_prose  # noqa: E402
from .entities import (  # noqa: E402
    ALL_ENTITIES,
    ENTITIES,
    OPTIONAL_ENTITIES,
    PII_ENTITIES,
    SECRET_ENTITIES,
)
from .settings import CustomRecognizer, DetectionSettings  # noqa: E402

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
