"""The PostgreSQL protocol layer: owns one agent connection from its first byte to its end.

Stack (installed by the addon's ``next_layer`` hook on the entry's ``reverse:tcp`` mode)::

    SslNegotiation (SSLRequest, 'S')  /  tls.ServerTLSLayer  /  PostgresLayer     tls: verify-full|require
    PostgresLayer                                                                    tls: disable

`PostgresLayer` answers the agent's SSLRequest/GSSENCRequest with ``N``, checks its startup
packet and placeholder password, and only then opens the upstream connection (the egress
addon's ``server_connect`` checks and resolves it). The two layers below it turn that dial into
PostgreSQL's in-band TLS. The gateway then logs in with its own credentials and relays
messages, masking what the server returns (`mask`) and refusing what it cannot scan.

Refusals are ``ErrorResponse`` messages whose text starts ``<code>: <reason>``. A non-FATAL one
discards the agent's messages up to ``Sync`` and then sends ``ReadyForQuery`` with the server's
real transaction status, in order with the server's own answers (`_order`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from mitmproxy import connection
from mitmproxy.proxy import commands, events, layer, tunnel
from mitmproxy.proxy.commands import StartHook

from egress_gateway import session as session_mod
from egress_gateway.postgres import agent, classify, mask, track, wire
from egress_gateway.postgres.auth import AuthError, UpstreamLogin, placeholder_ok

log = logging.getLogger(__name__)

# Startup parameters passed on to the server; everything else is dropped (and `replication`,
# `options` refused: one streams WAL no row mask sees, the other sets arbitrary GUCs).
STARTUP_ALLOWED = frozenset({
    "application_name", "client_encoding", "DateStyle", "TimeZone", "extra_float_digits",
    "IntervalStyle", "search_path", "datestyle", "timezone", "intervalstyle",
})
STARTUP_REFUSED = frozenset({"replication", "options"})
ROW_BATCH = 256  # DataRows masked together (one detection call)


@dataclass
class ScanJob:
    """Work for the addon's scan pool: `fn(redact_many)` is run there, `result` set."""

    entry: object
    fn: object
    session: str
    direction: str = "response"
    client: object = None
    server: object = None
    result: object = None
    error: BaseException | None = None


@dataclass
class PostgresScanHook(StartHook):
    """Mask server messages (rows, errors) off the event loop; blocks this connection only."""

    job: ScanJob


@dataclass
class StatementCheck:
    """Statements about to run; the addon sets `refusal` (and `blocked`) to refuse them."""

    entry: object
    session: str
    statements: list
    protocol: str
    refusal: Refusal | None = None
    blocked: object = None
    approval: dict | None = None  # the approval of the refused statement
    approvals: dict = field(default_factory=dict)  # id(statement) -> approval record
    client: object = None
    server: object = None


@dataclass
class PostgresStatementHook(StartHook):
    """Statements are about to run: read_only and approvals decide (may wait for a human)."""

    check: StatementCheck


@dataclass
class Event:
    """Something to audit happened (`record` is the audit line); a finished statement also
    carries its messages as they crossed the gateway, for the recording."""

    record: dict
    messages: list = field(default_factory=list)
    truncated: bool = False
    client: object = None
    server: object = None
    failed: str | None = None  # set by the addon when the recording could not be written


@dataclass
class PostgresEventHook(StartHook):
    """An audit line (and, for statements, a recording) of a PostgreSQL connection."""

    event: Event


class Refusal(Exception):
    """A refusal to send to the agent: SQLSTATE, gateway code, reason; fatal ends the connection."""

    def __init__(self, sqlstate: str, code: str, reason: str, fatal: bool = False) -> None:
        super().__init__(f"{code}: {reason}")
        self.sqlstate, self.code, self.reason, self.fatal = sqlstate, code, reason, fatal

    def message(self) -> bytes:
        return wire.error_response(self.sqlstate, f"{self.code}: {self.reason}",
                                   "FATAL" if self.fatal else "ERROR")


