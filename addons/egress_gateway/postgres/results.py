"""What the server sends, relayed to the agent: result rows and COPY data masked, errors scrubbed."""

from __future__ import annotations

import logging

from egress_gateway.postgres import agent, mask, track, wire
from egress_gateway.postgres.hooks import Event, PostgresEventHook, PostgresScanHook, Refusal, ScanJob, _Out

log = logging.getLogger(__name__)
ROW_BATCH = 256  # DataRows masked together (one detection call)


class Results:
    """PostgresLayer's server side (a mixin: the state lives on the layer)."""

    def _relay_server(self, msgs: list[wire.Message]):
        out = _Out(self.tracker)
        rows: list[bytes] = []
        copies: list[bytes] = []

        def flush_rows():
            if rows:
                yield from self._mask_rows(rows, out)
                rows.clear()
            if copies:
                yield from self._mask_copy(copies, out)
                copies.clear()

        for m in msgs:
            if self.closed:
                return
            if self._pw in m.body.lower():
                m = self._scrubbed(m)
            t = m.type
            if self.discard_server:
                if t == b"Z":
                    self.discard_server = False
                    self.columns = None
                    self.copy_out = None
                    yield from self._ready(m, out)
                continue
            if t == b"D":
                if copies:
                    yield from flush_rows()
                rows.append(m.body)
                if len(rows) >= ROW_BATCH:
                    yield from flush_rows()
                continue
            if t == b"d" and self.copy_out is not None:
                copies.append(m.body)
                if len(copies) >= ROW_BATCH:
                    yield from flush_rows()
                continue
            yield from flush_rows()
            if self.discard_server:
                if t == b"Z":
                    self.discard_server = False
                    yield from self._ready(m, out)
                continue
            if t == b"T":
                cols = wire.parse_row_description(m.body)
                kind, name = self._described()
                if kind == b"S":  # a statement: its columns once bound (formats from Bind)
                    self.stmt_desc[name] = cols
                    out.append(m.encode())
                    continue
                if kind == b"P":
                    self.portal_cols[name] = cols
                self.columns = cols
                try:
                    mask.check_columns(self.columns)
                except mask.Unscannable as e:
                    yield from self._refuse_result(out, Refusal("0A000", "unsupported_content",
                                                                str(e)))
                    continue
                out.append(m.encode())
            elif t == b"Z":
                self.columns = None
                yield from self._ready(m, out)
                while self.describes and self.describes[0][0] <= self.tracker.done_cycle:
                    self.describes.popleft()  # never answered: an error ended that cycle
            elif t == b"n":
                self._described()
                out.append(m.encode())
            elif t == b"C":
                self.columns = None
                self.copy_out = None
                out.append(m.encode())
                tag = m.body.rstrip(b"\x00").decode("ascii", "replace")
                yield from self._finish(self.tracker.complete(tag))
            elif t == b"E":
                sqlstate = dict(wire.parse_fields(m.body)).get(b"C", b"").decode("ascii", "replace")
                yield from self._mask_message(m, out)
                yield from self._finish(self.tracker.error(sqlstate or None))
            elif t == b"N":
                yield from self._mask_message(m, out)
            elif t == b"A":
                yield from self._mask_message(m, out)
            elif t == b"H":
                overall, _ = wire.parse_copy_response(m.body)
                if overall != 0:
                    yield from self._refuse_result(out, Refusal(
                        "0A000", "unsupported_content", "binary COPY cannot be scanned"))
                    continue
                rec = self.tracker.front()
                self.copy_out = bool(rec and rec.statement.copy_format == "csv")
                out.append(m.encode())
            elif t == b"c":
                self.copy_out = None
                out.append(m.encode())
            elif t == b"W":
                raise Refusal("0A000", "unsupported_content", "COPY BOTH (replication) is not "
                              "supported through the gateway", True)
            elif t == b"S":
                k, v = wire.parse_parameter_status(m.body)
                if k == "session_authorization":
                    v = self.session  # the agent never learns the gateway's role
                out.append(wire.parameter_status(k, v))
            elif t == b"G":
                overall, _ = wire.parse_copy_response(m.body)
                rec = self.tracker.front()
                fmt = (rec.statement.copy_format if rec else None) or "text"
                if overall != 0 or fmt not in ("text", "csv"):
                    # Never shown to the agent: the server ends the COPY with its own error.
                    yield from self._to_server(wire.build(b"f", wire.cstr(
                        "refused by the egress gateway: binary COPY data cannot be scanned")))
                    continue
                self.copy_in = agent.CopyIn(fmt)
                out.append(m.encode())
            elif t == b"K" or t in (b"I", b"s", b"1", b"2", b"3", b"t", b"d"):
                out.append(m.encode())
                if t == b"s":  # PortalSuspended: this Execute is done (a partial fetch)
                    self.columns = None
                    yield from self._finish(self.tracker.complete("FETCH"))
            else:
                yield from self._refuse_result(out, Refusal(
                    "0A000", "unsupported_content", f"unknown server message {t!r}"))
        yield from flush_rows()
        yield from self._to_client(b"".join(out))

    def _scrubbed(self, m: wire.Message) -> wire.Message:
        """A server message echoing the real password, with the placeholder in its place."""
        log.warning(f"egress gateway: the database {self.entry.name} echoed the gateway's "
                    "password; replaced by the placeholder")
        real = self.entry.password.encode()
        ph = self.entry.placeholder.encode()

        def sub(b: bytes) -> bytes:
            i = b.lower().find(self._pw)
            while i >= 0:
                b = b[:i] + ph + b[i + len(real):]
                i = b.lower().find(self._pw, i + len(ph))
            return b

        if m.type == b"D":
            vals = wire.parse_data_row(m.body)
            return wire.Message(b"D", wire.data_row([None if v is None else sub(v)
                                                     for v in vals])[5:])
        if m.type in (b"E", b"N", b"S", b"A", b"T", b"C", b"d"):
            return wire.Message(m.type, sub(m.body))
        raise Refusal("XX000", "credential_leak", "a server message carries the gateway's "
                      "password and cannot be rewritten", True)

    def _ready(self, m: wire.Message, out: list[bytes]):
        yield from ()
        self.txn = m.body[:1] or b"I"
        if self.state == "login_done":
            self.state = "ready"
            out.append(m.encode())
            yield from self._to_client(b"".join(out))
            out.clear()
            yield from self._login_recorded(**self.login_record)
            # The agent may have pipelined queries after its password.
            if len(self.cframe):
                yield from self._to_client(b"".join(out))
                out.clear()
                yield from self._relay_client()
            return
        entry = self.order.popleft() if self.order and self.order[0][0] == "server" else None
        if entry and entry[1]:
            out.append(entry[1])
        out.append(m.encode())
        for rec in self.tracker.ready():
            yield from self._finish(rec)
        self._drain_local(out)

    def _drain_local(self, out: list[bytes]) -> None:
        while self.order and self.order[0][0] == "local":
            out.append(self.order.popleft()[1])
            out.append(wire.ready_for_query(self.txn))

    def _refuse_result(self, out: list[bytes], r: Refusal):
        """Refuse the rest of a result: the error now, the server's output dropped up to Z."""
        log.info(f"egress gateway refused a PostgreSQL result ({self.entry.name}): {r.code}")
        out.append(r.message())
        rec = self.tracker.error(r.sqlstate, r.code)
        if rec is None:
            yield from self._audit(event="result", decision="blocked", code=r.code,
                                   sqlstate=r.sqlstate, reason=r.reason)
        else:
            yield from self._finish(rec, reason=r.reason)
        self.discard_server = True

    def _finish(self, rec: track.Record | None, **extra):
        """A statement is done: its audit line and recording."""
        if rec is None:
            return
        yield PostgresEventHook(Event({"kind": "postgres", "session": self.session,
                                       "database": self.entry.name, **rec.audit(), **extra},
                                      rec.messages, rec.truncated, self.client, self.server))

    def _scan(self, fn, direction: str = "response"):
        job = ScanJob(self.entry, fn, self.session, direction, self.client, self.server)
        yield PostgresScanHook(job)
        if job.error is not None:
            if isinstance(job.error, mask.Unscannable | wire.ProtocolError):
                raise job.error
            raise RuntimeError("scan failed") from job.error
        return job.result

    def _apply(self, res: mask.Outcome, out: list[bytes]):
        for e, n in res.counts.items():
            self.counts[e] = self.counts.get(e, 0) + n
        self.tracker.rows(res.rows, dict(res.counts))
        if res.blocked:
            yield from self._refuse_result(out, Refusal(
                "42501", "sensitive_data",
                f"the result carries data the policy blocks: {', '.join(sorted(res.blocked))}"))
            return
        out.extend(res.messages)

    def _described(self) -> tuple[bytes | None, bytes]:
        """Which Describe a RowDescription or NoData answers: (b"S"|b"P"|None, name)."""
        if self.describes:
            _, kind, name = self.describes.popleft()
            return kind, name
        return None, b""

    def _mask_rows(self, rows: list[bytes], out: list[bytes]):
        rec = self.tracker.front()
        cols = self.columns or (rec.columns if rec is not None else None)
        if cols is None:
            yield from self._refuse_result(out, Refusal(
                "0A000", "unsupported_content", "rows arrived without a row description "
                "(describe the portal before Execute)"))
            return
        skip = frozenset(c.lower() for c in self.entry.skip_columns)
        always = frozenset(c.lower() for c in self.entry.mask_columns)
        bodies = list(rows)
        try:
            res = yield from self._scan(lambda rm: mask.mask_rows(cols, bodies, rm, skip, always))
        except mask.Unscannable as e:
            yield from self._refuse_result(out, Refusal("0A000", "unsupported_content", str(e)))
            return
        yield from self._apply(res, out)

    def _mask_copy(self, chunks: list[bytes], out: list[bytes]):
        csv = bool(self.copy_out)
        bodies = list(chunks)
        try:
            res = yield from self._scan(lambda rm: mask.mask_copy(bodies, csv, rm))
        except mask.Unscannable as e:
            yield from self._refuse_result(out, Refusal("0A000", "unsupported_content", str(e)))
            return
        yield from self._apply(res, out)

    def _mask_message(self, m: wire.Message, out: list[bytes]):
        if m.type == b"A":
            res = yield from self._scan(lambda rm: mask.mask_notification(m.body, rm))
        else:
            res = yield from self._scan(lambda rm: mask.mask_fields(m.type, m.body, rm))
        for e, n in res.counts.items():
            self.counts[e] = self.counts.get(e, 0) + n
        if res.blocked:  # an error's text cannot be half-sent: replace it by the refusal
            out.append(Refusal("42501", "sensitive_data", "the server's message carries data the "
                               "policy blocks").message() if m.type == b"E" else b"")
            return
        out.extend(res.messages)

    # --- the relay, agent to server -----------------------------------------------------------
