"""Canary values, their encoded forms, and a loopback upstream that logs every byte it receives.

The "nothing leaves unscanned" tests play a prompt-injected agent: it holds these values and
tries to carry them out through an *allowed* destination. The upstream records the raw bytes of
every connection (before any HTTP parsing), so a test can assert that no canary arrived in any
form: literally, case-folded, percent-, base64-, hex-, HTML-entity- or NFKC-encoded, or as its
bare digits. Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import html
import socket
import threading
import unicodedata
import urllib.parse

# Values the detection engine finds with patterns or secret recognizers (no NER needed).
CANARIES = {
    "ssn": "219-09-9999",
    "card": "4111 1111 1111 1111",
    "email": "jane.whitfield@gmail.com",
    "aws_key_id": "AKIAQ3EGRTLX7H2KP4MZ",
    "github_token": "ghp_R4nd0mCanaryT0kenValue1234567890abcd",
    "pem": "-----BEGIN PRIVATE KEY-----",
}
# Found by NER only (where the gateway runs NER: prose in bodies, not headers or URLs).
NER_CANARIES = {"name": "Jane Whitfield"}


def forms(value: str) -> dict[str, bytes]:
    """The encoded forms of `value` an upstream could decode back (each as bytes)."""
    raw = value.encode()
    out = {
        "literal": raw,
        "casefold": value.casefold().encode(),
        "upper": value.upper().encode(),
        "percent": urllib.parse.quote(value, safe="").encode(),
        "percent_plus": urllib.parse.quote_plus(value).encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "html_dec": "".join(f"&#{ord(c)};" for c in value).encode(),
        "html_hex": "".join(f"&#x{ord(c):x};" for c in value).encode(),
        "html_named": html.escape(value).encode(),
        "nfkc": unicodedata.normalize("NFKC", value).encode(),
    }
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 9:
        out["digits"] = digits.encode()
    return out


def leaks(data: bytes, canaries: dict[str, str] | None = None) -> list[str]:
    """Every ``name/form`` of a canary found in `data` (empty: nothing leaked)."""
    found = []
    for name, value in (canaries or CANARIES).items():
        for form, needle in forms(value).items():
            if needle and needle in data:
                found.append(f"{name}/{form}")
    return found


class RawUpstream:
    """A loopback TCP server that logs every byte received and answers each request.

    `reply(conn_bytes_so_far) -> bytes | None` decides what to send after each read (default: a
    small HTTP/1.1 200 once a request head has arrived). `raw` is everything received, on every
    connection, in arrival order; `connections` counts accepted connections.
    """

    def __init__(self, reply=None, tls_context=None) -> None:
        self.reply = reply or _ok_once
        self.tls_context = tls_context
        self.raw = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        got = bytearray()
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            conn.settimeout(10)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                got += chunk
                with self._lock:
                    self.raw += chunk
                answer = self.reply(bytes(got))
                if answer:
                    conn.sendall(answer)
                    got.clear()
        except OSError:
            return
        finally:
            conn.close()

    def leaks(self, canaries: dict[str, str] | None = None) -> list[str]:
        with self._lock:
            return leaks(bytes(self.raw), canaries)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _ok_once(got: bytes) -> bytes | None:
    """Answer 200 once the request head (and a Content-Length body) has arrived."""
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    if len(body) < length:
        return None
    payload = b'{"ok": true}'
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload)
