"""Checks the audit log's hash chain, its checkpoint and the recordings (`run_gateway.sh verify`).

Exit 0 when everything verifies; 1 naming the first problem (then the others) when a line was
changed, removed, reordered or cut off the end, or a recording no longer matches its hash;
2 on usage errors. See recordings/README.md for what is and is not detectable.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy.io import FlowReader

from egress_gateway.recording import audit


@dataclass
class Problem:
    line: int | None  # 1-based line of the audit log, None for file-level problems
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class Result:
    lines: int = 0
    flows: int = 0
    recordings: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines without newlines, and whether the last one is torn (no newline)."""
    if not data:
        return [], False
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    return (parts if torn else parts[:-1]), torn


def verify(directory: Path, audit_path: Path | None = None, key: bytes | None = None) -> Result:
    """Check `directory`'s audit log (default DIR/audit.jsonl) and the recordings it names."""
    res = Result()
    audit_path = audit_path or directory / "audit.jsonl"
    try:
        data = audit_path.read_bytes()
    except OSError as e:
        res.problems.append(Problem(None, f"cannot read the audit log {audit_path}: {e}"))
        return res
    lines, torn = _lines(data)
    res.lines = len(lines)

    # Pass 1: parse; seq of each line (for telling removed from reordered).
    parsed: list[dict | None] = []
    for raw in lines:
        try:
            rec = json.loads(raw)
            parsed.append(rec if isinstance(rec, dict) else None)
        except ValueError:
            parsed.append(None)
    all_seqs = {r.get("seq") for r in parsed if r}

    # Pass 2: each line's own hash, then its place in the chain.
    last_seq, last_hash = 0, audit.GENESIS
    by_seq: dict[int, str] = {}
    referenced: dict[Path, list[tuple[int, int, int]]] = {}  # file -> (offset, length, line)
    for i, (raw, rec) in enumerate(zip(lines, parsed, strict=True), start=1):
        if torn and i == len(lines):
            res.problems.append(Problem(i, "incomplete last line (torn write or cut in the middle)"))
            break
        if rec is None:
            res.problems.append(Problem(i, "not a JSON object: the line was changed"))
            continue
        try:
            body, stated = audit.unseal(raw)
            seq, prev = int(rec["seq"]), str(rec["prev"])
        except (ValueError, KeyError, TypeError):
            res.problems.append(Problem(i, "carries no seq/prev/hash: not part of the chain"))
            continue
        if audit.line_hash(body, key) != stated or rec.get("hash") != stated:
            hint = "" if key else " (if the log is keyed, give its HMAC key)"
            res.problems.append(Problem(i, f"seq {seq} was changed: its content does not match "
                                           f"its hash{hint}"))
        elif seq != last_seq + 1:
            expected = last_seq + 1
            if seq > expected and expected not in all_seqs:
                missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
                res.problems.append(Problem(i, f"{missing} missing before this line (seq {seq}): "
                                               "line(s) removed"))
            else:
                res.problems.append(Problem(i, f"seq {seq} where seq {expected} was expected: "
                                               "lines reordered or duplicated"))
        elif prev != last_hash:
            res.problems.append(Problem(i, f"seq {seq} does not chain to the previous line: a line "
                                           "was changed and re-hashed, or replaced"))
        last_seq, last_hash = seq, stated
        by_seq[seq] = stated
        if "recording" in rec:
            res.flows += 1
            try:
                rel = Path(str(rec["recording"]))
                if rel.is_absolute() or ".." in rel.parts:
                    raise ValueError(f"recording path {rel} leaves the directory")
                referenced.setdefault(directory / rel, []).append(
                    (int(rec["offset"]), int(rec["length"]), i))
                str(rec["flow_sha256"])
            except (ValueError, KeyError, TypeError) as e:
                res.problems.append(Problem(i, f"malformed recording reference: {e}"))
                continue

    _check_checkpoint(audit_path, key, last_seq, by_seq, lines, res)
    _check_recordings(directory, referenced, parsed, res)
    res.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return res


