"""A short, bounded load run (the full one is `./run_gateway.sh bench --load`): concurrent mixed
traffic; zero unexpected errors, no raw PII upstream, every flow recorded, the chain verifies."""

from __future__ import annotations

import json
import subprocess

from gwharness import REPO, RUN


def test_bounded_load(tmp_path):
    out = tmp_path / "load.json"
    res = subprocess.run([str(RUN), "bench", "--load", "--duration", "5", "--clients", "8",
                          "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["served"] > 50 and r["errors"] == 0
    assert r["by_kind"]["pii"] > 0 and r["by_kind"]["refused"] > 0
    assert r["upstream"]["raw_pii_bodies"] == 0
    assert r["audit"]["verify_ok"] and r["audit"]["recorded"] >= r["served"]
