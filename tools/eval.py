"""`run_gateway.sh eval`: measure the detection engine on the labelled dev sets.

Data (``--data DIR``, default ``../shared/eval`` next to the repository root):

* ``pii_dev.jsonl``: sentences with gold spans. GPE is mapped to LOCATION. Scored types are
  the gateway's PII targets present in the data: PERSON, LOCATION, EMAIL_ADDRESS,
  PHONE_NUMBER, CREDIT_CARD, US_SSN, IBAN_CODE, IP_ADDRESS (plus NRP / DATE_TIME when they
  are enabled in the settings). Not scored: STREET_ADDRESS, ORGANIZATION, TITLE, AGE,
  ZIP_CODE, DOMAIN_NAME, US_DRIVER_LICENSE (the gateway does not target them).
* ``secrets_dev.jsonl``: one snippet per row, ``positive`` or ``negative_fp``.

Altered negatives are split three ways: real-format public example keys (a vendor format whose
value is not a placeholder), vendor-format placeholders (``ghp_xxxx…``: reported because
``report_placeholder_tokens`` is on) and true false positives (anything else, PII included).

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
import json
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


def _batched(engine, texts: list[str], size: int = 64):
    out = []
    for i in range(0, len(texts), size):
        out += engine.analyze_many(texts[i : i + size])
    return out


def gold_types(rows: list[dict]) -> set[str]:
    """Every (mapped) gold type labelled in ``rows``."""
    return {GOLD_MAP.get(s["type"], s["type"]) for r in rows for s in r["spans"]}


def eval_pii(engine, rows: list[dict], scored: list[str]) -> dict:
    findings = _batched(engine, [r["text"] for r in rows])
    support, recalled, covered = Counter(), Counter(), Counter()
    tp, fp, ignored = Counter(), Counter(), Counter()
    no_pii = altered_no_pii = 0
    for row, found in zip(rows, findings, strict=True):
        gold = [(s["start"], s["end"], GOLD_MAP.get(s["type"], s["type"])) for s in row["spans"]]
        if not gold:
            no_pii += 1
            altered_no_pii += bool(found)
        for g0, g1, gt in gold:
            if gt not in scored:
                continue
            support[gt] += 1
            hits = [f for f in found if _overlap(f.start, f.end, g0, g1)]
            recalled[gt] += any(f.entity_type == gt for f in hits)
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
        "not_scored": sorted(gold_types(rows) - set(scored)),
    }


def _secret_spans(text: str, secret: str | None) -> list[tuple[int, int]]:
    spans = []
    for part in (secret or "").split(" | "):
        part = part.strip()
        if part and (i := text.find(part)) >= 0:
            spans.append((i, i + len(part)))
    return spans


def eval_secrets(engine, rows: list[dict], secret_entities: set[str]) -> dict:
    findings = _batched(engine, [r["text"] for r in rows])
    by_type: dict[str, Counter] = defaultdict(Counter)
    from egress_gateway.detection.recognizers.filters import is_placeholder

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
                if not all(f.entity_type in VENDOR_FORMATS for f in found):
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


def print_report(res: dict, out=sys.stdout) -> None:
    pii = res.get("pii")
    if pii:
        print("\nPII (pii_dev.jsonl) - span overlap, GPE->LOCATION", file=out)
        print(f"{'entity':16} {'support':>7} {'recall':>7} {'covered':>7} {'precision':>9} "
              f"{'tp':>5} {'fp':>5} {'ignored':>7}  target", file=out)  # fmt: skip
        for t, r in pii["entities"].items():
            tgt = TARGETS.get(t)
            mark = ""
            if tgt and r["recall"] is not None:
                mark = f">= {tgt:.2f} {'ok' if r['recall'] >= tgt else 'MISSED'}"
            print(f"{t:16} {r['support']:>7} {_fmt(r['recall']):>7} {_fmt(r['covered']):>7} "
                  f"{_fmt(r['precision']):>9} {r['tp']:>5} {r['fp']:>5} {r['ignored']:>7}  {mark}",
                  file=out)  # fmt: skip
        print(f"no-PII rows altered: {pii['no_pii_altered']}/{pii['no_pii_rows']} = "
              f"{_fmt(pii['no_pii_altered_share'])} (target <= 0.05)", file=out)  # fmt: skip
        print(f"not scored: {', '.join(pii['not_scored'])}", file=out)
    sec = res.get("secrets")
    if sec:
        print("\nSecrets (secrets_dev.jsonl) - per dataset type", file=out)
        print(f"{'type':34} {'pos':>4} {'recall':>7} {'neg':>4} {'neg_altered':>11}", file=out)
        for t, r in sec["per_dataset_type"].items():
            print(f"{t:34} {r['positive']:>4} {_fmt(r['recall']):>7} {r['negative']:>4} "
                  f"{r['neg_altered']:>11}", file=out)  # fmt: skip
        print(f"positives recalled: {_fmt(sec['recall'])} of {sec['positives']} (target >= 0.95)",
              file=out)  # fmt: skip
        print(f"negative_fp rows altered: {sec['negatives_altered']}/{sec['negatives']} = "
              f"{_fmt(sec['negatives_altered_share'])}: real-format public example keys "
              f"{sec['negatives_altered_real_format_example_keys']}, vendor-format placeholders "
              f"{sec['negatives_altered_placeholder_tokens']} (report_placeholder_tokens), "
              f"true false positives {sec['negatives_altered_true_fp']}", file=out)  # fmt: skip
        print(f"row precision: {_fmt(sec['row_precision'])}; entities on negatives: "
              f"{sec['entities_hitting_negatives']}", file=out)  # fmt: skip
    if "seconds" in res:
        print(f"\ntime: {res['seconds']}", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh eval", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="folder with the *_dev.jsonl files")
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
    ap.add_argument("--verbose", "-v", action="store_true", help="list altered negatives")
    args = ap.parse_args(argv)

    from egress_gateway.detection import DetectionEngine, DetectionSettings

    data = args.data or default_data_dir()
    if not data.is_dir():
        print(f"eval data folder not found: {data} (use --data DIR)", file=sys.stderr)
        return 2
    overrides: dict = {}
    if args.secret_backends:
        overrides["secret_backends"] = [b for b in args.secret_backends.split(",") if b]
    if args.entities:
        overrides["entities"] = [e for e in args.entities.split(",") if e]
    if args.model:
        overrides["model"] = args.model
    settings = DetectionSettings(**overrides)
    engine = DetectionEngine.get(settings)

    res: dict = {"settings": settings.model_dump(mode="json"), "seconds": {}}
    if args.only in (None, "pii"):
        t = time.perf_counter()
        rows = _load(data / "pii_dev.jsonl", args.limit)
        # Scored: the labelled types the engine targets under these settings.
        scored = sorted(gold_types(rows) & settings.active_entities())
        res["pii"] = eval_pii(engine, rows, scored)
        res["seconds"]["pii"] = round(time.perf_counter() - t, 1)
    if args.only in (None, "secrets"):
        t = time.perf_counter()
        secret_set = set(SECRET_ENTITIES) | {"HIGH_ENTROPY_SECRET"}
        res["secrets"] = eval_secrets(
            engine, _load(data / "secrets_dev.jsonl", args.limit), secret_set
        )
        res["seconds"]["secrets"] = round(time.perf_counter() - t, 1)
    print_report(res)
    if args.verbose and "secrets" in res:
        for label, key in (
            ("TRUE FP", "true_fp_rows"),
            ("EXAMPLE KEY", "example_key_rows"),
            ("PLACEHOLDER", "placeholder_token_rows"),
            ("MISSED", "missed_rows"),
        ):
            for item in res["secrets"][key]:
                print(f"  {label:11} {item['type']:28} {item['found']} {item['text']!r}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