class _Out(list):
    """Messages for the agent, also kept for the recording of the statement they answer."""

    def __init__(self, tracker: track.Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def append(self, data: bytes) -> None:
        super().append(data)
        self.tracker.note(False, data)

    def extend(self, items) -> None:
        for x in items:
            self.append(x)


class SslNegotiation(tunnel.TunnelLayer):
    """Sends ``SSLRequest`` on the fresh upstream connection; ``S`` lets TLS start above it."""

    def __init__(self, context, conn: connection.Server) -> None:
        super().__init__(context, tunnel_connection=conn, conn=conn)
        self._buf = b""

    def start_handshake(self):
        yield commands.SendData(self.tunnel_connection, wire.ssl_request())

    def receive_handshake_data(self, data: bytes):
        yield from ()
        self._buf += data
        if not self._buf:
            return False, None
        first, rest = self._buf[:1], self._buf[1:]
        if first == b"S":
            if rest:  # bytes before the handshake: injected plaintext (CVE-2021-23222 class)
                return False, "the server sent data before the TLS handshake"
            return True, None
        if first == b"N":
            return False, "the server does not accept TLS (tls: require or verify-full)"
        return False, "the server answered the SSLRequest with an error"


def _bound(cols: list[wire.Column], formats: list[int]) -> list[wire.Column]:
    """A statement's described columns with the result formats a Bind asked for."""
    def fmt(i: int) -> int:
        if not formats:
            return 0
        return formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)

    out = [wire.Column(c.name, c.table_oid, c.attnum, c.type_oid, c.typlen, c.typmod, fmt(i))
           for i, c in enumerate(cols)]
    mask.check_columns(out)
    return out


class RefuseLayer(layer.Layer):
    """A connection on a port whose entry is no longer in the policy (changed by a reload):
    answered with a FATAL refusal, never relayed. Listen changes need a restart."""

    def _handle_event(self, event: events.Event):
        if isinstance(event, events.DataReceived) and event.connection is self.context.client:
            if event.data[4:8] in (wire.ssl_request()[4:], (wire.GSSENC_REQUEST).to_bytes(4, "big")):
                yield commands.SendData(self.context.client, b"N")
                return
            yield commands.SendData(self.context.client, Refusal(
                "08004", "blocked", "this port's database entry is no longer in the policy "
                "(restart the gateway to apply listen changes)", True).message())
            yield commands.CloseConnection(self.context.client)
        elif isinstance(event, events.ConnectionClosed):
            yield commands.CloseConnection(self.context.client)


