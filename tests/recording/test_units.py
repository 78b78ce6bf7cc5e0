"""Pure functions of session identity, recorder and audit chain, and verify on synthetic logs."""

from __future__ import annotations

import base64
import json

import pytest
from egress_gateway import session
from egress_gateway.recording import audit, files, mask, settings, verify
from mitmproxy import io as mio
from mitmproxy.test import tflow


def basic(user: str, pw: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.mark.parametrize("raw,expected", [
    ("agent-7", "agent-7"),
    ("  run.42  ", "run.42"),
    ("a/b\\c", "a_b_c"),
    ("../etc", "_._etc"),
    (".hidden", "_hidden"),
    ("::1", "::1"),
    ("x" * 100, "x" * 64),
    ("", None),
    ("///", None),
    (None, None),
], ids=["plain", "trimmed", "slashes", "dotdot", "leading-dot", "ipv6", "long", "empty",
        "only-unsafe", "none"])
def test_clean_session_id(raw, expected):
    assert session.clean_session_id(raw) == expected


@pytest.mark.parametrize("value,expected", [
    (basic("sess1", "pw"), "sess1"),
    (basic("sess1", ""), "sess1"),
    (basic("user", "p:a:ss"), "user"),
    ("basic " + base64.b64encode(b"lower:x").decode(), "lower"),
    ("Bearer abc", None),
    ("Basic !!!notbase64", None),
    (basic("", "pw"), None),
    ("", None),
    (None, None),
], ids=["basic", "no-password", "colon-in-password", "scheme-case", "bearer", "bad-b64",
        "empty-user", "empty", "none"])
def test_proxy_auth_user(value, expected):
    assert session.proxy_auth_user(value) == expected


@pytest.mark.parametrize("value,expected", [
    ("Bearer sk-ant-123", "Bearer " + mask.MASK),
    ("Basic dXNlcjpwdw==", "Basic " + mask.MASK),
    ("sk-ant-123", mask.MASK),
    ("session=abc; other=def", mask.MASK),
], ids=["bearer", "basic", "bare-key", "cookie"])
def test_mask_value(value, expected):
    assert mask.mask_value(value) == expected


@pytest.mark.parametrize("value,ok", [(0, True), (1, True), (10**9, True), (-1, False), (True, False)],
                         ids=["zero", "one", "big", "negative", "bool"])
def test_parse_max_bytes(value, ok):
    if ok:
        assert settings.parse_max_bytes(value) == value
    else:
        with pytest.raises(ValueError):
            settings.parse_max_bytes(value)


@pytest.mark.parametrize("name,env,expected", [
    ("K", {"K": "s3cret"}, b"s3cret"),
    ("K", {}, None),
    ("K", {"K": ""}, None),
    ("", {"K": "x"}, None),
    ("not a name", {}, ValueError),
], ids=["set", "unset", "empty", "no-option", "bad-name"])
def test_parse_hmac_env(name, env, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            settings.parse_hmac_env(name, env)
    else:
        assert settings.parse_hmac_env(name, env) == expected


@pytest.mark.parametrize("key", [None, b"k"], ids=["sha256", "hmac"])
def test_seal_unseal_roundtrip(key):
    line, h = audit.seal({"a": "é", "n": 1, "hash": "ignored"}, 3, audit.GENESIS, key)
    body, stated = audit.unseal(line.encode())
    assert stated == h == audit.line_hash(body, key)
    rec = json.loads(line)
    assert (rec["seq"], rec["prev"], rec["hash"]) == (3, audit.GENESIS, h)
    assert list(rec)[-1] == "hash"


def test_hmac_differs_from_plain():
    assert audit.seal({"a": 1}, 1, audit.GENESIS, None)[1] != audit.seal({"a": 1}, 1, audit.GENESIS, b"k")[1]


def _flow(forward_body=b'{"q": 1}'):
    f = tflow.tflow(resp=True)
    f.request.path = "/v1/x?token=abc"
    f.request.content = forward_body
    f.request.headers["Authorization"] = "Bearer sk-live-SECRET"
    f.request.headers["Cookie"] = "sid=COOKIESECRET"
    f.request.headers["X-Agent-Session"] = "s1"
    f.response.headers["Set-Cookie"] = "sid=SETCOOKIESECRET"
    f.metadata["gateway"] = {"session": "s1", "decision": "allowed"}
    f.metadata["other_addon"] = {"raw": "do-not-record"}
    return f


def test_recorded_copy_masks_credentials_and_keeps_forwarded_body():
    f = _flow()
    data = mask.serialize(mask.recorded_copy(f, forwarded=True))
    for secret in (b"sk-live-SECRET", b"COOKIESECRET", b"SETCOOKIESECRET", b"do-not-record"):
        assert secret not in data
    (back,) = list(mio.FlowReader(__import__("io").BytesIO(data)).stream())
    assert back.request.headers["Authorization"] == "Bearer " + mask.MASK
    assert "X-Agent-Session" not in back.request.headers
    assert back.request.content == b'{"q": 1}' and back.request.path == "/v1/x?token=abc"
    note = back.metadata["gateway"]["recording"]
    assert note["forwarded"] is True and "authorization" in note["masked_headers"]
    assert set(back.metadata) == {"gateway"}
    # the live flow itself is untouched (what was forwarded stays what was forwarded)
    assert f.request.headers["Authorization"] == "Bearer sk-live-SECRET"


def test_recorded_copy_drops_what_was_not_forwarded():
    f = _flow(b"RAW-PII-alice@example.com")
    data = mask.serialize(mask.recorded_copy(f, forwarded=False))
    assert b"alice@example.com" not in data and b"token=abc" not in data
    (back,) = list(mio.FlowReader(__import__("io").BytesIO(data)).stream())
    note = back.metadata["gateway"]["recording"]
    assert note == {"forwarded": False, "masked_headers": ["authorization", "cookie", "set-cookie"],
                    "request_body_dropped": 25, "query_dropped": True}
    assert back.request.path == "/v1/x"


def test_recording_files_rotate_and_never_append_to_old_files(tmp_path):
    rf = files.RecordingFiles(tmp_path, max_bytes=100, fsync=False)
    rel1, off1, rot1 = rf.append("s", b"a" * 60, 0)
    rel2, off2, rot2 = rf.append("s", b"b" * 60, 0)  # would exceed 100: next part
    rel3, off3, _ = rf.append("s", b"c" * 30, 0)
    assert (rel1, off1, rot1) == ("1970-01-01/s.mitm", 0, False)
    assert (rel2, off2, rot2) == ("1970-01-01/s.1.mitm", 0, True)
    assert (rel3, off3) == ("1970-01-01/s.1.mitm", 60)
    rf.close()
    again = files.RecordingFiles(tmp_path, max_bytes=0, fsync=False)  # a restart
    assert again.append("s", b"d", 0)[0] == "1970-01-01/s.2.mitm"
    again.close()


def test_audit_log_continues_chain_after_restart_and_torn_line(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.write({"a": 1})
    log.close()
    with open(tmp_path / "audit.jsonl", "ab") as fh:
        fh.write(b'{"torn":')  # a crash in the middle of a line
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    log.write({"b": 2})
    log.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert lines[1] == '{"torn":'
    assert json.loads(lines[2])["seq"] == 2 and json.loads(lines[2])["prev"] == json.loads(lines[0])["hash"]
    res = verify.verify(tmp_path)
    assert [p.line for p in res.problems] == [2]


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
