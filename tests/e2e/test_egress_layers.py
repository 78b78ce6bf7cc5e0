"""Egress at every layer, end to end: SNI, Host vs CONNECT, HTTP/2 streams, WebSockets, raw TCP,
IP literals in every encoding, names resolving to private addresses, DNS mode, exposure.

Every blocked case asserts that the upstream saw no connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import struct
import subprocess
import threading

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from gwharness import RUN, Gateway, Upstream, free_port, policy_yaml

PIN = "api.test.example"
OTHER = "other.test.example"


def connect_tunnel(gw_port: int, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw_port), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        s.close()
        raise AssertionError(f"CONNECT {target} refused: {head[:300]!r}")
    return s


def tls_wrap(sock: socket.socket, sni: str, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(sock, server_hostname=sni)


def read_all(sock, limit: float = 5) -> bytes:
    sock.settimeout(limit)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(body) >= int(line.split(b":")[1]):
                            return out
    except (TimeoutError, ssl.SSLError, ConnectionResetError):
        pass
    return out


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/") else 0


def refusal_body(resp: bytes) -> dict:
    return json.loads(resp.partition(b"\r\n\r\n")[2])


@pytest.fixture
def gw(tmp_path, confdir, upstream, tls_upstream):
    policy = policy_yaml(
        allow=[{"host": PIN, "ports": [upstream.port, tls_upstream.port]},
               {"host": OTHER, "ports": [upstream.port, tls_upstream.port]}],
        resolve={PIN: "127.0.0.1", OTHER: "127.0.0.1"},
    )
    g = Gateway(tmp_path, policy, confdir=confdir)
    yield g
    g.stop()


# --- identities must agree ---------------------------------------------------------------------
def test_sni_mismatch_inside_allowed_connect_is_refused(gw, tls_upstream):
    s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), "evil.test.example")
    s.sendall(f"GET / HTTP/1.1\r\nHost: {PIN}:{tls_upstream.port}\r\n\r\n".encode())
    resp = read_all(s)
    s.close()
    assert status_of(resp) == 403, resp[:300]
    body = refusal_body(resp)
    assert body["error"] == "blocked" and body["identity"] == "sni"
    assert tls_upstream.connections == 0


def test_sni_mismatch_with_raw_bytes_never_dials(tmp_path, confdir, tls_upstream):
    # raw TCP allowed by policy (unsupported: pass), so that the SNI check is what refuses it
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN, "ports": [tls_upstream.port]}],
                                       resolve={PIN: "127.0.0.1"},
                                       redact={"request": {"unsupported": "pass"}}), confdir=confdir)
    try:
        s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), "evil.test.example")
        s.sendall(b"\x00\x01raw bytes, not http\n")
        assert b"HTTP" not in read_all(s, 3)
        s.close()
        assert tls_upstream.connections == 0
        assert any(line.get("identity") == "sni" for line in gw.audit())
    finally:
        gw.stop()


def test_host_header_differs_from_connect_target(gw, tls_upstream):
    s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), PIN)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {OTHER}:{tls_upstream.port}\r\n\r\n".encode())
    resp = read_all(s)
    s.close()
    assert status_of(resp) == 403
    assert refusal_body(resp)["identity"] in ("host_header", "connect", "sni")
    assert tls_upstream.connections == 0


def test_matching_identities_pass(gw, tls_upstream):
    s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), PIN)
    s.sendall(f"GET /ok HTTP/1.1\r\nHost: {PIN}:{tls_upstream.port}\r\n\r\n".encode())
    resp = read_all(s)
    s.close()
    assert status_of(resp) == 200
    assert tls_upstream.connections == 1


def test_http2_second_stream_to_other_authority(gw, tls_upstream):
    s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), PIN, ["h2"])
    assert s.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for sid, authority in ((1, PIN), (3, OTHER)):
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                (":authority", f"{authority}:{tls_upstream.port}"),
                                (":path", f"/stream{sid}")], end_stream=True)
    s.sendall(conn.data_to_send())
    statuses: dict[int, int] = {}
    bodies: dict[int, bytes] = {1: b"", 3: b""}
    ended: set[int] = set()
    s.settimeout(5)
    while len(ended) < 2:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                statuses[ev.stream_id] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                ended.add(ev.stream_id)
        s.sendall(conn.data_to_send())
    s.close()
    assert statuses == {1: 200, 3: 403}
    assert json.loads(bodies[3])["identity"] in ("authority", "connect", "sni")
    assert [r["path"] for r in tls_upstream.requests] == ["/stream1"]


# --- WebSocket ----------------------------------------------------------------------------
def _ws_handler(record):
    key = record["headers"].get("sec-websocket-key", "")
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    return 101, {"Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Accept": accept, "Content-Length": "0"}, b""


@pytest.mark.parametrize("host,expected", [(PIN, 101), ("evil.test.example", 403)],
                         ids=["allowed", "not-allowed"])
def test_websocket_upgrade(tmp_path, confdir, host, expected):
    up = Upstream("ws", handler=_ws_handler)
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN, "ports": [up.port]}],
                                       resolve={PIN: "127.0.0.1", "evil.test.example": "127.0.0.1"}),
                 confdir=confdir)
    try:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(f"GET http://{host}:{up.port}/ws HTTP/1.1\r\nHost: {host}:{up.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        resp = read_all(s, 3)
        s.close()
        assert status_of(resp) == expected, resp[:300]
        assert up.connections == (1 if expected == 101 else 0)
    finally:
        gw.stop()
        up.close()


# --- raw TCP --------------------------------------------------------------------------------
class Echo:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            while data := c.recv(4096):
                c.sendall(data)


def test_raw_tcp_through_connect(tmp_path, confdir):
    """Raw TCP is unscannable: refused by default (redact.request.unsupported: block), relayed
    when the policy says pass, and recorded either way."""
    echo, closed = Echo(), Echo()
    allow = [{"host": PIN, "ports": [echo.port]}]
    policy = tmp_path / "p.yaml"
    policy.write_text(policy_yaml(allow=allow, resolve={PIN: "127.0.0.1"}))
    gw = Gateway(tmp_path, policy, confdir=confdir)
    try:
        s = connect_tunnel(gw.port, f"{PIN}:{echo.port}")
        s.sendall(b"\x01\x02raw tcp\n")
        assert read_all(s, 3) == b""  # refused before the dial: unscannable
        s.close()
        assert echo.connections == 0
        policy.write_text(policy_yaml(allow=allow, resolve={PIN: "127.0.0.1"},
                                      redact={"request": {"unsupported": "pass"}}))
        gw.wait_for("reloaded", timeout=10)
        s = connect_tunnel(gw.port, f"{PIN}:{echo.port}")
        s.sendall(b"\x01\x02raw tcp\n")
        assert s.recv(100) == b"\x01\x02raw tcp\n"
        s.close()
        assert echo.connections == 1
        with pytest.raises(AssertionError, match="403"):
            connect_tunnel(gw.port, f"{PIN}:{closed.port}")
        with pytest.raises(AssertionError, match="403"):
            connect_tunnel(gw.port, f"127.0.0.1:{closed.port}")
        assert closed.connections == 0
    finally:
        gw.stop()
        echo.sock.close()
        closed.sock.close()
    tcp = [rec for rec in gw.audit() if rec.get("kind") == "tcp"]
    assert [rec["decision"] for rec in tcp] == ["blocked", "allowed"]
    assert tcp[0]["code"] == "unsupported_content" and tcp[1]["bytes_out"] == 10
    assert tcp[1]["unscanned"] == {"request": "raw TCP (policy: pass)"}


# --- IP literals ------------------------------------------------------------------------------
ENCODINGS = [
    ("dotted", "127.0.0.1"),
    ("decimal", "2130706433"),
    ("hex", "0x7f000001"),
    ("octal", "0177.0.0.1"),
    ("short", "127.1"),
    ("hex-parts", "0x7f.0.0.1"),
    ("ipv4-mapped-ipv6", "[::ffff:127.0.0.1]"),
]


@pytest.fixture(scope="module")
def literal_gateways(tmp_path_factory, confdir):
    up = Upstream("literal")
    names = tmp_path_factory.mktemp("names")
    cidrs = tmp_path_factory.mktemp("cidrs")
    by_name = Gateway(names, policy_yaml(allow=[{"host": "localhost", "ports": [up.port]},
                                                {"host": PIN, "ports": [up.port]}],
                                         resolve={PIN: "127.0.0.1"}), confdir=confdir)
    by_cidr = Gateway(cidrs, policy_yaml(allow=[{"cidr": "127.0.0.0/8", "ports": [up.port]}]),
                      confdir=confdir)
    yield up, by_name, by_cidr
    by_name.stop()
    by_cidr.stop()
    up.close()


def _absolute(gw, host, port) -> bytes:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(f"GET http://{host}:{port}/lit HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    resp = read_all(s, 3)
    s.close()
    return resp


@pytest.mark.parametrize("literal", [e[1] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_ip_literal_never_matches_host_entries(literal_gateways, literal):
    up, by_name, _ = literal_gateways
    before = up.connections
    resp = _absolute(by_name, literal, up.port)
    assert status_of(resp) in (400, 403), resp[:200]
    with pytest.raises(AssertionError, match="HTTP/1.1 40"):
        connect_tunnel(by_name.port, f"{literal}:{up.port}")
    assert up.connections == before


@pytest.mark.parametrize("literal", [e[1] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_ip_literal_allowed_by_cidr(literal_gateways, literal):
    up, _, by_cidr = literal_gateways
    resp = _absolute(by_cidr, literal, up.port)
    assert status_of(resp) == 200, resp[:300]


def test_ip_literal_outside_cidr(literal_gateways):
    up, _, by_cidr = literal_gateways
    before = up.connections
    for literal in ("10.0.0.1", "169.254.169.254", "2852039166", "[::ffff:169.254.169.254]"):
        resp = _absolute(by_cidr, literal, up.port)
        assert status_of(resp) in (400, 403), (literal, resp[:200])
    assert up.connections == before


# --- DNS answers --------------------------------------------------------------------------------
def test_name_resolving_to_private_address(tmp_path, confdir, upstream):
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": "localhost", "ports": [upstream.port]}]),
                 confdir=confdir)
    try:
        r = httpx.get(f"http://localhost:{upstream.port}/", proxy=gw.proxy)
        assert r.status_code == 403
        doc = r.json()
        assert doc["identity"] == "address" and "loopback" in doc["reason"]
        assert upstream.connections == 0
        line = gw.audit()[-1]
        assert line["identity"] == "address" and "loopback" in line["reason"]
        # The same name is fine once a cidr entry allows the address.
        gw.policy_path.write_text(policy_yaml(allow=[
            {"host": "localhost", "ports": [upstream.port]},
            {"cidr": "127.0.0.0/8", "ports": [upstream.port]}]))
        gw.wait_for("reloaded", timeout=10)
        assert httpx.get(f"http://localhost:{upstream.port}/", proxy=gw.proxy).status_code == 200
    finally:
        gw.stop()


def _dns_query(name: str, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)


def test_dns_mode_refuses_names_off_the_allowlist(tmp_path, confdir):
    dns_port = free_port()
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": "localhost"}]), confdir=confdir,
                 extra_args=["--mode", "regular", "--mode", f"dns@{dns_port}"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(_dns_query("secret-data.evil.test.example"), ("127.0.0.1", dns_port))
            answer, _ = s.recvfrom(4096)
            assert answer[3] & 0x0F == 5  # REFUSED
            s.sendto(_dns_query("localhost", 0x4321), ("127.0.0.1", dns_port))
            answer, _ = s.recvfrom(4096)
            assert answer[3] & 0x0F == 0  # NOERROR: allowed names resolve
        (line,) = [rec for rec in gw.audit() if rec.get("kind") == "dns"]
        assert line["decision"] == "blocked" and line["host"] == "secret-data.evil.test.example"
    finally:
        gw.stop()


# --- exposure ----------------------------------------------------------------------------------
def test_refuses_to_listen_beyond_loopback_without_client_restriction(tmp_path, confdir):
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN}]), confdir=confdir,
                 extra_args=["--listen-host", "0.0.0.0"], wait=False)
    try:
        assert gw.proc.wait(60) != 0
        assert "with no client restriction" in gw.log_text()
        assert "gateway ready" not in gw.log_text()
    finally:
        gw.stop()


def test_run_gateway_refuses_unlisted_subcommand():
    res = subprocess.run([str(RUN), "frobnicate"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown command" in res.stderr


# --- TLS the gateway does not inspect --------------------------------------------------------
def test_passthrough_tls_with_mismatching_sni_is_refused(tmp_path, confdir, tls_upstream):
    """ignore_hosts makes mitmproxy pass TLS through unread: the ClientHello's SNI is still
    compared with the CONNECT target before anything is dialled."""
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN, "ports": [tls_upstream.port]}],
                                       resolve={PIN: "127.0.0.1"}),
                 confdir=confdir, extra_args=["--set", "ignore_hosts=.*"])
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), "evil.test.example")
            s.sendall(f"GET / HTTP/1.1\r\nHost: {PIN}\r\n\r\n".encode())
            if not read_all(s, 3):
                raise OSError("closed")
        assert tls_upstream.connections == 0
        assert any(line.get("identity") == "sni" for line in gw.audit())
        # the same passthrough with the right SNI reaches the upstream (whose cert we don't check)
        s = tls_wrap(connect_tunnel(gw.port, f"{PIN}:{tls_upstream.port}"), PIN)
        s.sendall(f"GET /through HTTP/1.1\r\nHost: {PIN}\r\n\r\n".encode())
        assert status_of(read_all(s)) == 200
        s.close()
        assert tls_upstream.connections == 1
    finally:
        gw.stop()


# --- other proxy modes ---------------------------------------------------------------------------
def _socks(port: int, host: str, dport: int, payload: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\x05\x01\x00")
    s.recv(2)
    hb = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(hb)]) + hb + struct.pack(">H", dport))
    s.recv(10)
    s.sendall(payload)
    out = read_all(s, 3)
    s.close()
    return out


def test_socks5_mode_is_held_to_the_same_allowlist(tmp_path, confdir, upstream):
    sp = free_port()
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}],
                                       resolve={PIN: "127.0.0.1"}),
                 confdir=confdir, extra_args=["--mode", "regular", "--mode", f"socks5@{sp}"])
    try:
        ok = _socks(sp, PIN, upstream.port,
                    f"GET /s HTTP/1.1\r\nHost: {PIN}:{upstream.port}\r\n\r\n".encode())
        assert status_of(ok) == 200 and upstream.connections == 1
        evil = _socks(sp, "evil.test.example", upstream.port,
                      b"GET /s HTTP/1.1\r\nHost: evil.test.example\r\n\r\n")
        assert status_of(evil) == 403
        assert _socks(sp, "127.0.0.1", upstream.port, b"\x01\x02raw") == b""  # IP literal, no cidr
        mismatch = _socks(sp, PIN, upstream.port,
                          f"GET /s HTTP/1.1\r\nHost: evil.test.example:{upstream.port}\r\n\r\n".encode())
        assert status_of(mismatch) == 403
        assert upstream.connections == 1
    finally:
        gw.stop()


def test_reverse_mode_to_a_destination_off_the_allowlist(tmp_path, confdir, upstream):
    rp = free_port()
    gw = Gateway(tmp_path, policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}],
                                       resolve={PIN: "127.0.0.1", "evil.test.example": "127.0.0.1"}),
                 confdir=confdir,
                 extra_args=["--mode", "regular", "--mode",
                             f"reverse:http://evil.test.example:{upstream.port}@{rp}"])
    try:
        s = socket.create_connection(("127.0.0.1", rp), timeout=5)
        s.sendall(b"GET /r HTTP/1.1\r\nHost: whatever\r\n\r\n")
        resp = read_all(s, 3)
        s.close()
        assert status_of(resp) in (403, 502)
        assert upstream.connections == 0
    finally:
        gw.stop()
