"""What the agent sends, relayed to the server: statements classified, held or refused, literals scanned."""

from __future__ import annotations

import logging

from egress_gateway.postgres import agent, classify, mask, track, wire
from egress_gateway.postgres.hooks import PostgresStatementHook, Refusal, StatementCheck, _bound

log = logging.getLogger(__name__)


class Statements:
    """PostgresLayer's client side (a mixin: the state lives on the layer)."""

    def _relay_client(self):
        out: list[bytes] = []

        def flush():
            if out:
                yield from self._to_server(b"".join(out))
                out.clear()

        while not self.closed:
            m = self.cframe.next()
            if m is None:
                break
            t = m.type
            if self._pw in m.body.lower():
                raise Refusal("42501", "credential_leak", "the message carries the database's "
                              "real password, which only the gateway may use", True)
            if self.skip_to_sync is not None:
                if t == b"S":
                    if self.skip_to_sync:
                        yield from self._local(self.skip_to_sync)
                    self.skip_to_sync = None
                    self.cycle_open = False
                continue
            if t == b"Q":
                yield from flush()
                yield from self._query(m, out)
            elif t == b"P":
                yield from flush()  # a refusal may end the cycle upstream: keep the order
                yield from self._parse(m, out)
            elif t == b"B":
                yield from flush()
                yield from self._bind(m, out)
            elif t == b"E":
                yield from flush()
                yield from self._execute(m, out)
            elif t == b"S":
                self._cycle_sent()
                self.cycle_open = False
                out.append(m.encode())
            elif t in (b"D", b"C", b"H"):
                if t == b"C" and m.body[:1] == b"S":
                    self.prepared.pop(m.body[1:-1], None)
                if t == b"D":  # its answer (RowDescription or NoData) names what it describes
                    self.describes.append((self.tracker.cycle + 1, m.body[:1], m.body[1:-1]))
                self.cycle_open = True
                out.append(m.encode())
            elif t in (b"d", b"c", b"f"):
                yield from self._copy_in(m, out)
            elif t == b"X":
                out.append(m.encode())
                yield from flush()
                yield from self._close()
                return
            elif t == b"F":
                yield from self._local(Refusal(
                    "0A000", "unsupported_content",
                    "the fast-path function call interface is not supported").message())
            else:
                raise Refusal("08P01", "unsupported_content", f"unknown message type {t!r}", True)
        yield from flush()

    def _cycle_sent(self) -> None:
        self.order.append(["server", b""])
        self.tracker.cycle += 1

    def _decide(self, statements, protocol: str):
        """Ask the addon (read_only, approvals) about statements; a Refusal or None."""
        check = StatementCheck(self.entry, self.session, statements, protocol,
                               client=self.client, server=self.server)
        yield PostgresStatementHook(check)
        return check

    def _query(self, m: wire.Message, out: list[bytes]):
        try:
            sql = wire.parse_query(m.body)
            statements = classify.classify(sql)
        except ValueError as e:
            yield from self._refuse_statement(None, Refusal("0A000", "unsupported_content",
                                                            f"{e}"), "simple", extended=False)
            return
        first = statements[0] if statements else None
        scanned = yield from self._scan_agent(lambda rm: agent.scan_query(sql, rm), first,
                                              "simple", extended=False)
        if scanned is None:
            return
        check = yield from self._decide(statements, "simple")
        if check.refusal is not None:
            yield from self._refuse_statement(check.blocked or first, check.refusal, "simple",
                                              extended=False, approval=check.approval)
            return
        for st in statements:
            rec = self.tracker.start(st, "simple", check.approvals.get(id(st)))
            if scanned.counts:
                rec.request_counts = dict(scanned.counts)
        msg = m.encode() if scanned.messages[0] == sql else \
            wire.build(b"Q", wire.cstr(scanned.messages[0]))
        self.tracker.note(True, msg)
        self._cycle_sent()
        out.append(msg)

    def _parse(self, m: wire.Message, out: list[bytes]):
        try:
            p = wire.parse_parse(m.body)
            statements = classify.classify(p.query)
        except ValueError as e:
            yield from self._refuse_statement(None, Refusal("0A000", "unsupported_content",
                                                            f"{e}"), "extended", extended=True)
            return
        if len(statements) > 1:
            yield from self._refuse_statement(statements[0], Refusal(
                "42601", "unsupported_content", "a prepared statement holds one statement"),
                "extended", extended=True)
            return
        st = statements[0] if statements else None
        scanned = yield from self._scan_agent(lambda rm: agent.scan_query(p.query, rm), st,
                                              "extended", extended=True)
        if scanned is None:
            return
        self.prepared[p.name] = st
        self.param_types[p.name] = list(p.param_types)
        self.cycle_open = True
        if scanned.messages[0] == p.query:
            out.append(m.encode())
        else:
            out.append(wire.build_parse(wire.Parse(p.name, scanned.messages[0], p.param_types)))

    def _execute(self, m: wire.Message, out: list[bytes]):
        r = wire.Reader(m.body)
        portal = r.cstr()
        name = self.portals.get(portal)
        st = self.prepared.get(name) if name is not None else None
        if name is None or (st is None and name not in self.prepared):
            yield from self._refuse_statement(None, Refusal(
                "0A000", "unsupported_content", "Execute of a portal the gateway has not seen "
                "bound"), "extended", extended=True)
            return
        if st is None:  # an empty query
            out.append(m.encode())
            return
        check = yield from self._decide([st], "extended")
        if check.refusal is not None:
            yield from self._refuse_statement(st, check.refusal, "extended", extended=True,
                                              approval=check.approval)
            return
        rec = self.tracker.start(st, "extended", check.approvals.get(id(st)))
        rec.request_counts = dict(self.bind_counts.get(portal, {}))
        rec.columns = self.portal_cols.get(portal)
        self.tracker.note(True, m.encode())
        self.cycle_open = True
        out.append(m.encode())

    def _scan_agent(self, fn, st, protocol: str, extended: bool):
        """Scan what the agent sends (request direction); None if it was refused."""
        try:
            res = yield from self._scan(fn, "request")
        except mask.Unscannable as e:
            yield from self._refuse_statement(st, Refusal("0A000", "unsupported_content", str(e)),
                                              protocol, extended)
            return None
        if res.blocked:
            yield from self._refuse_statement(st, Refusal(
                "42501", "sensitive_data", "the statement carries data the policy blocks: "
                f"{', '.join(sorted(res.blocked))}"), protocol, extended)
            return None
        if res.counts:
            log.info(f"egress gateway redacted a PostgreSQL statement to {self.entry.name}: "
                     f"{', '.join(f'{n} {e}' for e, n in sorted(res.counts.items()))}")
        return res

    def _bind(self, m: wire.Message, out: list[bytes]):
        b = wire.parse_bind(m.body)
        self.portals[b.portal] = b.statement
        self.portal_cols.pop(b.portal, None)
        st = self.prepared.get(b.statement)
        desc = self.stmt_desc.get(b.statement)
        if desc is not None:  # executed without a portal Describe (asyncpg): Bind's formats
            try:
                self.portal_cols[b.portal] = _bound(desc, b.result_formats)
            except mask.Unscannable as e:
                yield from self._refuse_statement(st, Refusal("0A000", "unsupported_content",
                                                              str(e)), "extended", extended=True)
                return
        types = self.param_types.get(b.statement, [])
        if not any(v is not None for v in b.params):
            self.cycle_open = True
            out.append(m.encode())
            return
        scanned = yield from self._scan_agent(lambda rm: agent.scan_bind(b, types, rm), st,
                                              "extended", extended=True)
        if scanned is None:
            return
        self.bind_counts[b.portal] = dict(scanned.counts)
        self.cycle_open = True
        out.append(scanned.messages[0] if scanned.counts else m.encode())

    def _copy_in(self, m: wire.Message, out: list[bytes]):
        """The agent's COPY FROM STDIN data: scanned line by line, forwarded as whole lines."""
        cin = self.copy_in
        if cin is None:  # not in COPY IN: the server reports the protocol error itself
            out.append(m.encode())
            return
        if cin == "refused":
            if m.type in (b"c", b"f"):
                self.copy_in = None
            return
        lines = cin.feed(m.body) if m.type == b"d" else cin.finish()
        if lines:
            csv = cin.fmt == "csv"
            try:
                res = yield from self._scan(lambda rm: mask.mask_copy(lines, csv, rm), "request")
            except mask.Unscannable as e:
                res = None
                why = str(e)
            if res is None or res.blocked:
                why = "the data carries what the policy blocks" if res is not None else why
                out.append(wire.build(b"f", wire.cstr(f"refused by the egress gateway: {why}")))
                self.copy_in = "refused" if m.type == b"d" else None
                return
            out.extend(res.messages)
            rec = self.tracker.front()
            if rec is not None and res.counts:
                for e, n in res.counts.items():
                    rec.request_counts[e] = rec.request_counts.get(e, 0) + n
        if m.type != b"d":
            self.copy_in = None
            out.append(m.encode())

    def _refuse_statement(self, st, r: Refusal, protocol: str, extended: bool, approval=None):
        """A non-FATAL refusal of a statement: audited; the agent's messages up to Sync dropped."""
        log.info(f"egress gateway refused a PostgreSQL statement ({self.entry.name}): {r.code}")
        rec = track.Record(st or classify.Statement("UNKNOWN"), protocol, 0, approval=approval)
        rec.outcome, rec.decision, rec.code, rec.sqlstate = "refused", "blocked", r.code, r.sqlstate
        yield from self._audit(**rec.audit(), reason=r.reason)
        if not extended:
            yield from self._local(r.message())
            return
        if self.cycle_open:
            # Earlier messages of this cycle reached the server: end the cycle there now and put
            # the refusal before its ReadyForQuery; the agent's own Sync is then dropped.
            yield from self._to_server(wire.build(b"S"))
            self.order.append(["server", r.message()])
            self.tracker.cycle += 1
            self.skip_to_sync = b""
        else:
            self.skip_to_sync = r.message()

    def _local(self, error: bytes):
        """A local refusal (error + ReadyForQuery), after the server's pending answers."""
        self.order.append(["local", error])
        if len(self.order) == 1:
            pending: list[bytes] = []
            self._drain_local(pending)
            yield from self._to_client(b"".join(pending))
