"""Stopping the gateway loses nothing: flows in flight are drained, answered, recorded and audited.

On SIGTERM or SIGINT (and on mitmproxy's own shutdown) the gateway stops listening at once and
gives the flows in flight ``gateway_shutdown_grace`` seconds to finish. Then it answers what is
left: a request not yet forwarded (held for approval, waiting on a scan) gets ``503
gateway_unavailable`` ("gateway stopping"; a held request is audited ``denied`` by
``shutdown``); a server-sent-events answer ends with an ``error`` event at its next chunk; a
WebSocket or raw TCP flow has its upstream closed (the agent's WebSocket gets a Close frame).
Whatever is still open `CLOSE_AFTER` seconds later has its connections closed. Every flow is
recorded and audited before the audit log closes; a ``gateway_stop`` line with the counts is
the log's last line, then the checkpoint. A second signal skips the waiting.

mitmproxy runs the ``done`` hooks in addon order and awaits each: this addon is first in the
bundle, so the whole drain happens before any other addon's ``done`` (the scan pool, the
recorder, the audit log are still up). `Finished`, just before the audit closer, sees each flow
after the recorder has written its line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections import Counter

from mitmproxy import ctx, exceptions, http

from egress_gateway.flowstate import peek, refuse, state
from egress_gateway.recording import audit
from egress_gateway.recording.addon import forwarded

log = logging.getLogger(__name__)

DEFAULT_GRACE = 10.0
CLOSE_AFTER = 2.0  # after the grace: time for the answered flows to reach their agents
HURRIED = 0.3  # the same after a second signal
STOPPING_CODE = "gateway_unavailable"
STOPPING_REASON = "gateway stopping"
ERROR_EVENT = b"event: error\ndata: " + json.dumps({
    "type": "error", "error": {"type": "egress_gateway_error",
                               "message": "the gateway is stopping; retry the request"}},
).encode() + b"\n\n"


def parse_grace(value: str) -> float:
    """Seconds of ``gateway_shutdown_grace``; ValueError when not a number in [0, 3600]."""
    try:
        grace = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"gateway_shutdown_grace must be a number of seconds, got {value!r}") \
            from None
    if not 0 <= grace <= 3600:
        raise ValueError(f"gateway_shutdown_grace must be >= 0 and <= 3600 seconds, got {value!r}")
    return grace


def refuse_stopping(flow: http.HTTPFlow, **details) -> None:
    """Answer `flow` with the gateway's stopping refusal (503 gateway_unavailable)."""
    refuse(flow, STOPPING_CODE, STOPPING_REASON, **details)
    state(flow).shutdown = "refused"


class EndStream:
    """Replaces a streamed answer's ``flow.response.stream`` when the gateway stops: the next
    upstream chunk still goes through the stream it wraps (scanned), then an SSE ``error``
    event and an empty chunk (which ends a chunked HTTP/1 answer cleanly); nothing after it."""

    def __init__(self, inner, sse: bool) -> None:
        self.inner = inner
        self.sse = sse
        self.ended = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.ended:
            return []
        out = self.inner(chunk) if callable(self.inner) else chunk
        chunks = [out] if isinstance(out, bytes) else list(out)
        chunks = [c for c in chunks if c]
        self.ended = True
        return chunks + ([ERROR_EVENT] if self.sse else []) + [b""]


def _is_sse(flow: http.HTTPFlow) -> bool:
    return "text/event-stream" in (flow.response.headers.get("content-type") or "").lower()


