"""The string leaves of one streamed JSON event, and the run key under which a leaf continues
the text of earlier events.

A run key is the leaf's JSON path with array positions, the values of index fields met on the
way (``index``, ``output_index`` ...: OpenAI puts a tool call's ``index`` in an array of one)
and the event's ``type``. Leaves under label keys (ids, model, role, finish reason) are not
text that continues: they are scanned whole, per event.
"""

from __future__ import annotations

from typing import Any

LABEL_KEYS = frozenset({
    "id", "object", "model", "role", "type", "event", "created", "system_fingerprint",
    "finish_reason", "stop_reason", "status", "name", "service_tier", "logprobs",
})
INDEX_KEYS = frozenset({"index", "output_index", "content_index", "summary_index",
                        "choice_index"})
JSON_TEXT_KEYS = frozenset({"arguments", "partial_json"})  # their text is JSON source

Loc = tuple  # keys and array positions from the root


def is_label(key: Any) -> bool:
    return isinstance(key, str) and (key in LABEL_KEYS or key.endswith("_id"))


def text_leaves(doc: Any) -> dict[tuple, Loc]:
    """run key -> location of every non-empty string leaf that is not a label."""
    out: dict[tuple, Loc] = {}
    root_type = doc.get("type") if isinstance(doc, dict) else None
    base: tuple = (("type", root_type),) if isinstance(root_type, str) else ()

    def walk(node: Any, loc: Loc, key: tuple) -> None:
        if isinstance(node, dict):
            marks = tuple((k, node[k]) for k in sorted(INDEX_KEYS & node.keys())
                          if isinstance(node[k], int))
            for k, v in node.items():
                if isinstance(v, str):
                    if v and not is_label(k):
                        out[key + marks + (k,)] = loc + (k,)
                elif isinstance(v, (dict, list)):
                    walk(v, loc + (k,), key + marks + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, str):
                    if v:
                        out[key + (i,)] = loc + (i,)
                elif isinstance(v, (dict, list)):
                    walk(v, loc + (i,), key + (i,))

    if isinstance(doc, str):
        return {("<text>",): ()} if doc else {}
    walk(doc, (), base)
    return out


def get(doc: Any, loc: Loc) -> Any:
    for part in loc:
        doc = doc[part]
    return doc


def put(doc: Any, loc: Loc, value: Any) -> Any:
    """`doc` with the leaf at `loc` set to `value` (a bare string root is replaced)."""
    if not loc:
        return value
    node = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value
    return doc


# Leaves that known APIs stream as pieces of one text (a piece is a fragment, not a text)
DELTA_KEYS = frozenset({"content", "text", "delta", "arguments", "partial_json", "thinking",
                        "reasoning", "reasoning_content", "refusal", "output_text"})


def separate_pieces(key: tuple) -> bool:
    """True when each event's piece of this run may be a text of its own (text data, unknown
    JSON keys): the hold-back then also scans every piece alone, since joining can glue a value
    to its neighbour (``ann@example.com`` + ``plain text``)."""
    return not key or key[-1] not in DELTA_KEYS


def is_json_text(key: tuple) -> bool:
    return bool(key) and key[-1] in JSON_TEXT_KEYS
