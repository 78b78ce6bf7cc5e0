"""Reversible pseudonyms end to end: the official anthropic SDK through a real gateway to a
loopback Messages API stub that echoes what it received (issue 20).

The stub never receives a real value; the SDK gets the real values back exactly (JSON answers,
tool-use inputs, streams with tokens cut at every offset across ``text_delta`` and
``input_json_delta`` events); concurrent sessions never see each other's values; a value that
only the answer carries is redacted.
"""

from __future__ import annotations

import json
import re
import ssl
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
from gwharness import Gateway, Upstream, policy_yaml

API = "api.test.example"
MODEL = "claude-sonnet-4-5"
KEY = "test-vault-key-0123456789abcdef"
TOKEN = re.compile(r"<([A-Z][A-Z0-9_]*)_([a-z2-7]{8})>")
EMAIL, CARD = "Jane.Roe@example.com", "4111-1111-1111-1111"
ANSWER_ONLY = "answer.only@example.org"
REAL = (EMAIL, CARD, ANSWER_ONLY)


def _sse(*events: dict) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _message(content: list) -> dict:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
            "content": content, "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1}}


def _pieces(text: str, cut: int) -> list[str]:
    """`text` cut `cut` characters into each token (and into small pieces elsewhere)."""
    out, pos = [], 0
    for m in TOKEN.finditer(text):
        at = m.start() + cut
        if pos < at:
            out.append(text[pos:at])
            pos = at
    out.append(text[pos:])
    return [p for p in out if p]


def echo(record: dict):
    """The stub: echoes the last user text; a tool call carries the first token it saw."""
    doc = json.loads(record["body"])
    said = doc["messages"][-1]["content"]
    tokens = TOKEN.findall(said)
    first = f"<{tokens[0][0]}_{tokens[0][1]}>" if tokens else "none"
    reply = f"You said: {said} (cc {ANSWER_ONLY})"
    tool_input = {"to": first, "note": f"mail {first} now"}
    if not doc.get("stream"):
        body = _message([{"type": "text", "text": reply},
                         {"type": "tool_use", "id": "toolu_01", "name": "send_mail",
                          "input": tool_input}])
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
    cut = int(record["headers"].get("x-cut", "3"))
    args = json.dumps(tool_input)
    events = [{"type": "message_start", "message": _message([])},
              {"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": p}} for p in _pieces(reply, cut)]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "content_block_start", "index": 1, "content_block": {
                   "type": "tool_use", "id": "toolu_01", "name": "send_mail", "input": {}}}]
    events += [{"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": p}}
               for p in _pieces(args, cut)]
    events += [{"type": "content_block_stop", "index": 1},
               {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 5}},
               {"type": "message_stop"}]
    return 200, {"Content-Type": "text/event-stream"}, _sse(*events)


def restore_policy(api: str, port: int, restore: bool = True) -> str:
    return policy_yaml(
        allow=[{"host": api, "ports": [port]}], resolve={api: "127.0.0.1"},
        redact={"rules": [{"hosts": [api], "restore": restore}]},
        detection={"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN"]})


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    stub = Upstream("messages", tls=True, cert_dir=cert_dir, handler=echo)
    work = tmp_path_factory.mktemp("pseudonyms-e2e")
    (work / "policy.yaml").write_text(restore_policy(API, stub.port))
    gw = Gateway(work, work / "policy.yaml", confdir=confdir, env={"GATEWAY_VAULT_KEY": KEY})
    yield gw, stub
    gw.stop()
    stub.close()


def client(gw, stub, session: str, **headers) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-api03-test-key-not-real", base_url=f"https://{API}:{stub.port}",
        max_retries=0, default_headers={"X-Agent-Session": session, **headers},
        http_client=anthropic.DefaultHttpxClient(
            proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)))


def prompt(email=EMAIL, card=CARD) -> str:
    return f"Write to {email} about card {card}, then confirm {email}."


def expected_reply(text: str) -> str:
    return f"You said: {text} (cc <EMAIL_ADDRESS>)"


def ask(gw, stub, session: str, text: str):
    c = client(gw, stub, session)
    return c.messages.create(model=MODEL, max_tokens=64,
                             messages=[{"role": "user", "content": text}])


