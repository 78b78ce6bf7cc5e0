"""What a recorded copy holds: masked credentials, nothing that was not forwarded."""

from __future__ import annotations

import pytest
from egress_gateway.recording import mask
from mitmproxy import io as mio
from mitmproxy.test import tflow


@pytest.mark.parametrize("value,expected", [
    ("Bearer sk-ant-123", "Bearer " + mask.MASK),
    ("Basic dXNlcjpwdw==", "Basic " + mask.MASK),
    ("sk-ant-123", mask.MASK),
    ("session=abc; other=def", mask.MASK),
], ids=["bearer", "basic", "bare-key", "cookie"])
def test_mask_value(value, expected):
    assert mask.mask_value(value) == expected


def _flow(forward_body=b'{"q": 1}'):
    f = tflow.tflow(resp=True)
    f.request.path = "/v1/x?token=abc"
    f.request.content = forward_body
    f.request.headers["Authorization"] = "Bearer sk-live-SECRET"
    f.request.headers["Cookie"] = "sid=COOKIESECRET"
    f.request.headers["X-Agent-Session"] = "s1"
    f.response.headers["Set-Cookie"] = "sid=SETCOOKIESECRET"
    f.metadata["gateway"] = {"session": "s1", "decision": "allowed"}
    f.metadata["other_addon"] = {"raw": "do-not-record"}
    return f


def test_recorded_copy_masks_credentials_and_keeps_forwarded_body():
    f = _flow()
    data = mask.serialize(mask.recorded_copy(f, forwarded=True))
    for secret in (b"sk-live-SECRET", b"COOKIESECRET", b"SETCOOKIESECRET", b"do-not-record"):
        assert secret not in data
    (back,) = list(mio.FlowReader(__import__("io").BytesIO(data)).stream())
    assert back.request.headers["Authorization"] == "Bearer " + mask.MASK
    assert "X-Agent-Session" not in back.request.headers
    assert back.request.content == b'{"q": 1}' and back.request.path == "/v1/x?token=abc"
    note = back.metadata["gateway"]["recording"]
    assert note["forwarded"] is True and "authorization" in note["masked_headers"]
    assert set(back.metadata) == {"gateway"}
    # the live flow itself is untouched (what was forwarded stays what was forwarded)
    assert f.request.headers["Authorization"] == "Bearer sk-live-SECRET"


def test_recorded_copy_drops_what_was_not_forwarded():
    f = _flow(b"RAW-PII-alice@example.com")
    data = mask.serialize(mask.recorded_copy(f, forwarded=False))
    assert b"alice@example.com" not in data and b"token=abc" not in data
    (back,) = list(mio.FlowReader(__import__("io").BytesIO(data)).stream())
    note = back.metadata["gateway"]["recording"]
    dropped = note.pop("request_headers_dropped")  # a refused request was never scanned
    assert note == {"forwarded": False, "masked_headers": ["authorization", "cookie", "set-cookie"],
                    "request_body_dropped": 25, "query_dropped": True}
    assert dropped >= 2 and "Authorization" not in back.request.headers
    assert set(back.request.headers.keys()) <= {k.title() for k in mask.SAFE_HEADERS} | set(
        mask.SAFE_HEADERS)
    assert back.request.path == "/v1/x"


def test_an_unserialisable_state_is_recorded_as_a_stub():
    f = _flow(b"body")
    state = mask.recorded_state(f, forwarded=True)
    state["response"] = dict(state["response"] or {}) if state.get("response") else None
    state["request"]["content"] = bytearray(b"RAW-219-09-9999")  # e.g. a 101 flow's buffer
    with pytest.raises(ValueError):
        mask.serialize(state)
    data = mask.serialize(mask.stub_state(state, "ValueError"))
    assert b"219-09-9999" not in data
    (back,) = list(mio.FlowReader(__import__("io").BytesIO(data)).stream())
    assert back.metadata["gateway"]["recording"]["stub"] == "ValueError"
    assert back.request.content == b""


@pytest.mark.parametrize("error,expected", [
    (ValueError("unserializable object: bytearray(b'219-09-9999')"), "ValueError"),
    (OSError(28, "No space left on device"), "OSError: No space left on device"),
    (RuntimeError("quoting jane@example.com"), "RuntimeError"),
])
def test_recording_errors_are_described_without_their_text(error, expected):
    from egress_gateway.recording.addon import describe_error

    assert describe_error(error) == expected
