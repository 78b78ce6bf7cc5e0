"""`./run_gateway.sh bench --quick` keeps working (figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess

from gwharness import REPO, RUN


def test_bench_quick_runs_and_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([str(RUN), "bench", "--quick", "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads(out.read_text())
    for label in ("throughput", "throughput_repeated"):
        assert set(r[f"{label}_rps"]) == {"plain", "allowlist", "redact"}
        assert all(v > 0 for v in r[f"{label}_cpu_ms"].values())
    assert r["stages"]["spacy_ms"] > 0 and r["stages"]["scan_ms"] > 0
    assert set(r["latency"]) == {"2000", "20000"}
    assert {"plain", "redact", "events"} <= set(r["sse"])
    assert all(v > 0 for v in r["peak_rss_mb"].values())
    assert "fresh" in res.stdout and "REPEATED" in res.stdout and "SSE" in res.stdout
