"""The detection engine: analysis and redaction under one ``DetectionSettings``, thread-safe.

The spaCy model and Presidio's NLP engine are shared by all engines of a process
(``nlp.py``); an engine owns its recognizer registry (``recognizers/``), its findings cache
(``findings.py``) and its operators (``operators.py``).

Pipeline for one text (``DetectionEngine.analyze``):

0. If decoding encodings inside the text changes it (``decode.py``: character references,
   percent-encoding, escapes, base64/hex runs of text, NFKC, zero-width characters), its
   decoded view is analysed too; the view's findings cover the whole encoded runs of the text.
1. Split into chunks of ``chunk_size`` characters on line/sentence/word boundaries, with
   ``chunk_overlap`` characters of overlap (``chunks.py``; Presidio is superlinear in text
   length).
2. Per chunk, decide whether it is prose (``ner="auto"``). Prose chunks go through spaCy's
   NER (batched with ``nlp.pipe`` under a lock); so do short all-caps lines, in a title-cased
   copy of the same length (``chunks.headline_copy``); other chunks (ids, numbers, base64,
   code tokens) only get spaCy's tokenizer, which is what the context-word enhancer needs.
3. Presidio's ``AnalyzerEngine.analyze`` runs the pattern recognizers (+ the NER recognizer on
   prose) on each chunk with those artifacts. The PEM private-key recognizer runs on the whole
   text, since a key block can be longer than a chunk.
4. Findings below their entity threshold, on the allow-list, or of entities not requested are
   dropped; overlapping findings are merged into one (union span; type of the best score, then
   of the higher ``PRIORITY``; ``findings.merge_findings``), so the output is non-overlapping
   and sorted.

``redact`` then applies the operators through Presidio's ``AnonymizerEngine``.
"""

from __future__ import annotations

import os

# Presidio's e-mail/URL recognizers use tldextract, which otherwise downloads the public
# suffix list on first use. Must be set before presidio is imported.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult  # noqa: E402
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer  # noqa: E402

from egress_gateway.detection import decode  # noqa: E402
from egress_gateway.detection import operators as ops  # noqa: E402
from egress_gateway.detection.chunks import headline_copy, looks_like_prose, split_chunks  # noqa: E402
from egress_gateway.detection.entities import NER_ENTITIES  # noqa: E402
from egress_gateway.detection.fields import (  # noqa: E402
    FieldContext,
    FieldText,
    apply_field,
    key_words,
)
from egress_gateway.detection.findings import (  # noqa: E402
    Finding,
    FindingsCache,
    TextResult,
    merge_findings,
)
from egress_gateway.detection.nlp import get_heavy  # noqa: E402
from egress_gateway.detection.recognizers import (  # noqa: E402
    DEFAULT_NER_ALLOW_LIST,
    PemPrivateKeyRecognizer,
    build_recognizers,
)
from egress_gateway.detection.settings import DetectionSettings, HashOperator  # noqa: E402

logger = logging.getLogger(__name__)

# (entity, value) -> the restore token that replaces it (pseudonyms.vault)
Tokenize = Callable[[str, str], str]

_engines: dict[str, DetectionEngine] = {}  # per settings (JSON)
_engines_lock = threading.Lock()
_pseudonyms: ops.PseudonymStore | None = None


class DeadlineExceeded(TimeoutError):
    """The caller's time budget ran out between two analysis batches (see `deadline`)."""


class TextOverBudget(ValueError):
    """A message carries more new text (not in the findings cache) than its scan may analyse
    within the time budget (see `deadline`): refused before any of it is analysed."""


_local = threading.local()


