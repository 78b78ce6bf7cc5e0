"""Recordings of the PostgreSQL lane: each statement becomes one mitmproxy TCP flow.

Its messages are the protocol messages as they crossed the gateway (the agent's query, the
rows after masking), readable with ``mitmdump -nr``; connection-level flows hold the login as
the agent sent it (the placeholder, never the gateway's password, which only the upstream side
of the gateway ever carries). The flow's metadata holds the statement's audit fields.
"""

from __future__ import annotations

import json
import time

from mitmproxy import tcp


def flow_state(event, rec: dict) -> dict:
    """The serialisable state of the TCP flow recording one statement (or one login)."""
    flow = tcp.TCPFlow(event.client, event.server, live=False)
    now = time.time()
    for from_client, data in event.messages:
        flow.messages.append(tcp.TCPMessage(from_client, data, now))
    meta = {k: v for k, v in rec.items() if k not in ("seq", "prev", "hash")}
    if event.truncated:
        meta["recording_truncated"] = True
    flow.comment = _comment(rec)
    state = flow.get_state()
    state["metadata"] = {"gateway": json.loads(json.dumps(meta, default=str))}
    return state


def _comment(rec: dict) -> str:
    parts = [f"postgres {rec.get('database')}: {rec.get('statement') or rec.get('event')}"]
    if rec.get("tables"):
        parts.append("on " + ", ".join(rec["tables"]))
    if rec.get("decision") == "blocked":
        parts.append(f"refused ({rec.get('code')})")
    red = (rec.get("redactions") or {}).get("response")
    if red:
        parts.append("masked " + ", ".join(f"{n} {e}" for e, n in sorted(red.items())))
    return "; ".join(parts)
