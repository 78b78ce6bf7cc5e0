"""The audit log: one JSON line per flow, written by exactly one writer (`AuditLog`).

Lines carry decisions, identities and counts only: never bodies, header values or query strings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from mitmproxy import http

from . import session

log = logging.getLogger(__name__)


class AuditLog:
    """Appends JSON lines to a file; each line is flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the addon
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=False, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


def flow_record(flow: http.HTTPFlow, kind: str = "http") -> dict:
    """The audit line for an HTTP flow (or a CONNECT) from its state and ``metadata["gateway"]``."""
    meta = flow.metadata.get("gateway", {})
    req = flow.request
    rec = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(req.timestamp_start))
        + f".{int(req.timestamp_start * 1000) % 1000:03d}Z",
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
    for key in ("identity", "would_block"):
        if key in meta:
            rec[key] = meta[key]
    return rec


class Audit:
    """Writes one audit line when a flow ends (answered, failed, or refused at CONNECT)."""

    def __init__(self, core) -> None:
        self.core = core

    def _write(self, flow: http.HTTPFlow, kind: str = "http") -> None:
        if flow.metadata.get("gateway_audited"):
            return
        flow.metadata["gateway_audited"] = True
        try:
            self.core.audit.write(flow_record(flow, kind))
        except Exception:
            log.exception("egress gateway: could not write the audit line")

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def http_connected(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "connect")

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "connect")
