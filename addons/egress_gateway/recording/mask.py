"""What a recorded copy of a flow holds: credentials masked, identities dropped, nothing unforwarded.

Credential headers (Authorization, Cookie, API-key headers, Set-Cookie) are masked; the identity
headers are never recorded; a request the gateway refused was not forwarded, so its body and
query string are dropped (their size is noted) and PII or secrets in its path are scrubbed. Only
``metadata["gateway"]`` is kept of the flow's metadata.
"""

from __future__ import annotations

import json

from mitmproxy import http

from egress_gateway import session
from egress_gateway.flowstate import peek
from egress_gateway.recording import tnet

MASK = "<redacted by egress gateway>"
CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-goog-api-key",
    "x-auth-token", "x-amz-security-token", "x-csrf-token", session.SESSION_HEADER.lower(),
})
RESPONSE_SECRET_HEADERS = frozenset({"set-cookie", "set-cookie2"})
IDENTITY_HEADERS = frozenset({session.PROXY_AUTH.lower(), session.SESSION_HEADER.lower()})


# Request headers a refused request keeps in its recording (format-checked, no free text).
SAFE_HEADERS = frozenset({"host", "content-length", "content-type", "content-encoding",
                          "transfer-encoding", "connection", "accept", "accept-encoding"})


def mask_value(value: str) -> str:
    """A credential header's value with the secret masked, keeping an auth scheme if any."""
    scheme, sep, _ = value.strip().partition(" ")
    if sep and scheme.isalpha() and len(scheme) <= 20:
        return f"{scheme} {MASK}"
    return MASK


def gateway_metadata(flow) -> dict:
    """A JSON-safe copy of the flow's gateway state: the only metadata a recording keeps."""
    return json.loads(json.dumps(peek(flow).data, default=str))


def recorded_state(flow: http.HTTPFlow, forwarded: bool, path: str | None = None) -> dict:
    """The flow's state as it is recorded: masked credentials, nothing that was not forwarded.

    Built from ``flow.get_state()`` (new containers, the live flow is never touched): about a
    third of the cost of copying the flow object and serialising the copy. `path` replaces the
    path of a refused request (see `scrubbed_path`).
    """
    state = flow.get_state()
    note: dict = {"forwarded": forwarded}
    masked: list[str] = []
    req = state["request"] = dict(state["request"])
    req["headers"] = _masked_fields(req["headers"], CREDENTIAL_HEADERS | IDENTITY_HEADERS,
                                    masked, drop=IDENTITY_HEADERS)
    if state.get("response") is not None:
        resp = state["response"] = dict(state["response"])
        resp["headers"] = _masked_fields(resp["headers"], RESPONSE_SECRET_HEADERS, masked)
    if masked:
        note["masked_headers"] = sorted(set(masked))
    if not forwarded:
        # a refused request was never scanned: its header values (and unknown names) stay out
        kept = tuple(f for f in req["headers"] if f[0].decode("latin-1").lower() in SAFE_HEADERS)
        if len(kept) != len(req["headers"]):
            note["request_headers_dropped"] = len(req["headers"]) - len(kept)
            req["headers"] = kept
        dropped = len(req.get("content") or b"")
        if dropped:
            req["content"] = b""
            note["request_body_dropped"] = dropped
        if req["method"] != b"CONNECT" and b"?" in req["path"]:
            req["path"] = req["path"].split(b"?", 1)[0]
            note["query_dropped"] = True
        if path is not None:
            req["path"] = path.encode()
            note["path_redacted"] = True
    if state.get("websocket") is not None:
        ws = state["websocket"] = dict(state["websocket"])
        msgs, dropped_msgs = [], 0
        for m in ws["messages"]:  # (type, from_client, content, timestamp, dropped, injected)
            if m[4] and m[2]:
                m = (m[0], m[1], b"", *m[3:])
                dropped_msgs += 1
            msgs.append(m)
        ws["messages"] = msgs
        if dropped_msgs:
            note["websocket_dropped_messages_emptied"] = dropped_msgs
    meta = gateway_metadata(flow)
    meta["recording"] = note
    state["metadata"] = {"gateway": meta}
    return state


