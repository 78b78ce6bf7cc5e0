"""The ``postgres:`` section of the gateway policy: one entry per database agents may reach.

Example::

    postgres:
      - name: crm
        listen: 127.0.0.1:15432
        upstream: db.internal.example.com:5432
        database: crm
        user: agent_ro
        password_env: CRM_DB_PASSWORD
        placeholder: gateway-placeholder-crm
        tls: verify-full
        ca: /etc/ssl/db-ca.pem
        read_only: false

The password is read from the environment when the policy loads: a missing variable refuses the
policy (start-up stops, a reload keeps the last good policy), naming the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from egress_gateway.net import hosts

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT = re.compile(r"^[^\x00]{1,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError naming `what`."""
    v = str(value).strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{what} {value!r} is not [address]:port")
        port_s = rest[1:]
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep:
            raise ValueError(f"{what} {value!r} is not host:port")
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{what} {value!r} is not host:port with a port 1-65535")
    return host, int(port_s)


class Secret(str):
    """The database password: a str whose repr never shows it."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def __reduce__(self):
        raise TypeError("a database password is not serialisable")


class _Revealed:
    """A secret as the credential leak guard reads it (``reveal()``)."""

    __slots__ = ("_v",)

    def __init__(self, value: str) -> None:
        self._v = value

    def reveal(self) -> str:
        return self._v

    def __repr__(self) -> str:
        return "Secret('***')"


class GuardedCredential:
    """The database password as an HTTP credential bound to no destination: the HTTP leak
    guard refuses any request carrying it (or the placeholder) and scrubs it from responses."""

    format = "raw"
    allow_plain_http = False

    def __init__(self, name: str, placeholder: str, secret: str) -> None:
        self.name = f"postgres:{name}"
        self.placeholder = placeholder
        self.secret = _Revealed(secret)

    def matches(self, request) -> bool:
        return False

    def carried_by(self, request) -> bool:
        return False


class PostgresEntry(_Model):
    """One database reachable through the gateway (one listening port)."""

    name: str = Field(description="Entry name: letters, digits, _ . - (unique); what approve and "
                      "redact rules name in their 'postgres' key.")
    listen: str = Field(description="Where agents connect, host:port (loopback, or a client "
                        "allowed by clients.allow). The port selects the entry.")
    upstream: str = Field(description="The database server, host:port; must pass the egress "
                          "allowlist (allow and resolve rules apply as for HTTP).")
    database: str = Field(description="The only database reachable through this entry.")
    user: str = Field(description="The role the gateway logs in as (the agent never sees it).")
    password_env: str = Field(description="Environment variable holding the role's password "
                              "(read when the policy loads; missing: the policy is refused).")
    placeholder: str = Field(description="What agents send as their password.")
    tls: Literal["verify-full", "require", "disable"] = Field(
        "verify-full", description="TLS to the upstream: verify-full (certificate and host name "
        "checked), require (encrypted, not verified), disable (plain).")
    ca: str | None = Field(None, description="CA certificate file (PEM) for verify-full; "
                           "default: the system's trust store.")
    read_only: bool = Field(False, description="Refuse every statement that writes (25006).")
    skip_columns: list[str] = Field(default_factory=list, description="Result columns never "
                                    "scanned (e.g. ids); names as in the result, any case.")
    mask_columns: list[str] = Field(default_factory=list, description="Result columns always "
                                    "masked whole (value replaced by <REDACTED>).")

    _secret: Secret | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _v_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a name is 1-64 letters, digits, '_', '.' or '-'")
        return v

    @field_validator("listen")
    @classmethod
    def _v_listen(cls, v: str) -> str:
        host, _ = parse_hostport(v, "listen")
        if hosts.parse_ip_literal(host) is None and host.lower() != "localhost":
            raise ValueError(f"listen {v!r}: give an IP address to listen on")
        return v

    @field_validator("upstream")
    @classmethod
    def _v_upstream(cls, v: str) -> str:
        host, _ = parse_hostport(v, "upstream")
        if hosts.parse_ip_literal(host) is None:
            hosts.validate_host_glob(host)
            if "*" in host:
                raise ValueError(f"upstream {v!r}: name one host, not a pattern")
        return v

    @field_validator("database", "user")
    @classmethod
    def _v_ident(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"{v!r} is not a PostgreSQL name (1-63 characters, no NUL)")
        return v

    @field_validator("password_env")
    @classmethod
    def _v_env(cls, v: str) -> str:
        if not _ENV.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @field_validator("placeholder")
    @classmethod
    def _v_placeholder(cls, v: str) -> str:
        if not 8 <= len(v) <= 256 or any(not 0x21 <= ord(c) <= 0x7E for c in v):
            raise ValueError("a placeholder is 8-256 visible ASCII characters (no spaces)")
        return v

    @field_validator("ca")
    @classmethod
    def _v_ca(cls, v: str | None) -> str | None:
        if v is None:
            return None
        p = Path(v).expanduser()
        if not p.is_file():
            raise ValueError(f"ca {v!r}: no such file")
        return str(p)

    @model_validator(mode="after")
    def _v_entry(self) -> PostgresEntry:
        if self.ca is not None and self.tls != "verify-full":
            raise ValueError(f"postgres {self.name!r}: 'ca' is only used with tls: verify-full")
        value = os.environ.get(self.password_env)
        if not value:
            raise ValueError(f"postgres {self.name!r}: environment variable {self.password_env} "
                             "is not set (or empty)")
        if value == self.placeholder:
            raise ValueError(f"postgres {self.name!r}: the placeholder equals the real password")
        self._secret = Secret(value)
        return self

    # --- derived ----------------------------------------------------------------------------
    @property
    def password(self) -> Secret:
        assert self._secret is not None
        return self._secret

    def as_credential(self) -> GuardedCredential:
        return GuardedCredential(self.name, self.placeholder, self.password)

    @property
    def upstream_address(self) -> tuple[str, int]:
        host, port = parse_hostport(self.upstream, "upstream")
        return hosts.normalize_host(host) if hosts.parse_ip_literal(host) is None else host, port

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "listen")

    @property
    def mode_spec(self) -> str:
        """The mitmproxy listen mode that serves this entry."""
        uh, up = self.upstream_address
        lh, lp = self.listen_address
        u = f"[{uh}]" if ":" in uh else uh
        return f"reverse:tcp://{u}:{up}@{lh}:{lp}"


def check_unique(entries: list[PostgresEntry]) -> list[PostgresEntry]:
    """Names and listening ports are unique across entries."""
    names: set[str] = set()
    ports: set[int] = set()
    for e in entries:
        if e.name in names:
            raise ValueError(f"postgres entry name {e.name!r} is used twice")
        names.add(e.name)
        port = e.listen_address[1]
        if port in ports:
            raise ValueError(f"postgres entry {e.name!r}: listen port {port} is used twice")
        ports.add(port)
    return entries


PostgresSection = Annotated[list[PostgresEntry], AfterValidator(check_unique)]


def check_references(policy) -> None:
    """Database names in redact and approve rules must be postgres entries."""
    known = {e.name for e in policy.postgres}
    for where, rules in (("redact.rules", policy.redact.rules), ("approve", policy.approve)):
        for i, rule in enumerate(rules):
            for name in getattr(rule, "postgres", None) or []:
                if name not in known:
                    raise ValueError(f"{where}[{i}].postgres: {name!r} is not a postgres entry "
                                     f"(known: {', '.join(sorted(known)) or 'none'})")
