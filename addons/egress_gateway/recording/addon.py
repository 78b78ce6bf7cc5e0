"""Records every flow, as it crossed the boundary, to one mitmproxy dump file per agent session.

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
  ``store_streamed_bodies`` is turned on). Credential headers (Authorization, Cookie, API-key
  headers, Set-Cookie) are masked; the identity headers are never recorded; a request the
  gateway refused was not forwarded, so its body and query string are dropped (their size is
  noted). Only ``metadata["gateway"]`` is kept of the flow's metadata.
- Fail closed: when a recording (or its audit line) cannot be written, the flow's answer is
  replaced by ``503 recording_failed`` where it has not reached the agent yet, and every new
  flow is refused until a probe write succeeds again (checked at most once a second).

Injected credentials never reach the recording: `credentials` keeps the placeholder in
``flow.request`` and sets the real value only on the copy handed to the upstream connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from egress_gateway import session
from egress_gateway.flowstate import refuse
from egress_gateway.locations import RECORDINGS
from egress_gateway.recording import audit, tnet

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_HMAC_ENV = "GATEWAY_AUDIT_HMAC_KEY"
CHECKPOINT_SECONDS = 5.0
SYNC_SECONDS = 1.0
PROBE_INTERVAL = 1.0
MAX_OPEN_FILES = 64
MASK = "<redacted by egress gateway>"
CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-goog-api-key",
    "x-auth-token", "x-amz-security-token", "x-csrf-token", session.SESSION_HEADER.lower(),
})
RESPONSE_SECRET_HEADERS = frozenset({"set-cookie", "set-cookie2"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORWARDED = "_gateway_forwarded"


class RecordingError(OSError):
    pass


# --- pure functions ---------------------------------------------------------------------------
def parse_max_bytes(value: int) -> int:
    """The rotation size in bytes; 0 disables rotation by size."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"gateway_recording_max_bytes must be a size in bytes >= 0, not {value!r}")
    return value


def parse_hmac_env(name: str, environ=os.environ) -> bytes | None:
    """The HMAC key from the environment variable `name`; None if unset/empty (unkeyed chain)."""
    if not name:
        return None
    if not _ENV_NAME.match(name):
        raise ValueError(f"gateway_audit_hmac_env must name an environment variable, not {name!r}")
    value = environ.get(name)
    return value.encode() if value else None


def mask_value(value: str) -> str:
    """A credential header's value with the secret masked, keeping an auth scheme if any."""
    scheme, sep, _ = value.strip().partition(" ")
    if sep and scheme.isalpha() and len(scheme) <= 20:
        return f"{scheme} {MASK}"
    return MASK


def recorded_state(flow: http.HTTPFlow, forwarded: bool, path: str | None = None) -> dict:
    """The flow's state as it is recorded: masked credentials, nothing that was not forwarded.

    Built from ``flow.get_state()`` (new containers, the live flow is never touched): about a
    third of the cost of copying the flow object and serialising the copy.
    """
    state = flow.get_state()
    note: dict = {"forwarded": forwarded}
    masked: list[str] = []
    req = state["request"] = dict(state["request"])
    req["headers"] = _masked_fields(req["headers"], CREDENTIAL_HEADERS | IDENTITY_HEADERS,
                                    masked, drop=IDENTITY_HEADERS)
    if state.get("response") is not None:
        resp = state["response"] = dict(state["response"])
        resp["headers"] = _masked_fields(resp["headers"], RESPONSE_SECRET_HEADERS, masked)
    if masked:
        note["masked_headers"] = sorted(set(masked))
    if not forwarded:
        dropped = len(req.get("content") or b"")
        if dropped:
            req["content"] = b""
            note["request_body_dropped"] = dropped
        if req["method"] != b"CONNECT" and b"?" in req["path"]:
            req["path"] = req["path"].split(b"?", 1)[0]
            note["query_dropped"] = True
        if path is not None:
            req["path"] = path.encode()
            note["path_redacted"] = True
    if state.get("websocket") is not None:
        ws = state["websocket"] = dict(state["websocket"])
        msgs, dropped_msgs = [], 0
        for m in ws["messages"]:  # (type, from_client, content, timestamp, dropped, injected)
            if m[4] and m[2]:
                m = (m[0], m[1], b"", *m[3:])
                dropped_msgs += 1
            msgs.append(m)
        ws["messages"] = msgs
        if dropped_msgs:
            note["websocket_dropped_messages_emptied"] = dropped_msgs
    meta = json.loads(json.dumps(flow.metadata.get("gateway", {}), default=str))
    meta["recording"] = note
    state["metadata"] = {"gateway": meta}
    return state


