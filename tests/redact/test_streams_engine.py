"""Streamed in small deltas, with the real detection engine: every shape's answer is redacted
exactly like the same text unstreamed (keywords, PEM headers, percent-encoded values cut across
events; issue 20)."""

from __future__ import annotations

import json

import pytest
from egress_gateway.detection import DetectionEngine
from egress_gateway.redact import bodies
from egress_gateway.redact.jsonpath import EVERYTHING
from egress_gateway.redact.stream import StreamRedactor

PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
       "\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
       "-----END PRIVATE KEY-----")
TEXTS = {
    "password": "Sure, the login is ready and my password: Hunter2SecretX9 for the staging box.",
    "aws": "Use these settings:\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
           "and restart the service afterwards, it should work then.",
    "pem": f"Here is the key you asked for:\n{PEM}\nKeep it somewhere safe please.",
    "percent": "Send the invoice to jane.roe%40example.com today please, she expects it soon.",
}


@pytest.fixture(scope="module")
def engine():
    return DetectionEngine.get()


def stream_text(engine, text: str, size: int, shape: str) -> str:
    def apply(t, f):
        r = engine.apply(t, f)
        return r.text, r.counts, r.blocked

    def redact_data(data):
        return bodies.redact_sse_data(data, lambda texts, **kw: engine.redact_many(texts, **kw),
                                      EVERYTHING)

    r = StreamRedactor(engine.analyze, apply, redact_data)
    out = b""
    for i in range(0, len(text), size):
        piece = text[i:i + size]
        if shape == "messages":
            doc = {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": piece}}
        else:
            doc = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        out += b"".join(r(b"data: " + json.dumps(doc).encode() + b"\n\n"))
    out += b"".join(r(b"data: [DONE]\n\n")) + r(b"")
    got = ""
    for block in out.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: {")]
        if data:
            doc = json.loads(data[0])
            got += (doc["delta"]["text"] if shape == "messages"
                    else doc["choices"][0]["delta"]["content"])
    return got


@pytest.mark.parametrize("shape", ["messages", "openai"])
@pytest.mark.parametrize("size", [1, 3, 7])
@pytest.mark.parametrize("case", sorted(TEXTS))
def test_streamed_in_small_deltas_equals_unstreamed(engine, case, size, shape):
    text = TEXTS[case]
    whole = engine.redact(text).text
    assert whole != text  # the unstreamed text is redacted
    assert stream_text(engine, text, size, shape) == whole


def test_a_request_body_in_sse_form_is_reassembled_across_events(engine):
    from egress_gateway.redact.scan import scan_event_stream

    def apply(t, f):
        r = engine.apply(t, f)
        return r.text, r.counts, r.blocked

    def redact_data(data):
        return bodies.redact_sse_data(data, lambda texts, **kw: engine.redact_many(texts, **kw),
                                      EVERYTHING)

    text = TEXTS["percent"].replace("%40", "@")
    cut = text.index("@") - 2
    raw = b"".join(b"data: " + json.dumps({"chunk": p}).encode() + b"\n\n"
                   for p in (text[:cut], text[cut:]))
    out = scan_event_stream(raw, StreamRedactor(engine.analyze, apply, redact_data))
    assert out.body is not None and b"jane" not in out.body and out.counts["EMAIL_ADDRESS"] == 1
