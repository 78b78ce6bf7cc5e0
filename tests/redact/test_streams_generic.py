"""Generic stream reassembly by JSON path (redact/streams/) on several shapes, every split
point, with a fake e-mail detector; keyword boundaries of the hold-back (issue 20)."""

from __future__ import annotations

import json

import pytest
from egress_gateway.net.sse import SSEParser
from egress_gateway.pseudonyms.restore import Restorer
from egress_gateway.redact.stream import HoldBack, StreamRedactor
from egress_gateway.redact.streams import keywords, paths
from sse_fakes import analyze, apply, redact_data

EMAIL = "jane.roe@example.com"
SENTENCE = f"Please write to {EMAIL} today, and keep this sentence long enough to release."


def split_at(text: str, cut: int) -> list[str]:
    return [p for p in (text[:cut], text[cut:]) if p]


def chat_chunk(content=None, args=None, tool_index=0, finish=None):
    delta = {}
    if content is not None:
        delta["content"] = content
    if args is not None:
        delta["tool_calls"] = [{"index": tool_index, "function": {"arguments": args}}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-test", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}


def frame(docs, done=True) -> bytes:
    out = b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs)
    return out + (b"data: [DONE]\n\n" if done else b"")


def run(stream: bytes, restorer=None, pieces: int = 7) -> bytes:
    r = StreamRedactor(analyze, apply, redact_data, restorer=restorer)
    out = b""
    for i in range(0, len(stream), pieces):
        got = r(stream[i:i + pieces])
        assert got != b""
        out += b"".join(got) if isinstance(got, list) else got
    out += r(b"")
    return out


def events(stream: bytes) -> list:
    return [e.data for e in SSEParser().feed(stream)]


def chat_text(stream: bytes, field="content") -> str:
    text = ""
    for data in events(stream):
        if data == "[DONE]":
            continue
        d = json.loads(data)["choices"][0]["delta"]
        if field == "content":
            text += d.get("content") or ""
        else:
            text += "".join(t["function"]["arguments"] for t in d.get("tool_calls", []))
    return text


@pytest.mark.parametrize("cut", range(16, 16 + len(EMAIL) + 1))
def test_openai_chat_content_split_at_every_offset(cut):
    docs = [chat_chunk(content="")] + [chat_chunk(content=p) for p in split_at(SENTENCE, cut)]
    docs.append(chat_chunk(finish="stop"))
    out = run(frame(docs))
    assert EMAIL.encode() not in out
    assert chat_text(out) == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")
    assert events(out)[-1] == "[DONE]"
    assert json.loads(events(out)[-2])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("cut", range(10, 10 + len(EMAIL) + 1, 3))
def test_openai_chat_tool_call_arguments_split(cut):
    args = json.dumps({"to": EMAIL, "subject": "a long enough subject line for release"})
    docs = [chat_chunk(args=p, tool_index=1) for p in split_at(args, cut)]
    out = run(frame(docs))
    assert EMAIL.encode() not in out
    assert json.loads(chat_text(out, "args"))["to"] == "<EMAIL_ADDRESS>"


