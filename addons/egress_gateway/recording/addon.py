"""The Recorder addon: records every flow, as it crossed the boundary, then writes its audit line.

``<gateway_recordings>/YYYY-MM-DD/<session>.mitm`` (then ``<session>.1.mitm``, ... on rotation
and on restart): mitmproxy's own format (`mitmproxy.io.FlowWriter`), readable with
``mitmdump -nr``, ``mitmweb -nr`` and `mitmproxy.io.FlowReader`.

- Each flow is serialised first, then written with one ``write()`` to a file opened unbuffered
  when the flow completes (synced to disk per flow with ``gateway_recording_fsync``, else in
  the background every second); then
  its audit line (with the SHA-256 of those bytes, the file and the offset) is appended. A
  ``kill -9`` loses at most the flows in flight, and every file stays readable.
- What is recorded is what was forwarded and what the agent got back: the request after the
  other addons (redaction) changed it, the response as returned (streamed bodies included:
  ``store_streamed_bodies`` is turned on), masked as `mask` says.
- Fail closed: when a recording (or its audit line) cannot be written, the flow's answer is
  replaced by ``503 recording_failed`` where it has not reached the agent yet, and every new
  flow is refused until a probe write succeeds again (checked at most once a second).

The audit log itself (opening, keying, checkpoints, closing) is Core's (``core.audit``).
Injected credentials never reach the recording: `credentials` keeps the placeholder in
``flow.request`` and sets the real value only on the copy handed to the upstream connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from egress_gateway import session
from egress_gateway.detection.budget import deadline
from egress_gateway.flowstate import HEADER, make_response, peek, refuse, settled, state
from egress_gateway.recording import audit, mask, settings
from egress_gateway.recording.files import RecordingError, RecordingFiles, probe

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0
_FORWARDED = "_gateway_forwarded"  # flow attribute: the last gateway hook passed the request
_AUDITED = "gateway_audited"  # private metadata key (not recorded): the flow's line is written


def forwarded(flow) -> bool:
    """True once the last gateway hook passed the request (it is, or is being, forwarded)."""
    return bool(getattr(flow, _FORWARDED, False))


def describe_error(e: BaseException) -> str:
    """An error as it may be shown to every agent and written to the log and the audit line:
    its type and, for OS errors, the system's message; never the exception's own text (a
    serialiser's error quotes the flow's bytes)."""
    if isinstance(e, RecordingError) and e.args and isinstance(e.args[0], str) \
            and e.args[0] == "no recordings directory configured":
        return "no recordings directory configured"
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    return type(e).__name__


def label_comment(flow) -> None:
    """mitmweb's comment of every flow starts with its session and, for a refusal, the code and
    reason (what other addons wrote, e.g. redaction counts, follows)."""
    st = peek(flow)
    head = f"session {session.session_of(flow)}"
    if st.refused:
        head += f"; refused {st.code}: {st.reason}"
    elif st.decision == "would_block":
        head += f"; would block: {st.reason}"
    comment = flow.comment or ""
    if not comment.startswith(head):
        flow.comment = f"{head}; {comment}" if comment else head


def withhold_host(flow, replacement: str) -> None:
    """Replace a refused request's host name everywhere the gateway keeps it (the request, the
    refusal's reason and details)."""
    import re

    original = flow.request.host
    pattern = re.compile(re.escape(original.rstrip(".")) + r"\.?", re.IGNORECASE)
    flow.request.host = replacement
    st = state(flow)
    if st.reason:
        st.reason = pattern.sub(replacement, st.reason)
    if st.details:
        st.details = {k: pattern.sub(replacement, v) if isinstance(v, str) else v
                      for k, v in st.details.items()}
    if flow.response is not None and HEADER in flow.response.headers and st.code:
        flow.response = make_response(st.code, st.reason or "refused", **(st.details or {}))


def _claim(flow) -> bool:
    """True the first time it is called for `flow`: exactly one audit line per flow."""
    if flow.metadata.get(_AUDITED):
        return False
    flow.metadata[_AUDITED] = True
    return True


