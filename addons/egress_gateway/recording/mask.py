"""What a recorded copy of a flow holds: credentials masked, identities dropped, nothing unforwarded.

Credential headers (Authorization, Cookie, API-key headers, Set-Cookie) are masked; the identity
headers are never recorded; a request the gateway refused was not forwarded, so its body and
query string are dropped (their size is noted) and PII or secrets in its path are scrubbed. Only
``metadata["gateway"]`` is kept of the flow's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict

from mitmproxy import http
from mitmproxy.version import FLOW_FORMAT_VERSION

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

    Built from `flow_state` (``flow.get_state()`` with connection states reused; new
    containers where it masks, the live flow is never touched). `path` replaces the
    path of a refused request (see `scrubbed_path`).
    """
    state = flow_state(flow)
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


class ConnectionStates:
    """``conn.get_state()`` reused while a connection is unchanged: every flow of a keep-alive
    connection records the same client and server state, and building those two is almost all
    of mitmproxy's ``flow.get_state()`` (~60 of 61 us). A connection counts as unchanged while
    every field its state is built from holds an equal value (lists compared as tuples)."""

    MAX = 256

    def __init__(self) -> None:
        # (class, id) -> [fields seen, state, its tnetstring or None]
        self._states: OrderedDict[tuple, list] = OrderedDict()
        self._keys: dict[int, tuple] = {}  # id(state) -> key, while the entry holds the state
        self._lock = threading.Lock()

    def state(self, conn) -> dict:
        """The state of `conn` (a shared dict: never modify it)."""
        names = _state_fields(type(conn))
        seen = tuple(_frozen(getattr(conn, n)) for n in names)
        key = (type(conn), conn.id)
        with self._lock:
            hit = self._states.get(key)
            if hit is not None and hit[0] == seen:
                self._states.move_to_end(key)
                return hit[1]
        state = conn.get_state()
        with self._lock:
            old = self._states.pop(key, None)
            if old is not None:
                self._keys.pop(id(old[1]), None)
            self._states[key] = [seen, state, None]
            self._keys[id(state)] = key
            while len(self._states) > self.MAX:
                _, (_, gone, _) = self._states.popitem(last=False)
                self._keys.pop(id(gone), None)
        return state

    def encoded(self, state) -> tnet.Encoded | None:
        """The tnetstring of a state this cache handed out (encoded once), else None."""
        with self._lock:
            key = self._keys.get(id(state))
            entry = self._states.get(key) if key is not None else None
            if entry is None or entry[1] is not state:
                return None
            if entry[2] is None:
                entry[2] = tnet.Encoded(tnet.dumps(state))
            return entry[2]


_FIELDS: dict[type, tuple[str, ...]] = {}


def _state_fields(cls) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:  # the fields SerializableDataclass.get_state reads
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                     if f.metadata.get("serialize", True) is not False)
    return names


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


_CONNECTIONS = ConnectionStates()


def flow_state(flow) -> dict:
    """``flow.get_state()`` with the connections' states from `ConnectionStates` (same keys,
    same order, same values; a test compares both). The flow's own metadata is left out (the
    recording keeps only the gateway's, set by `recorded_state`); a flow with a backup (edited
    in mitmweb) or of another type takes mitmproxy's own path."""
    if type(flow) is not http.HTTPFlow or flow._backup is not None:
        return flow.get_state()
    return {
        "version": FLOW_FORMAT_VERSION,
        "type": flow.type,
        "id": flow.id,
        "error": flow.error.get_state() if flow.error else None,
        "client_conn": _CONNECTIONS.state(flow.client_conn),
        "server_conn": _CONNECTIONS.state(flow.server_conn),
        "intercepted": flow.intercepted,
        "is_replay": flow.is_replay,
        "marked": flow.marked,
        "metadata": {},
        "comment": flow.comment,
        "timestamp_created": flow.timestamp_created,
        "backup": None,
        "request": flow.request.get_state(),
        "response": flow.response.get_state() if flow.response else None,
        "websocket": flow.websocket.get_state() if flow.websocket else None,
    }


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
    """mitmproxy's flow format (tnetstring of the state) of a flow or a flow state; the
    connection states `flow_state` reused are spliced in as encoded once."""
    if not isinstance(flow, dict):
        return tnet.dumps(flow.get_state())
    state = flow
    for part in ("client_conn", "server_conn"):
        done = _CONNECTIONS.encoded(flow.get(part))
        if done is not None:
            if state is flow:
                state = dict(flow)
            state[part] = done
    return tnet.dumps(state)


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
