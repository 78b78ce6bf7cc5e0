"""The canary harness itself: every encoded form is recognised, the raw upstream logs bytes."""

from __future__ import annotations

import socket

import pytest
from canaries import CANARIES, RawUpstream, forms, leaks


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_every_form_of_every_canary_is_found(name):
    for form, needle in forms(CANARIES[name]).items():
        assert f"{name}/{form}" in leaks(b"xx" + needle + b"yy"), form


def test_clean_bytes_have_no_leak():
    assert leaks(b'{"model": "claude-sonnet-4-5", "messages": [{"content": "hello"}]}') == []


def test_raw_upstream_logs_every_byte_and_answers():
    up = RawUpstream()
    try:
        with socket.create_connection(("127.0.0.1", up.port), timeout=5) as s:
            s.sendall(b"GET /?q=" + CANARIES["ssn"].encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
        assert up.leaks() == ["ssn/literal"] or "ssn/literal" in up.leaks()
        assert up.connections == 1
    finally:
        up.close()