class Shutdown:
    """Drains, answers, records and audits every flow when the gateway stops."""

    name = "egress_gateway_shutdown"

    def __init__(self, core, approvals, redactor, recorder, postgres=None) -> None:
        self.core = core
        self.postgres = postgres  # its open connections and held statements
        self.approvals = approvals  # ends the holds (one place: approvals.end_holds)
        self.redactor = redactor  # abandons the scans in flight (redactor.abandon_scans)
        self.recorder = recorder  # records what mitmproxy never reported
        self.grace = DEFAULT_GRACE
        self.live: dict[str, object] = {}  # flow id -> flow: started, not yet recorded
        self.stopping: str | None = None  # why (the signal), once stopping
        self.counts: Counter[str] = Counter()
        self._t0 = 0.0
        self._hurry: asyncio.Event | None = None
        self._listening: asyncio.Task | None = None
        self._at_stop: set[str] = set()  # the flows in flight when the grace began
        self._in_grace = True
        self.finished = Finished(self)  # the bundle's tracker, after the recorder

    # --- lifecycle ---------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            # str: mitmproxy cannot parse float options given with --set
            "gateway_shutdown_grace", str, f"{DEFAULT_GRACE:g}",
            "Seconds flows in flight get to finish when the gateway stops (SIGTERM, SIGINT); "
            "then what is left is answered 503 gateway_unavailable or closed.",
        )

    def configure(self, updated: set[str]) -> None:
        if "gateway_shutdown_grace" in updated:
            try:
                self.grace = parse_grace(ctx.options.gateway_shutdown_grace)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        self._hurry = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:  # replaces mitmproxy's handlers (which stop at once, without a drain)
                loop.add_signal_handler(sig, self.on_signal, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):
                log.warning(f"egress gateway: cannot handle {sig.name}; no drain on it")

    def on_signal(self, name: str) -> None:
        if self.stopping is None:
            self.begin(name)
            ctx.master.shutdown()  # mitmproxy then runs the done hooks: ours drains first
        elif self._hurry is not None and not self._hurry.is_set():
            log.warning(f"egress gateway: {name} again: stopping at once")
            self._hurry.set()

    def begin(self, why: str) -> None:
        """Stop accepting connections now; new requests on open connections are refused."""
        if self.stopping is not None:
            return
        self.stopping = why
        self._t0 = time.monotonic()
        log.warning(f"egress gateway: stopping ({why}): {len(self.live)} flows in flight, "
                    f"grace {self.grace:g} s")
        self._listening = asyncio.get_running_loop().create_task(self._stop_listening())

    async def _stop_listening(self) -> None:
        try:
            ps = ctx.master.addons.get("proxyserver")
            for server in list(ps.servers) if ps is not None else []:
                await server.stop()
        except Exception:
            log.exception("egress gateway: could not stop listening")

    def done(self):
        """Synchronous on purpose: mitmproxy unloads a script (a reload, a broken edit) with a
        *sync* done hook and refuses an ``async def`` one, which would abort the unload. When
        the gateway really stops, the returned coroutine is awaited by mitmproxy's shutdown."""
        if self.stopping is None:
            if not ctx.master.should_exit.is_set():
                return None  # the script is unloaded (a reload), not the gateway stopped
            self.begin("shutdown")
        return self._stop()

    async def _stop(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("egress gateway: internal error while stopping")
        try:
            self._write_stop_line()
        except Exception:
            log.exception("egress gateway: could not write the gateway_stop audit line")

    # --- the drain ---------------------------------------------------------------------------
    def _pending(self) -> list:
        return list(self.live.values())

    def _pg_layers(self) -> list:
        """The PostgreSQL connections still open."""
        layers = getattr(self.postgres, "layers", None) or ()
        return [la for la in list(layers) if not la.closed]

    def _pg_busy(self) -> bool:
        held = getattr(getattr(self.postgres, "holds", None), "held", None)
        return bool(held) or any(la.busy for la in self._pg_layers())

    async def _wait(self, seconds: float) -> None:
        """Until no flow is pending, `seconds` pass, or a second signal."""
        deadline = time.monotonic() + seconds
        while (self._pending() or self._pg_busy()) and time.monotonic() < deadline \
                and not self._hurried():
            await asyncio.sleep(0.02)

    def _hurried(self) -> bool:
        return self._hurry is not None and self._hurry.is_set()

    async def _drain(self) -> None:
        if self._listening is not None:
            await self._listening
        self.counts["in_flight"] = len(self.live)
        self._at_stop = set(self.live)
        await self._wait(self.grace)
        self._in_grace = False
        left = self._pending()
        if left:
            log.warning(f"egress gateway: grace over, answering {len(left)} flows still open")
        self.approvals.end_holds("shutdown")
        self.redactor.abandon_scans()
        for flow in left:
            self._answer(flow)
        self._end_postgres()
        extra = HURRIED if self._hurried() else CLOSE_AFTER
        deadline = time.monotonic() + extra
        while (self._pending() or self._pg_layers()) and time.monotonic() < deadline:
            for flow in self._pending():
                stream = flow.response.stream if isinstance(flow, http.HTTPFlow) \
                    and flow.response is not None else None
                if isinstance(stream, EndStream) and stream.ended:
                    self._close(flow, server_only=True)  # the agent has its clean end
            await asyncio.sleep(0.02)
        for flow in self._pending():
            self._close(flow, server_only=False)
        await self._wait(0.5)
        for flow in self._pending():  # mitmproxy reported nothing: record it ourselves
            await self._record(flow)
        self._close_idle()
        ps = ctx.master.addons.get("proxyserver")
        deadline = time.monotonic() + 1.0
        while ps is not None and ps.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # let the closed connections unwind (no CancelledError)

    def _end_postgres(self) -> None:
        """Deny held statements; end each PostgreSQL connection (its layer audits what is open,
        then sends FATAL 57P01 gateway stopping)."""
        if self.postgres is None:
            return
        from egress_gateway.postgres.layer import GatewayStopping

        self.postgres.holds.end_all("shutdown")
        ps = ctx.master.addons.get("proxyserver")
        for la in self._pg_layers():
            handler = ps.connections.get(la.client.id) if ps is not None else None
            if handler is None:
                continue
            self.counts["postgres_connections_ended"] += 1
            asyncio.get_running_loop().create_task(handler.server_event(GatewayStopping()))

    def _answer(self, flow) -> None:
        """The documented end of a flow still open when the grace is over."""
        try:
            if isinstance(flow, http.HTTPFlow) and flow.websocket is None:
                if flow.response is None:
                    if not forwarded(flow):
                        refuse_stopping(flow)
                        self.counts["refused"] += 1
                    # forwarded, waiting for upstream: its connections are closed below
                elif flow.response.stream:
                    flow.response.stream = EndStream(flow.response.stream, _is_sse(flow))
                    state(flow).stream_stopped = STOPPING_REASON
                    state(flow).shutdown = "stream_ended"
                    self.counts["streams_ended"] += 1
            else:  # a WebSocket or raw TCP flow: closing upstream ends it on both sides
                state(flow).shutdown = "closed"
                self._close(flow, server_only=True)
        except Exception:
            log.exception("egress gateway: could not answer a flow while stopping")
            self._close(flow, server_only=False)

    def _handler(self, flow):
        ps = ctx.master.addons.get("proxyserver")
        return ps.connections.get(flow.client_conn.id) if ps is not None else None

    def _close(self, flow, server_only: bool) -> None:
        handler = self._handler(flow)
        if handler is None:
            return
        try:
            conns = [flow.server_conn] if server_only else [flow.server_conn, flow.client_conn]
            for conn in conns:
                if conn in handler.transports and conn.connected:
                    handler.close_connection(conn)
                    if not server_only or conn is flow.server_conn:
                        self.counts["connections_closed"] += 1
            if not server_only:
                st = state(flow)
                st.shutdown = st.shutdown or "closed"
        except Exception:
            log.exception("egress gateway: could not close a connection while stopping")

    def _close_idle(self) -> None:
        """Close kept-alive client connections (else asyncio cancels them at exit)."""
        ps = ctx.master.addons.get("proxyserver")
        for handler in list(ps.connections.values()) if ps is not None else []:
            try:
                if handler.client in handler.transports:
                    handler.close_connection(handler.client)
            except Exception:
                log.debug("egress gateway: closing an idle connection failed", exc_info=True)

    async def _record(self, flow) -> None:
        from mitmproxy import flow as mflow

        if flow.error is None:
            flow.error = mflow.Error("the gateway stopped: connection closed")
        st = state(flow)
        st.shutdown = st.shutdown or "closed"
        if isinstance(flow, http.HTTPFlow):
            await self.recorder.error(flow)
        else:
            await self.recorder.tcp_error(flow)
        self.finish(flow)

    # --- accounting --------------------------------------------------------------------------
    def track(self, flow) -> None:
        self.live[flow.id] = flow

    def finish(self, flow) -> None:
        if self.live.pop(flow.id, None) is not None and self.stopping is not None:
            if flow.metadata.get("gateway_audited"):
                self.counts["recorded"] += 1
            if self._in_grace and flow.id in self._at_stop:
                self.counts["drained"] += 1

    def _write_stop_line(self) -> None:
        c = self.counts
        took = round(time.monotonic() - self._t0, 3)
        rec = {"time": audit.timestamp(millis=True), "kind": "gateway", "event": "stop",
               "why": self.stopping, "grace": self.grace, "seconds": took,
               "in_flight": c["in_flight"], "drained": c["drained"], "refused": c["refused"],
               "streams_ended": c["streams_ended"],
               "connections_closed": c["connections_closed"],
               "postgres_connections_ended": c["postgres_connections_ended"],
               "recorded": c["recorded"],
               "unrecorded": len(self.live)}
        if self.core.audit is not None:
            self.core.audit.write(rec)
        log.warning(f"egress gateway stopped in {took:g} s: {c['in_flight']} flows in flight, "
                    f"{c['drained']} drained, {c['refused']} refused, {c['streams_ended']} streams "
                    f"ended, {c['connections_closed']} connections closed, "
                    f"{c['postgres_connections_ended']} PostgreSQL connections ended, {c['recorded']} "
                    f"recorded, {len(self.live)} unrecorded")

    # --- hooks -------------------------------------------------------------------------------
    def client_connected(self, client) -> None:
        if self.stopping is not None and not client.error:
            client.error = STOPPING_REASON

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.stopping is not None and not flow.response:
            refuse_stopping(flow)
            self.counts["refused"] += 1

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.track(flow)
        if self.stopping is not None and not flow.response:
            refuse_stopping(flow)
            self.counts["refused"] += 1

    def _tag(self, flow) -> None:
        """A flow ending while the gateway stops, on its own: its audit line says drained."""
        if self.stopping is not None and flow.id in self.live and not peek(flow).data.get("shutdown"):
            state(flow).shutdown = "drained"

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._tag(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._tag(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._tag(flow)

    def tcp_end(self, flow) -> None:
        self._tag(flow)

    def tcp_error(self, flow) -> None:
        self._tag(flow)

    def tcp_start(self, flow) -> None:
        self.track(flow)
        if self.stopping is not None:
            flow.kill()

    def udp_start(self, flow) -> None:
        self.track(flow)
        if self.stopping is not None:
            flow.kill()


class Finished:
    """After the recorder: a flow whose recording and audit line are written is no longer open."""

    name = "egress_gateway_shutdown_finished"

    def __init__(self, shutdown: Shutdown) -> None:
        self.shutdown = shutdown

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self.shutdown.finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.shutdown.finish(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.shutdown.finish(flow)

    def tcp_end(self, flow) -> None:
        self.shutdown.finish(flow)

    def tcp_error(self, flow) -> None:
        self.shutdown.finish(flow)

    def udp_end(self, flow) -> None:
        self.shutdown.finish(flow)

    def udp_error(self, flow) -> None:
        self.shutdown.finish(flow)