class Recorder:
    """Records each completed flow, then writes its audit line. Must be the last gateway addon
    (before Core's closer, which closes the audit log after it)."""

    name = "egress_gateway_recorder"

    def __init__(self, core) -> None:
        self.core = core
        self.files: RecordingFiles | None = None
        self.root: Path | None = None
        self.failed: str | None = None
        self._last_probe = 0.0
        self._lock = threading.Lock()
        self._tasks: list[asyncio.Task] = []
        self._dirty = False  # written since the last background sync
        self.fsync = False  # gateway_recording_fsync

    def load(self, loader) -> None:
        settings.add_options(loader)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "store_streamed_bodies" in updated and not opts.store_streamed_bodies:
            opts.update(store_streamed_bodies=True)  # streamed bodies must be recorded too
        if updated & settings.FILE_OPTIONS:
            root = settings.recordings_dir(opts.gateway_recordings, opts.gateway_audit_log)
            try:
                max_bytes = settings.parse_max_bytes(opts.gateway_recording_max_bytes)
                probe(root)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
            except OSError as e:
                raise exceptions.OptionsError(
                    f"cannot write recordings to gateway_recordings={root}: {e}") from None
            with self._lock:
                if self.files:
                    self.files.close()
                self.root = root
                self.files = RecordingFiles(root, max_bytes, opts.gateway_recording_fsync)
                self.fsync = opts.gateway_recording_fsync
                self.failed = None

    def running(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._background_sync()))

    async def _background_sync(self) -> None:
        """Group commit: one fsync per second for everything written since the last one."""
        while True:
            await asyncio.sleep(settings.SYNC_SECONDS)
            if not self._dirty:
                continue
            self._dirty = False
            try:
                await asyncio.to_thread(self._sync_now)
            except Exception as e:
                log.exception("egress gateway: syncing recordings to disk failed")
                self._fail(f"sync: {e}")

    def _sync_now(self) -> None:
        with self._lock:
            if self.files is not None:
                self.files.sync_all()
        if self.core.audit is not None:
            self.core.audit.sync()

    def done(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        with self._lock:
            if self.files:
                self.files.close()

    # --- failing closed ------------------------------------------------------------------------
    def _fail(self, why: str) -> None:
        if self.failed is None:
            log.error(f"egress gateway: RECORDING FAILED ({why}); refusing all traffic until "
                      "recordings can be written again")
        self.failed = why
        self._last_probe = time.monotonic()

    def _refuse_if_failed(self, flow: http.HTTPFlow) -> None:
        if self.failed is None:
            return
        now = time.monotonic()
        if now - self._last_probe >= PROBE_INTERVAL and self.root is not None:
            self._last_probe = now
            try:
                probe(self.root)
            except OSError:
                pass
            else:
                log.warning(f"egress gateway: recordings can be written again ({self.root}); "
                            "forwarding resumes")
                self.failed = None
                return
        refuse(flow, "recording_failed",
               f"the gateway cannot record flows ({self.failed}); nothing is forwarded")

    # --- hooks ---------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not flow.response:
            self._guard(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not settled(flow):
            self._guard(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        self._guard(flow)
        if flow.response is None:
            setattr(flow, _FORWARDED, True)  # the last gateway hook passed it: it is forwarded

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # a WebSocket is recorded when it ends
            await self._record(flow, "http", answerable=True)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._record(flow, "websocket" if flow.websocket is not None else "http")

    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        await self._record(flow, "websocket")

    async def http_connect_error(self, flow: http.HTTPFlow) -> None:
        await self._record(flow, "connect")

    def http_connected(self, flow: http.HTTPFlow) -> None:
        # An established tunnel: its requests are recorded one by one; the CONNECT is audited.
        if not _claim(flow):
            return
        try:
            label_comment(flow)
            self.core.audit.write(audit.flow_record(flow, "connect"))
        except Exception as e:
            log.exception("egress gateway: could not write the audit line")
            self._fail(f"audit log: {e}")
            refuse(flow, "recording_failed", "the gateway cannot write its audit log")

    def _guard(self, flow: http.HTTPFlow) -> None:
        try:
            self._refuse_if_failed(flow)
        except Exception:
            log.exception("egress gateway: internal error in the recorder; refusing the flow")
            refuse(flow, "internal_error", "the gateway failed while checking its recorder")

    async def _record(self, flow: http.HTTPFlow, kind: str, answerable: bool = False) -> None:
        """Write the recording, then the audit line; fail closed if either cannot be written.

        Serialised here, written (and synced) in a worker thread; the hook, and so the answer to
        the agent, waits for both.
        """
        if not _claim(flow):
            return
        forwarded = bool(getattr(flow, _FORWARDED, False))
        # An upstream answer has not reached the agent yet (unless streamed): it can be withheld.
        # (A refusal by the gateway itself carries nothing from upstream: it stays.)
        answerable = answerable and forwarded and flow.response is not None \
            and not flow.response.stream
        try:
            path = None
            if not forwarded:
                host, path = await _scrub(flow, getattr(self.core.policy, "detection", None))
                if host is not None:  # the recording, the audit line and the flow line
                    withhold_host(flow, host)
            try:
                label_comment(flow)
            except Exception:  # a comment is not worth failing the recorder for
                log.exception("egress gateway: could not label the flow's comment")
            state = mask.recorded_state(flow, forwarded, path)
            try:
                data = mask.serialize(state)
            except ValueError as e:  # e.g. a 101 flow's bytearray: this flow's problem only
                data = mask.serialize(mask.stub_state(state, type(e).__name__))
                if answerable:
                    refuse(flow, "recording_failed",
                           "the gateway could not record this flow; its answer is withheld")
                log.error(f"egress gateway: flow {flow.id} cannot be serialised "
                          f"({type(e).__name__}); recorded as a stub")
            rec = audit.flow_record(flow, kind)
            if not forwarded:
                rec["bytes_out"] = 0  # refused before it left: nothing went out
                if path is not None:
                    rec["path"] = path
            await self._write_soon(session.session_of(flow), data, rec)
            if not forwarded and flow.request.method != "CONNECT":
                # mitmdump prints each flow's URL after this hook, mitmweb shows it: a refused
                # request's query and unscanned path stay out of both too.
                flow.request.path = path if path is not None else flow.request.path.split("?", 1)[0]
            return
        except Exception as e:
            why = describe_error(e)
            log.error(f"egress gateway: could not record flow {flow.id} ({why})")
            self._fail(why)
        if answerable:
            refuse(flow, "recording_failed",
                   "the gateway could not record this flow; its answer is withheld")
        try:
            rec = audit.flow_record(flow, kind)
            rec["recording_error"] = self.failed
            self.core.audit.write(rec)
        except Exception:
            log.exception("egress gateway: could not write the audit line either")

    async def tcp_end(self, flow) -> None:
        await self._record_stream(flow, "tcp")

    async def tcp_error(self, flow) -> None:
        await self._record_stream(flow, "tcp")

    async def udp_end(self, flow) -> None:
        await self._record_stream(flow, "udp")

    async def udp_error(self, flow) -> None:
        await self._record_stream(flow, "udp")

    async def _record_stream(self, flow, kind: str) -> None:
        """Raw TCP/UDP flows (only where the policy lets unscannable traffic pass): recorded
        and audited like the others; a failure fails closed for the flows after it."""
        if not _claim(flow):
            return
        try:
            state = mask.recorded_stream_state(flow)
            try:
                data = mask.serialize(state)
            except ValueError as e:  # this flow's problem only: a stub, the recorder goes on
                state["messages"] = []
                state.setdefault("metadata", {}).setdefault("gateway", {})["recording"] = {
                    "stub": type(e).__name__}
                data = mask.serialize(state)
                log.error(f"egress gateway: {kind} flow {flow.id} cannot be serialised "
                          f"({type(e).__name__}); recorded as a stub")
            rec = audit.stream_record(flow, kind)
            await self._write_soon(rec["session"], data, rec)
        except Exception as e:
            why = describe_error(e)
            log.error(f"egress gateway: could not record {kind} flow {flow.id} ({why})")
            self._fail(why)

    async def _write_soon(self, sid: str, data: bytes, rec: dict) -> None:
        if self.fsync:  # waits for the disk: keep the event loop free meanwhile
            await asyncio.to_thread(self._write, sid, data, rec)
        else:  # one write() of a few KB to the page cache: cheaper than a thread hop
            self._write(sid, data, rec)

    def write_state(self, sid: str, state: dict, rec: dict) -> None:
        """Record a flow state another addon built (the PostgreSQL lane: one TCP flow per
        statement), then its audit line `rec`; raises on failure (the caller fails closed)."""
        self._write(sid, mask.serialize(state), rec)

    def _write(self, sid: str, data: bytes, rec: dict) -> None:
        """Append the recording, then its audit line (one lock: file order = chain order)."""
        rotated = False
        with self._lock:
            if self.files is None:
                raise RecordingError("no recordings directory configured")
            if self.failed is not None:
                raise RecordingError("recordings failed earlier")
            rel, offset, rotated = self.files.append(sid, data, time.time())
            self._dirty = True
            rec.update(recording=rel, offset=offset, length=len(data),
                       flow_sha256=hashlib.sha256(data).hexdigest())
            self.core.audit.write(rec)
        if rotated:
            self.core.checkpoint_audit()


SCRUB_SECONDS = 1.0  # a refused request's host and path: scanned (patterns) within this


async def _scrub(flow, detection) -> tuple[str | None, str | None]:
    """(host, path) of a refused request as ``mask.scrubbed_host`` / ``scrubbed_path`` give them,
    computed off the event loop (the patterns run in the scan workers). If that fails or runs
    out of time, both are withheld from the recording and the audit line (fail closed; the
    recorder goes on)."""
    def run():
        with deadline(SCRUB_SECONDS, patience=0):  # a healthy worker takes ~2 ms
            return mask.scrubbed_host(flow, detection), mask.scrubbed_path(flow, detection)

    try:
        return await asyncio.to_thread(run)
    except Exception as e:  # noqa: BLE001 - the flow is refused anyway; nothing unscanned is kept
        log.warning(f"egress gateway: could not scan a refused request's host and path "
                    f"({type(e).__name__}); withheld from its recording")
        return "withheld", "/withheld"
