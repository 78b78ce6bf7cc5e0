"""Which agent session a flow belongs to, and the addon that assigns it.

Session identity, first match wins:

1. the username of a ``Proxy-Authorization: Basic`` header (``HTTPS_PROXY=http://SESSION:x@gw:8080``),
   on the request itself or on the CONNECT that opened its tunnel;
2. an ``X-Agent-Session`` request header;
3. the client's IP address (no port).

Both headers are removed before anything is forwarded, and only the session id is kept: the
password part of ``Proxy-Authorization`` is never stored. (mitmproxy's ``proxyauth=any`` is not
used: it would answer 407 to agents that send no credentials.)
"""

from __future__ import annotations

import base64
import binascii
import logging
import re

from mitmproxy import http

from egress_gateway.flowstate import peek, refuse, state

log = logging.getLogger(__name__)

PROXY_AUTH = "Proxy-Authorization"
SESSION_HEADER = "X-Agent-Session"
MAX_LEN = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+-]")


def clean_session_id(raw: str | None) -> str | None:
    """A session id safe as a file name: ``[A-Za-z0-9._:@+-]``, at most 64 characters.

    Other characters become ``_``; a leading dot is replaced (no hidden files, no ``..``).
    None when nothing usable is left.
    """
    if raw is None:
        return None
    sid = _UNSAFE.sub("_", raw.strip())[:MAX_LEN]
    if sid.startswith("."):
        sid = "_" + sid[1:]
    if not sid.strip("_"):
        return None
    return sid


def proxy_auth_user(value: str | None) -> str | None:
    """The username of a ``Basic`` Proxy-Authorization value; None if absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None


def session_of(flow: http.HTTPFlow) -> str:
    """The session id stored on the flow, else the client's IP address (no port)."""
    sid = peek(flow).session
    if sid:
        return sid
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else "unknown"


def strip_identity_headers(headers) -> None:
    for name in (PROXY_AUTH, SESSION_HEADER):
        while name in headers:
            del headers[name]


class Session:
    """Assigns ``metadata["gateway"]["session"]`` and strips the identity headers.

    Runs before the egress checks so that refusals carry the session.
    """

    name = "egress_gateway_session"

    def __init__(self, connections, check=None) -> None:
        self.connections = connections  # the core's per-connection state (CONNECT sessions)
        self.check = check  # sid -> sid, or a withheld id when it carries data (redact.headers)

    def _assign(self, flow: http.HTTPFlow, connect: bool) -> None:
        st = state(flow)
        if flow.is_replay == "request" and not connect:
            # A recorded flow replayed (client replay): forget the decisions of the original run.
            original = st.session or "unknown"
            sid = original if original.startswith("replay-") else clean_session_id(f"replay-{original}")
            st.data.clear()
            st.session, st.replay = sid, True
        headers = flow.request.headers
        user = clean_session_id(proxy_auth_user(headers.get(PROXY_AUTH)))
        header_sid = clean_session_id(headers.get(SESSION_HEADER))
        strip_identity_headers(headers)
        if self.check is not None:
            user = self.check(user) if user else user
            header_sid = self.check(header_sid) if header_sid else header_sid
        tunnel = None if connect else self.connections.get(flow.client_conn.id)
        sid = user or (tunnel.session if tunnel else None) or header_sid
        if connect and sid:
            self.connections.tunnel(flow.client_conn.id).session = sid
        if sid:
            st.session = sid
        elif not st.session:
            peer = flow.client_conn.peername
            st.session = str(peer[0]) if peer else "unknown"

    def _guarded(self, flow: http.HTTPFlow, connect: bool) -> None:
        try:
            self._assign(flow, connect)
        except Exception:
            log.exception("egress gateway: internal error while assigning the session; refusing")
            try:
                strip_identity_headers(flow.request.headers)
            finally:
                refuse(flow, "internal_error", "the gateway failed while identifying the session")

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._guarded(flow, connect=True)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Not skipped for answered flows: the headers must go and the audit needs the session.
        self._guarded(flow, connect=False)

    def request(self, flow: http.HTTPFlow) -> None:
        # An addon may have put the headers back since requestheaders; they never leave.
        try:
            strip_identity_headers(flow.request.headers)
        except Exception:
            log.exception("egress gateway: could not strip identity headers; refusing")
            refuse(flow, "internal_error", "the gateway failed while identifying the session")
