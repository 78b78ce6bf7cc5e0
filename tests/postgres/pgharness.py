"""Helpers of the PostgreSQL-lane tests: a real PostgreSQL server and a gateway in front of it.

The server is Debian's PostgreSQL (``/usr/lib/postgresql/*/bin``), run as the ``postgres`` OS
user in a temporary directory it owns, on a free loopback port, with ``scram-sha-256`` in
``pg_hba.conf`` and ``ssl = on`` with a certificate made by the test (`gwharness.make_cert`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from gwharness import Gateway, free_port, make_cert, policy_yaml

SUPER_PW = "super-Secret-9"
# The real passwords of the gateway's roles: they must never reach an agent, log or recording.
PASSWORDS = {
    "agent_ro": "Real-DB-pass-77f3a9",
    "md5user": "Real-md5-pass-41c2",
    "sslonly": "Real-ssl-pass-9b1e",
}
PLACEHOLDER = "gateway-placeholder-crm"
APPROVE_RULES = [
    {"name": "bulk-write", "reason": "changes every row of a table", "postgres": ["crm"],
     "statements": ["DELETE", "UPDATE"], "without_where": True, "unattended": "deny"},
    {"name": "drop-customers", "reason": "drops customer data", "postgres": ["crm"],
     "statements": ["DROP", "TRUNCATE"], "tables": ["customers"], "unattended": "deny"},
]

CUSTOMERS = [
    # id, name, email, phone, ssn, card, note (NULL kept)
    (1, "Jane Roe", "jane.roe@example.com", "+1 415-555-2671", "536-22-8451",
     "4111 1111 1111 1111", None),
    (2, "John Smith", "john.smith@example.org", "+1 212-555-0148", "372-84-1093",
     "5500 0000 0000 0004", "prefers e-mail"),
    (3, "Maria Garcia", "maria.garcia@example.net", "+1 650-555-0199", "614-73-2285",
     "3400 0000 0000 009", None),
]
RAW_VALUES = [v for row in CUSTOMERS for v in row[1:6]]


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip("PostgreSQL is not installed (run_gateway.sh test installs it)")
    return found[-1]


def _as_postgres(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                          capture_output=True, text=True, **kw)


@dataclass
class PgServer:
    dir: Path
    port: int
    ca: str

    def psql(self, sql: str, db: str = "crm") -> str:
        """Run SQL as the superuser over the Unix socket (set-up and checks, not the agent)."""
        out = subprocess.run(["psql", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-XAtqv", "ON_ERROR_STOP=1", "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()


@pytest.fixture(scope="session")
def pg_server():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    d = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    shutil.chown(d, "postgres", "postgres")
    data = d / "data"
    pwfile = d / "pw"
    pwfile.write_text(SUPER_PW + "\n")
    shutil.chown(pwfile, "postgres", "postgres")
    _as_postgres(initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                 "--locale=C.UTF-8")
    cert, key = make_cert(d / "certs")
    for name, src in (("server.crt", cert), ("server.key", key)):
        shutil.copy(src, data / name)
        shutil.chown(data / name, "postgres", "postgres")
        os.chmod(data / name, 0o600)
    port = free_port()
    with open(data / "postgresql.conf", "a") as fh:
        fh.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                 "fsync = off\nlog_min_messages = warning\n")
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostnossl all sslonly 127.0.0.1/32 reject\n"
        "host all md5user 127.0.0.1/32 md5\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    _as_postgres(pg_ctl, "-D", str(data), "-l", str(d / "server.log"), "-w", "-t", "60",
                 "-o", f"-k {d} -p {port} -h 127.0.0.1", "start")
    srv = PgServer(d, port, cert)
    try:
        srv.psql("CREATE DATABASE crm", db="postgres")
        srv.psql("CREATE DATABASE other", db="postgres")
        srv.psql(f"CREATE ROLE agent_ro LOGIN PASSWORD '{PASSWORDS['agent_ro']}';"
                 f"CREATE ROLE sslonly LOGIN PASSWORD '{PASSWORDS['sslonly']}';"
                 "SET password_encryption = 'md5';"
                 f"CREATE ROLE md5user LOGIN PASSWORD '{PASSWORDS['md5user']}';")
        values = ",".join(
            "(" + ",".join("NULL" if v is None else (str(v) if isinstance(v, int) else
                                                      "'" + v.replace("'", "''") + "'")
                           for v in row) + ")" for row in CUSTOMERS)
        srv.psql("CREATE TABLE customers (id int PRIMARY KEY, name text, email text, "
                 "phone text, ssn text, card text, note text);"
                 f"INSERT INTO customers VALUES {values};"
                 "CREATE UNIQUE INDEX ON customers (email);"
                 "CREATE TABLE inbox (id int, note text);"
                 "CREATE TABLE big (id int, name text, email text);"
                 "INSERT INTO big SELECT i, 'Customer ' || i, 'user' || i || '@example.com' "
                 "FROM generate_series(1, 1000) i;"
                 "GRANT ALL ON ALL TABLES IN SCHEMA public TO agent_ro, md5user, sslonly;")
        yield srv
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(data), "-m", "fast",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class PgGateway:
    gw: Gateway
    ports: dict[str, int]
    server: PgServer

    def dsn(self, entry: str = "crm", session: str = "agent-1", password: str = PLACEHOLDER,
            db: str = "crm") -> str:
        return (f"postgresql://{session}:{password}@127.0.0.1:{self.ports[entry]}/{db}"
                "?sslmode=disable&connect_timeout=10")


def _entries(srv: PgServer, ports: dict[str, int], blocked_port: int) -> list[dict]:
    up = f"127.0.0.1:{srv.port}"

    def entry(name, **kw):
        base = {"name": name, "listen": f"127.0.0.1:{ports[name]}", "upstream": up,
                "database": "crm", "user": "agent_ro", "password_env": "GW_PG_AGENT_RO",
                "placeholder": PLACEHOLDER, "tls": "verify-full", "ca": srv.ca}
        base.update(kw)
        return {k: v for k, v in base.items() if v is not None}

    return [
        entry("crm"),
        entry("crm_ro", read_only=True),
        entry("md5", user="md5user", password_env="GW_PG_MD5", tls="require", ca=None),
        entry("plain", user="sslonly", password_env="GW_PG_SSLONLY", tls="disable", ca=None),
        entry("badcert", ca=None),  # verify-full against the system store: must fail
        entry("offlist", upstream=f"127.0.0.1:{blocked_port}", tls="disable", ca=None),
        entry("strict", skip_columns=["name"], mask_columns=["note"]),
    ]


@pytest.fixture(scope="session")
def pg_gateway(pg_server, tmp_path_factory, confdir):
    names = ["crm", "crm_ro", "md5", "plain", "badcert", "offlist", "strict"]
    ports = {n: free_port() for n in names}
    blocked_port = free_port()
    work = tmp_path_factory.mktemp("pg-gateway")
    policy = policy_yaml(
        [{"cidr": "127.0.0.1/32", "ports": [pg_server.port]}],
        postgres=_entries(pg_server, ports, blocked_port),
        approve=APPROVE_RULES,
        redact={"rules": [{"postgres": ["strict"],
                           "response": {"operators": {"US_SSN": {"type": "block"}}},
                           "request": {"operators": {"US_SSN": {"type": "block"}}}}]},
    )
    env = {"GW_PG_AGENT_RO": PASSWORDS["agent_ro"], "GW_PG_MD5": PASSWORDS["md5user"],
           "GW_PG_SSLONLY": PASSWORDS["sslonly"]}
    gw = Gateway(work, policy, confdir=confdir, env=env,
                 extra_args=["--set", f"gateway_recordings={work / 'recordings'}"])
    try:
        yield PgGateway(gw, ports, pg_server)
    finally:
        gw.stop()


def wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def raw_login(port: int, params: dict[str, str], password: str) -> dict[str, str]:
    """A minimal protocol client: startup + cleartext password; the server's ErrorResponse
    fields by code letter (libpq hides the SQLSTATE of connection errors), {} on success."""
    import socket
    import struct

    def msg(sock):
        head = b""
        while len(head) < 5:
            chunk = sock.recv(5 - len(head))
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        n = struct.unpack("!i", head[1:])[0] - 4
        body = b""
        while len(body) < n:
            body += sock.recv(n - len(body))
        return head[:1], body

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        body = struct.pack("!i", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            t, b = msg(s)
            if t == b"R" and struct.unpack("!i", b[:4])[0] == 3:
                pw = password.encode() + b"\0"
                s.sendall(b"p" + struct.pack("!i", len(pw) + 4) + pw)
            elif t == b"E":
                return {chr(f[0]): f[1:].decode() for f in b.split(b"\0") if f}
            elif t == b"Z":
                return {}
