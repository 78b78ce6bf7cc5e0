"""Test-only mitmproxy script loaded beside the gateway (`-s`): injects detector faults.

A text containing FAULT-RAISE makes the detector raise; FAULT-SLOW makes it exceed any sane
time budget. Nothing here ships: the gateway has no fault-injection code of its own.
"""

import time

from egress_gateway.detection.engine import DetectionEngine

_original = DetectionEngine._analyze_uncached


def _faulty(self, texts, prose):
    joined = "".join(texts)
    if "FAULT-RAISE" in joined:
        raise RuntimeError("injected detector failure")
    if "FAULT-SLOW" in joined:
        time.sleep(5)
    return _original(self, texts, prose)


DetectionEngine._analyze_uncached = _faulty
addons: list = []
