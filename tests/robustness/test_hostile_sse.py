"""Hostile server-sent event streams from an upstream, through a real redacting gateway."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
from gwharness import Gateway, policy_yaml

HOST = "stream.test.example"


class RawSSE:
    """Answers every request with the given raw SSE bytes (chunked), then closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.payload = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"transfer-encoding: chunked\r\n\r\n")
                for i in range(0, len(self.payload), 7000):
                    piece = self.payload[i:i + 7000]
                    c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                c.sendall(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = RawSSE()
    gw = Gateway(tmp_path_factory.mktemp("hostile-sse"),
                 policy_yaml(allow=[{"host": HOST, "ports": [up.port]}], resolve={HOST: "127.0.0.1"},
                             redact={}),
                 confdir=confdir)
    yield gw, up
    gw.stop()
    up.sock.close()


def fetch(gw, up, payload: bytes) -> bytes:
    up.payload = payload
    with httpx.Client(proxy=gw.proxy, timeout=30) as c:
        with c.stream("GET", f"http://{HOST}:{up.port}/events") as r:
            assert r.status_code == 200
            return b"".join(r.iter_raw())


def test_comments_and_retry_interleaved(env):
    gw, up = env
    out = fetch(gw, up, b": ping\n\nretry: 3000\n: another comment\ndata: mail ann@example.com\n\n"
                        b"id: 7\ndata: plain text\n\n")
    assert b": ping\n\n" in out and b"retry: 3000" in out and b"id: 7" in out
    assert b"ann@example.com" not in out and b"<EMAIL_ADDRESS>" in out
    assert b"plain text" in out


def test_stream_ending_mid_event(env):
    gw, up = env
    out = fetch(gw, up, b"data: first bob@example.com\n\ndata: cut off carol@example.org")
    assert b"bob@example.com" not in out and out.count(b"<EMAIL_ADDRESS>") == 2
    assert b"carol@example.org" not in out  # the unfinished tail is scanned too, never passed raw


def test_stream_that_never_ends_a_line(env):
    gw, up = env
    out = fetch(gw, up, b"data: " + b"a" * 1_200_000 + b" dave@example.com" + b"b" * 10_000)
    assert b"dave@example.com" not in out
    assert b"egress_gateway_error" in out  # cut off with an error event, nothing unscanned
    assert len(out) < 10_000