class PostgresLayer(layer.Layer):
    """One agent connection: startup, authentication, the upstream login, then the relay."""

    def __init__(self, context, entry, peers) -> None:
        super().__init__(context)
        self.entry = entry
        self.peers = peers  # the addon: policy, detection settings, audit
        self.client = context.client
        self.server = context.server
        self.cframe = wire.Framer(startup=True)
        self.sframe = wire.Framer(startup=False)
        self.state = "startup"
        self.session = "unknown"
        self.params: dict[str, str] = {}
        self.login: UpstreamLogin | None = None
        self.txn = b"I"
        self.columns: list[wire.Column] | None = None
        self.copy_out: bool | None = None  # None: no COPY OUT running; else True for CSV
        self.discard_server = False  # after a mid-result refusal: drop until ReadyForQuery
        self.skip_to_sync: bytes | None = None  # a refusal waiting for the agent's Sync
        self.order: deque[list] = deque()  # ["server", prefix] / ["local", error]
        self.started = time.time()
        self.counts: dict[str, int] = {}
        self.tracker = track.Tracker()
        self.prepared: dict[bytes, classify.Statement | None] = {}  # statement name -> parsed
        self.portals: dict[bytes, bytes] = {}  # portal -> statement name
        self.param_types: dict[bytes, list[int]] = {}  # statement name -> declared types
        self.bind_counts: dict[bytes, dict] = {}  # portal -> what its parameters had redacted
        self.copy_in = None  # agent.CopyIn during COPY FROM STDIN; "refused" after a CopyFail
        self.describes: deque = deque()  # (cycle, b"S"|b"P", name) awaiting their answer
        self.stmt_desc: dict[bytes, list[wire.Column]] = {}  # statement -> its result columns
        self.portal_cols: dict[bytes, list[wire.Column]] = {}  # portal -> its result columns
        self.cycle_open = False  # extended-protocol messages forwarded since the last Sync
        self.login_log: list | None = []  # the login as the agent saw it, for the recording
        self._pw = entry.password.lower().encode()
        self.login_record: dict = {}
        self.server_open = False
        self.closed = False

    # --- plumbing -----------------------------------------------------------------------------
    def _to_client(self, data: bytes):
        if data:
            if self.login_log is not None:
                self.login_log.append((False, data))
            yield commands.SendData(self.client, data)

    def _to_server(self, data: bytes):
        if data and self.server_open:
            yield commands.SendData(self.server, data)

    def _close(self):
        if self.closed:
            return
        self.closed = True
        self.state = "closed"
        if self.server_open:
            yield commands.CloseConnection(self.server)
        yield commands.CloseConnection(self.client)

    def _audit(self, messages=None, **rec):
        base = {"kind": "postgres", "session": self.session, "database": self.entry.name}
        yield PostgresEventHook(Event({**base, **rec}, messages or [], client=self.client,
                                      server=self.server))

    def _login_recorded(self, **rec):
        """The connection's audit line, with the login recorded as one flow."""
        messages, self.login_log = self.login_log or [], None
        yield from self._audit(messages, event="connection", **rec)

    def _fatal(self, r: Refusal):
        log.info(f"egress gateway refused a PostgreSQL connection ({self.entry.name}): {r.code}")
        yield from self._to_client(r.message())
        if self.login_log is not None:
            yield from self._login_recorded(decision="blocked", code=r.code, sqlstate=r.sqlstate,
                                            reason=r.reason)
        else:
            yield from self._audit(event="connection", decision="blocked", code=r.code,
                                   sqlstate=r.sqlstate, reason=r.reason)
        yield from self._close()

    def _handle_event(self, event: events.Event):
        if self.closed:
            return
        try:
            if isinstance(event, events.Start):
                return
            if isinstance(event, events.ConnectionClosed):
                yield from self._close()
                return
            if isinstance(event, events.DataReceived):
                if event.connection is self.client:
                    self.cframe.feed(event.data)
                    yield from self._from_client()
                elif event.connection is self.server:
                    self.sframe.feed(event.data)
                    yield from self._from_server()
        except Refusal as r:
            yield from self._fatal(r)
        except wire.ProtocolError as e:
            yield from self._fatal(Refusal("08P01", "unsupported_content",
                                           f"a protocol message could not be parsed ({e})", True))
        except Exception:
            log.exception("egress gateway: internal error on a PostgreSQL connection; closing it")
            yield from self._to_client(Refusal("XX000", "internal_error",
                                               "the gateway failed on this connection",
                                               True).message())
            yield from self._close()

    # --- the agent's side ---------------------------------------------------------------------
    def _from_client(self):
        while not self.closed:
            if self.state == "startup":
                body = self.cframe.next_startup()
                if body is None:
                    return
                self.login_log.append((True, (len(body) + 4).to_bytes(4, "big") + body))
                yield from self._startup(body)
            elif self.state == "password":
                msg = self.cframe.next()
                if msg is None:
                    return
                yield from self._password(msg)
            elif self.state == "ready":
                yield from self._relay_client()
                return
            else:  # logging in upstream: the agent must wait
                if len(self.cframe) > 1 << 20:
                    raise Refusal("08P01", "unsupported_content", "too much data before login",
                                  True)
                return

    def _startup(self, body: bytes):
        code, params = wire.parse_startup(body)
        if code in (wire.SSL_REQUEST, wire.GSSENC_REQUEST):
            yield from self._to_client(b"N")  # loopback: no TLS towards the agent
            return
        if code == wire.CANCEL_REQUEST:
            yield from self._cancel(body)
            return
        if code != wire.PROTOCOL_3:
            raise Refusal("08P01", "unsupported_content", f"unsupported protocol version {code}",
                          True)
        self.session = session_mod.clean_session_id(params.get("user")) or "unknown"
        for k in params:
            if k in STARTUP_REFUSED:
                raise Refusal("42501", "blocked", f"the startup parameter {k!r} is not allowed "
                              "through the gateway", True)
        if params.get("database", params.get("user")) != self.entry.database:
            raise Refusal("3D000", "blocked", "this gateway port serves only the database "
                          f"{self.entry.database!r}", True)
        self.params = {k: v for k, v in params.items() if k in STARTUP_ALLOWED}
        self.state = "password"
        yield from self._to_client(wire.auth_request(3))  # cleartext: on loopback, a placeholder

    def _password(self, msg: wire.Message):
        if msg.type != b"p":
            raise Refusal("08P01", "auth_failed", "expected a password message", True)
        ok = placeholder_ok(wire.parse_password(msg.body), self.entry.placeholder)
        # Recorded as sent only when it is the placeholder: a wrong one may be a real secret.
        self.login_log.append((True, msg.encode() if ok else wire.password_message(
            wire.cstr(f"<not the placeholder: {len(msg.body) - 1} bytes>"))))
        if not ok:
            raise Refusal("28P01", "auth_failed", "password authentication failed (give the "
                          "gateway's placeholder for this database as the password)", True)
        self.state = "connecting"
        yield from self._connect()

    def _connect(self):
        err = yield commands.OpenConnection(self.server)
        if err:
            blocked = "egress gateway" in str(err)
            raise Refusal("08004" if blocked else "08001", "blocked" if blocked else "upstream_error",
                          f"the gateway could not connect to the database: {err}", True)
        self.server_open = True
        self.login = UpstreamLogin(self.entry.user, self.entry.password,
                                   tls=self.entry.tls != "disable")
        params = {"user": self.entry.user, "database": self.entry.database, **self.params}
        params["client_encoding"] = "UTF8"  # values are scanned as UTF-8
        if self.entry.read_only:  # the server enforces it too (functions called by a SELECT)
            params["options"] = "-c default_transaction_read_only=on"
        self.state = "login"
        yield from self._to_server(wire.startup_message(params))

    def _cancel(self, body: bytes):
        """A CancelRequest: passed to the server on a connection of its own, then closed."""
        err = yield commands.OpenConnection(self.server)
        if not err:
            self.server_open = True
            yield from self._to_server((len(body) + 4).to_bytes(4, "big") + body)
        yield from self._close()

    # --- the server's side --------------------------------------------------------------------
    def _from_server(self):
        msgs: list[wire.Message] = []
        while True:
            m = self.sframe.next()
            if m is None:
                break
            msgs.append(m)
        if self.state == "login":
            while msgs and self.state == "login":
                yield from self._login(msgs.pop(0))
        if msgs and self.state in ("ready", "login_done"):
            yield from self._relay_server(msgs)

    def _login(self, msg: wire.Message):
        if msg.type == b"R":
            try:
                reply = self.login.step(msg.body)
            except AuthError as e:
                raise Refusal("28000", "upstream_auth_failed", str(e), True) from None
            if reply:
                yield from self._to_server(reply)
            if self.login.done:
                self.state = "login_done"
                yield from self._to_client(wire.auth_request(0))
                self.login_record = {"decision": "allowed", "auth": self.login.method,
                                     "tls": self.entry.tls}
            return
        if msg.type == b"E":
            # Never forwarded: it names the gateway's role.
            raise Refusal("28000", "upstream_auth_failed", "the database refused the gateway's "
                          "own login (check the entry's user and password_env)", True)
        if msg.type == b"N":
            return
        raise Refusal("08P01", "unsupported_content", "unexpected message during login", True)

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
