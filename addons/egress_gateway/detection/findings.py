"""What analysis returns (``Finding``, ``TextResult``), how overlaps merge, and the findings cache."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from egress_gateway.detection.entities import PRIORITY, SECRET_ENTITIES


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: its canonical entity type, character span and score."""

    entity_type: str
    start: int
    end: int
    score: float


@dataclass(slots=True)
class TextResult:
    """Rewritten text plus what was found (types, spans, counts: never the values)."""

    text: str
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)


def merge_findings(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping, sorted findings: each cluster of overlapping findings becomes one
    finding spanning the cluster, typed by the best (score, priority, length) member."""
    if not findings:
        return []
    findings = sorted(set(findings), key=lambda f: (f.start, -f.end))
    out: list[Finding] = []
    cluster = [findings[0]]
    cluster_end = findings[0].end
    for f in findings[1:]:
        if f.start < cluster_end:
            cluster.append(f)
            cluster_end = max(cluster_end, f.end)
            continue
        out.append(_resolve(cluster))
        cluster, cluster_end = [f], f.end
    out.append(_resolve(cluster))
    return out


def _resolve(cluster: list[Finding]) -> Finding:
    if len(cluster) == 1:
        return cluster[0]
    # A secret overlapping PII wins (``s3cret@db.host`` in a URL is a password, not an
    # e-mail address); then score, priority and length decide.
    best = max(
        cluster,
        key=lambda f: (
            f.entity_type in SECRET_ENTITIES,
            f.score,
            PRIORITY.get(f.entity_type, 0),
            f.end - f.start,
            f.entity_type,  # last: equal findings resolve the same way in every process
        ),
    )
    return Finding(
        best.entity_type,
        min(f.start for f in cluster),
        max(f.end for f in cluster),
        best.score,
    )


class FindingsCache:
    """Bounded LRU of findings per text: keys are 16-byte BLAKE2b digests of the text and the
    prose hint (the text itself is not kept); bounded by entries and by the text length they
    stand for. Thread-safe."""

    def __init__(self, max_entries: int = 20_000, max_chars: int = 64_000_000) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._data: OrderedDict[bytes, tuple[tuple[Finding, ...], int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(text: str, prose: bool | None, context: bytes = b"") -> bytes:
        h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        h.update(b"\x00" if prose is None else b"\x01" if prose else b"\x02")
        if context:
            h.update(b"\x03" + context)
        return h.digest()

    def get(self, key: bytes) -> tuple[Finding, ...] | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: bytes, findings: list[Finding], chars: int) -> None:
        if chars > self.max_chars:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._chars -= old[1]
            self._data[key] = (tuple(findings), chars)
            self._chars += chars
            while self._data and (len(self._data) > self.max_entries or self._chars > self.max_chars):
                _, (_, n) = self._data.popitem(last=False)
                self._chars -= n

    def __len__(self) -> int:
        return len(self._data)

