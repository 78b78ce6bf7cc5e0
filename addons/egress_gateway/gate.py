"""The readiness gate: no flow is forwarded unless a gateway is loaded, configured and ready.

mitmproxy keeps a proxy running when a script fails to (re)load, forwarding everything. The
gate is added to mitmproxy's addon chain directly, not through the script, so it outlives the
script: when the gateway is unloaded (a reload after an edit, a failed load), the gate is closed
and every request, tunnel and upstream dial is refused until a gateway opens it again.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http

from .refusal import refuse

NAME = "egress_gateway_gate"
REASON = "the egress gateway is not loaded or not ready; nothing is forwarded"
log = logging.getLogger(__name__)


class Gate:
    name = NAME

    def __init__(self) -> None:
        self.owner: object | None = None

    @property
    def ready(self) -> bool:
        return self.owner is not None

    def open(self, owner: object) -> None:
        self.owner = owner

    def close(self, owner: object) -> None:
        if self.owner is owner:
            self.owner = None
            log.warning("egress gateway unloaded: refusing all traffic until it is ready again")

    def _refuse(self, flow: http.HTTPFlow) -> None:
        if not self.ready and not flow.response:
            refuse(flow, "gateway_unavailable", REASON)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def server_connect(self, data) -> None:
        if not self.ready and not data.server.error:
            data.server.error = REASON

    def tcp_start(self, flow) -> None:
        if not self.ready:
            flow.kill()

    def udp_start(self, flow) -> None:
        if not self.ready:
            flow.kill()

    def websocket_start(self, flow) -> None:
        if not self.ready:
            flow.kill()


def install() -> Gate:
    """The gate of this mitmproxy instance, added to the addon chain once."""
    gate = ctx.master.addons.get(NAME)
    if gate is None:
        gate = Gate()
        ctx.master.addons.add(gate)
    return gate
