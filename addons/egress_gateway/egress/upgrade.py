"""Protocol switches: an HTTP ``Upgrade`` that would turn into unscanned raw bytes is refused.

mitmproxy hands a ``101 Switching Protocols`` to its WebSocket layer only for ``Upgrade:
websocket`` with ``Sec-WebSocket-Version: 13`` (and the ``websocket`` option on); any other
upgrade (``h2c``, ``foo``, a WebSocket of another version) is relayed as raw TCP, both ways,
unscanned. So:

1. ``requestheaders``: a request asking for any other upgrade is refused before the upstream
   sees it (415 ``unsupported_content``), unless the policy passes raw TCP to that destination
   (``redact.request.unsupported: pass``, or redaction off for it);
2. ``response`` (runs before mitmproxy sends the ``101`` to the client): a ``101`` that will not
   become a WebSocket is replaced with the same refusal and ``Connection: close``.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http

from egress_gateway.flowstate import refuse, settled, state

log = logging.getLogger(__name__)

WEBSOCKET_VERSION = "13"  # the only version mitmproxy's WebSocket layer takes (wsproto)


def websocket_handshake(headers, websocket_enabled: bool = True) -> bool:
    """True when mitmproxy would hand this upgrade request to its WebSocket layer."""
    return (websocket_enabled
            and headers.get("upgrade", "").strip().lower() == "websocket"
            and headers.get("sec-websocket-version", "").strip() == WEBSOCKET_VERSION)


def asks_upgrade(headers) -> bool:
    """True when a request asks for a protocol switch (any ``Upgrade`` header, even empty)."""
    return "upgrade" in headers or "http2-settings" in headers


def raw_tcp_passes(compiled, host: str) -> bool:
    """Whether the policy lets unscannable raw bytes through to `host` (as for raw TCP)."""
    rt = compiled["redact"] if compiled is not None and "redact" in compiled else None
    if rt is None or not rt.enabled:
        return True
    _, rules = rt.for_flow(host, "", "request")
    return not rules.enabled or rules.unsupported == "pass"


class UpgradeGuard:
    """Refuses protocol switches that would relay raw, unscanned bytes."""

    def __init__(self, core) -> None:
        self.core = core

    def _websocket_enabled(self) -> bool:
        try:
            return bool(ctx.options.websocket)
        except (AttributeError, KeyError):
            return True

    def _refuse(self, flow: http.HTTPFlow, what: str) -> None:
        reason = (f"a protocol switch ({what}) would relay raw bytes the gateway cannot scan; "
                  "the policy blocks unscannable content (redact.request.unsupported: block)")
        refuse(flow, "unsupported_content", reason, where="upgrade")
        flow.response.headers["Connection"] = "close"
        log.info(f"egress gateway refused a protocol switch to {flow.request.pretty_host} "
                 f"({what})")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            headers = flow.request.headers
            if not asks_upgrade(headers) or websocket_handshake(headers, self._websocket_enabled()):
                return
            self.core.require_policy()
            if raw_tcp_passes(self.core.compiled, flow.request.host):
                state(flow).sub("unscanned")["request"] = "protocol switch (policy: pass)"
                return
            self._refuse(flow, "not a WebSocket handshake mitmproxy can inspect")
        except Exception:
            log.exception("egress gateway: internal error checking an upgrade; refusing it")
            refuse(flow, "internal_error", "the gateway failed while checking a protocol switch")

    def response(self, flow: http.HTTPFlow) -> None:
        """The second line: a 101 that mitmproxy will not hand to its WebSocket layer."""
        try:
            if flow.response is None or flow.response.status_code != 101 or flow.websocket:
                return
            if raw_tcp_passes(self.core.compiled, flow.request.host):
                return
            self._refuse(flow, "the upstream switched to a protocol other than WebSocket")
        except Exception:
            log.exception("egress gateway: internal error checking a 101; refusing it")
            refuse(flow, "internal_error", "the gateway failed while checking a protocol switch")
            flow.response.headers["Connection"] = "close"