IDENTITY_HEADERS = frozenset({session.PROXY_AUTH.lower(), session.SESSION_HEADER.lower()})


def _masked_fields(fields, names: frozenset, masked: list[str], drop: frozenset = frozenset()):
    out = []
    for name, value in fields:
        low = name.decode("latin-1").lower()
        if low in drop:
            continue
        if low in names:
            value = mask_value(value.decode("latin-1")).encode("latin-1")
            masked.append(low)
        out.append((name, value))
    return tuple(out)


def recorded_copy(flow: http.HTTPFlow, forwarded: bool) -> http.HTTPFlow:
    """The recorded form of `flow` as a flow object (for tests and tools)."""
    return http.HTTPFlow.from_state(recorded_state(flow, forwarded))


def serialize(flow: http.HTTPFlow | dict) -> bytes:
    """mitmproxy's flow format (tnetstring of the state) of a flow or a flow state."""
    return tnet.dumps(flow if isinstance(flow, dict) else flow.get_state())


def probe(root: Path) -> None:
    """Raise OSError unless `root` can be created and written (and synced)."""
    root.mkdir(parents=True, exist_ok=True)
    p = root / f".probe-{os.getpid()}"
    with open(p, "wb", buffering=0) as fh:
        fh.write(b"probe")
        os.fsync(fh.fileno())
    p.unlink()


def recordings_dir(option: str, audit_log: str) -> Path:
    """The recordings directory: the option, else the audit log's directory."""
    if option:
        return Path(option).expanduser()
    return Path(audit_log).expanduser().parent if audit_log else RECORDINGS


def file_name(session_id: str, part: int) -> str:
    return f"{session_id}.mitm" if part == 0 else f"{session_id}.{part}.mitm"


# --- files ------------------------------------------------------------------------------------
class RecordingFiles:
    """Open recording files, one per (date, session); rotation by size; new files only."""

    def __init__(self, root: Path, max_bytes: int, fsync: bool) -> None:
        self.root, self.max_bytes, self.fsync = root, max_bytes, fsync
        self._open: OrderedDict[tuple[str, str], tuple[io.FileIO, Path]] = OrderedDict()
        self._next_part: dict[tuple[str, str], int] = {}
        self._rel: dict[Path, str] = {}  # open file -> its path relative to root (audit lines)

    def _new_file(self, date: str, sid: str) -> tuple[io.FileIO, Path]:
        directory = self.root / date
        directory.mkdir(parents=True, exist_ok=True)
        part = self._next_part.get((date, sid), 0)
        while True:
            path = directory / file_name(sid, part)
            try:
                fh = open(path, "xb", buffering=0)  # noqa: SIM115 - kept open across flows
            except FileExistsError:
                part += 1
                continue
            self._next_part[(date, sid)] = part + 1
            return fh, path

    def append(self, sid: str, data: bytes, now: float) -> tuple[str, int, bool]:
        """Write `data` for session `sid`; (path relative to root, offset, whether rotated)."""
        date = time.strftime("%Y-%m-%d", time.gmtime(now))
        key = (date, sid)
        rotated = False
        entry = self._open.get(key)
        if entry is not None:
            st = os.fstat(entry[0].fileno())
            if st.st_nlink == 0:
                log.error(f"egress gateway: recording {entry[1]} was removed while open; "
                          "continuing in a new file")
                self._close(key)
                entry = None
            elif self.max_bytes and st.st_size and st.st_size + len(data) > self.max_bytes:
                self._close(key)
                entry, rotated = None, True
        if entry is None:
            entry = self._new_file(date, sid)
            self._open[key] = entry
            while len(self._open) > MAX_OPEN_FILES:
                self._close(next(iter(self._open)))
        self._open.move_to_end(key)
        fh, path = entry
        rel = self._rel.get(path)
        if rel is None:
            rel = self._rel[path] = str(path.relative_to(self.root))
        offset = os.fstat(fh.fileno()).st_size
        view = memoryview(data)
        try:
            written = fh.write(view)  # one write() of the whole serialised flow
            while written is not None and written < len(view):  # short write: keep going
                view = view[written:]
                written = fh.write(view)
            if self.fsync:
                os.fsync(fh.fileno())
        except OSError:
            self._close(key)  # never append after a partial flow: the next write opens a new file
            raise
        return rel, offset, rotated

    def sync_all(self) -> None:
        """fsync every open recording (the batched sync when per-flow fsync is off)."""
        for fh, path in list(self._open.values()):
            try:
                os.fsync(fh.fileno())
            except (OSError, ValueError):  # closed meanwhile: it was synced when it closed
                log.debug(f"egress gateway: could not sync {path}", exc_info=True)

    def _close(self, key) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            self._rel.pop(entry[1], None)
            try:
                entry[0].close()
            except OSError:
                log.exception(f"egress gateway: closing recording {entry[1]} failed")

    def close(self) -> None:
        for key in list(self._open):
            self._close(key)