class deadline:  # noqa: N801 - used as a context manager, like contextlib's
    """``with deadline(seconds): engine.redact_many(...)`` in a worker thread: analysis stops
    between batches once the budget is spent (the caller has already refused the flow; the
    thread must not keep the pool busy for minutes).

    ``at``: an absolute ``time.monotonic()`` instead (the budget started when the flow was
    queued, not when a worker picked it up). ``max_fresh``: characters of uncached text the
    calls inside may analyse together; more raises `TextOverBudget` before analysing any.
    """

    def __init__(self, seconds: float | None = None, at: float | None = None,
                 max_fresh: int | None = None) -> None:
        self.at = at if at is not None else time.monotonic() + (seconds or 0.0)
        self.max_fresh = max_fresh

    def __enter__(self) -> deadline:
        self.prev = (getattr(_local, "deadline", None), getattr(_local, "fresh_left", None))
        _local.deadline = self.at
        _local.fresh_left = self.max_fresh
        return self

    def __exit__(self, *exc) -> None:
        _local.deadline, _local.fresh_left = self.prev


def _check_deadline() -> None:
    at = getattr(_local, "deadline", None)
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("analysis stopped: the time budget is spent")


def _spend_fresh(chars: int) -> None:
    left = getattr(_local, "fresh_left", None)
    if left is None:
        return
    if chars > left:
        raise TextOverBudget(f"the message carries more new text than the gateway scans within "
                             f"its time budget ({chars} characters to analyse, at most {left} "
                             f"more allowed: gateway_scan_max_text)")
    _local.fresh_left = left - chars


ANALYSIS_BATCH = 2  # chunks analysed together: 200 KB peaks at ~220 MB (8: 380, 64: 560)


