"""The gateway's side of the store: heartbeat, hold rows, decisions (LISTEN/NOTIFY + polling).

All I/O is psycopg's asyncio API on mitmproxy's loop; one connection for commands (serialised
by a lock), one that only listens. Any error marks the store down: the `on_down` callback
denies what is held, new holds are refused until a reconnect succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import psycopg

from egress_gateway.fleet import schema
from egress_gateway.fleet.settings import StateUrl

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # the polling fallback under LISTEN/NOTIFY


class StoreDown(RuntimeError):
    pass


async def migrate(conn: psycopg.AsyncConnection) -> int:
    """Create or upgrade the tables; returns the schema version."""
    async with conn.transaction():
        await conn.execute(schema.LOCK)
        await conn.execute(schema.VERSION_TABLE)
        row = await (await conn.execute("SELECT max(version) FROM gateway_schema")).fetchone()
        have = row[0] or 0
        for version, sql in schema.MIGRATIONS:
            if version > have:
                await conn.execute(sql)
                await conn.execute("INSERT INTO gateway_schema VALUES (%s)", (version,))
                have = version
    return have


class Store:
    """One instance's link to the store."""

    def __init__(self, url: StateUrl, instance: str, listen: str) -> None:
        self.url = url
        self.instance = instance
        self.listen = listen
        self.up = False
        self.on_down = None  # callable(reason): the store became unreachable
        self.on_decision = None  # callable(flow_id, verdict, decided_by, always) -> bool (held here)
        self.audit_head = None  # callable() -> (log, seq, hash, alg) | None
        self._head_sent: tuple | None = None
        self._head_at = 0.0
        self._cmd: psycopg.AsyncConnection | None = None
        self._listen: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._last_error = ""

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """The gateway stops: its open rows end (denied, shutdown) and the connections close."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.up and self._cmd is not None:
            try:
                async with self._lock:
                    await self._checkpoint_head(force=True)
                    await self._cmd.execute(
                        "UPDATE gateway_holds SET state = 'ended', outcome = 'denied', "
                        "ended_at = now(), decided_by = coalesce(decided_by, 'shutdown') "
                        "WHERE instance = %s AND state <> 'ended'", (self.instance,))
            except Exception:
                log.warning("egress gateway: could not end this instance's holds in the store")
        await self._close()

    async def _close(self) -> None:
        for conn in (self._cmd, self._listen):
            if conn is not None:
                try:
                    await conn.close()
                except Exception:
                    pass
        self._cmd = self._listen = None

    async def _connect(self) -> None:
        kw = self.url.conninfo(options="-c statement_timeout=5000")
        self._cmd = await psycopg.AsyncConnection.connect(**kw, autocommit=True)
        await migrate(self._cmd)
        # what this instance held before (a former life, or before the store went away) is
        # over: its holds were denied when the store was lost or the process ended
        await self._cmd.execute(
            "UPDATE gateway_holds SET state = 'ended', outcome = 'denied', ended_at = now(), "
            "decided_by = coalesce(decided_by, 'instance lost') "
            "WHERE instance = %s AND state <> 'ended'", (self.instance,))
        await self._beat()
        self._listen = await psycopg.AsyncConnection.connect(**kw, autocommit=True)
        await self._listen.execute(f"LISTEN {schema.DECISIONS_CHANNEL}")

    async def _beat(self) -> None:
        await self._cmd.execute(
            "INSERT INTO gateway_instances (id, pid, listen) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET seen = now(), pid = EXCLUDED.pid, "
            "listen = EXCLUDED.listen", (self.instance, os.getpid(), self.listen))

    def _down(self, e: BaseException) -> None:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if self.up or reason != self._last_error:
            log.error(f"egress gateway: the review store {self.url.display} is unreachable "
                      f"({reason}); holds are denied until it is back")
        self.up = False
        self._last_error = reason
        if self.on_down is not None:
            self.on_down(f"the review store {self.url.display} is unreachable")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._cmd is None or self._cmd.closed or self._listen is None or self._listen.closed:
                    await self._close()
                    async with self._lock:
                        await self._connect()
                    if not self.up:
                        log.info(f"egress gateway: review store {self.url.display} connected "
                                 f"(instance {self.instance}, schema v{schema.LATEST})")
                    self.up = True
                    self._last_error = ""
                await self._tick()
                # wait for a decision for us (NOTIFY) or the polling interval
                async for n in self._listen.notifies(timeout=POLL_SECONDS, stop_after=1):
                    if n.payload != self.instance:
                        continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # psycopg.Error, OSError, ...: the store is down
                self._down(e)
                await self._close()
                await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        async with self._lock:
            await self._beat()
            await self._cmd.execute(schema.REAP_LOST)
            cur = await self._cmd.execute(
                "SELECT id, verdict, decided_by, always FROM gateway_holds "
                "WHERE instance = %s AND state = 'decided'", (self.instance,))
            rows = await cur.fetchall()
            await self._checkpoint_head()
        for fid, verdict, by, always in rows:
            held = self.on_decision is not None and self.on_decision(fid, verdict, by, always)
            if not held:  # decided after it ended here (e.g. the client went away)
                await self.end(fid, "ended", None)

    async def _checkpoint_head(self, force: bool = False) -> None:
        """The audit chain's head, every HEAD_SECONDS when it moved (the lock is held)."""
        now = time.monotonic()
        if self.audit_head is None or (not force and now - self._head_at < schema.HEAD_SECONDS):
            return
        head = self.audit_head()
        self._head_at = now
        if head is None or head == self._head_sent:
            return
        await self._cmd.execute(
            "INSERT INTO gateway_audit_heads (instance, log, seq, hash, alg) VALUES "
            "(%s, %s, %s, %s, %s) ON CONFLICT (instance) DO UPDATE SET log = EXCLUDED.log, "
            "seq = EXCLUDED.seq, hash = EXCLUDED.hash, alg = EXCLUDED.alg, updated = now()",
            (self.instance, *head))
        self._head_sent = head

    # --- holds --------------------------------------------------------------------------------
    async def add(self, summary: dict) -> None:
        """A new durable hold row; raises StoreDown when the store cannot take it."""
        if not self.up or self._cmd is None:
            raise StoreDown(f"the review store {self.url.display} is unreachable")
        try:
            async with self._lock:
                await self._cmd.execute(
                    "INSERT INTO gateway_holds (id, instance, session, rule, reason, method, host, "
                    "port, path, detected, deadline, on_timeout) VALUES (%s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, now() + make_interval(secs => %s), %s)",
                    (summary["id"], self.instance, summary["session"], summary["rule"],
                     summary["reason"], summary["method"], summary["host"], summary["port"],
                     summary["path"], json.dumps(summary["detected"]), summary["timeout"],
                     summary["on_timeout"]))
                await self._cmd.execute("SELECT pg_notify(%s, %s)",
                                        (schema.HOLDS_CHANNEL, summary["id"]))
        except Exception as e:
            self._down(e)
            await self._close()
            raise StoreDown(f"the review store {self.url.display} is unreachable") from None

    async def end(self, flow_id: str, outcome: str, decided_by: str | None) -> None:
        """The hold is over here: its row says how (best effort: logged when it fails)."""
        if not self.up or self._cmd is None:
            return
        try:
            async with self._lock:
                await self._cmd.execute(
                    "UPDATE gateway_holds SET state = 'ended', outcome = %s, ended_at = now(), "
                    "decided_by = coalesce(decided_by, %s) WHERE id = %s AND state <> 'ended'",
                    (outcome, decided_by, flow_id))
        except Exception as e:
            log.warning(f"egress gateway: could not end hold {flow_id} in the review store")
            self._down(e)
            await self._close()

    # --- "approve always" ---------------------------------------------------------------------
    async def add_always(self, session: str, rule: str, rule_key: str, decided_by: str) -> None:
        """Share an "approve always" decision with every instance. Raises StoreDown."""
        await self._query(
            "INSERT INTO gateway_always (session, rule, rule_key, decided_by, instance) VALUES "
            "(%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (session, rule, rule_key, decided_by, self.instance))

    async def has_always(self, session: str, rule: str, rule_key: str) -> bool:
        """Whether any instance approved this session and rule always. Raises StoreDown."""
        rows = await self._query(
            "SELECT 1 FROM gateway_always WHERE session = %s AND rule = %s AND rule_key = %s",
            (session, rule, rule_key))
        return bool(rows)

    # --- volume limits ------------------------------------------------------------------------
    async def charge(self, pairs: list[tuple[str, str]], second: int, size: int,
                     since: int) -> list[tuple[str, str, int, int, int]]:
        """Count one request of `size` bytes for every (limit, key); returns their buckets since
        `since` on every instance, this request included. Raises StoreDown."""
        rows = await self._query(
            "SELECT * FROM gateway_charge(%s, %s, %s, %s, %s, %s)",
            (self.instance, [p[0] for p in pairs], [p[1] for p in pairs], second, size, since))
        return [(r, k, int(s), int(n), int(b)) for r, k, s, n, b in rows]

    async def refund(self, pairs: list[tuple[str, str]], second: int, size: int) -> None:
        """Take back a charge (the request was refused)."""
        await self._query(
            "UPDATE gateway_counters SET requests = requests - 1, bytes = bytes - %s "
            "WHERE instance = %s AND second = %s AND (rule, key) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[]))",
            (size, self.instance, second, [p[0] for p in pairs], [p[1] for p in pairs]))

    async def prune_counters(self, before: int) -> None:
        await self._query("DELETE FROM gateway_counters WHERE second < %s", (before,))

    async def _query(self, sql: str, args: tuple) -> list:
        if not self.up or self._cmd is None:
            raise StoreDown(f"the fleet's store {self.url.display} is unreachable")
        try:
            async with self._lock:
                cur = await self._cmd.execute(sql, args)
                return await cur.fetchall() if cur.description else []
        except Exception as e:
            self._down(e)
            await self._close()
            raise StoreDown(f"the fleet's store {self.url.display} is unreachable") from None
