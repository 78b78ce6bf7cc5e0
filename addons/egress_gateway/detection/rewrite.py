"""Rewriting a text's findings with their operators (pure; no Presidio in the gateway process).

Same output as Presidio's ``AnonymizerEngine.anonymize`` on the engine's merged, non-overlapping
findings: neighbours of one entity type separated only by spaces become one span ("Jane" "Roe"
-> one ``<PERSON>``), then each span is replaced by its operator's value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from egress_gateway.detection.findings import Finding

#: a value -> what replaces it (one per entity type, `operators.rewriter`)
Rewriter = Callable[[str], str]


def merge_space_separated(text: str, findings: Sequence[Finding]) -> list[tuple[str, int, int]]:
    """(entity, start, end) spans, sorted; same-type neighbours with only spaces between merged."""
    spans: list[tuple[str, int, int]] = []
    for f in sorted(findings, key=lambda f: (f.start, f.end)):
        if spans:
            entity, start, end = spans[-1]
            gap = text[end:f.start]
            if entity == f.entity_type and gap and gap.strip(" ") == "":
                spans[-1] = (entity, start, f.end)
                continue
        spans.append((f.entity_type, f.start, f.end))
    return spans


def rewrite(text: str, findings: Sequence[Finding], rewriters: Mapping[str, Rewriter]) -> str:
    """`text` with each (merged) finding's span replaced by ``rewriters[entity](value)``."""
    out: list[str] = []
    pos = 0
    for entity, start, end in merge_space_separated(text, findings):
        out.append(text[pos:start])
        out.append(rewriters[entity](text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)
