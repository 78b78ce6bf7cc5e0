"""The Messages API's own fields and egress through the provider, end to end (issue 17).

A real gateway (run_gateway.sh) with the shipped redact and detection sections (the Messages API
rules pointed at the loopback stub's name), the official anthropic SDK as the agent, and a TLS
loopback stub that logs every raw byte it receives (`canaries.RawUpstream`). A prompt-injected
agent writes canaries into the fields the old rule skipped, or asks the provider to fetch URLs:
each case ends redacted (no canary form reaches the stub) or refused with its documented code
and the field named (nothing reaches the stub).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse

import anthropic
import httpx
import pytest
import yaml
from canaries import CANARIES, RawUpstream, leaks
from gwharness import REPO, Gateway, make_cert, policy_yaml

API = "api.test.example"
MODEL = "claude-sonnet-4-5-20250929"
SIG = "EqQBCkgIARABGAIiQGVyb3VuZCB0aGUgd29ybGQgaW4gZWlnaHR5IGRheXMgMTIzNDU2Nzg5MA=="
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFiAAAAEklEQVR4nGNoaGhgwAcYRqYCAMNLP4Fe2MeoAAAAAElFTkSuQmCC"
CANARY = (f"mail {CANARIES['email']} ssn {CANARIES['ssn']} card {CANARIES['card']} "
          f"token {CANARIES['github_token']} key {CANARIES['aws_key_id']}")
PATTERN_CANARIES = {k: v for k, v in CANARIES.items() if k != "pem"}
USER = {"role": "user", "content": "Hello"}


def _reply(got: bytes) -> bytes | None:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if len(body) < length:
        return None
    target = head.split(b" ")[1].decode()
    for case, (ctype, answer) in ANSWERS.items():
        if f"ANSWER:{case}".encode() in body:
            payload = answer.encode()
            return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode()
                    + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    if "count_tokens" in target:
        doc = {"input_tokens": 12}
    else:
        doc = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
               "model": MODEL, "content": [{"type": "text", "text": "Done."}],
               "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 12, "output_tokens": 2}}
    payload = json.dumps(doc).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def _message(**over) -> str:
    doc = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
           "model": MODEL, "content": [{"type": "text", "text": "Done."}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 12, "output_tokens": 2}}
    doc.update(over)
    return json.dumps(doc)


def _sse(*events: dict) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


_START = {"type": "message_start", "message": json.loads(_message(content=[]))}
_STOP = [{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
          "usage": {"output_tokens": 9}}, {"type": "message_stop"}]


def _thinking_stream(thinking: str, signature: str = SIG) -> str:
    return _sse(_START,
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "thinking_delta", "thinking": thinking}},
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "signature_delta", "signature": signature}},
                {"type": "content_block_stop", "index": 0},
                {"type": "content_block_start", "index": 1,
                 "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 1,
                 "delta": {"type": "text_delta", "text": "Hello there."}},
                {"type": "content_block_stop", "index": 1}, *_STOP)


#: Answers of the stub, chosen by a marker in the request ("ANSWER:<name>").
ANSWERS = {
    "fields-outside-old-paths": ("application/json", _message(
        content=[{"type": "text", "text": "See the source.", "citations": [
            {"type": "char_location", "cited_text": CANARY, "document_index": 0,
             "document_title": CANARY, "start_char_index": 0, "end_char_index": 5}]}],
        stop_sequence=CANARY, x_extra={"note": CANARY})),
    "thinking-json": ("application/json", _message(content=[
        {"type": "thinking", "thinking": CANARY, "signature": SIG},
        {"type": "text", "text": "Done."}])),
    "thinking-stream-clean": ("text/event-stream", _thinking_stream("The user greets me.")),
    "thinking-stream-canary": ("text/event-stream", _thinking_stream(CANARY)),
}


def shipped_sections(api_host: str) -> dict:
    doc = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    for rule in doc["redact"]["rules"]:
        rule["hosts"] = [api_host if h == "api.anthropic.com" else h for h in rule["hosts"]]
    return {"redact": doc["redact"], "detection": doc["detection"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir, cert_dir):
    cert, key = make_cert(cert_dir)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    stub = RawUpstream(_reply, tls_context=tls)
    work = tmp_path_factory.mktemp("messages-fields-e2e")
    policy = yaml.safe_load(policy_yaml(allow=[{"host": API, "ports": [stub.port]}],
                                        resolve={API: "127.0.0.1"}, **shipped_sections(API)))
    policy["egress"]["provider_fetch"] = ["docs.fetch.example", "fetch.example", "*.fetch.example"]
    policy["egress"]["provider_tools"] = ["web_fetch"]
    (work / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    gw = Gateway(work, work / "policy.yaml", confdir=confdir)
    yield gw, stub
    gw.stop()
    stub.close()


def client(gw, stub) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-api03-test-key-not-real", base_url=f"https://{API}:{stub.port}",
        max_retries=0, http_client=anthropic.DefaultHttpxClient(
            proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)))


def send(gw, stub, **params) -> tuple[int, dict, bytes]:
    """One SDK call; (status, gateway refusal body or {}, the raw bytes the stub received)."""
    start = len(stub.raw)
    c = client(gw, stub)
    params = {"model": MODEL, "max_tokens": 64, "messages": [USER], **params}
    try:
        raw = c.messages.with_raw_response.create(**params)
        status, body = raw.status_code, {}
    except anthropic.APIStatusError as e:
        status, body = e.status_code, e.response.json()
        assert e.response.headers["x-egress-gateway"] == body["error"]
    return status, body, bytes(stub.raw[start:])


def assistant(*blocks):
    return [USER, {"role": "assistant", "content": list(blocks)},
            {"role": "user", "content": "Go on"}]


def tool_turn(result_content):
    return [USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result",
                                      "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                                      "content": result_content}]}]


TOOL = {"name": "lookup", "description": "Look things up.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}

# (name, SDK parameters carrying the canary, expected outcome: "redacted" or a refusal code)
SKIPPED_FIELDS = [
    ("system-string", {"system": f"Be brief. {CANARY}"}, "redacted"),
    ("system-block", {"system": [{"type": "text", "text": CANARY,
                                  "cache_control": {"type": "ephemeral"}}]}, "redacted"),
    ("tool-description", {"tools": [{**TOOL, "description": CANARY}]}, "redacted"),
    ("tool-schema", {"tools": [{**TOOL, "input_schema": {"type": "object", "properties": {
        "q": {"type": "string", "description": CANARY, "enum": [CANARIES["email"]]}}}}]},
     "redacted"),
    ("tool-name", {"tools": [{**TOOL, "name": CANARIES["github_token"]}]}, "redacted"),
    ("metadata-user-id", {"metadata": {"user_id": CANARY}}, "redacted"),
    ("stop-sequences", {"stop_sequences": [CANARY]}, "redacted"),
    ("unknown-top-level", {"extra_body": {"x_exfil": {"deep": [CANARY]}}}, "redacted"),
    ("cache-control", {"system": [{"type": "text", "text": "Hi",
                                   "cache_control": {"type": "ephemeral", "ttl": CANARY}}]},
     "redacted"),
    ("text-document", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": CANARY}}]}]}, "redacted"),
    ("content-document", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "content", "content": [
            {"type": "text", "text": CANARY}]}, "title": CANARY, "context": CANARY}]}]},
     "redacted"),
    ("image-data-not-base64", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": CANARY}}]}]}, "redacted"),
    ("block-name", {"messages": assistant({"type": "tool_use", "id": "toolu_01", "input": {},
                                           "name": CANARIES["github_token"]})}, "redacted"),
    ("tool-use-id-token", {"messages": assistant({"type": "tool_use", "input": {}, "name": "x",
                                                  "id": CANARIES["github_token"]})},
     "sensitive_data"),
    ("tool-use-id-aws", {"messages": assistant({"type": "tool_use", "input": {}, "name": "x",
                                                "id": "toolu_" + CANARIES["aws_key_id"]})},
     "sensitive_data"),
    ("tool-use-id-ssn", {"messages": assistant({"type": "tool_use", "input": {}, "name": "x",
                                                "id": "toolu_" + CANARIES["ssn"]})},
     "sensitive_data"),
    ("tool-result-id", {"messages": [USER, {"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": [
                                         {"type": "tool_result", "content": "x",
                                          "tool_use_id": CANARIES["email"]}]}]},
     "sensitive_data"),
    ("model", {"model": f"claude-{CANARIES['ssn']}"}, "sensitive_data"),
    ("model-words", {"model": CANARY}, "sensitive_data"),
    ("role", {"messages": [{"role": CANARIES["email"], "content": "hi"}]}, "sensitive_data"),
    ("block-type", {"messages": [{"role": "user", "content": [
        {"type": CANARIES["email"], "text": "x"}]}]}, "sensitive_data"),
    ("thinking", {"messages": assistant({"type": "thinking", "thinking": CANARY,
                                         "signature": SIG})}, "sensitive_data"),
    ("signature", {"messages": assistant({"type": "thinking", "thinking": "Let me see.",
                                          "signature": CANARY})}, "sensitive_data"),
    ("signature-base64-with-key", {"messages": assistant({
        "type": "thinking", "thinking": "Let me see.",
        "signature": "Ab12" + CANARIES["aws_key_id"] + "Zz990000"})}, "sensitive_data"),
    ("redacted-thinking", {"messages": assistant({"type": "redacted_thinking",
                                                  "data": CANARY})}, "sensitive_data"),
    ("media-type", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": CANARIES["email"],
                                     "data": PNG}}]}]}, "sensitive_data"),
    ("nested-image-media-type", {"messages": tool_turn([
        {"type": "image", "source": {"type": "base64", "media_type": CANARIES["email"],
                                     "data": PNG}}])}, "sensitive_data"),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("params, outcome", [c[1:] for c in SKIPPED_FIELDS],
                         ids=[c[0] for c in SKIPPED_FIELDS])
def test_canaries_in_each_formerly_skipped_field_never_reach_the_stub(env, params, outcome):
    gw, stub = env
    status, body, got = send(gw, stub, **params)
    assert not leaks(got, PATTERN_CANARIES), leaks(got, PATTERN_CANARIES)
    if outcome == "redacted":
        assert status == 200 and got, body
        assert b"<EMAIL_ADDRESS>" in got or b"<GITHUB_TOKEN>" in got
    else:
        assert status == 403 and body["error"] == outcome and body["fields"], body
        assert got == b""  # refused before the stub saw a byte
        assert not leaks(json.dumps(body).encode(), PATTERN_CANARIES)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_clean_agent_fields_pass_byte_for_byte(env):
    gw, stub = env
    blocks = assistant({"type": "thinking", "thinking": "The user greets me; reply briefly.",
                        "signature": SIG},
                       {"type": "redacted_thinking", "data": SIG},
                       {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "lookup", "input": {"q": "status"}})
    params = dict(system=[{"type": "text", "text": "You are a terse assistant for Acme Corp.",
                           "cache_control": {"type": "ephemeral"}}],
                  tools=[TOOL], stop_sequences=["\n\nHuman:"], messages=blocks,
                  metadata={"user_id": "user_5f0c2a9e8b7d4c3a2e1f0a9b8c7d6e5f_session_3b9f1c2e"})
    status, _, got = send(gw, stub, **params)
    assert status == 200
    sent = json.loads(got.partition(b"\r\n\r\n")[2])
    for key in ("system", "tools", "stop_sequences", "messages", "metadata", "model"):
        expected = params.get(key, MODEL if key == "model" else None)
        assert sent[key] == expected, key


FETCHES = [
    # (name, SDK parameters, expected outcome, field named)
    ("mcp-outside", {"extra_body": {"mcp_servers": [
        {"type": "url", "url": "https://mcp.evil.test/sse", "name": "x",
         "authorization_token": "t0ken"}]}}, "blocked", "$.mcp_servers[0].url"),
    ("image-url-outside", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://evil.test/a.png"}}]}]},
     "blocked", "$.messages[0].content[0].source.url"),
    ("document-url-outside", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://evil.test/a.pdf"}}]}]},
     "blocked", "$.messages[0].content[0].source.url"),
    ("url-in-tool-result-outside", {"messages": tool_turn([
        {"type": "image", "source": {"type": "url", "url": "https://evil.test/a.png"}}])},
     "blocked", "$.messages[2].content[0].content[0].source.url"),
    ("web-search-not-allowed", {"tools": [{"type": "web_search_20250305", "name": "web_search",
                                           "allowed_domains": ["fetch.example"]}]},
     "blocked", "$.tools[0]"),
    ("web-fetch-any-domain", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]},
     "blocked", "$.tools[0].allowed_domains"),
    ("web-fetch-domain-outside", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                                             "allowed_domains": ["evil.test"]}]},
     "blocked", "$.tools[0].allowed_domains[0]"),
    ("mcp-inside-canary-in-query", {"extra_body": {"mcp_servers": [
        {"type": "url", "name": "x", "url": "https://docs.fetch.example/mcp?u="
         + urllib.parse.quote(CANARIES["email"])}]}}, "sensitive_data", "$.mcp_servers[0].url"),
    ("image-inside-canary-in-path", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://img.fetch.example/"
                                     + urllib.parse.quote(CANARIES["ssn"]) + ".png"}}]}]},
     "sensitive_data", "$.messages[0].content[0].source.url"),
    ("image-inside", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url",
                                     "url": "https://img.fetch.example/logo.png?v=2"}}]}]},
     "forwarded", None),
    ("mcp-inside", {"extra_body": {"mcp_servers": [
        {"type": "url", "url": "https://docs.fetch.example/mcp", "name": "docs",
         "tool_configuration": {"enabled": True}}]}}, "forwarded", None),
    ("web-fetch-inside", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                                     "allowed_domains": ["fetch.example"]}]}, "forwarded", None),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("params, outcome, field", [c[1:] for c in FETCHES],
                         ids=[c[0] for c in FETCHES])
def test_egress_through_the_provider(env, params, outcome, field):
    gw, stub = env
    status, body, got = send(gw, stub, **params)
    assert not leaks(got, PATTERN_CANARIES)
    if outcome == "forwarded":
        assert status == 200 and got
        sent = json.loads(got.partition(b"\r\n\r\n")[2])
        for key in ("messages", "tools"):
            if key in params:
                assert sent[key] == params[key]
        if "extra_body" in params:
            assert sent["mcp_servers"] == params["extra_body"]["mcp_servers"]
        return
    assert status == 403 and body["error"] == outcome, body
    assert got == b""
    named = body.get("field") or body.get("fields")
    assert named == field or named == [field], body
    assert "evil" not in json.dumps(body) and not leaks(json.dumps(body).encode())


def _raw_post(gw, stub, path: str, doc: dict) -> tuple[int, bytes]:
    start = len(stub.raw)
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{API}:{stub.port}{path}", json=doc,
                   headers={"anthropic-version": "2023-06-01"})
    return r.status_code, bytes(stub.raw[start:])


def test_encoded_batch_path_gets_the_batch_rule(env):
    """/v1/messages/%62atches is /v1/messages/batches upstream: every string is prose there."""
    gw, stub = env
    doc = {"requests": [{"custom_id": "a", "params": {
        "model": MODEL, "max_tokens": 5, "system": f"Be brief. {CANARY}",
        "messages": [{"role": "user", "content": "hi Jane Whitfield"}]}}]}
    status, got = _raw_post(gw, stub, "/v1/messages/%62atches", doc)
    assert status == 200 and b"%62atches" in got
    assert not leaks(got, PATTERN_CANARIES) and b"<EMAIL_ADDRESS>" in got
    status, got = _raw_post(gw, stub, "/v1/messages/%62atches", {"requests": [{
        "custom_id": "b", "params": {"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "url", "url": "https://evil.test/x.png"}}]}]}}]})
    assert status == 403 and got == b""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_count_tokens_gets_the_messages_field_modes(env):
    gw, stub = env
    start = len(stub.raw)
    r = client(gw, stub).messages.count_tokens(
        model=MODEL, system=f"Be brief. {CANARY}", messages=[USER], tools=[TOOL])
    got = bytes(stub.raw[start:])
    assert r.input_tokens == 12 and b"/v1/messages/count_tokens" in got
    assert not leaks(got, PATTERN_CANARIES) and b"<EMAIL_ADDRESS>" in got
    sent = json.loads(got.partition(b"\r\n\r\n")[2])
    assert sent["tools"] == [TOOL] and sent["model"] == MODEL
    start = len(stub.raw)
    with pytest.raises(anthropic.PermissionDeniedError):
        client(gw, stub).messages.count_tokens(model=f"claude-{CANARIES['ssn']}", messages=[USER])
    assert bytes(stub.raw[start:]) == b""


def test_nothing_leaked_into_the_gateway_log_or_audit(env):
    gw, _ = env
    assert not leaks(gw.log_text().encode(), PATTERN_CANARIES)
    assert not leaks(gw.audit_path.read_bytes(), PATTERN_CANARIES)


def _ask(gw, stub, case: str, stream: bool = False) -> httpx.Response:
    doc = {"model": MODEL, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": f"ANSWER:{case}"}]}
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert),
                      timeout=30) as c:
        return c.post(f"https://{API}:{stub.port}/v1/messages", json=doc,
                      headers={"anthropic-version": "2023-06-01", "x-api-key": "k"})


def test_response_fields_outside_the_old_paths_are_redacted(env):
    gw, stub = env
    r = _ask(gw, stub, "fields-outside-old-paths")
    assert r.status_code == 200 and not leaks(r.content, PATTERN_CANARIES)
    doc = r.json()
    assert "<EMAIL_ADDRESS>" in doc["stop_sequence"] and "<US_SSN>" in doc["x_extra"]["note"]
    assert "<GITHUB_TOKEN>" in doc["content"][0]["citations"][0]["cited_text"]
    assert doc["model"] == MODEL and doc["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"


def test_a_finding_in_response_thinking_refuses_the_answer(env):
    gw, stub = env
    r = _ask(gw, stub, "thinking-json")
    assert r.status_code == 403 and r.headers["x-egress-gateway"] == "sensitive_data"
    assert r.json()["fields"] == ["content[*].thinking"] and not leaks(r.content, PATTERN_CANARIES)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_clean_thinking_stream_passes_to_the_sdk(env):
    gw, stub = env
    events = list(client(gw, stub).messages.create(
        model=MODEL, max_tokens=64, stream=True,
        messages=[{"role": "user", "content": "ANSWER:thinking-stream-clean"}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert events[0].message.model == MODEL
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert deltas[0].thinking == "The user greets me." and deltas[1].signature == SIG
    assert "".join(d.text for d in deltas if d.type == "text_delta") == "Hello there."


def test_a_finding_in_streamed_thinking_cuts_the_stream(env):
    gw, stub = env
    r = _ask(gw, stub, "thinking-stream-canary", stream=True)
    assert not leaks(r.content, PATTERN_CANARIES)
    assert b"event: error" in r.content and b"message_stop" not in r.content


def test_agent_sdk_request_through_the_gateway(env):
    """The Claude-Agent-SDK-shaped request: thinking, signatures, the screenshot, model, ids and
    metadata byte for byte; the instructions except the two known pattern hits; no planted value
    reaches the stub."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "data"))
    import make_agent_sdk_request as agent_sdk

    gw, stub = env
    raw = (REPO / "tests" / "data" / "agent_sdk_request.json").read_bytes()
    start = len(stub.raw)
    with httpx.Client(proxy=gw.proxy, verify=ssl.create_default_context(cafile=gw.ca_cert)) as c:
        r = c.post(f"https://{API}:{stub.port}/v1/messages?beta=true", content=raw,
                   headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200
    got = bytes(stub.raw[start:])
    before, after = json.loads(raw), json.loads(got.partition(b"\r\n\r\n")[2])
    for key in ("model", "metadata", "thinking", "tool_choice", "stop_sequences", "max_tokens"):
        assert after[key] == before[key], key
    assert after["messages"][1]["content"][:2] == before["messages"][1]["content"][:2]
    assert after["messages"][2]["content"][1]["content"][0] == \
        before["messages"][2]["content"][1]["content"][0]  # the screenshot
    ids = [(b.get("id"), b.get("tool_use_id")) for m in after["messages"] for b in m["content"]]
    assert ids == [(b.get("id"), b.get("tool_use_id")) for m in before["messages"]
                   for b in m["content"]]
    assert after["system"][0] == before["system"][0]
    assert [t["name"] for t in after["tools"]] == [t["name"] for t in before["tools"]]
    changed_tools = [i for i, (a, b) in enumerate(zip(after["tools"], before["tools"],
                                                      strict=True)) if a != b]
    assert changed_tools == [5]  # the example e-mail address in mcp__crm__lookup_customer
    for _, value in agent_sdk.PLANTED:
        assert value.encode() not in got, value
