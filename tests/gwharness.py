"""Test harness: a real gateway subprocess (through run_gateway.sh) and loopback upstreams.

Everything here binds and dials 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "run_gateway.sh"
READY = "gateway ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- upstream servers ----------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        self.server.owner.requests.append(record)
        handler = self.server.owner.handler
        if handler is not None:
            status, headers, payload = handler(record)
        else:
            status, headers, payload = 200, {"Content-Type": "application/json"}, json.dumps(
                {"upstream": self.server.owner.name, "path": self.path}
            ).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k in headers):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def get_request(self):
        sock, addr = super().get_request()
        self.owner.connections += 1
        if self.owner.tls_context is not None:
            sock = self.owner.tls_context.wrap_socket(sock, server_side=True)
        return sock, addr

    def handle_error(self, request, client_address):  # TLS failures etc. are expected in tests
        pass


class Upstream:
    """A loopback HTTP(S) server that records requests and counts TCP connections."""

    def __init__(self, name: str = "upstream", tls: bool = False, cert_dir: Path | None = None,
                 handler=None):
        self.name = name
        self.requests: list[dict] = []
        self.connections = 0
        self.handler = handler
        self.tls_context = None
        if tls:
            assert cert_dir is not None
            cert, key = make_cert(cert_dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.tls_context = ctx
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def make_cert(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for the test names and 127.0.0.1 (cached in `directory`)."""
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    if cert_path.exists():
        return str(cert_path), str(key_path)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.test.example")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(n) for n in ("api.test.example", "other.test.example", "localhost")]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# --- the gateway -----------------------------------------------------------------------------
class Gateway:
    """`run_gateway.sh` on a free loopback port, waited for until it logs 'gateway ready'."""

    def __init__(self, workdir: Path, policy: str | Path, *, confdir: Path,
                 extra_args: list[str] | None = None, env: dict | None = None,
                 command: list[str] | None = None, wait: bool = True, timeout: float = 60,
                 audit_log: bool = True):
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.audit_path = workdir / "audit.jsonl"
        self.confdir = confdir
        policy_path = Path(policy)
        try:
            is_file = "\n" not in str(policy) and policy_path.is_file()
        except OSError:  # e.g. policy text longer than a file name may be
            is_file = False
        if not is_file:
            policy_path = workdir / "policy.yaml"
            policy_path.write_text(str(policy))
        self.policy_path = policy_path
        args = command or [str(RUN)]
        args += ["-p", str(self.port), "--set", f"gateway_policy={policy_path}",
                 "--set", f"confdir={confdir}", "--set", "ssl_insecure=true"]
        if audit_log:  # else the gateway's default (<gateway_recordings>/audit.jsonl)
            args += ["--set", f"gateway_audit_log={self.audit_path}"]
        args += extra_args or []
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        if wait:
            self.wait_for(READY, timeout)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text()[start:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"gateway did not log {text!r} in {timeout}s:\n{self.log_text()}")

    def audit(self, everything: bool = False) -> list[dict]:
        """The audit lines of flows (`everything`: the gateway's own lines too, e.g. its stop)."""
        if not self.audit_path.exists():
            return []
        lines = [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]
        return lines if everything else [x for x in lines if x.get("kind") != "gateway"]

    def stop(self) -> None:
        """SIGTERM (the gateway drains for gateway_shutdown_grace); after 5 s a second SIGTERM
        (it stops at once, still recording and auditing everything); SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)  # an idle gateway exits in ~3 s (Presidio, spaCy, threads)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()


def policy_yaml(allow: list[dict], resolve: dict | None = None, mode: str = "enforce",
                **sections) -> str:
    """A policy document: the egress part from the arguments, other sections as given."""
    import yaml

    doc = {"version": 1, "egress": {"mode": mode, "allow": allow, "resolve": resolve or {}}}
    doc.update(sections)
    return yaml.safe_dump(doc, sort_keys=False)


# --- a proxy client from a chosen loopback address -----------------------------------------
class Resp:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, body
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class ProxyClient:
    """A proxy client connecting to the gateway from the loopback address `source` (http.client:
    httpx/httpcore drop the source address when they talk to a proxy)."""

    def __init__(self, gw, source: str, session_auth: str | None = None) -> None:
        self.gw, self.source = gw, source
        self.auth = {}
        if session_auth:
            self.auth["Proxy-Authorization"] = "Basic " + base64.b64encode(
                f"{session_auth}:x".encode()).decode()

    def __enter__(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30,
                                               source_address=(self.source, 0))
        return self

    def __exit__(self, *exc):
        self.conn.close()

    def request(self, method: str, url: str, content: bytes | None = None, headers=None) -> Resp:
        self.conn.request(method, url, body=content, headers={**self.auth, **(headers or {})})
        r = self.conn.getresponse()
        body = r.read()
        assert self.conn.sock is None or self.conn.sock.getsockname()[0] == self.source
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)

    def get(self, url: str, **kw) -> Resp:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> Resp:
        return self.request("POST", url, **kw)


def upstream_size(rec: dict) -> int:
    """What the upstream received: request line, headers and body."""
    head = f"{rec['method']} {rec['path']} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in rec["headers"].items()) + "\r\n"
    return len(head.encode()) + len(rec["body"].encode())
