"""The fleet addon: ``gateway_state`` (the shared PostgreSQL store) and ``gateway_instance``.

Unset ``gateway_state``: nothing changes (holds are decided in mitmweb or by ``unattended``).
Set: every hold is a row in the store's review queue, decided with ``run_gateway.sh approvals
--state URL`` from any host; agent traffic to the store's address is refused.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions

from egress_gateway.fleet import settings
from egress_gateway.fleet.store import Store

log = logging.getLogger(__name__)

_STOPPING: set = set()  # stores of unloaded addons, stopping


class Fleet:
    """The link of this instance to the fleet's store (None when running alone)."""

    name = "egress_gateway_fleet"

    def __init__(self, core=None) -> None:
        self.core = core  # its audit log: the instance id in every line, the head to the store
        self.state: settings.StateUrl | None = None
        self.instance = ""
        self.store: Store | None = None
        self._addresses: set[tuple[str, int]] = set()
        self.on_down = None  # set by the approvals addon
        self.on_decision = None

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def load(self, loader) -> None:
        loader.add_option("gateway_state", str, "",
                          "The fleet's shared store: postgresql://USER@HOST:PORT/DB (password from "
                          "PGPASSWORD or a libpq passfile). Empty: this gateway runs alone.")
        loader.add_option("gateway_instance", str, "",
                          "This gateway's id in the fleet (default: host name and listen port).")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gateway_state", "gateway_instance", "listen_port"}:
            return
        if self.store is not None and updated & {"gateway_state", "gateway_instance"}:
            raise exceptions.OptionsError("gateway_state and gateway_instance cannot change at "
                                          "run time; restart the gateway")
        try:
            url = ctx.options.gateway_state.strip()
            self.state = settings.parse_state_url(url) if url else None
            self.instance = settings.instance_name(ctx.options.gateway_instance,
                                                   ctx.options.listen_port)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        self._addresses = settings.store_addresses(self.state) if self.state else set()
        audit = getattr(self.core, "audit", None)
        if audit is not None and (self.state is not None or ctx.options.gateway_instance.strip()):
            audit.instance = self.instance

    def running(self) -> None:
        if self.state is None or self.store is not None:
            return
        listen = f"{ctx.options.listen_host or '*'}:{ctx.options.listen_port}"
        self.store = Store(self.state, self.instance, listen)
        self.store.on_down = lambda reason: self.on_down and self.on_down(reason)
        self.store.on_decision = lambda *a: bool(self.on_decision and self.on_decision(*a))
        self.store.audit_head = self._audit_head
        self.store.start()
        log.info(f"egress gateway: instance {self.instance} uses the review store "
                 f"{self.state.display}")

    def _audit_head(self) -> tuple[str, int, str, str] | None:
        audit = getattr(self.core, "audit", None)
        if audit is None:
            return None
        seq, head, alg = audit.state()
        return str(audit.path), seq, head, alg

    def done(self):
        """Synchronous (mitmproxy unloads a script with a sync done hook and refuses an async
        one): on a stop the returned coroutine is awaited; on an unload it runs as a task."""
        if self.store is None:
            return None
        stopping = self.store.stop()
        if ctx.master.should_exit.is_set():
            return stopping
        try:
            task = asyncio.get_running_loop().create_task(stopping)
            _STOPPING.add(task)  # referenced until done (the loop keeps only weak references)
            task.add_done_callback(_STOPPING.discard)
        except RuntimeError:  # no loop (a test unloading the addon): nothing is running
            stopping.close()
        return None

    def server_connect(self, data) -> None:
        """Agents never reach the store (they could decide their own holds)."""
        server = data.server
        if server.error or not server.address or not self._addresses:
            return
        try:
            host, port = str(server.address[0]).lower().rstrip("."), int(server.address[1])
            if (host, port) in self._addresses:
                server.error = "blocked by the egress gateway: that is the fleet's review store"
                log.warning(f"egress gateway refused a dial to the review store {host}:{port}")
        except Exception as e:
            log.exception("egress gateway: internal error in fleet (server_connect)")
            server.error = f"egress gateway internal error: {e}"
