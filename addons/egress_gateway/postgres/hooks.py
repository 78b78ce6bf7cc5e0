"""The PostgreSQL lane's hooks and their payloads, the refusal, and its two small layers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mitmproxy import connection
from mitmproxy.proxy import commands, events, layer, tunnel
from mitmproxy.proxy.commands import StartHook

from egress_gateway.postgres import mask, track, wire

log = logging.getLogger(__name__)


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
