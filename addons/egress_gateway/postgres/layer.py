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

from mitmproxy.proxy import commands, events, layer

from egress_gateway import session as session_mod
from egress_gateway.postgres import classify, track, wire
from egress_gateway.postgres.auth import AuthError, UpstreamLogin, placeholder_ok
from egress_gateway.postgres.hooks import Event, PostgresEventHook, Refusal
from egress_gateway.postgres.results import Results
from egress_gateway.postgres.statements import Statements

log = logging.getLogger(__name__)

# Startup parameters passed on to the server; everything else is dropped (and `replication`,
# `options` refused: one streams WAL no row mask sees, the other sets arbitrary GUCs).
STARTUP_ALLOWED = frozenset({
    "application_name", "client_encoding", "DateStyle", "TimeZone", "extra_float_digits",
    "IntervalStyle", "search_path", "datestyle", "timezone", "intervalstyle",
})
STARTUP_REFUSED = frozenset({"replication", "options"})
STOPPING = Refusal("57P01", "gateway_unavailable", "gateway stopping", True)


class GatewayStopping(events.Event):
    """Sent by the shutdown addon when the grace is over: audit what is open, then end the
    connection as PostgreSQL itself does when it shuts down (FATAL 57P01)."""



class PostgresLayer(Results, Statements, layer.Layer):
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
        layers = getattr(peers, "layers", None)
        if layers is not None:
            layers.add(self)  # the shutdown drain waits for, then ends, the open connections

    @property
    def busy(self) -> bool:
        """A statement is in flight (sent, its answer not complete)."""
        return not self.closed and bool(self.tracker.pending)

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
            if isinstance(event, GatewayStopping):
                while self.tracker.pending:  # in flight: audited, then the connection ends
                    yield from self._finish(self.tracker.error("57P01", "gateway_unavailable"),
                                            reason=STOPPING.reason, shutdown="closed")
                yield from self._fatal(STOPPING)
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
