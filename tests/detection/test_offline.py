"""Start-up and analysis never open a socket to a non-loopback address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import ipaddress, json, socket, sys
    attempts = []

    def _loopback(host):
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host in ("localhost",)

    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not _loopback(host) and self.family != socket.AF_UNIX:
            attempts.append(("connect", str(host)))
            raise OSError("network disabled by test")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **k):
        if host is not None and not _loopback(str(host)):
            attempts.append(("getaddrinfo", str(host)))
            raise socket.gaierror("network disabled by test")
        return real_getaddrinfo(host, *a, **k)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo

    from egress_gateway.detection import DetectionEngine, DetectionSettings
    eng = DetectionEngine.get(DetectionSettings(operators={"EMAIL_ADDRESS": {"type": "hash"}}))
    res = eng.redact("Mail jane@example.org (https://example.com), Barack Obama, "
                     "AKIA0ON7V2DD57PL3JXM, xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD")
    print(json.dumps({"attempts": attempts, "counts": res.counts}))
    """
)


def test_no_network_during_startup_and_analysis():
    env = {k: v for k, v in os.environ.items() if k != "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attempts"] == []
    assert out["counts"].get("EMAIL_ADDRESS") == 1 and out["counts"].get("PERSON") == 1
    assert "Traceback" not in proc.stderr
