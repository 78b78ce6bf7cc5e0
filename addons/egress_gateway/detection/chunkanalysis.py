"""Presidio and spaCy on planned chunks: the heavy half of analysis, built where it runs.

`ChunkAnalyzer` holds one detection settings' recognizer registry and Presidio analyzer over
the process's shared spaCy model (``nlp.py``). It runs in the gateway process when
``gateway_scan_workers`` is 0 and in each scan worker process otherwise (``worker.py``); the
engine (``engine.py``) plans chunks and merges findings on the gateway's side either way.

What crosses a process boundary is plain data: a job is ``(chunk, ner_text, use_ner, context
words or None)``; a finding is ``(entity, start, end, score)`` relative to its chunk.
"""

from __future__ import annotations

import os

# Presidio's e-mail/URL recognizers use tldextract, which otherwise downloads the public
# suffix list on first use. Must be set before presidio is imported.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult  # noqa: E402
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer  # noqa: E402

from egress_gateway.detection.budget import check_deadline  # noqa: E402
from egress_gateway.detection.entities import NER_ENTITIES  # noqa: E402
from egress_gateway.detection.nlp import get_heavy  # noqa: E402
from egress_gateway.detection.recognizers import (  # noqa: E402
    DEFAULT_NER_ALLOW_LIST,
    PemPrivateKeyRecognizer,
    build_recognizers,
)
from egress_gateway.detection.recognizers.pii import outside_context  # noqa: E402
from egress_gateway.detection.settings import DetectionSettings  # noqa: E402

Job = tuple[str, str, bool, "tuple[str, ...] | None"]  # chunk, NER text, NER?, context words
Raw = tuple[str, int, int, float]  # entity, start, end, score (relative)

PARTS = ("all", "names", "patterns")  # what one run analyses (see ChunkAnalyzer.run)
ANALYSIS_BATCH = 2  # chunks analysed together: 200 KB peaks at ~220 MB (8: 380, 64: 560)


class ChunkAnalyzer:
    """Recognizers and Presidio's analyzer for one ``DetectionSettings`` (thread-safe)."""

    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        self._heavy = get_heavy(settings.model)
        self.entities = settings.active_entities()
        registry = RecognizerRegistry(supported_languages=["en"])
        for r in build_recognizers(
            settings, self.entities, self._heavy.common_words, self._heavy.english_words
        ):
            registry.add_recognizer(r)
        self._chunk_entities = sorted(self.entities - {"PEM_PRIVATE_KEY"})
        self._name_entities = sorted(set(self._chunk_entities) & NER_ENTITIES)
        self._pattern_entities = sorted(set(self._chunk_entities) - NER_ENTITIES)
        self._analyzer = (
            AnalyzerEngine(
                registry=registry,
                nlp_engine=self._heavy.nlp_engine,
                supported_languages=["en"],
                context_aware_enhancer=LemmaContextAwareEnhancer(
                    context_similarity_factor=0.35,
                    min_score_with_context_similarity=0.4,
                    context_prefix_count=6,
                    context_suffix_count=3,
                ),
            )
            if registry.recognizers
            else None
        )
        self._pem = PemPrivateKeyRecognizer() if "PEM_PRIVATE_KEY" in self.entities else None
        self._allow = set(settings.allow_list)
        self._allow_ci = {a.casefold() for a in settings.allow_list} | set(DEFAULT_NER_ALLOW_LIST)

    @property
    def model(self) -> str:
        return self._heavy.model

    def run(self, jobs: list[Job], pem_texts: list[str],
            part: str = "all") -> tuple[list[list[Raw]], list[list[Raw]]]:
        """Findings per job (relative to its chunk) and per PEM text (whole texts that mention
        a private key: a key block can be longer than a chunk). Stops between batches once
        this thread's `deadline` is spent.

        `part` (see `PARTS`): ``names`` runs only the recognizers of the name entities (spaCy
        NER, name frames, place lists), ``patterns`` every other one on tokens alone (no NER),
        ``all`` both. Presidio merges duplicates per entity type and scores each result on its
        own, so ``names`` + ``patterns`` equals ``all``: two workers can share one chunk."""
        if part not in PARTS:
            raise ValueError(f"unknown analysis part {part!r}")
        out: list[list[Raw]] = [[] for _ in jobs]
        entities = {"all": self._chunk_entities, "names": self._name_entities,
                    "patterns": self._pattern_entities}[part]
        if self._analyzer is not None and entities:
            keep = None if part == "all" else set(entities)
            # A bounded number of chunks at a time: spaCy docs and Presidio's artifacts of a
            # 200 KB body all alive at once took ~400 MB more than one batch does.
            for b in range(0, len(jobs), ANALYSIS_BATCH):
                check_deadline()
                batch = jobs[b:b + ANALYSIS_BATCH]
                ner = [j[2] and part != "patterns" for j in batch]
                arts = self._heavy.artifacts([j[1] for j in batch], ner)
                for k, ((chunk, _, _, context), art) in enumerate(zip(batch, arts, strict=True)):
                    token = outside_context.set(tuple(context or ()))
                    try:
                        results = self._analyzer.analyze(
                            chunk,
                            language="en",
                            entities=entities,
                            nlp_artifacts=art,
                            score_threshold=0.0,
                            allow_list=list(self._allow) or None,
                            context=list(context) if context else None,
                        )
                    finally:
                        outside_context.reset(token)
                    if keep is not None:  # a recognizer of several entities, in both parts
                        results = [r for r in results if r.entity_type in keep]
                    out[b + k] = self._keep(chunk, results)
        pem: list[list[Raw]] = [[] for _ in pem_texts]
        if self._pem is not None and part != "names":
            for i, text in enumerate(pem_texts):
                pem[i] = self._keep(text, self._pem.analyze(text, ["PEM_PRIVATE_KEY"]))
        return out, pem

    def _keep(self, text: str, results: list[RecognizerResult]) -> list[Raw]:
        kept = []
        for r in results:
            if r.entity_type not in self.entities or r.score < self.settings.threshold(
                r.entity_type
            ):
                continue
            value = text[r.start : r.end]
            if value in self._allow:
                continue
            if r.entity_type in NER_ENTITIES and value.strip().casefold() in self._allow_ci:
                continue
            kept.append((r.entity_type, r.start, r.end, round(r.score, 4)))
        return kept