def ask_stream(gw, stub, session: str, text: str, cut: int):
    c = client(gw, stub, session, **{"X-Cut": str(cut)})
    with c.messages.stream(model=MODEL, max_tokens=64,
                           messages=[{"role": "user", "content": text}]) as s:
        return s.get_final_message()


def _stub_bodies(stub, start: int) -> str:
    return "\n".join(r["body"] for r in stub.requests[start:])


def test_json_answer_gets_real_values_and_the_stub_only_tokens(env):
    gw, stub = env
    start = len(stub.requests)
    msg = ask(gw, stub, "agent-json", prompt())
    sent = _stub_bodies(stub, start)
    assert not any(v in sent for v in (EMAIL, CARD, EMAIL.lower()))
    tokens = set(TOKEN.findall(sent))
    assert {e for e, _ in tokens} == {"EMAIL_ADDRESS", "CREDIT_CARD"}
    assert len(tokens) == 2  # the same value twice: one token
    text, tool = msg.content
    assert text.text == expected_reply(prompt())
    assert tool.input == {"to": EMAIL, "note": f"mail {EMAIL} now"}


@pytest.mark.parametrize("cut", range(0, 25))
def test_stream_tokens_cut_at_every_offset_come_back_exact(env, cut):
    gw, stub = env
    start = len(stub.requests)
    msg = ask_stream(gw, stub, "agent-stream", prompt(), cut)
    assert not any(v in _stub_bodies(stub, start) for v in (EMAIL, CARD))
    text, tool = msg.content
    assert text.text == expected_reply(prompt())
    assert tool.input == {"to": EMAIL, "note": f"mail {EMAIL} now"}


def test_tokens_are_per_session_and_stable(env):
    gw, stub = env
    start = len(stub.requests)
    ask(gw, stub, "agent-a", prompt())
    ask(gw, stub, "agent-a", prompt())
    ask(gw, stub, "agent-b", prompt())
    a1, a2, b = (set(TOKEN.findall(r["body"])) for r in stub.requests[start:start + 3])
    assert a1 == a2 and not (a1 & b)


def test_many_concurrent_sessions_never_see_each_other(env):
    gw, stub = env

    def one(i: int):
        email, card = f"user{i}.x@example.com", "4111-1111-1111-1111"
        text = prompt(email, card)
        if i % 2:
            msg = ask(gw, stub, f"conc-{i}", text)
        else:
            msg = ask_stream(gw, stub, f"conc-{i}", text, i % 20)
        return i, email, msg

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    for i, email, msg in results:
        text, tool = msg.content
        assert text.text == expected_reply(prompt(email, CARD)), i
        assert tool.input["to"] == email
        others = [f"user{j}.x@example.com" for j in range(24) if j != i]
        assert not any(o in text.text or o in json.dumps(tool.input) for o in others)


def test_another_sessions_token_stays_a_token(env):
    gw, stub = env
    start = len(stub.requests)
    ask(gw, stub, "owner", prompt())
    token = TOKEN.search(stub.requests[start]["body"]).group(0)
    msg = ask(gw, stub, "thief", f"Tell me who {token} is")
    assert msg.content[0].text == expected_reply(f"Tell me who {token} is")
    assert EMAIL not in msg.content[0].text and CARD not in msg.content[0].text


def test_audit_holds_counts_not_values(env):
    gw, stub = env
    ask(gw, stub, "audit-agent", prompt())
    lines = [line for line in gw.audit() if line.get("pseudonyms")]
    assert any(line["pseudonyms"].get("restored") for line in lines)
    dump = json.dumps(gw.audit()) + gw.log_text()
    assert not any(v in dump for v in REAL)


def test_missing_vault_key_stops_start_up(tmp_path, confdir):
    (tmp_path / "policy.yaml").write_text(restore_policy(API, 9))
    gw = Gateway(tmp_path, tmp_path / "policy.yaml", confdir=confdir, wait=False,
                 env={"GATEWAY_VAULT_KEY": ""})
    try:
        gw.proc.wait(60)
        assert gw.proc.returncode != 0
        assert "GATEWAY_VAULT_KEY" in gw.log_text()
    finally:
        gw.stop()
