"""The reviewer's side of the store: list, decide and watch the fleet's review queue (sync).

A decision is an UPDATE of a pending row (only if it has not ended, its deadline has not passed
and its instance is alive) plus a NOTIFY to the holding instance, in one transaction; the row
records ``decided_by: reviewer:store:<database role>``.
"""

from __future__ import annotations

import time

import psycopg
from psycopg.rows import dict_row

from egress_gateway.fleet import schema
from egress_gateway.fleet.settings import StateUrl

COLUMNS = ("id, instance, session, rule, reason, method, host, port, path, detected, state, "
           "verdict, always, decided_by, outcome, on_timeout, "
           "round(extract(epoch FROM now() - created)::numeric, 1)::float AS waiting_seconds, "
           "round(extract(epoch FROM deadline - now())::numeric, 1)::float AS remaining_seconds")


class QueueError(RuntimeError):
    pass


class ReviewQueue:
    def __init__(self, url: StateUrl) -> None:
        self.url = url
        try:
            self.conn = psycopg.connect(**url.conninfo(application_name="egress-gateway-review"),
                                        autocommit=True, row_factory=dict_row)
        except psycopg.Error as e:
            raise QueueError(f"cannot reach the review store {url.display}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
        try:
            have = self.conn.execute("SELECT to_regclass('gateway_holds') AS t").fetchone()["t"]
        except psycopg.Error as e:
            raise QueueError(f"review store {url.display}: {e}") from None
        if have is None:
            raise QueueError(f"the review store {url.display} has no review queue yet (no gateway "
                             "with this gateway_state has started)")

    def close(self) -> None:
        self.conn.close()

    def reap(self) -> None:
        self.conn.execute(schema.REAP_LOST)

    def pending(self) -> list[dict]:
        self.reap()
        return self.conn.execute(f"SELECT {COLUMNS} FROM gateway_holds WHERE state = 'pending' "
                                 "AND deadline > now() ORDER BY created").fetchall()

    def get(self, flow_id: str) -> dict:
        """The row of an id or a unique id prefix (any state)."""
        fid = flow_id.strip()
        if not fid:
            raise QueueError("give a hold id")
        rows = self.conn.execute(f"SELECT {COLUMNS} FROM gateway_holds WHERE id = %s", (fid,)).fetchall()
        if not rows:
            like = fid.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self.conn.execute(f"SELECT {COLUMNS} FROM gateway_holds WHERE id LIKE %s "
                                     "AND state <> 'ended' LIMIT 2", (like,)).fetchall()
        if not rows:
            raise QueueError(f"no hold with id {flow_id!r} in the review store")
        if len(rows) > 1:
            raise QueueError(f"{flow_id!r} is ambiguous: give more of the id")
        return rows[0]

    def decide(self, flow_id: str, verdict: str, always: bool = False) -> dict:
        """Approve or deny a pending hold; a hold that ended (or is decided) is refused."""
        self.reap()
        row = self.get(flow_id)
        with self.conn.transaction():
            done = self.conn.execute(
                "UPDATE gateway_holds h SET state = 'decided', verdict = %s, always = %s, "
                "decided_by = 'reviewer:store:' || current_user, decided_at = now() "
                "WHERE h.id = %s AND h.state = 'pending' AND h.deadline > now() "
                "RETURNING h.id, h.instance", (verdict, always, row["id"])).fetchone()
            if done is not None:
                self.conn.execute("SELECT pg_notify(%s, %s)",
                                  (schema.DECISIONS_CHANNEL, done["instance"]))
        if done is None:
            row = self.get(row["id"])
            raise QueueError(f"hold {row['id']} on instance {row['instance']} can no longer be "
                             f"decided: {describe_end(row)}")
        return row

    def watch(self, emit, interval: float = 0.5, until: float | None = None,
              stop=None) -> None:
        """Call `emit(event, row)` for each new pending hold and each end, until interrupted
        or `stop` (a `threading.Event`) is set: checked every `interval` seconds, between
        queries, so a stop never interrupts one (psycopg may then wait seconds to cancel)."""
        listen = psycopg.connect(**self.url.conninfo(), autocommit=True)
        listen.execute(f"LISTEN {schema.HOLDS_CHANNEL}")
        seen: dict[str, str] = {}
        try:
            while (until is None or time.monotonic() < until) and not (stop and stop.is_set()):
                self.reap()
                rows = self.conn.execute(
                    f"SELECT {COLUMNS} FROM gateway_holds WHERE state <> 'ended' OR "
                    "ended_at > now() - interval '60 seconds' ORDER BY created").fetchall()
                for r in rows:
                    prev = seen.get(r["id"])
                    if prev is None and r["state"] != "ended":
                        emit("held", r)
                    elif prev is not None and prev != "ended" and r["state"] == "ended":
                        emit("ended", r)
                    seen[r["id"]] = r["state"] if prev is not None or r["state"] != "ended" else "ended"
                for _ in listen.notifies(timeout=interval, stop_after=1):
                    pass
        finally:
            listen.close()


def describe_end(row: dict) -> str:
    if row["state"] == "decided":
        return f"already decided ({row['verdict']} by {row['decided_by']})"
    if row["state"] == "ended":
        return f"it already ended: {row['outcome']} ({row['decided_by'] or 'no decision'})"
    return f"its deadline passed (then {row['on_timeout']})"
