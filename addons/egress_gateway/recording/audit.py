"""The audit log: one JSON line per flow, written by exactly one writer (`AuditLog`), and its records.

Lines carry decisions, identities and counts only: never bodies, header values or query strings.

The lines form a hash chain. Each line gets ``seq`` (1, 2, ...), ``prev`` (the previous line's
hash; 64 zeros for the first) and, last, ``hash``: SHA-256 (or HMAC-SHA-256 with a key) of the
line's exact bytes up to, not including, ``,"hash":"...``, closed with ``}``. A checkpoint file
beside the log (``<log>.checkpoint``) holds the latest ``seq`` and ``hash`` so that a cut-off tail
shows. `egress_gateway.recording.verify` checks all of it.

Every kind of line is built here (`flow_record`, `stream_record`, `dns_record`,
`connection_record`, `alert_record`), with one timestamp format (`timestamp`); Core opens, keys
and closes the log, and every writer goes through ``core.audit.write(record)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path

from mitmproxy import http

from egress_gateway import session
from egress_gateway.flowstate import peek
from egress_gateway.net import hosts

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HASH_SEP = ',"hash":"'
CHECKPOINT_SUFFIX = ".checkpoint"
CHECKPOINT_SECONDS = 5.0
_TAIL_BYTES = 1 << 20


def timestamp(t: float | None = None, millis: bool = False) -> str:
    """UTC ISO 8601 time of a line: ``2026-01-01T10:00:00Z`` (now), or with milliseconds."""
    t = time.time() if t is None else t
    if not millis:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def line_hash(body: bytes, key: bytes | None) -> str:
    """The hash of a line's body: SHA-256, or HMAC-SHA-256 when keyed."""
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def seal(record: dict, seq: int, prev: str, key: bytes | None) -> tuple[str, str]:
    """(line without newline, its hash) for `record` as chain element `seq` after `prev`."""
    rec = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
    rec["seq"] = seq
    rec["prev"] = prev
    body = json.dumps(rec, separators=(",", ":"), default=str)
    h = line_hash(body.encode(), key)
    return f'{body[:-1]}{HASH_SEP}{h}"}}', h


def unseal(line: bytes) -> tuple[bytes, str]:
    """(hashed body, stated hash) of a sealed line (no newline); ValueError if not sealed."""
    i = line.rfind(HASH_SEP.encode())
    if i < 0 or not line.endswith(b'"}'):
        raise ValueError("the line carries no hash")
    stated = line[i + len(HASH_SEP):-2].decode("ascii", "replace")
    return line[:i] + b"}", stated


def checkpoint_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + CHECKPOINT_SUFFIX)


def checkpoint_mac(seq: int, head: str, key: bytes) -> str:
    return hmac.new(key, f"checkpoint:{seq}:{head}".encode(), hashlib.sha256).hexdigest()


def _last_line(path: Path) -> tuple[bytes | None, bool]:
    """(last complete line, whether the file ends with a torn line)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, False
    if size == 0:
        return None, False
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read()
    torn = not tail.endswith(b"\n")
    lines = tail.split(b"\n")
    complete = lines[:-1]  # the last element is b"" or a torn line
    return (complete[-1] if complete else None), torn


class AuditLog:
    """Appends sealed JSON lines to a file; each line is written in one write() and flushed.

    Continues the chain of an existing log (after the last complete line). `key` makes the
    chain an HMAC chain; `fsync` also forces each line to disk.
    """

    def __init__(self, path: Path, key: bytes | None = None, fsync: bool = False) -> None:
        self.path = path
        self.key = key
        self.fsync = fsync
        self.checkpoint_file = checkpoint_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._holder = hold_exclusively(path)  # before reading the chain's head
        last, torn = _last_line(path)
        self.seq, self.head = 0, GENESIS
        if last:
            try:
                rec = json.loads(last)
                self.seq, self.head = int(rec["seq"]), str(rec["hash"])
            except (ValueError, KeyError, TypeError):
                log.warning(f"egress gateway: the last line of {path} is not chained; "
                            "verify will report the log from its start")
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the addon
        if torn:
            # A line cut short by a crash: end it, so that the chain continues on a line of its
            # own (verify reports the torn line).
            log.warning(f"egress gateway: {path} ends with an incomplete line (crash?)")
            self._fh.write(b"\n")
            self._fh.flush()
        self._checkpointed: tuple[int, str] | None = None
        self.instance: str | None = None  # a fleet's instance id, put in every line

    @property
    def alg(self) -> str:
        return "hmac-sha256" if self.key else "sha256"

    def set_key(self, key: bytes | None) -> None:
        with self._lock:
            self.key = key or None

    def write(self, record: dict) -> str:
        """Seal and append `record`; returns its hash. Raises OSError if it cannot be written."""
        with self._lock:
            if self.instance and "instance" not in record:
                record = {**record, "instance": self.instance}
            line, h = seal(record, self.seq + 1, self.head, self.key)
            self._fh.write(line.encode() + b"\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self.seq, self.head = self.seq + 1, h
            return h

    def state(self) -> tuple[int, str, str]:
        """(seq, head hash, algorithm) of the chain now."""
        with self._lock:
            return self.seq, self.head, self.alg

    def sync(self) -> None:
        """Force what was written so far to disk (the batched fsync when `fsync` is off)."""
        with self._lock:
            if not self._fh.closed:
                os.fsync(self._fh.fileno())

    def checkpoint(self) -> None:
        """Record the chain's head beside the log (atomically); no-op if unchanged."""
        with self._lock:
            state = (self.seq, self.head)
            if state == self._checkpointed:
                return
            doc = {"log": self.path.name, "seq": self.seq, "hash": self.head, "alg": self.alg,
                   "time": timestamp()}
            if self.key:
                doc["mac"] = checkpoint_mac(self.seq, self.head, self.key)
            tmp = self.checkpoint_file.with_name(self.checkpoint_file.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(doc) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.checkpoint_file)
            self._checkpointed = state

    def close(self) -> None:
        with self._lock:
            if self._fh.closed:
                return
            try:
                self.checkpoint()
            except OSError:
                log.exception("egress gateway: could not write the audit checkpoint")
            self._fh.close()
            self._holder.close()  # releases the lock


