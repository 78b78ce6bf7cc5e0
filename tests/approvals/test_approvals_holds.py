"""A held request's state: the first decision wins, timeouts, the bounded "approve always" memory."""

from __future__ import annotations

import asyncio

from egress_gateway.approvals.holds import Always, Hold, detected_text
from egress_gateway.approvals.settings import ApproveRule
from mitmproxy.test import tflow


def _rule(name="r", **kw) -> ApproveRule:
    return ApproveRule(name=name, reason="x", methods=["POST"], **kw)


def test_first_decision_wins():
    f = tflow.tflow()
    f.intercept()
    h = Hold(f, _rule(), {})
    h.decide("deny", "client disconnected")
    h.decide("approve", "reviewer:command", True)
    assert asyncio.run(h.wait()) == ("deny", "client disconnected", False)


def test_timeout():
    f = tflow.tflow()
    f.intercept()
    h = Hold(f, _rule(timeout=0.05), {})
    assert asyncio.run(h.wait()) == ("timeout", "timeout", False)


def test_always_is_bounded_and_keyed_by_rule_content():
    a = Always(limit=2)
    r1, r2 = _rule("a"), _rule("b")
    a.add("s1", r1)
    a.add("s2", r1)
    a.add("s3", r2)
    assert len(a) == 2 and ("s1", r1) not in a and ("s3", r2) in a
    assert ("s3", _rule("b", timeout=5)) not in a  # a changed rule needs a new decision


def test_detected_text():
    assert detected_text({"US_SSN": 2, "CREDIT_CARD": 1, "X": 0}) == "CREDIT_CARD x1, US_SSN x2"
    assert detected_text({}) == "nothing"
