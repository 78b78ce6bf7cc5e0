"""Import boundaries: the policy model and the detection settings never load Presidio or spaCy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("presidio_analyzer", "presidio_anonymizer", "spacy")


@pytest.mark.parametrize(
    "module",
    [
        "egress_gateway.policy",
        "egress_gateway.detection",
        "egress_gateway.detection.settings",
        "egress_gateway.detection.entities",
        # the gateway process's half of the engine (the heavy half runs in scan workers)
        "egress_gateway.detection.engine",
        "egress_gateway.detection.workers",
        "egress_gateway.redact.addon",
    ],
)
def test_light_modules_do_not_import_nlp(module):
    # A fresh interpreter: this test process has long imported the engine.
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_engine_names_load_on_first_use():
    code = (
        "import sys; import egress_gateway.detection as d; assert 'spacy' not in sys.modules; "
        "d.DetectionEngine.get(); assert 'presidio_analyzer' in sys.modules and 'spacy' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_engine_on_scan_workers_loads_no_nlp_here():
    # With worker processes the gateway process rewrites, but never imports Presidio or spaCy.
    code = (
        "import json, sys; from egress_gateway.detection import workers; workers.configure(1); "
        "from egress_gateway.detection.engine import DetectionEngine, deadline; "
        "e = DetectionEngine.get(); r = e.redact('Mail jane.roe@example.com, Jane Roe.'); "
        "workers.shutdown(); "
        f"print(json.dumps([r.text, [m for m in {list(HEAVY)!r} if m in sys.modules]]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert text == "Mail <EMAIL_ADDRESS>, <PERSON>."
    assert heavy == []
