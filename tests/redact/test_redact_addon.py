"""The Redactor addon (taddons/tflow, fake engine): outcomes, metadata, failing closed, off-loop."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import pytest
from egress_gateway.core import Core
from egress_gateway.policy import parse_policy
from egress_gateway.redact.addon import Redactor, parse_options
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow
from redact_fakes import FakeEngine

HOST = "api.example.com"


def core_with(policy) -> Core:
    core = Core()
    core.policy = policy
    return core


def policy(redact: str = ""):
    return parse_policy(f"version: 1\negress:\n  allow:\n    - host: {HOST}\n" + redact)


def make(engine=None, redact: str = ""):
    core = core_with(policy(redact))
    engine = engine or FakeEngine()
    return Redactor(core, engine_factory=lambda settings: engine), engine


def req_flow(body: bytes, ctype: str | None = "application/json", path: str = "/v1/x",
             headers: dict | None = None):
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.scheme = HOST, 443, "https"
    f.request.path = path
    f.request.method = "POST"
    f.request.headers.clear()
    f.request.headers["Host"] = HOST
    if ctype:
        f.request.headers["Content-Type"] = ctype
    for k, v in (headers or {}).items():
        f.request.headers[k] = v
    f.request.raw_content = body
    f.request.headers["Content-Length"] = str(len(body))
    return f


def resp_flow(body: bytes, ctype: str = "application/json", headers: dict | None = None):
    f = req_flow(b"", None, path="/data")
    f.response = http.Response.make(200, body, {"Content-Type": ctype, **(headers or {})})
    return f


def run(redactor, coro_fn, **options):
    async def main():
        with taddons.context(redactor) as tctx:
            tctx.configure(redactor, **options)
            try:
                return await coro_fn()
            finally:
                redactor.done()

    return asyncio.run(main())


def refusal(f):
    assert f.response is not None
    return f.response.status_code, f.response.headers.get("X-Egress-Gateway"), json.loads(f.response.content)


def test_request_redacted_in_place_with_metadata_and_comment():
    r, eng = make()
    f = req_flow(b'{"to": "a@b.co", "cc": ["c@d.co"], "n": 1}', path="/v1/x?mail=e%40f.co&p=1")
    run(r, lambda: r.request(f))
    assert f.response is None
    assert f.request.raw_content == b'{"to": "<EMAIL_ADDRESS>", "cc": ["<EMAIL_ADDRESS>"], "n": 1}'
    assert f.request.headers["Content-Length"] == str(len(f.request.raw_content))
    assert f.request.path == "/v1/x?mail=%3CEMAIL_ADDRESS%3E&p=1"
    assert f.metadata["gateway"]["redactions"] == {"request": {"EMAIL_ADDRESS": 3}}
    assert f.comment == "request: 3 EMAIL_ADDRESS"
    assert len(eng.calls) == 1  # query and body in one batch
    assert all(t.startswith("gateway-scan") for t in eng.threads)  # off the event loop


def test_nothing_found_forwards_the_same_bytes():
    body = b'{"a":   "nothing",\n "n": 1.0000000000000001, "sig": "x"}'
    r, _ = make()
    f = req_flow(body, headers={"Content-Encoding": "identity"})
    before = f.request.raw_content
    run(r, lambda: r.request(f))
    assert f.response is None and f.request.raw_content is before
    assert "redactions" not in f.metadata.get("gateway", {}) and not f.comment


def test_gzip_request_reencoded():
    r, _ = make()
    f = req_flow(gzip.compress(b'{"to": "a@b.co"}'), headers={"Content-Encoding": "gzip"})
    run(r, lambda: r.request(f))
    assert gzip.decompress(f.request.raw_content) == b'{"to": "<EMAIL_ADDRESS>"}'
    assert f.request.headers["Content-Length"] == str(len(f.request.raw_content))
    assert f.request.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("redact,body,ctype,headers,status,code", [
    ("", b"\x00\x01\x02", "application/octet-stream", {}, 415, "unsupported_content"),
    ("", b"x" * 5000, "text/plain", {}, 413, "too_large"),
    ("", gzip.compress(b"a" * 100_000), "text/plain", {"Content-Encoding": "gzip"}, 413, "too_large"),
    ("", b"not gzip", "text/plain", {"Content-Encoding": "gzip"}, 415, "unsupported_content"),
    ("", b'{"k": "-----BEGIN PRIVATE KEY----- zzz"}', "application/json", {}, 403, "sensitive_data"),
], ids=["binary", "too-large", "bomb", "corrupt-gzip", "block-operator"])
def test_request_refusals(redact, body, ctype, headers, status, code):
    r, _ = make(redact=redact)
    f = req_flow(body, ctype, headers=headers)
    run(r, lambda: r.request(f), gateway_body_limit=4096)
    st, header, doc = refusal(f)
    assert (st, header, doc["error"]) == (status, code, code) and doc["reason"]
    assert f.metadata["gateway"]["decision"] == "blocked"
    if code == "sensitive_data":
        assert doc["entities"] == ["PEM_PRIVATE_KEY"] and "zzz" not in f.response.text


@pytest.mark.parametrize("body,ctype,why", [
    (b"\x00\x01\x02", "application/octet-stream", "unsupported"),
    (b"x" * 5000, "text/plain", "too_large"),
], ids=["binary", "too-large"])
def test_policy_can_pass_unscanned(body, ctype, why):
    r, _ = make(redact="redact:\n  request: {unsupported: pass, too_large: pass}\n")
    f = req_flow(body, ctype)
    run(r, lambda: r.request(f), gateway_body_limit=4096)
    assert f.response is None and f.request.raw_content == body
    assert f.metadata["gateway"]["unscanned"]["request"].startswith(why)


def test_declared_oversize_refused_at_headers():
    r, _ = make()
    f = req_flow(b"", "text/plain")
    f.request.headers["Content-Length"] = str(50 * 1024 * 1024)
    run(r, lambda: asyncio.sleep(0, r.requestheaders(f)))
    assert refusal(f)[:2] == (413, "too_large")


def test_engine_failure_refuses_with_internal_error():
    r, _ = make(FakeEngine(explode=True))
    f = req_flow(b'{"to": "a@b.co"}')
    run(r, lambda: r.request(f))
    st, code, doc = refusal(f)
    assert (st, code) == (500, "internal_error")
    assert "a@b.co" not in f.response.text


def test_timeout_refuses_with_internal_error():
    r, _ = make(FakeEngine(delay=1.0))
    f = req_flow(b'{"to": "a@b.co"}')
    t0 = time.monotonic()
    run(r, lambda: r.request(f), gateway_scan_timeout="0.2")
    assert time.monotonic() - t0 < 0.9 + 0.5  # returned at the budget, not when the scan ended
    st, code, doc = refusal(f)
    assert (st, code) == (500, "internal_error") and "time budget" in doc["reason"]


def test_other_flows_keep_moving_while_a_scan_runs():
    r, _ = make(FakeEngine(delay=0.5))
    ticks = []

    async def both():
        async def ticker():
            for _ in range(10):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        f = req_flow(b'{"to": "a@b.co"}')
        await asyncio.gather(r.request(f), ticker())
        return f

    f = run(r, both)
    assert f.request.raw_content == b'{"to": "<EMAIL_ADDRESS>"}'
    assert len(ticks) == 10 and ticks[-1] - ticks[0] < 0.45  # the loop was never blocked


def test_no_policy_fails_closed():
    r, _ = make()
    r.core.policy = None
    f = req_flow(b'{"a": 1}')
    run(r, lambda: r.request(f))
    assert refusal(f)[:2] == (500, "internal_error")


def test_response_redacted_and_gateway_answers_skipped():
    r, _ = make()
    f = req_flow(b'{"q": "a@b.co"}')
    f.comment = "reviewed"

    async def both():
        await r.request(f)
        f.response = http.Response.make(200, b'{"customer": "a@b.co"}',
                                        {"Content-Type": "application/json"})
        await r.response(f)

    run(r, both)
    assert f.response.raw_content == b'{"customer": "<EMAIL_ADDRESS>"}'
    assert f.metadata["gateway"]["redactions"] == {"request": {"EMAIL_ADDRESS": 1},
                                                   "response": {"EMAIL_ADDRESS": 1}}
    assert f.comment == "reviewed; request: 1 EMAIL_ADDRESS; response: 1 EMAIL_ADDRESS"

    own = resp_flow(b'{"reason": "a@b.co"}')
    own.metadata["gateway"] = {"decision": "blocked"}
    run(r, lambda: r.response(own))
    assert own.response.raw_content == b'{"reason": "a@b.co"}'


def test_binary_response_passes_by_default_and_blocks_when_asked():
    r, _ = make()
    f = resp_flow(b"\x89PNG\x00", "image/png")
    run(r, lambda: r.response(f))
    assert f.response.status_code == 200 and f.metadata["gateway"]["unscanned"]["response"]
    r, _ = make(redact="redact:\n  response: {unsupported: block}\n")
    f = resp_flow(b"\x89PNG\x00", "image/png")
    run(r, lambda: r.response(f))
    assert refusal(f)[:2] == (415, "unsupported_content")


def test_response_block_operator():
    r, _ = make()
    f = resp_flow(b"-----BEGIN PRIVATE KEY-----\nabc", "text/plain")
    run(r, lambda: r.response(f))
    st, code, doc = refusal(f)
    assert (st, code, doc["direction"]) == (403, "sensitive_data", "response")


def test_disabled_direction_and_rules():
    r, eng = make(redact=f"redact:\n  rules:\n    - hosts: [{HOST}]\n      request: {{enabled: false}}\n")
    f = req_flow(b'{"to": "a@b.co"}')
    run(r, lambda: r.request(f))
    assert f.request.raw_content == b'{"to": "a@b.co"}' and not eng.calls


def ws_flow(messages):
    f = tflow.twebsocketflow(messages=False) if "messages" in tflow.twebsocketflow.__code__.co_varnames \
        else tflow.twebsocketflow()
    f.request.host = HOST
    f.websocket.messages.clear()
    for m in messages:
        f.websocket.messages.append(m)
    return f


def test_websocket_messages():
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    r, _ = make()
    text = WebSocketMessage(Opcode.TEXT, True, b'{"say": "mail a@b.co"}')
    f = ws_flow([text])
    run(r, lambda: r.websocket_message(f))
    assert text.content == b'{"say": "mail <EMAIL_ADDRESS>"}' and not text.dropped
    secret = WebSocketMessage(Opcode.TEXT, False, b"-----BEGIN PRIVATE KEY-----")
    f.websocket.messages.append(secret)
    run(r, lambda: r.websocket_message(f))
    assert secret.dropped
    binary = WebSocketMessage(Opcode.BINARY, True, b"\x00\x01")
    f.websocket.messages.append(binary)
    run(r, lambda: r.websocket_message(f))
    assert binary.dropped  # requests: unsupported -> block
    text_in_binary = WebSocketMessage(Opcode.BINARY, False, b"mail c@d.co")
    f.websocket.messages.append(text_in_binary)
    run(r, lambda: r.websocket_message(f))  # a binary frame that is text: scanned as text
    assert text_in_binary.content == b"mail <EMAIL_ADDRESS>" and not text_in_binary.dropped
    assert f.metadata["gateway"]["redactions"] == {"request": {"EMAIL_ADDRESS": 1},
                                                   "response": {"PEM_PRIVATE_KEY": 1,
                                                                "EMAIL_ADDRESS": 1}}


@pytest.mark.parametrize("args,ok", [
    ((10 * 1024 * 1024, 2, 30.0), True),
    ((100, 2, 30.0), False),
    ((4096, 0, 30.0), True),
    ((4096, -1, 30.0), False),
    ((4096, 65, 30.0), False),
    ((4096, 2, 0), False),
    ((4096, 2, -1.0), False),
    ((4096, 2, "0.5"), True),
    ((4096, 2, "soon"), False),
], ids=["defaults", "tiny-limit", "no-workers-in-process", "negative-workers", "too-many-workers",
        "zero-timeout", "negative-timeout", "string-seconds", "not-a-number"])
def test_parse_options(args, ok):
    if ok:
        assert parse_options(*args).workers == args[1]
    else:
        with pytest.raises(ValueError):
            parse_options(*args)


def test_bad_option_is_an_options_error():
    r, _ = make()

    async def main():
        with taddons.context(r) as tctx:
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(r, gateway_scan_workers=-1)
            r.done()

    asyncio.run(main())


def test_no_redaction_means_no_engine_at_all():
    built = []
    core = core_with(policy("redact:\n  enabled: false\n"))
    r = Redactor(core, engine_factory=lambda settings: built.append(settings) or FakeEngine())
    f = req_flow(b'{"to": "a@b.co"}')
    run(r, lambda: r.request(f))
    r.prewarm()
    assert f.request.raw_content == b'{"to": "a@b.co"}' and f.response is None
    assert built == []  # the detection engine was never even built


def test_rescan_replaces_the_request_counts():
    r, eng = make()
    f = req_flow(b'{"to": "a@b.co", "cc": "c@d.co"}')
    run(r, lambda: r.request(f))
    assert f.metadata["gateway"]["redactions"]["request"] == {"EMAIL_ADDRESS": 2}
    f.request.raw_content = b'{"to": "e@f.co"}'  # edited by a reviewer
    run(r, lambda: r.rescan_request(f))
    assert f.metadata["gateway"]["redactions"]["request"] == {"EMAIL_ADDRESS": 1}
    assert b"e@f.co" not in f.request.raw_content


def test_stopping_gateway_never_forwards_an_unscanned_websocket_message():
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    r, _ = make()
    r.abandon_scans()  # the shutdown grace is over: no scan is awaited any more
    text = WebSocketMessage(Opcode.TEXT, True, b'{"say": "mail a@b.co"}')
    f = ws_flow([text])
    run(r, lambda: r.websocket_message(f))
    assert text.dropped  # not scanned, so not sent


class _CachingEngine(FakeEngine):
    """A FakeEngine with a findings cache: texts it has analysed are answered on the loop."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, object] = {}

    def redact_many(self, texts, session="", prose=None):
        out = super().redact_many(texts, session, prose)
        self.seen.update(zip(texts, out, strict=True))
        return out

    def redact_many_cached(self, texts, session="", prose=None):
        if all(t in self.seen for t in texts):
            return [self.seen[t] for t in texts]
        return None


def test_a_message_is_parsed_once_and_cached_texts_stay_on_the_loop(monkeypatch):
    from egress_gateway.redact import scan

    parsed = []
    real = scan.bodies.plan_body
    monkeypatch.setattr(scan.bodies, "plan_body", lambda *a, **kw: parsed.append(1) or real(*a, **kw))
    eng = _CachingEngine()
    r, _ = make(eng)
    body = b'{"to": "a@b.co", "text": "fresh words"}'
    f = req_flow(body)
    run(r, lambda: r.request(f))
    assert f.request.raw_content == b'{"to": "<EMAIL_ADDRESS>", "text": "fresh words"}'
    assert len(parsed) == 1  # parsed on the loop; the pool finished that plan
    assert len(eng.calls) == 1 and all(t.startswith("gateway-scan") for t in eng.threads)
    again = req_flow(body)
    run(r, lambda: r.request(again))
    assert again.request.raw_content == f.request.raw_content
    assert len(parsed) == 2 and len(eng.calls) == 1  # every text cached: no pool round trip
