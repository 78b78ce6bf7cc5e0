"""The gateway's per-flow state (a typed view of ``flow.metadata["gateway"]``) and the one refuse().

The state stays a plain dict in ``flow.metadata["gateway"]``: mitmproxy serialises it into the
recordings and mitmweb shows it. Addons read and write it only through `state(flow)`, whose
fields are listed (and documented) once, here.

Every answer the gateway makes itself has one format: an HTTP status, the header
``X-Egress-Gateway: <code>`` and a JSON body ``{"error": "<code>", "reason": "<sentence>", ...}``.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

KEY = "gateway"
HEADER = "X-Egress-Gateway"

# code -> HTTP status. Every code the gateway answers with is listed here.
STATUS = {
    "blocked": 403,
    "sensitive_data": 403,
    "credential_leak": 403,
    "denied": 403,
    "too_large": 413,
    "headers_too_large": 431,
    "unsupported_content": 415,
    "dns_error": 502,
    "internal_error": 500,
    "gateway_unavailable": 503,
    "recording_failed": 503,
    "overloaded": 503,
    "rate_limited": 429,
    "state_unavailable": 503,
}


class _Field:
    """One key of the state dict; assigning None removes it."""

    def __init__(self, doc: str, default: Any = None) -> None:
        self.__doc__ = doc
        self.default = default

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj: FlowState | None, owner=None):
        if obj is None:
            return self
        return obj.data.get(self.name, self.default)

    def __set__(self, obj: FlowState, value) -> None:
        if value is None:
            obj.data.pop(self.name, None)
        else:
            obj.data[self.name] = value


class FlowState:
    """What the gateway decided and observed about one flow."""

    __slots__ = ("data",)

    # identity and decision
    session = _Field("The agent session id (see session.py).")
    replay = _Field("True for a recorded flow replayed as a client replay.")
    decision = _Field("'allowed' (absent), 'blocked' or 'would_block' (egress report mode).")
    code = _Field("The refusal code (STATUS), when refused.")
    reason = _Field("A human sentence: why it was refused (or would be).")
    identity = _Field("Which identity of the destination decided (connect, sni, address, ...).")
    details = _Field("Extra fields of the refusal body (entities, rule, credential, ...).")
    # redaction
    redactions = _Field("{direction: {ENTITY: count}} of what was rewritten.")
    redaction_comment = _Field("The part of the mitmweb comment the redactor wrote.")
    redaction_notes = _Field("{direction: [note, ...]}: parts that could not be scanned, etc.")
    unscanned = _Field("{direction: why}: a body passed unscanned because the policy said pass.")
    scan_ms = _Field("{direction: milliseconds} spent scanning.")
    streamed = _Field("{'events': n} for a server-sent-events answer redacted while streaming.")
    stream_stopped = _Field("Why a streamed answer was cut off (a block operator, an error).")
    pseudonyms = _Field("{tokenized, restored, unknown}: restore-rule counts (never values).")
    websocket_dropped = _Field("{direction: n} WebSocket messages dropped (refused content).")
    # approvals and credentials
    approval = _Field("{rule, outcome, decided_by, wait_seconds, held, ...} of an approval rule.")
    credential = _Field("{name, injected} of the credential bound to the request, or a leak alert.")
    credential_echo = _Field("{where: n} real credential values scrubbed from the answer.")
    credential_scrubbed = _Field("True when a real value was scrubbed from the request.")
    limit = _Field("{name, scope, measure, alert} of the volume limit that refused the flow.")
    # stopping
    shutdown = _Field("How the flow ended when the gateway stopped: drained, refused, "
                      "stream_ended or closed.")
    # recording
    recording = _Field("What the recorder did with the flow (file, masked headers).")

    def __init__(self, data: dict) -> None:
        self.data = data

    @property
    def refused(self) -> bool:
        return self.data.get("decision") == "blocked"

    def count(self, field: str, key: str, n: int = 1) -> None:
        """Add `n` to ``state[field][key]`` (a dict of counters)."""
        d = self.data.setdefault(field, {})
        d[key] = d.get(key, 0) + n

    def sub(self, field: str) -> dict:
        """The dict stored under `field`, created when missing."""
        return self.data.setdefault(field, {})


def state(flow) -> FlowState:
    """The gateway's state of `flow` (created empty on first use)."""
    return FlowState(flow.metadata.setdefault(KEY, {}))


def peek(flow) -> FlowState:
    """The state of `flow` without creating it on the flow (an empty view when there is none)."""
    return FlowState(flow.metadata.get(KEY) or {})


def settled(flow) -> bool:
    """True when nothing is left to decide: answered, failed or no longer live."""
    return bool(flow.response or flow.error or not flow.live)


def make_response(code: str, reason: str, **details) -> http.Response:
    """Build the gateway's answer for `code` (status from STATUS)."""
    body = {"error": code, "reason": reason}
    body.update({k: v for k, v in details.items() if v is not None})
    return http.Response.make(
        STATUS.get(code, 403),
        json.dumps(body).encode(),
        {HEADER: code, "Content-Type": "application/json", "Cache-Control": "no-store"},
    )


def refuse(flow: http.HTTPFlow, code: str, reason: str, **details) -> None:
    """Answer `flow` with a refusal and record the decision in its state."""
    flow.response = make_response(code, reason, **details)
    st = state(flow)
    st.decision, st.code, st.reason = "blocked", code, reason
    if details:
        st.sub("details").update(details)
