"""verify on synthetic directories: every tamper case."""

from __future__ import annotations

import json

import pytest
from egress_gateway.recording import audit, files, mask, verify
from mitmproxy import io as mio
from mitmproxy.test import tflow


# --- verify on a synthetic directory: every tamper case ----------------------------------------
def make_dir(tmp_path, n=6, key=None):
    rf = files.RecordingFiles(tmp_path, 0, fsync=False)
    log = audit.AuditLog(tmp_path / "audit.jsonl", key=key)
    for i in range(n):
        f = tflow.tflow(resp=True)
        f.request.path = f"/p{i}"
        data = mask.serialize(mask.recorded_copy(f, True))
        rel, off, _ = rf.append("s", data, 0)
        import hashlib
        log.write({"flow": f.id, "path": f"/p{i}", "decision": "allowed", "recording": rel,
                   "offset": off, "length": len(data),
                   "flow_sha256": hashlib.sha256(data).hexdigest()})
    rf.close()
    log.close()
    return tmp_path / "audit.jsonl"


def edit(path, fn):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(fn(lines)))


def test_verify_untouched(tmp_path):
    make_dir(tmp_path)
    res = verify.verify(tmp_path)
    assert res.ok and res.lines == 6 and res.flows == 6 and not res.warnings


def _edited(lines):
    lines[2] = lines[2].replace('"allowed"', '"blocked"')
    return lines


def _rehashed(lines):
    rec = json.loads(lines[2])
    rec["decision"] = "blocked"
    line, _ = audit.seal(rec, rec["seq"], rec["prev"], None)
    lines[2] = line + "\n"
    return lines


@pytest.mark.parametrize("tamper,line,words", [
    (_edited, 3, "was changed"),
    (_rehashed, 4, "does not chain"),
    (lambda ls: ls[:2] + ls[3:], 3, "seq 3 missing"),
    (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3, "reordered"),
    (lambda ls: ls[:4], 5, "cut off the end"),
    (lambda ls: ls[:5] + [ls[5][:40]], 6, "incomplete last line"),
    (lambda ls: ls + [ls[1]], 7, "reordered or duplicated"),
], ids=["edited", "edited-and-rehashed", "deleted", "swapped", "cut-tail", "torn-tail",
        "duplicated"])
def test_verify_tamper(tmp_path, tamper, line, words):
    log = make_dir(tmp_path)
    edit(log, tamper)
    res = verify.verify(tmp_path)
    assert not res.ok
    first = res.problems[0]
    assert first.line == line and words in first.message, res.problems


def test_verify_modified_recording(tmp_path):
    make_dir(tmp_path)
    rec = tmp_path / "1970-01-01" / "s.mitm"
    data = bytearray(rec.read_bytes())
    i = data.index(b"/p3")
    data[i:i + 3] = b"/p9"
    rec.write_bytes(bytes(data))
    res = verify.verify(tmp_path)
    assert res.problems[0].line == 4 and "recording was modified" in res.problems[0].message


def test_verify_missing_recording_and_inserted_flow(tmp_path):
    make_dir(tmp_path, n=2)
    other = tmp_path / "1970-01-01" / "x.mitm"
    other.write_bytes(mask.serialize(tflow.tflow(resp=True)) * 2)
    res = verify.verify(tmp_path)
    assert not res.ok and "2 flows not in the audit log" in res.problems[0].message
    # a flow slipped in between two audited flows
    s_mitm = tmp_path / "1970-01-01" / "s.mitm"
    first, second = list(mio.FlowReader(open(s_mitm, "rb")).stream())
    extra = mask.serialize(tflow.tflow(resp=True))
    one = mask.serialize(first)
    s_mitm.write_bytes(one + extra + mask.serialize(second))
    res = verify.verify(tmp_path)
    assert res.problems[0].line == 2  # the second flow moved: no longer at its offset
    assert "recording was modified" in res.problems[0].message
    other.unlink()
    (tmp_path / "1970-01-01" / "s.mitm").unlink()
    res = verify.verify(tmp_path)
    assert [p.line for p in res.problems] == [1, 2] and "missing" in res.problems[0].message


def test_verify_unaudited_trailing_flow_is_a_warning(tmp_path):
    make_dir(tmp_path, n=2)
    with open(tmp_path / "1970-01-01" / "s.mitm", "ab") as fh:
        fh.write(mask.serialize(tflow.tflow(resp=True)))
    res = verify.verify(tmp_path)
    assert res.ok and "no audit line accounts for" in res.warnings[0]


def test_verify_keyed_chain(tmp_path):
    make_dir(tmp_path, key=b"k1")
    assert verify.verify(tmp_path, key=b"k1").ok
    wrong = verify.verify(tmp_path, key=b"k2")
    assert wrong.problems[0].line == 1 and "changed" in wrong.problems[0].message
    nokey = verify.verify(tmp_path)
    assert not nokey.ok and any("keyed" in p.message or "HMAC" in p.message for p in nokey.problems)
    # an attacker without the key cannot re-hash an edit
    edit(tmp_path / "audit.jsonl", _rehashed)
    assert verify.verify(tmp_path, key=b"k1").problems[0].line == 3


def test_verify_rewritten_log_detected_by_checkpoint(tmp_path):
    log = make_dir(tmp_path)
    cp = json.loads(audit.checkpoint_path(log).read_text())
    # rewrite the whole chain from line 3 on (unkeyed: possible) - the checkpoint no longer matches
    lines = log.read_text().splitlines()
    prev = json.loads(lines[1])["hash"]
    out = lines[:2]
    for raw in lines[2:]:
        rec = json.loads(raw)
        rec["decision"] = "blocked"
        line, prev = audit.seal(rec, rec["seq"], prev, None)
        out.append(line)
    log.write_text("\n".join(out) + "\n")
    res = verify.verify(tmp_path)
    assert cp["seq"] == 6
    assert not res.ok and "rewritten" in res.problems[-1].message
