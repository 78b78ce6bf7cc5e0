"""Which instance wrote a log, and whether the log still holds its checkpointed head."""

from __future__ import annotations

import json

import pytest
from egress_gateway.fleet.heads import check_head, instances_of

LINES = [
    {"seq": 1, "hash": "h1", "instance": "gw-a"},
    {"seq": 2, "hash": "h2", "instance": "gw-b"},
    {"seq": 3, "hash": "h3", "instance": "gw-a"},
]


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LINES) + "not json\n")
    return path


def test_instances_in_order_of_first_appearance(log, tmp_path):
    assert instances_of(log) == ["gw-a", "gw-b"]
    assert instances_of(tmp_path / "missing.jsonl") == []


HEAD_CASES = [
    ("the head is there", 2, "h2", None),
    ("rewritten", 2, "other", "rewritten"),
    ("cut before the head", 9, "h9", "cut"),
]


@pytest.mark.parametrize("seq,head,problem", [c[1:] for c in HEAD_CASES],
                         ids=[c[0] for c in HEAD_CASES])
def test_check_head(log, seq, head, problem):
    got = check_head(log, seq, head)
    assert got is None if problem is None else problem in got


def test_check_head_of_a_missing_log(tmp_path):
    assert "cannot read" in check_head(tmp_path / "missing.jsonl", 1, "h")