# --- the addon --------------------------------------------------------------------------------
class Recorder:
    """Records each completed flow, then writes its audit line. Must be the last gateway addon."""

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
        loader.add_option(
            "gateway_recordings", str, "",
            "Directory of the flow recordings: YYYY-MM-DD/<session>.mitm (mitmproxy format). "
            f"Default: the audit log's directory ({RECORDINGS}).",
        )
        loader.add_option(
            "gateway_recording_max_bytes", int, DEFAULT_MAX_BYTES,
            "Start a new recording file for a session when the current one would exceed this "
            "size (bytes; 0: never).",
        )
        loader.add_option(
            "gateway_recording_fsync", bool, False,
            "fsync each recorded flow and audit line before the flow's answer goes on (survives "
            "power loss with no window, at ~7 ms per flow). Off: each flow is written with one "
            "write() when it completes (nothing lost to kill -9) and synced to disk in the "
            f"background every {SYNC_SECONDS:g} s (power loss loses at most that window).",
        )
        loader.add_option(
            "gateway_audit_hmac_env", str, DEFAULT_HMAC_ENV,
            "Environment variable holding the key of the audit log's HMAC chain; unset or empty: "
            "plain SHA-256 chain.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "store_streamed_bodies" in updated and not opts.store_streamed_bodies:
            opts.update(store_streamed_bodies=True)  # streamed bodies must be recorded too
        if updated & {"gateway_recordings", "gateway_recording_max_bytes", "gateway_recording_fsync",
                      "gateway_audit_log"}:
            root = recordings_dir(opts.gateway_recordings, opts.gateway_audit_log)
            try:
                max_bytes = parse_max_bytes(opts.gateway_recording_max_bytes)
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
        if updated & {"gateway_audit_hmac_env", "gateway_audit_log", "gateway_recording_fsync"}:
            try:
                key = parse_hmac_env(opts.gateway_audit_hmac_env)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
            if self.core.audit is not None:
                self.core.audit.set_key(key)
                self.core.audit.fsync = opts.gateway_recording_fsync
                log.info(f"egress gateway: audit chain {self.core.audit.alg}"
                         + ("" if key else f" (set ${opts.gateway_audit_hmac_env} for an HMAC chain)"))

    def running(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._checkpoints()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._background_sync()))

    async def _background_sync(self) -> None:
        """Group commit: one fsync per second for everything written since the last one."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
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
        self._checkpoint()
        if self.core.audit is not None:
            self.core.audit.close()  # Core leaves it open for the flows completing at shutdown

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            self._checkpoint()

    def _checkpoint(self) -> None:
        a = self.core.audit
        if a is None:
            return
        try:
            a.checkpoint()
        except (OSError, ValueError):
            log.exception("egress gateway: could not write the audit checkpoint")

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
            self._guard(flow, self._refuse_if_failed)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not (flow.response or flow.error):
            self._guard(flow, self._refuse_if_failed)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        self._guard(flow, self._refuse_if_failed)
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
        if flow.metadata.get("gateway_audited"):
            return
        flow.metadata["gateway_audited"] = True
        try:
            self.core.audit.write(audit.flow_record(flow, "connect"))
        except Exception as e:
            log.exception("egress gateway: could not write the audit line")
            self._fail(f"audit log: {e}")
            refuse(flow, "recording_failed", "the gateway cannot write its audit log")

    def _guard(self, flow: http.HTTPFlow, fn) -> None:
        try:
            fn(flow)
        except Exception:
            log.exception("egress gateway: internal error in the recorder; refusing the flow")
            refuse(flow, "internal_error", "the gateway failed while checking its recorder")

    async def _record(self, flow: http.HTTPFlow, kind: str, answerable: bool = False) -> None:
        """Write the recording, then the audit line; fail closed if either cannot be written.

        Serialised here, written (and synced) in a worker thread; the hook, and so the answer to
        the agent, waits for both.
        """
        if flow.metadata.get("gateway_audited"):
            return
        flow.metadata["gateway_audited"] = True
        forwarded = bool(getattr(flow, _FORWARDED, False))
        # An upstream answer has not reached the agent yet (unless streamed): it can be withheld.
        # (A refusal by the gateway itself carries nothing from upstream: it stays.)
        answerable = answerable and forwarded and flow.response is not None \
            and not flow.response.stream
        try:
            path = None if forwarded else self._scrubbed_path(flow)
            data = serialize(recorded_state(flow, forwarded, path))
            rec = audit.flow_record(flow, kind)
            if not forwarded:
                rec["bytes_out"] = 0  # refused before it left: nothing went out
                if path is not None:
                    rec["path"] = path
            if self.fsync:  # waits for the disk: keep the event loop free meanwhile
                await asyncio.to_thread(self._write, session.session_of(flow), data, rec)
            else:  # one write() of a few KB to the page cache: cheaper than a thread hop
                self._write(session.session_of(flow), data, rec)
            if not forwarded and flow.request.method != "CONNECT":
                # mitmdump prints each flow's URL after this hook, mitmweb shows it: a refused
                # request's query and unscanned path stay out of both too.
                flow.request.path = path if path is not None else flow.request.path.split("?", 1)[0]
            return
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            log.exception(f"egress gateway: could not record flow {flow.id}")
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
        if flow.metadata.get("gateway_audited"):
            return
        flow.metadata["gateway_audited"] = True
        try:
            state = flow.get_state()
            meta = json.loads(json.dumps(flow.metadata.get("gateway", {}), default=str))
            state["metadata"] = {"gateway": meta}
            data = serialize(state)
            rec = audit.stream_record(flow, kind)
            sid = rec["session"]
            if self.fsync:
                await asyncio.to_thread(self._write, sid, data, rec)
            else:
                self._write(sid, data, rec)
        except Exception as e:
            log.exception(f"egress gateway: could not record {kind} flow {flow.id}")
            self._fail(f"{type(e).__name__}: {e}")

    def _scrubbed_path(self, flow: http.HTTPFlow) -> str | None:
        """A refused request was never scanned: PII or a secret in its URL path must not reach
        the recording or the audit line. Patterns only (no NER); None if nothing was found."""
        path = flow.request.path.split("?", 1)[0]
        if flow.request.method == "CONNECT" or not path.startswith("/") or path == "/":
            return None
        from egress_gateway.detection import DetectionEngine
        from egress_gateway.redact.bodies import plan_path
        from egress_gateway.redact.walker import TextJob

        policy = self.core.policy
        engine = DetectionEngine.get(getattr(policy, "detection", None))
        job = TextJob()
        finish = plan_path(job, path)
        job.run(lambda texts: engine.redact_many(texts, prose=False))
        return finish()

    def _write(self, sid: str, data: bytes, rec: dict) -> None:
        """Append the recording, then its audit line (one lock: file order = chain order)."""
        rotated = False
        with self._lock:
            if self.files is None:
                raise RecordingError("no recordings directory configured")
            if self.failed is not None:
                raise RecordingError(self.failed)
            rel, offset, rotated = self.files.append(sid, data, time.time())
            self._dirty = True
            rec.update(recording=rel, offset=offset, length=len(data),
                       flow_sha256=hashlib.sha256(data).hexdigest())
            self.core.audit.write(rec)
        if rotated:
            self._checkpoint()


# --- run_gateway.sh replay --------------------------------------------------------------------
def replay_main(argv: list[str]) -> int:
    """`run_gateway.sh replay FILE... [mitmweb args]`: review recordings in mitmweb, offline.

    mitmweb runs without a proxy server (``-n``), so nothing can be forwarded; its UI listens on
    127.0.0.1:8081 (``--web-port`` to change). Several files (e.g. a session's rotated parts)
    are concatenated, in the order given, into one temporary file.
    """
    import shutil
    import sys
    import tempfile

    files = [a for a in argv if not a.startswith("-") and a.endswith(".mitm")]
    rest = [a for a in argv if a not in files]
    if not files:
        print("usage: run_gateway.sh replay FILE.mitm [FILE.mitm ...] [mitmweb args]",
              file=sys.stderr)
        return 2
    for f in files:
        if not Path(f).is_file():
            print(f"replay: {f} is not a file", file=sys.stderr)
            return 2
    rfile = files[0]
    if len(files) > 1:
        fd, rfile = tempfile.mkstemp(prefix="gateway-replay-", suffix=".mitm")
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out)
    mitmweb = shutil.which("mitmweb", path=str(Path(sys.executable).parent)) or "mitmweb"
    args = [mitmweb, "-n", "-r", rfile, "--web-host", "127.0.0.1", "--no-web-open-browser", *rest]
    os.execv(mitmweb, args)
    return 0  # not reached