def _check_checkpoint(audit_path: Path, key: bytes | None, last_seq: int, by_seq: dict[int, str],
                      lines: list[bytes], res: Result) -> None:
    cp_path = audit.checkpoint_path(audit_path)
    try:
        cp = json.loads(cp_path.read_text())
        cp_seq, cp_hash = int(cp["seq"]), str(cp["hash"])
    except FileNotFoundError:
        res.warnings.append(f"no checkpoint {cp_path.name}: a cut-off tail cannot be detected")
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        res.problems.append(Problem(None, f"checkpoint {cp_path.name} is unreadable: {e}"))
        return
    if cp.get("alg") == "hmac-sha256":
        if not key:
            res.problems.append(Problem(None, "the log is keyed (hmac-sha256): give its key"))
            return
        if not hmac.compare_digest(str(cp.get("mac", "")), audit.checkpoint_mac(cp_seq, cp_hash, key)):
            res.problems.append(Problem(None, f"checkpoint {cp_path.name} was changed (bad MAC)"))
            return
    if cp_seq > last_seq:
        res.problems.append(Problem(
            len(lines) + 1,
            f"the log ends at seq {last_seq} but its checkpoint records seq {cp_seq}: "
            f"{cp_seq - last_seq} line(s) cut off the end"))
    elif cp_seq and by_seq.get(cp_seq) != cp_hash:
        res.problems.append(Problem(None, f"checkpoint seq {cp_seq} does not match the log's line "
                                          f"with that seq: the log was rewritten"))


def _check_recordings(directory: Path, referenced: dict, parsed: list, res: Result) -> None:
    cache: dict[Path, bytes | None] = {}
    for path, refs in referenced.items():
        try:
            cache[path] = path.read_bytes()
        except OSError:
            cache[path] = None
        for offset, length, line in refs:
            content = cache[path]
            rel = path.relative_to(directory)
            if content is None:
                res.problems.append(Problem(line, f"recording {rel} is missing"))
                continue
            chunk = content[offset:offset + length]
            want = str(parsed[line - 1]["flow_sha256"])
            if len(chunk) != length:
                res.problems.append(Problem(line, f"recording {rel} is cut short: bytes "
                                                  f"{offset}..{offset + length} are not all there"))
            elif hashlib.sha256(chunk).hexdigest() != want:
                flow = parsed[line - 1].get("flow")
                res.problems.append(Problem(line, f"recording {rel} bytes {offset}..{offset + length} "
                                                  f"(flow {flow}) do not match flow_sha256: the "
                                                  "recording was modified"))
    # Bytes in recordings that no audit line accounts for.
    for path in sorted(directory.rglob("*.mitm")):
        res.recordings += 1
        size = path.stat().st_size
        refs = sorted((o, o + n) for o, n, _ in referenced.get(path, []))
        covered = 0
        gaps = []
        for start, end in refs:
            if start > covered:
                gaps.append((covered, start))
            covered = max(covered, end)
        rel = path.relative_to(directory)
        for start, end in gaps:
            res.problems.append(Problem(None, f"recording {rel} bytes {start}..{end} are not in the "
                                              "audit log: a flow was inserted"))
        if size > covered:
            # One flow after the last audited one is what a crash between writing a recording and
            # writing its audit line leaves; more than one is not.
            with open(path, "rb") as fh:
                fh.seek(covered)
                tail = fh.read()
            n = _count_flows(tail)
            if n == 1:
                res.warnings.append(f"recording {rel} ends with one flow ({size - covered} bytes) "
                                    "no audit line accounts for (a crash between a recording and "
                                    "its audit line?)")
            else:
                what = f"{n} flows" if n else "data that is not a flow"
                res.problems.append(Problem(None, f"recording {rel} bytes {covered}..{size} hold "
                                                  f"{what} not in the audit log: appended"))


def _count_flows(data: bytes) -> int:
    try:
        return sum(1 for _ in FlowReader(io.BytesIO(data)).stream())
    except Exception:
        return 0