class AuditLogHeld(OSError):
    """Another gateway holds this audit log (its chain would break with two writers)."""


def hold_exclusively(path: Path):
    """Lock `path`'s ``.lock`` file for this process (released when the returned file closes);
    raise AuditLogHeld naming the holder's pid when another process holds it."""
    import fcntl
    import os

    lock = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held while open
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise AuditLogHeld(f"{path} is held by another gateway ({holder}); give this one "
                           "its own gateway_recordings or gateway_audit_log") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


# --- the records --------------------------------------------------------------------------------
FLOW_FIELDS = ("identity", "would_block", "redactions", "unscanned", "scan_ms", "streamed",
               "stream_stopped", "pseudonyms", "approval", "credential", "shutdown")


def _client_session(sid: str | None, client_conn) -> str:
    """The session of a line: `sid`, else the client's address."""
    if sid:
        return sid
    peer = client_conn.peername
    return str(peer[0]) if peer else "unknown"


def flow_record(flow: http.HTTPFlow, kind: str = "http") -> dict:
    """The audit line for an HTTP flow (or a CONNECT) from its state and ``metadata["gateway"]``."""
    meta = peek(flow).data
    req = flow.request
    rec = {
        "time": timestamp(req.timestamp_start, millis=True),
        "flow": flow.id,
        "kind": kind,
        "session": session.session_of(flow),
        "method": req.method,
        "host": req.pretty_host if kind == "http" else req.host,
        "port": req.port,
        "path": None if kind == "connect" else req.path.split("?", 1)[0],
        "decision": meta.get("decision", "allowed"),
        "reason": meta.get("reason"),
        "code": meta.get("code"),
        "status": flow.response.status_code if flow.response else None,
    }
    if flow.error and not meta.get("code"):
        rec["error"] = flow.error.msg
    for key in FLOW_FIELDS:
        if key in meta:
            rec[key] = meta[key]
    out, in_ = flow_bytes(flow)
    rec["bytes_out"], rec["bytes_in"] = out, in_
    if flow.websocket is not None:
        rec["websocket_messages"] = len(flow.websocket.messages)
    return rec


def stream_record(flow, kind: str) -> dict:
    """The audit line for a raw TCP or UDP flow (no request/response; messages only)."""
    meta = peek(flow).data
    addr = flow.server_conn.address or (None, None)
    out = sum(len(m.content) for m in flow.messages if m.from_client)
    in_ = sum(len(m.content) for m in flow.messages if not m.from_client)
    rec = {
        "time": timestamp(flow.timestamp_created, millis=True),
        "flow": flow.id,
        "kind": kind,
        "session": _client_session(meta.get("session"), flow.client_conn),
        "host": addr[0],
        "port": addr[1],
        "decision": meta.get("decision", "allowed"),
        "reason": meta.get("reason"),
        "code": meta.get("code"),
        "messages": len(flow.messages),
        "bytes_out": out,
        "bytes_in": in_,
    }
    if flow.error and not meta.get("code"):
        rec["error"] = flow.error.msg
    for key in ("unscanned", "shutdown"):
        if key in meta:
            rec[key] = meta[key]
    return rec


def dns_record(flow, host: str) -> dict:
    """The audit line for a DNS lookup the gateway refused (DNS mode), after it refused it."""
    return {
        "time": timestamp(), "kind": "dns", "flow": flow.id,
        "session": str(flow.client_conn.peername[0]),
        "host": host, "decision": "blocked", "code": "blocked",
        "identity": "dns", "reason": peek(flow).reason,
    }


def connection_record(client_conn, server_conn, *, session_id: str | None, host, port,
                      code: str | None, identity: str, reason: str | None) -> dict:
    """The audit line for an upstream connection (a dial) the gateway refused."""
    return {
        "time": timestamp(),
        "kind": "connection",
        "session": _client_session(session_id, client_conn),
        "transport": server_conn.transport_protocol,
        "host": host,
        "port": port,
        "decision": "blocked",
        "code": code or "blocked",
        "identity": identity,
        "reason": reason,
    }


def alert_record(flow: http.HTTPFlow, alert: str, *, show_path: bool = True, **fields) -> dict:
    """The audit line for an alert (e.g. ``credential_leak``) on a request refused with code `alert`.

    `fields` (the alert's details) come after the request's destination; `show_path` False leaves
    the path out (when the alert is about the URL itself)."""
    req = flow.request
    return {
        "time": timestamp(), "kind": "alert", "alert": alert, "flow": flow.id,
        "session": session.session_of(flow),
        "method": req.method,
        "host": hosts.normalize_host(req.host), "port": req.port,
        "path": req.path.split("?", 1)[0] if show_path else None,
        **fields,
        "decision": "blocked", "code": alert,
    }


def flow_bytes(flow: http.HTTPFlow) -> tuple[int, int]:
    """(bytes sent out, bytes returned) of bodies and WebSocket messages, as stored on the flow."""
    out = len(flow.request.raw_content or b"")
    in_ = len(flow.response.raw_content or b"") if flow.response else 0
    if flow.websocket is not None:
        for m in flow.websocket.messages:
            if m.from_client:
                out += len(m.content)
            else:
                in_ += len(m.content)
    return out, in_

