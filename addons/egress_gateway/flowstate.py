"""The one format for every answer the gateway makes itself.

An HTTP status, header ``X-Egress-Gateway: <code>`` and a JSON body
``{"error": "<code>", "reason": "<sentence>", ...details}``.
"""

from __future__ import annotations

import json

from mitmproxy import http

HEADER = "X-Egress-Gateway"

# code -> HTTP status. Every code the gateway answers with is listed here.
STATUS = {
    "blocked": 403,
    "sensitive_data": 403,
    "credential_leak": 403,
    "denied": 403,
    "too_large": 413,
    "unsupported_content": 415,
    "dns_error": 502,
    "internal_error": 500,
    "gateway_unavailable": 503,
    "recording_failed": 503,
}


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
    """Answer `flow` with a refusal and record the decision in ``flow.metadata["gateway"]``."""
    flow.response = make_response(code, reason, **details)
    meta = flow.metadata.setdefault("gateway", {})
    meta.update(decision="blocked", code=code, reason=reason)
    if details:
        meta.setdefault("details", {}).update(details)
