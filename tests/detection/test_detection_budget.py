"""`deadline(max_fresh=...)`: new text over the budget is refused before any analysis; cached
text is free; an expired deadline stops a scan before it starts."""

from __future__ import annotations

import pytest
from egress_gateway.detection.engine import TextOverBudget, deadline

PROSE = "Maria Lopez wrote to maria.lopez@example.com about the invoice for Tuesday."


def test_new_text_over_the_budget_is_refused_before_analysis(engine):
    text = PROSE + " fresh-budget-1"
    with deadline(30, max_fresh=len(text) - 1), pytest.raises(TextOverBudget) as e:
        engine.redact_many([text])
    assert "gateway_scan_max_text" in str(e.value) and "maria" not in str(e.value).lower()
    # nothing was analysed, so nothing was cached: the same text still costs its length
    assert engine.redact_many_cached([text]) is None


def test_cached_text_does_not_count_and_the_budget_is_shared_by_calls(engine):
    cached = PROSE + " fresh-budget-2"
    engine.redact_many([cached])
    new = PROSE + " fresh-budget-3"
    with deadline(30, max_fresh=len(new) + 5):
        assert engine.redact_many([cached, new])[1].counts  # the cached one is free
        with pytest.raises(TextOverBudget):  # the second call sees what the first spent
            engine.redact_many([PROSE + " fresh-budget-4"], prose=False)


def test_within_the_budget_findings_are_unchanged(engine):
    text = PROSE + " fresh-budget-5"
    with deadline(30, max_fresh=10_000):
        inside = engine.redact_many([text])[0]
    assert inside.counts == engine.redact_many([text])[0].counts and inside.counts
