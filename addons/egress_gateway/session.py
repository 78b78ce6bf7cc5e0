"""Which agent session a flow belongs to."""

from __future__ import annotations

from mitmproxy import http


def session_of(flow: http.HTTPFlow) -> str:
    """The session id stored on the flow, else the client's IP address (no port)."""
    sid = flow.metadata.get("gateway", {}).get("session")
    if sid:
        return sid
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else "unknown"
