"""The audit log lives with the recordings by default, and one gateway at a time holds it."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from egress_gateway.recording.audit import AuditLog, AuditLogHeld
from gwharness import RUN, Gateway, policy_yaml

PIN = "api.test.example"


def test_a_second_writer_in_another_process_is_refused(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    try:
        code = ("import sys; sys.path.insert(0, 'addons');"
                "from pathlib import Path; from egress_gateway.recording.audit import AuditLog;"
                f"AuditLog(Path({str(path)!r}))")
        r = subprocess.run([str(RUN.parent / ".venv/bin/python"), "-c", code],
                           cwd=RUN.parent, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "AuditLogHeld" in r.stderr
        import os

        assert f"held by another gateway (pid {os.getpid()})" in r.stderr
    finally:
        first.close()
    AuditLog(path).close()  # released on close: it can be opened again


def test_reopening_in_the_same_process_after_close_works(tmp_path):
    path = tmp_path / "audit.jsonl"
    for _ in range(3):
        log = AuditLog(path)
        log.write({"event": "x"})
        log.close()
    assert len(path.read_text().splitlines()) == 3
    assert issubclass(AuditLogHeld, OSError)


@pytest.fixture
def recordings_gateway(tmp_path, confdir, upstream):
    folder = tmp_path / "rec"
    policy = policy_yaml(allow=[{"host": PIN, "ports": [upstream.port]}], resolve={PIN: "127.0.0.1"})
    gw = Gateway(tmp_path, policy, confdir=confdir, audit_log=False,
                 extra_args=["--set", f"gateway_recordings={folder}"])
    yield gw, folder, policy
    gw.stop()


def test_audit_log_defaults_to_the_recordings_folder(recordings_gateway, upstream):
    gw, folder, _ = recordings_gateway
    r = httpx.get(f"http://{PIN}:{upstream.port}/a", proxy=gw.proxy, timeout=10)
    assert r.status_code == 200
    gw.stop()
    assert (folder / "audit.jsonl").read_text().count("\n") >= 1
    v = subprocess.run([str(RUN), "verify", str(folder)], capture_output=True, text=True,
                       timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_second_gateway_on_the_same_folder_refuses_to_start(recordings_gateway, tmp_path,
                                                              confdir):
    gw, folder, policy = recordings_gateway
    other = tmp_path / "second"
    other.mkdir()
    second = Gateway(other, policy, confdir=confdir, audit_log=False, wait=False,
                     extra_args=["--set", f"gateway_recordings={folder}"])
    try:
        assert second.proc.wait(90) != 0
        text = second.log_text()
        assert f"held by another gateway (pid {gw.proc.pid})" in text, text[-2000:]
    finally:
        second.stop()
