"""Core owns the audit log: opens it, keys it (gateway_audit_hmac_env), checkpoints and closes it
after the recorder has recorded the flows that complete during shutdown."""

from __future__ import annotations

import json

import pytest
from egress_gateway import bundle
from egress_gateway.core import AuditCloser, Core
from egress_gateway.recording import audit
from mitmproxy import exceptions
from mitmproxy.test import taddons


def test_core_opens_and_keys_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_KEY", "k1")
    core = Core()
    with taddons.context(core) as tctx:
        tctx.configure(core, gateway_audit_log=str(tmp_path / "audit.jsonl"))
        log = core.audit
        assert log.alg == "sha256" and not log.fsync
        tctx.configure(core, gateway_audit_hmac_env="GW_TEST_KEY")
        assert core.audit is log and log.key == b"k1"  # re-keyed, not reopened
        log.write({"a": 1})
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(core, gateway_audit_hmac_env="not a name")
        tctx.configure(core, gateway_audit_log=str(tmp_path / "other.jsonl"))
        assert core.audit is not log and core.audit.key == b"k1" and log._fh.closed
        core.close_audit()
    cp = json.loads(audit.checkpoint_path(tmp_path / "audit.jsonl").read_text())
    assert cp["alg"] == "hmac-sha256" and cp["seq"] == 1


def test_the_closer_is_the_last_addon_and_closes_after_the_recorder(tmp_path):
    addons = bundle.make_addons()
    core = addons[1]  # after the shutdown addon, whose done drains before any other's
    assert isinstance(core, Core) and isinstance(addons[-1], AuditCloser)
    assert addons[0].name == "egress_gateway_shutdown"
    assert addons[-1].core is core and addons[-3].name == "egress_gateway_recorder"
    assert addons[-2].name == "egress_gateway_shutdown_finished"  # sees flows once recorded
    with taddons.context(core) as tctx:
        tctx.configure(core, gateway_audit_log=str(tmp_path / "audit.jsonl"))
        core.done()
        core.audit.write({"kind": "http"})  # a flow completing during shutdown: still audited
        addons[-1].done()
        assert core.audit._fh.closed
    cp = json.loads(audit.checkpoint_path(tmp_path / "audit.jsonl").read_text())
    assert cp["seq"] == 1


def test_the_recorders_fsync_option_syncs_audit_lines_too(tmp_path):
    from egress_gateway.recording.addon import Recorder

    core = Core()
    recorder = Recorder(core)
    with taddons.context(core, recorder) as tctx:
        tctx.configure(core, gateway_audit_log=str(tmp_path / "audit.jsonl"))
        assert not core.audit.fsync
        tctx.configure(recorder, gateway_recording_fsync=True)
        assert core.audit.fsync and recorder.fsync
        recorder.done()
        core.close_audit()