class DetectionEngine:
    """Detection and redaction under one ``DetectionSettings``.

    ``DetectionEngine.get(settings)`` returns a cached engine; the spaCy model, Presidio NLP
    engine and anonymizer are built once per process and shared by all engines, only the
    (cheap) recognizer registry is per settings. Safe to call from a thread pool.
    """

    @classmethod
    def get(cls, settings: DetectionSettings | None = None) -> DetectionEngine:
        settings = settings or DetectionSettings()
        key = settings.model_dump_json()
        with _engines_lock:
            engine = _engines.get(key)
        if engine is None:
            engine = cls(settings)
            with _engines_lock:
                engine = _engines.setdefault(key, engine)
                while len(_engines) > 16:  # policy reloads: keep the newest few
                    _engines.pop(next(iter(_engines)))
        return engine

    def __init__(self, settings: DetectionSettings) -> None:
        global _pseudonyms
        self.settings = settings
        self.cache = FindingsCache()
        self._heavy = get_heavy(settings.model)
        self.entities = settings.active_entities()
        registry = RecognizerRegistry(supported_languages=["en"])
        for r in build_recognizers(
            settings, self.entities, self._heavy.common_words, self._heavy.english_words
        ):
            registry.add_recognizer(r)
        self._ner_entities = sorted(self.entities & NER_ENTITIES)
        self._chunk_entities = sorted(self.entities - {"PEM_PRIVATE_KEY"})
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
        uses_hash = any(
            isinstance(op, HashOperator) for op in settings.operators.values()
        )
        self._key = ops.hash_key(settings.hash_key_env, warn=uses_hash)
        with _engines_lock:
            if _pseudonyms is None:
                _pseudonyms = ops.PseudonymStore(
                    settings.pseudonym_max_sessions, settings.pseudonym_max_values
                )
            else:
                _pseudonyms.max_sessions = settings.pseudonym_max_sessions
                _pseudonyms.max_values = settings.pseudonym_max_values
        self._pseudonyms = _pseudonyms

    # -- analysis -------------------------------------------------------------------------

    def _use_ner(self, chunk: str, prose: bool | None) -> bool:
        if not self._ner_entities or self.settings.ner == "never" or prose is False:
            return False  # prose=False: the caller's "no NER" (field modes), even with "always"
        if self.settings.ner == "always":
            return True
        if prose is not None:
            return prose
        return looks_like_prose(chunk)

    def analyze_many(
        self,
        texts: list[str],
        prose: bool | None = None,
        fields: list[FieldContext | None] | None = None,
    ) -> list[list[Finding]]:
        """Findings for each text (batched NER over all prose chunks).

        ``fields[i]`` (or ``texts[i].field`` of a `FieldText`) is the key the text stands
        under, if any: see ``fields.py`` for what a key changes.

        Results are cached per text (`FindingsCache`, keyed by a digest of the text, the
        prose hint and the field; one cache per engine, i.e. per detection settings): an agent
        re-sends its whole conversation every turn, and only the new messages are analysed.
        """
        if fields is not None:
            texts = [FieldText(t, f) if f is not None else t for t, f in zip(texts, fields, strict=True)]
        fields = [getattr(t, "field", None) for t in texts]
        out: list[list[Finding] | None] = [None] * len(texts)
        todo: list[int] = []
        keys: dict[int, bytes] = {}
        for i, text in enumerate(texts):
            if len(text) < 3:
                out[i] = []
                continue
            key = self.cache.key(text, prose, fields[i].digest() if fields[i] else b"")
            hit = self.cache.get(key)
            if hit is not None:
                out[i] = list(hit)
            else:
                keys[i] = key
                todo.append(i)
        if todo:
            _spend_fresh(sum(len(texts[i]) for i in todo))
            found = self._analyze_uncached([texts[i] for i in todo], prose)
            for i, findings in zip(todo, found, strict=True):
                out[i] = findings
                self.cache.put(keys[i], findings, len(texts[i]))
        return out  # type: ignore[return-value]

    def _analyze_uncached(self, texts: list[str], prose: bool | None) -> list[list[Finding]]:
        fields = [getattr(t, "field", None) for t in texts]
        # spaCy takes exact str only: a FieldText becomes a plain copy of its characters.
        texts = [t if type(t) is str else str(t) for t in texts]
        # Decoded views (``decode.py``) are analysed beside their texts; their findings are
        # mapped back onto the original (whole encoded runs) below.
        views = [(i, v) for i, v in enumerate(map(decode.view, texts)) if v is not None]
        n = len(texts)
        texts = texts + [v.text for _, v in views]
        fields = fields + [fields[i] for i, _ in views]
        s = self.settings
        jobs: list[tuple[int, int, str]] = []  # (text index, offset, chunk)
        for i, text in enumerate(texts):
            jobs += [(i, off, c) for off, c in split_chunks(text, s.chunk_size, s.chunk_overlap)]
        raw: list[list[Finding]] = [[] for _ in texts]
        if self._analyzer is not None and jobs:
            # A bounded number of chunks at a time: spaCy docs and Presidio's artifacts of a
            # 200 KB body all alive at once took ~400 MB more than one batch does.
            for b in range(0, len(jobs), ANALYSIS_BATCH):
                _check_deadline()
                batch = jobs[b:b + ANALYSIS_BATCH]
                ner_texts, ner_flags = [], []
                for _, _, c in batch:
                    headline = headline_copy(c) if self._use_ner(c, True) and prose is None else None
                    ner_texts.append(headline or c)
                    ner_flags.append(bool(headline) or self._use_ner(c, prose))
                arts = self._heavy.artifacts(ner_texts, ner_flags)
                for (i, off, chunk), art in zip(batch, arts, strict=True):
                    results = self._analyzer.analyze(
                        chunk,
                        language="en",
                        entities=self._chunk_entities,
                        nlp_artifacts=art,
                        score_threshold=0.0,
                        allow_list=list(self._allow) or None,
                        context=list(key_words(fields[i].key)) if fields[i] else None,
                    )
                    raw[i] += self._keep(chunk, results, off)
        if self._pem is not None:
            for i, text in enumerate(texts):
                if "PRIVATE KEY" in text:
                    raw[i] += self._keep(text, self._pem.analyze(text, ["PEM_PRIVATE_KEY"]), 0)
        for j, (i, v) in enumerate(views):
            raw[i] += [Finding(f.entity_type, *v.span(f.start, f.end), f.score) for f in raw[n + j]]
        texts, fields, raw = texts[:n], fields[:n], raw[:n]
        for i, ctx in enumerate(fields):
            if ctx is not None and texts[i].strip().casefold() not in self._allow_ci:
                raw[i] = apply_field(texts[i], raw[i], ctx, self.entities)
        return [merge_findings(r) for r in raw]

    def _keep(self, text: str, results: list[RecognizerResult], offset: int) -> list[Finding]:
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
            kept.append(Finding(r.entity_type, r.start + offset, r.end + offset, round(r.score, 4)))
        return kept

    def analyze(self, text: str, prose: bool | None = None) -> list[Finding]:
        """Non-overlapping findings sorted by position."""
        return self.analyze_many([text], prose)[0]

    # -- redaction ------------------------------------------------------------------------

    def redact(self, text: str, session: str = "", prose: bool | None = None) -> TextResult:
        """Rewrite ``text`` with each entity's operator. If nothing is found the returned
        ``text`` is the input object itself."""
        return self.redact_many([text], session, prose)[0]

    def redact_many(
        self, texts: list[str], session: str = "", prose: bool | None = None,
        tokenize: Tokenize | None = None,
    ) -> list[TextResult]:
        """``redact`` for many short texts (e.g. JSON leaves) with one batched NER pass.
        Pseudonyms are shared by all texts of the call (same session table). With `tokenize`
        (a restore rule), every non-``block`` entity becomes ``tokenize(entity, value)``."""
        all_findings = self.analyze_many(texts, prose)
        get_table = self._table_getter(session)
        return [self._apply(text, findings, get_table, tokenize)
                for text, findings in zip(texts, all_findings, strict=True)]

    def redact_many_cached(
        self, texts: list[str], session: str = "", prose: bool | None = None,
        tokenize: Tokenize | None = None,
    ) -> list[TextResult] | None:
        """`redact_many` if every text's findings are cached (cheap enough for the event loop),
        else None without analysing anything."""
        found: list[list[Finding]] = []
        for text in texts:
            if len(text) < 3:
                found.append([])
                continue
            ctx = getattr(text, "field", None)
            hit = self.cache.get(self.cache.key(text, prose, ctx.digest() if ctx else b""))
            if hit is None:
                return None
            found.append(list(hit))
        get_table = self._table_getter(session)
        return [self._apply(t, f, get_table, tokenize) for t, f in zip(texts, found, strict=True)]

    def apply(self, text: str, findings: list[Finding], session: str = "",
              tokenize: Tokenize | None = None) -> TextResult:
        """Rewrite ``text`` with findings computed earlier (e.g. on a longer text that starts
        with ``text``: streaming redaction analyses once and releases a prefix). Findings that
        end past ``text`` are ignored."""
        kept = [f for f in findings if f.end <= len(text)]
        return self._apply(text, kept, self._table_getter(session), tokenize)

    def _table_getter(self, session: str) -> Callable[[], ops.PseudonymTable]:
        """The session's pseudonym table, fetched on first use only."""
        table: ops.PseudonymTable | None = None

        def get_table() -> ops.PseudonymTable:
            nonlocal table
            if table is None:
                table = self._pseudonyms.table(session)
            return table

        return get_table

    def _apply(self, text: str, findings: list[Finding], get_table,
               tokenize: Tokenize | None = None) -> TextResult:
        if not findings:
            return TextResult(text=text)
        present = {f.entity_type for f in findings}
        configs = {
            e: ops.operator_config(e, self.settings, self._key, get_table, self._pseudonyms.lock)
            if tokenize is None or ops.is_blocking(e, self.settings)
            else ops.token_config(e, tokenize)
            for e in present
        }
        anonymized = self._heavy.anonymizer.anonymize(
            text=text,
            analyzer_results=[
                RecognizerResult(f.entity_type, f.start, f.end, f.score) for f in findings
            ],
            operators=configs,
        )
        return TextResult(
            text=anonymized.text,
            findings=findings,
            counts=dict(Counter(f.entity_type for f in findings)),
            blocked={e for e in present if ops.is_blocking(e, self.settings)},
        )

