"""A deterministic fake detection engine for the redaction tests (importable by name)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
BLOCK = re.compile(r"-----BEGIN PRIVATE KEY-----")


@dataclass
class FakeResult:
    text: str
    findings: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    blocked: set = field(default_factory=set)


class FakeEngine:
    """E-mail addresses -> <EMAIL_ADDRESS>; a PEM header is a blocking PEM_PRIVATE_KEY.

    `delay` sleeps per call (timeouts, off-loop tests); `explode` raises; `calls` records the
    batches it was given.
    """

    def __init__(self, delay: float = 0.0, explode: bool = False):
        self.delay, self.explode = delay, explode
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def redact_many(self, texts, session="", prose=None):
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.explode:
            raise RuntimeError("detector exploded")
        out = []
        for t in texts:
            found = EMAIL.findall(t)
            blocked = BLOCK.findall(t)
            if not found and not blocked:
                out.append(FakeResult(t))
                continue
            counts = Counter()
            if found:
                counts["EMAIL_ADDRESS"] = len(found)
            if blocked:
                counts["PEM_PRIVATE_KEY"] = len(blocked)
            new = BLOCK.sub("<PEM_PRIVATE_KEY>", EMAIL.sub("<EMAIL_ADDRESS>", t))
            out.append(FakeResult(new, findings=[1] * sum(counts.values()), counts=dict(counts),
                                  blocked={"PEM_PRIVATE_KEY"} if blocked else set()))
        return out


def fake_redact_many(texts, **kw):
    return FakeEngine().redact_many(texts)
