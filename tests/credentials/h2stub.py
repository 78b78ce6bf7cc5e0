"""A loopback HTTP/2-only TLS server (ALPN h2) that records request headers and answers JSON.

Only for tests: one thread per connection, loopback only.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
from gwharness import make_cert


class H2Upstream:
    def __init__(self, cert_dir, delay: float = 0.0) -> None:
        cert, key = make_cert(cert_dir)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.delay = delay
        self.requests: list[dict] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            if s.selected_alpn_protocol() != "h2":
                s.close()
                return
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            heads: dict[int, dict] = {}
            while True:
                data = s.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        head = heads.pop(ev.stream_id, {})
                        self.requests.append(head)
                        if self.delay:
                            time.sleep(self.delay)
                        body = json.dumps({"h2": True, "path": head.get(":path")}).encode()
                        conn.send_headers(ev.stream_id, [(":status", "200"),
                                                         ("content-type", "application/json"),
                                                         ("content-length", str(len(body)))])
                        conn.send_data(ev.stream_id, body, end_stream=True)
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            return

    def close(self) -> None:
        self._stop = True
        self.sock.close()
