"""``gateway_state`` and ``gateway_instance``: parsing (pure functions raising ValueError)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
# libpq parameters a state URL may carry (no password: PGPASSWORD or a passfile)
ALLOWED_PARAMS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout",
                            "application_name", "passfile", "target_session_attrs"})


@dataclass(frozen=True)
class StateUrl:
    """A store's address; `conninfo` is what libpq gets (the password comes from libpq itself)."""

    host: str
    port: int
    dbname: str
    user: str | None
    params: tuple[tuple[str, str], ...] = ()

    @property
    def display(self) -> str:
        """The store as named in logs and refusals."""
        return f"postgresql://{self.user + '@' if self.user else ''}{self.host}:{self.port}/{self.dbname}"

    def conninfo(self, **extra: str) -> dict[str, str]:
        kw = {"host": self.host, "port": str(self.port), "dbname": self.dbname,
              "connect_timeout": "3", "application_name": "egress-gateway"}
        if self.user:
            kw["user"] = self.user
        kw.update(dict(self.params))
        kw.update(extra)
        return kw


def parse_state_url(url: str) -> StateUrl:
    """``postgresql://USER@HOST:PORT/DB[?sslmode=...]``; a password in it is refused."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("gateway_state must be a postgresql://USER@HOST:PORT/DB URL")
    if parts.password is not None:
        raise ValueError("gateway_state must not contain a password (command lines are visible "
                         "to every local user): use PGPASSWORD or a libpq passfile")
    try:
        host, port = parts.hostname, parts.port or 5432
    except ValueError as e:
        raise ValueError(f"gateway_state: bad port ({e})") from None
    if not host:
        raise ValueError("gateway_state needs a host (postgresql://USER@HOST:PORT/DB)")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ValueError("gateway_state needs a database name (postgresql://USER@HOST:PORT/DB)")
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    for k, _ in params:
        if k == "password":
            raise ValueError("gateway_state must not contain a password: use PGPASSWORD or a "
                             "libpq passfile")
        if k not in ALLOWED_PARAMS:
            raise ValueError(f"gateway_state: unsupported parameter {k!r} (allowed: "
                             f"{', '.join(sorted(ALLOWED_PARAMS))})")
    return StateUrl(host, port, dbname, unquote(parts.username) if parts.username else None, params)


def instance_name(value: str, listen_port: int | None) -> str:
    """``gateway_instance``, or the host name plus the listen port."""
    name = value.strip() or f"{socket.gethostname()}:{listen_port or 8080}"
    if not INSTANCE_RE.match(name):
        raise ValueError(f"gateway_instance {name!r}: use letters, digits, '_', '.', ':', '-' "
                         "(at most 100)")
    return name


def store_addresses(state: StateUrl) -> set[tuple[str, int]]:
    """Every (ip, port) the store's host resolves to (agent traffic there is refused)."""
    out = {(state.host.lower(), state.port)}
    try:
        for info in socket.getaddrinfo(state.host, state.port, type=socket.SOCK_STREAM):
            out.add((str(info[4][0]), state.port))
    except OSError:
        pass
    return out
