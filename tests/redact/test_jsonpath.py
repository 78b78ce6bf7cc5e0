"""The JSON path syntax: parsing, and which nodes a scope selects."""

from __future__ import annotations

import pytest
from egress_gateway.redact.jsonpath import (
    ANY_INDEX,
    ANY_KEY,
    DEEP,
    INDEX,
    KEY,
    Scope,
    parse_path,
)


@pytest.mark.parametrize("path,tokens", [
    ("messages", ((KEY, "messages"),)),
    ("$.messages", ((KEY, "messages"),)),
    ("messages[*].content", ((KEY, "messages"), (ANY_INDEX, None), (KEY, "content"))),
    ("messages[2].content", ((KEY, "messages"), (INDEX, 2), (KEY, "content"))),
    ("*.text", ((ANY_KEY, None), (KEY, "text"))),
    ("**.text", ((DEEP, None), (KEY, "text"))),
    ('a["x.y"].b', ((KEY, "a"), (KEY, "x.y"), (KEY, "b"))),
    ('["k\\"q"]', ((KEY, 'k"q'),)),
    ("[0]", ((INDEX, 0),)),
    ("$", ()),
    ("content_block.input", ((KEY, "content_block"), (KEY, "input"))),
], ids=["key", "dollar", "any-index", "index", "any-key", "deep", "quoted", "quoted-escape",
        "root-index", "root", "underscore"])
def test_parse(path, tokens):
    assert parse_path(path) == tokens


@pytest.mark.parametrize("path", [
    "", "a..b", "a[", "a[x]", "a[-1]", "a.b c", "$x", 'a["unterminated', "a.", ".",
], ids=["empty", "double-dot", "open-bracket", "bad-index", "negative", "space", "dollar-name",
        "unterminated", "trailing-dot", "dot"])
def test_parse_errors(path):
    with pytest.raises(ValueError):
        parse_path(path)


MESSAGES = Scope(["messages[*].content"], ["messages[*].content[*].type"])


@pytest.mark.parametrize("scope,path,selected", [
    (Scope(), ("anything", 0, "x"), True),
    (MESSAGES, ("messages", 0, "content"), True),
    (MESSAGES, ("messages", 3, "content", 1, "text"), True),
    (MESSAGES, ("messages", 3, "content", 1, "type"), False),
    (MESSAGES, ("messages", 3, "role"), False),
    (MESSAGES, ("system", 0, "text"), False),
    (MESSAGES, ("model",), False),
    (MESSAGES, ("messages", "content"), False),
    (Scope(["messages[1].content"]), ("messages", 0, "content"), False),
    (Scope(["messages[1].content"]), ("messages", 1, "content"), True),
    (Scope(["**.text"]), ("a", 0, "b", "text"), True),
    (Scope(["**.text"]), ("text",), True),
    (Scope(["**.text"]), ("a", "texts"), False),
    (Scope(["*.text"]), ("a", "text"), True),
    (Scope(["*.text"]), (0, "text"), False),
    (Scope(None, ["**.id"]), ("a", 3, "id"), False),
    (Scope(None, ["**.id"]), ("a", 3, "name"), True),
    (Scope(["$"]), ("x",), True),
    (Scope([]), ("x",), False),
], ids=["everything", "selected", "below-selected", "skipped-inside", "sibling", "system",
        "model", "key-not-index", "index-miss", "index-hit", "deep", "deep-zero", "deep-miss",
        "any-key", "any-key-not-index", "skip-deep", "skip-deep-other", "root", "empty-scan"])
def test_selects(scope, path, selected):
    assert scope.selects(path) is selected


def test_dead_subtrees_are_pruned():
    st = MESSAGES.child(MESSAGES.root(), "tools")
    assert st.dead
    assert MESSAGES.child(st, 0) is st  # no work below a dead node


def test_child_states_are_remembered_within_bounds(monkeypatch):
    from egress_gateway.redact import jsonpath

    monkeypatch.setattr(jsonpath, "MEMO_ENTRIES", 8)
    scope = jsonpath.Scope(["messages[*].content", "system"], ["metadata.**"],
                           [("messages[*].content[*].id", "id")])
    fresh = jsonpath.Scope(["messages[*].content", "system"], ["metadata.**"],
                           [("messages[*].content[*].id", "id")])
    paths = [["messages", 0, "content"], ["messages", 3, "content", 1, "id"], ["system"],
             ["metadata", "user"], ["model"], ["k" * 100, "x"]] * 3
    for path in paths:
        st = memo = scope.root()
        for seg in path:
            memo = scope.child(memo, seg)
            st = fresh._child(st, seg) if not st.final else st
        assert memo == st
        assert scope.selects(path) == fresh.selects(path)
        assert len(scope._children) <= 8
    assert all(not (isinstance(seg, str) and len(seg) > 64) for _, seg in scope._children)