@pytest.mark.parametrize("cut", range(16, 16 + len(EMAIL) + 1, 2))
def test_openai_responses_api_deltas_and_done(cut):
    docs = [{"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}]
    docs += [{"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
              "content_index": 0, "delta": p} for p in split_at(SENTENCE, cut)]
    docs.append({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "text": SENTENCE})
    docs.append({"type": "response.completed", "response": {"id": "resp_1", "status": "done"}})
    stream = b"".join(b"event: " + d["type"].encode() + b"\ndata: " + json.dumps(d).encode()
                      + b"\n\n" for d in docs)
    out = run(stream)
    assert EMAIL.encode() not in out
    got = [json.loads(d) for d in events(out)]
    assert [g["type"] for g in got][0] == "response.created"
    assert got[-1]["type"] == "response.completed"
    deltas = "".join(g["delta"] for g in got if g["type"] == "response.output_text.delta")
    assert deltas == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")
    done = [g for g in got if g["type"] == "response.output_text.done"]
    assert len(done) == 1 and done[0]["text"] == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")


@pytest.mark.parametrize("cut", range(16, 16 + len(EMAIL) + 1, 2))
def test_unknown_json_shape_and_text_data(cut):
    docs = [{"seq": i, "payload": {"chunk": p}} for i, p in enumerate(split_at(SENTENCE, cut))]
    out = run(frame(docs, done=False))
    assert EMAIL.encode() not in out
    text = "".join(json.loads(d)["payload"]["chunk"] for d in events(out))
    assert text == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")
    plain = b"".join(b"data: " + p.encode() + b"\n\n" for p in split_at(SENTENCE, cut))
    out = run(plain)
    assert EMAIL.encode() not in out
    assert "".join(events(out)) == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")


def test_unchanged_events_pass_byte_for_byte_and_first_event_is_not_held():
    first = b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    r = StreamRedactor(analyze, apply, redact_data)
    assert b"".join(r(first)) == first


def test_restore_in_openai_chat_stream_at_every_split():
    token, value = "<EMAIL_ADDRESS_abcdefgh>", 'jo "x" @example.com'
    text = f"Write to {token} now, please, this is a long enough sentence to release it."
    args = json.dumps({"to": token})
    for cut in range(8, 8 + len(token) + 2):
        docs = [chat_chunk(content=p) for p in split_at(text, cut)]
        docs += [chat_chunk(args=p) for p in split_at(args, cut - 1)]
        out = run(frame(docs), restorer=lambda ctx: Restorer(
            lambda t: value if t == token else None, ctx), pieces=5)
        assert chat_text(out) == text.replace(token, value), cut
        assert json.loads(chat_text(out, "args")) == {"to": value}


# --- keyword boundaries --------------------------------------------------------------------
@pytest.mark.parametrize("text, cut, expected", [
    ("my password: ", 10, 3),
    ("my password: hunter2", 16, 3),
    ("my password: hunter2 and more", 16, 3),
    ("my password: hunter2 and more", 21, 21),
    ("my password", 9, 3),
    ("my password is", 12, 3),
    ("aws_secret_access_key = ", 5, 0),
    ("k -----BEGIN PRIVATE KEY-----\nMIIE", 10, 2),
    ("k -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- ok", 63, 63),
    ("no keyword here at all", 10, 10),
])
def test_keyword_guard(text, cut, expected):
    assert keywords.guard(text, cut) == expected


def test_holdback_holds_a_keyword_until_its_value_is_complete():
    seen = []

    def analyze_kw(text):
        seen.append(text)
        return []

    h = HoldBack(analyze_kw, lambda t, f: (t, {}, set()), window=5, min_release=1)
    out = h.push("Here is some text and the password: ")
    assert "password" not in out
    out += h.push("hunter2")
    assert "password" not in out
    out += h.push(" and then quite some more text follows here")
    assert any("password: hunter2" in t for t in seen)
    assert out.endswith("") and "hunter2" not in out.split("password")[0]


def test_run_keys_separate_choices_tool_calls_and_event_types():
    a = paths.text_leaves(chat_chunk(args="x", tool_index=0))
    b = paths.text_leaves(chat_chunk(args="x", tool_index=1))
    assert a.keys() != b.keys()
    assert not paths.text_leaves({"id": "x", "model": "m", "type": "t"})


@pytest.mark.parametrize("cut", range(16, 16 + len(EMAIL) + 1, 2))
def test_ndjson_stream_split_values(cut):
    from egress_gateway.redact.streams.ndjson import NdjsonRedactor

    lines = [{"message": {"content": p}, "done": False} for p in split_at(SENTENCE, cut)]
    lines.append({"done": True})
    body = b"".join(json.dumps(d).encode() + b"\n" for d in lines)
    r = NdjsonRedactor(analyze, apply, redact_data)
    out = b""
    for i in range(0, len(body), 9):
        got = r(body[i:i + 9])
        assert got != b""
        out += b"".join(got)
    out += r(b"")
    assert EMAIL.encode() not in out
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[-1] == {"done": True}
    text = "".join(d.get("message", {}).get("content", "") for d in docs)
    assert text == SENTENCE.replace(EMAIL, "<EMAIL_ADDRESS>")
