"""The PostgreSQL addon: listens per ``postgres:`` entry and installs the protocol layer.

- ``configure``: one ``reverse:tcp://UPSTREAM@LISTEN`` mode per entry is added to ``mode``
  (listen addresses are read at start-up; other entry changes apply to new connections);
- ``next_layer``: a connection arriving on an entry's mode gets `layer.PostgresLayer` (behind
  `layer.SslNegotiation` and mitmproxy's ``ServerTLSLayer`` unless ``tls: disable``), never
  mitmproxy's ``TCPLayer``;
- ``tls_start_server``: the upstream TLS context for the entry (verify-full with its ``ca``,
  or require: encrypted, unverified);
- ``postgres_scan``: masking runs on a worker thread within ``gateway_scan_timeout``;
- ``postgres_event``: connection-level audit lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from mitmproxy import ctx, exceptions
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import tunnel
from mitmproxy.proxy.layers import tls as tls_layer
from OpenSSL import SSL

from egress_gateway.detection.engine import deadline
from egress_gateway.detection.findings import TextResult
from egress_gateway.net import hosts
from egress_gateway.postgres import hooks, recording
from egress_gateway.postgres import layer as pg
from egress_gateway.postgres.holds import Holds
from egress_gateway.postgres.runtime import PostgresRuntime

log = logging.getLogger(__name__)

SCAN_WORKERS = 2


def _engine(settings):
    from egress_gateway.detection import DetectionEngine

    return DetectionEngine.get(settings)


class Postgres:
    """Owns the PostgreSQL listen modes and connections."""

    name = "egress_gateway_postgres"

    def __init__(self, core, recorder=None, engine_factory=None) -> None:
        self.core = core
        self.recorder = recorder
        self.engine_factory = engine_factory or _engine
        self.pool: ThreadPoolExecutor | None = None
        self._added: list[str] = []
        core.add_compiler("postgres", lambda policy: PostgresRuntime(policy, self.engine_factory))
        core.add_warmer(self.prewarm)
        self.holds = Holds()
        self.layers: weakref.WeakSet = weakref.WeakSet()  # open connections (PostgresLayer)

    # --- lifecycle ----------------------------------------------------------------------------
    def configure(self, updated: set[str]) -> None:
        if "gateway_policy" not in updated or self.core.policy is None:
            return
        entries = self.core.policy.postgres
        want = [e.mode_spec for e in entries]
        current = [m for m in ctx.options.mode if m not in self._added]
        if want and current + want != list(ctx.options.mode):
            self._added = want
            ctx.options.update(mode=current + want)
        if entries:
            try:
                self.prewarm(self.core.compiled)
            except Exception as e:
                raise exceptions.OptionsError(f"cannot load the detection engine: {e}") from None

    def prewarm(self, compiled) -> None:
        """Build the detection engines of every database entry (also of a reloaded policy,
        before it applies)."""
        for entry in compiled.policy.postgres:
            for direction in ("request", "response"):
                engine = compiled["postgres"].engine(entry.name, direction)
                if engine is not None:
                    engine.analyze("Warm-up: jane.roe@example.com")

    def done(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def entry_for(self, client):
        """The policy entry whose listen mode accepted `client`, or None."""
        policy = self.core.policy
        spec = getattr(client.proxy_mode, "full_spec", None)
        if policy is None or spec is None:
            return None
        for e in policy.postgres:
            if e.mode_spec == spec:
                return e
        return None

    # --- hooks --------------------------------------------------------------------------------
    def next_layer(self, nextlayer) -> None:
        context = nextlayer.context
        try:
            if getattr(context.client.proxy_mode, "type_name", "") != "reverse":
                return
            entry = self.entry_for(context.client)
            if entry is None:
                if getattr(context.client.proxy_mode, "full_spec", None) in self._added:
                    # A mode this addon opened, whose entry a policy reload removed or changed:
                    # never mitmproxy's raw TCP relay.
                    if nextlayer.layer is not None and nextlayer.layer in context.layers:
                        context.layers.remove(nextlayer.layer)
                    nextlayer.layer = hooks.RefuseLayer(context)
                return
            # Drop a layer another addon made (mitmproxy's TCPLayer) from the stack's list.
            if nextlayer.layer is not None and nextlayer.layer in context.layers:
                context.layers.remove(nextlayer.layer)
            host, port = entry.upstream_address
            server = context.server
            server.address = (host, port)
            if entry.tls == "disable":
                server.sni = None
                nextlayer.layer = pg.PostgresLayer(context, entry, self)
                return
            server.sni = host if hosts.parse_ip_literal(host) is None else None
            stack = tunnel.LayerStack()
            stack /= hooks.SslNegotiation(context, server)
            stack /= tls_layer.ServerTLSLayer(context, server)
            stack /= pg.PostgresLayer(context, entry, self)
            nextlayer.layer = stack[0]
        except Exception:
            log.exception("egress gateway: could not set up a PostgreSQL connection; refusing it")
            context.client.error = "egress gateway internal error"
            nextlayer.layer = None

    def tls_start_server(self, tls_start) -> None:
        entry = self.entry_for(tls_start.context.client)
        if entry is None:
            return
        try:
            server = tls_start.conn
            verify = (net_tls.Verify.VERIFY_PEER if entry.tls == "verify-full"
                      else net_tls.Verify.VERIFY_NONE)
            ssl_ctx = net_tls.create_proxy_server_context(
                method=net_tls.Method.TLS_CLIENT_METHOD,
                min_version=net_tls.Version.TLS1_2,
                max_version=net_tls.Version.UNBOUNDED,
                cipher_list=None,
                ecdh_curve=None,
                verify=verify,
                ca_path=None,
                ca_pemfile=entry.ca,
                client_cert=None,
                legacy_server_connect=False,
            )
            conn = SSL.Connection(ssl_ctx)
            host = entry.upstream_address[0]
            if verify is net_tls.Verify.VERIFY_PEER:
                _check_host(conn, host)
            elif hosts.parse_ip_literal(host) is None:
                conn.set_tlsext_host_name(host.encode("idna"))
            conn.set_connect_state()
            server.alpn_offers = []
            tls_start.ssl_conn = conn
        except Exception:
            log.exception("egress gateway: could not set up TLS to a PostgreSQL upstream")
            tls_start.ssl_conn = None

    async def postgres_scan(self, job: hooks.ScanJob) -> None:
        try:
            policy = self.core.policy
            if policy is None:
                raise RuntimeError("no policy loaded")
            engine = self._engine_for(policy, job.entry.name, job.direction)
            timeout = _scan_timeout()
            session = job.session
            if engine is None:  # redaction is off for this database and direction
                job.result = job.fn(lambda texts: [TextResult(t) for t in texts])
                return

            def work():
                with deadline(timeout):
                    return job.fn(lambda texts: engine.redact_many(texts, session=session))

            if self.pool is None:
                self.pool = ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="gateway-pg-scan")
            loop = asyncio.get_running_loop()
            resume = _pause_reading(job.client, job.server) if job.direction == "response" else None
            try:
                job.result = await asyncio.wait_for(loop.run_in_executor(self.pool, work), timeout)
            finally:
                if resume is not None:
                    resume()
        except BaseException as e:  # noqa: BLE001 - handed to the layer, which refuses
            job.error = e

    def postgres_event(self, event: hooks.Event) -> None:
        """An audit line; with messages, the TCP flow recorded first (`recording.flow_state`)."""
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event.record}
        try:
            if event.messages and self.recorder is not None and event.client is not None:
                state = recording.flow_state(event, rec)
                rec["flow"] = state["id"]
                self.recorder.write_state(rec["session"], state, rec)
            else:
                self.core.audit.write(rec)
        except Exception as e:
            log.exception("egress gateway: could not record a PostgreSQL statement")
            event.failed = f"{type(e).__name__}"

    async def postgres_statement(self, check: hooks.StatementCheck) -> None:
        """read_only, then the approve rules, for each statement about to run."""
        try:
            policy = self.core.policy
            if policy is None:
                raise RuntimeError("no policy loaded")
            entry = check.entry
            if self.recorder is not None and getattr(self.recorder, "failed", None):
                check.refusal = hooks.Refusal("58030", "recording_failed", "the gateway cannot "
                                           "record statements; nothing runs until it can")
                return
            for st in check.statements:
                if entry.read_only and st.writes:
                    check.blocked = st
                    check.refusal = hooks.Refusal("25006", "read_only", f"the database entry "
                                               f"{entry.name!r} is read-only: {st.type} writes")
                    return
                rule = next((r for r in policy.approve if r.matches_statement(
                    entry.name, st.type, st.tables, st.without_where, {})), None)
                if rule is None:
                    continue
                verdict, by, waited = await self.holds.decide(rule, check, st)
                approval = {"rule": rule.name, "outcome": "approved" if verdict else "denied",
                            "decided_by": by, "wait_seconds": waited}
                if not verdict:
                    check.blocked, check.approval = st, approval
                    check.refusal = hooks.Refusal("42501", "denied", f"approval rule {rule.name!r}: "
                                               f"{rule.reason}; {by}")
                    return
                check.approvals[id(st)] = approval
        except Exception:
            log.exception("egress gateway: internal error while checking a PostgreSQL statement")
            check.refusal = hooks.Refusal("XX000", "internal_error",
                                       "the gateway failed while checking the statement")

    # --- helpers ------------------------------------------------------------------------------
    def _engine_for(self, policy, entry: str, direction: str = "response"):
        """The detection engine for one database and direction; None: not redacted."""
        compiled = self.core.compiled
        if compiled is None or compiled.policy is not policy:
            raise RuntimeError("no policy loaded")
        return compiled["postgres"].engine(entry, direction)


def _pause_reading(client, server):
    """Stop reading from the database while a batch of rows is scanned: mitmproxy reads on and
    queues what arrives for a busy layer, so without this a result faster than the scanner
    would pile up in memory. Paused, the socket's buffers fill and TCP slows the server down.
    Returns the function that resumes reading (None if the connection is not found)."""
    try:
        ps = ctx.master.addons.get("proxyserver")
        handler = ps.connections.get(client.id) if ps is not None else None
        io = handler.transports.get(server) if handler is not None else None
        transport = io.writer.transport if io is not None and io.writer is not None else None
        if transport is None or transport.is_closing():
            return None
        if transport.is_reading():
            transport.pause_reading()
        # asyncio's StreamReader resumes a transport it paused itself once mitmproxy drains its
        # buffer: take that over, so that reading resumes only when the scan is done.
        if getattr(io.reader, "_paused", False):
            io.reader._paused = False
    except Exception:
        log.debug("egress gateway: cannot pause reading from a PostgreSQL server", exc_info=True)
        return None

    def resume() -> None:
        if not transport.is_closing():
            transport.resume_reading()

    return resume


def _scan_timeout() -> float:
    try:
        return float(ctx.options.gateway_scan_timeout)
    except (AttributeError, ValueError):
        return 30.0


def _check_host(conn: SSL.Connection, host: str) -> None:
    """Turn on OpenSSL's host name (or IP address) check for the upstream certificate."""
    import ipaddress

    param = SSL._lib.SSL_get0_param(conn._ssl)  # noqa: SLF001 - pyOpenSSL has no public API
    SSL._lib.X509_VERIFY_PARAM_set_hostflags(param, 0x4)  # X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
    try:
        ip = ipaddress.ip_address(host).packed
    except ValueError:
        name = host.encode("idna")
        conn.set_tlsext_host_name(name)
        ok = SSL._lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    else:
        ok = SSL._lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    if ok != 1:
        raise RuntimeError("cannot enable host name verification")
