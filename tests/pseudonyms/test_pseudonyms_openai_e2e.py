"""An OpenAI-compatible ``/v1/chat/completions`` stub through a real gateway, restore on
(api.test.example) and off (other.test.example), streaming and not (issue 20).

The stub echoes the user's text and adds a value of its own; streams cut every value and token
at every offset across ``choices[0].delta.content`` and ``tool_calls[0].function.arguments``.
Split values never reach the client unredacted; restored values are byte-exact; the SSE stays
valid and ``[DONE]`` arrives.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from gwharness import Gateway, Upstream, policy_yaml
from test_pseudonyms_e2e import KEY, TOKEN

ON, OFF = "api.test.example", "other.test.example"
EMAIL = "Jane.Roe@example.com"
ANSWER_ONLY = "answer.only@example.org"
VALUE = re.compile(r"<[A-Z_]+(?:_[a-z2-7]{8})?>|[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _chunk(content=None, args=None, finish=None) -> bytes:
    delta = {}
    if content is not None:
        delta["content"] = content
    if args is not None:
        delta["tool_calls"] = [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "send", "arguments": args}}]
    doc = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
           "model": "gpt-test", "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _cut(text: str, cut: int) -> list[str]:
    """Pieces of `text` with a cut `cut` characters into every value or token."""
    out, pos = [], 0
    for m in VALUE.finditer(text):
        at = min(m.start() + cut, m.end())
        if pos < at:
            out.append(text[pos:at])
            pos = at
    out.append(text[pos:])
    return [p for p in out if p]


def echo(record: dict):
    doc = json.loads(record["body"])
    said = doc["messages"][-1]["content"]
    reply = f"You said: {said} (cc {ANSWER_ONLY})"
    first = VALUE.search(said)
    args = json.dumps({"to": first.group(0) if first else ""})
    if not doc.get("stream"):
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": "gpt-test", "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": reply, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "send", "arguments": args}}]}}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
    cut = int(record["headers"].get("x-cut", "3"))
    out = _chunk(content="")
    out += b"".join(_chunk(content=p) for p in _cut(reply, cut))
    out += b"".join(_chunk(args=p) for p in _cut(args, cut))
    out += _chunk(finish="tool_calls") + b"data: [DONE]\n\n"
    return 200, {"Content-Type": "text/event-stream"}, out


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    stub = Upstream("openai", tls=True, cert_dir=cert_dir, handler=echo)
    work = tmp_path_factory.mktemp("pseudonyms-openai-e2e")
    policy = policy_yaml(
        allow=[{"host": h, "ports": [stub.port]} for h in (ON, OFF)],
        resolve={ON: "127.0.0.1", OFF: "127.0.0.1"},
        redact={"rules": [{"hosts": [ON], "restore": True}, {"hosts": [OFF]}]},
        detection={"entities": ["EMAIL_ADDRESS"]})
    (work / "policy.yaml").write_text(policy)
    gw = Gateway(work, work / "policy.yaml", confdir=confdir, env={"GATEWAY_VAULT_KEY": KEY})
    yield gw, stub
    gw.stop()
    stub.close()


def call(gw, stub, host: str, text: str, stream: bool, cut: int = 3) -> httpx.Response:
    with httpx.Client(proxy=gw.proxy, verify=gw.ca_cert, timeout=30) as c:
        return c.post(f"https://{host}:{stub.port}/v1/chat/completions",
                      headers={"X-Agent-Session": f"oa-{host}", "X-Cut": str(cut),
                               "Authorization": "Bearer sk-test"},
                      json={"model": "gpt-test", "stream": stream,
                            "messages": [{"role": "user", "content": text}]})


def parse_stream(body: bytes) -> tuple[str, str, list]:
    assert body.endswith(b"data: [DONE]\n\n")
    content = args = ""
    docs = []
    for block in body.split(b"\n\n"):
        if not block or block == b"data: [DONE]":
            continue
        assert block.startswith(b"data: ")
        doc = json.loads(block[6:])
        docs.append(doc)
        d = doc["choices"][0]["delta"]
        content += d.get("content") or ""
        args += "".join(t["function"]["arguments"] for t in d.get("tool_calls", []))
    return content, args, docs


TEXT = f"Mail {EMAIL} and confirm {EMAIL} please."


def test_restore_on_json(env):
    gw, stub = env
    start = len(stub.requests)
    r = call(gw, stub, ON, TEXT, stream=False)
    assert EMAIL not in stub.requests[start]["body"]
    assert TOKEN.search(stub.requests[start]["body"])
    msg = r.json()["choices"][0]["message"]
    assert msg["content"] == f"You said: {TEXT} (cc <EMAIL_ADDRESS>)"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"to": EMAIL}


@pytest.mark.parametrize("cut", range(0, 25, 2))
def test_restore_on_stream_every_offset(env, cut):
    gw, stub = env
    start = len(stub.requests)
    r = call(gw, stub, ON, TEXT, stream=True, cut=cut)
    assert EMAIL not in stub.requests[start]["body"]
    content, args, docs = parse_stream(r.content)
    assert content == f"You said: {TEXT} (cc <EMAIL_ADDRESS>)"
    assert json.loads(args) == {"to": EMAIL}
    assert docs[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert ANSWER_ONLY.encode() not in r.content


@pytest.mark.parametrize("cut", range(0, 21, 3))
def test_restore_off_stream_split_values_are_redacted(env, cut):
    gw, stub = env
    r = call(gw, stub, OFF, TEXT, stream=True, cut=cut)
    content, args, _ = parse_stream(r.content)
    assert EMAIL.encode() not in r.content and ANSWER_ONLY.encode() not in r.content
    assert content == "You said: Mail <EMAIL_ADDRESS> and confirm <EMAIL_ADDRESS> please. " \
                      "(cc <EMAIL_ADDRESS>)"
    assert json.loads(args) == {"to": "<EMAIL_ADDRESS>"}


def test_restore_off_json(env):
    gw, stub = env
    r = call(gw, stub, OFF, TEXT, stream=False)
    assert EMAIL not in r.text and ANSWER_ONLY not in r.text
    assert "<EMAIL_ADDRESS>" in r.json()["choices"][0]["message"]["content"]