def stub_state(state: dict, why: str) -> dict:
    """A recorded state that failed to serialise, reduced to what always can: no bodies, no
    trailers, no WebSocket messages (the flow is recorded as a stub, noted, never skipped)."""
    stub = dict(state)
    for part in ("request", "response"):
        if stub.get(part) is not None:
            stub[part] = {**stub[part], "content": b"", "trailers": None}
    if stub.get("websocket") is not None:
        stub["websocket"] = {**stub["websocket"], "messages": []}
    meta = json.loads(json.dumps(stub.get("metadata") or {}, default=str))
    meta.setdefault("gateway", {}).setdefault("recording", {})["stub"] = why
    stub["metadata"] = meta
    return stub


def recorded_stream_state(flow) -> dict:
    """A raw TCP/UDP flow's state as it is recorded (its messages; only the gateway's metadata)."""
    state = flow.get_state()
    if state.get("messages"):  # after an HTTP upgrade, mitmproxy's TCP messages are bytearrays
        state["messages"] = [tuple(bytes(x) if isinstance(x, bytearray) else x for x in m)
                             for m in state["messages"]]
    state["metadata"] = {"gateway": gateway_metadata(flow)}
    return state


def _masked_fields(fields, names: frozenset, masked: list[str], drop: frozenset = frozenset()):
    out = []
    for name, value in fields:
        low = name.decode("latin-1").lower()
        if low in drop:
            continue
        if low in names:
            value = mask_value(value.decode("latin-1")).encode("latin-1")
            masked.append(low)
        out.append((name, value))
    return tuple(out)


def recorded_copy(flow: http.HTTPFlow, forwarded: bool) -> http.HTTPFlow:
    """The recorded form of `flow` as a flow object (for tests and tools)."""
    return http.HTTPFlow.from_state(recorded_state(flow, forwarded))


def serialize(flow: http.HTTPFlow | dict) -> bytes:
    """mitmproxy's flow format (tnetstring of the state) of a flow or a flow state."""
    return tnet.dumps(flow if isinstance(flow, dict) else flow.get_state())


def scrubbed_path(flow: http.HTTPFlow, detection) -> str | None:
    """A refused request was never scanned: PII or a secret in its URL path must not reach the
    recording or the audit line. Patterns only (no NER, `detection`: the policy's detection
    settings); None if nothing was found."""
    path = flow.request.path.split("?", 1)[0]
    if flow.request.method == "CONNECT" or not path.startswith("/") or path == "/":
        return None
    from egress_gateway.detection import DetectionEngine, shapes
    from egress_gateway.detection.engine import analysis_running

    if not analysis_running():  # a policy that scans nothing: shapes, not a worker start
        return shapes.plain_path(path)
    from egress_gateway.redact.bodies import plan_path
    from egress_gateway.redact.walker import TextJob

    engine = DetectionEngine.get(detection)
    job = TextJob()
    finish = plan_path(job, path)
    job.run(lambda texts: engine.redact_many(texts, prose=False))
    return finish()


def scrubbed_host(flow: http.HTTPFlow, detection) -> str | None:
    """A refused request's host name was never scanned (a name off the allowlist can carry data
    in its labels): ``withheld.<domain>`` when the patterns find something in it, else None."""
    host = flow.request.host
    from egress_gateway.net import hosts

    if not host or hosts.parse_ip_literal(host.strip("[]")) is not None:
        return None
    from egress_gateway.detection import DetectionEngine, shapes
    from egress_gateway.detection.engine import analysis_running

    if not analysis_running():  # a policy that scans nothing: shapes, not a worker start
        return shapes.plain_host(host)

    engine = DetectionEngine.get(detection)
    texts = [host, host.replace(".", " "), host.upper().replace(".", " ")]
    if not any(engine.analyze_many(texts, prose=False)):
        return None
    labels = host.rstrip(".").split(".")
    return "withheld." + ".".join(labels[-2:]) if len(labels) > 2 else "withheld"
