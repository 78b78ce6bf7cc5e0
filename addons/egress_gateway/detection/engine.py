"""The detection engine: analysis and redaction under one ``DetectionSettings``, thread-safe.

An engine owns its findings cache (``findings.py``) and its operators (``operators.py``); its
heavy half, the recognizer registry (``recognizers/``) over the process's spaCy model
(``nlp.py``), is a `chunkanalysis.ChunkAnalyzer` in this process or in each scan worker
process (``workers.py``: then this process loads neither Presidio nor spaCy).

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

import logging
import threading
from collections import Counter
from collections.abc import Callable

from egress_gateway.detection import decode, workers
from egress_gateway.detection import operators as ops
from egress_gateway.detection.budget import (  # noqa: F401 - re-exported for callers
    DeadlineExceeded,
    TextOverBudget,
    check_deadline,
    deadline,
    spend_fresh,
)
from egress_gateway.detection.chunks import (
    headline_copy,
    looks_like_prose,
    may_hold_name,
    split_chunks,
)
from egress_gateway.detection.entities import DEFAULT_NER_ALLOW_LIST, NER_ENTITIES
from egress_gateway.detection.fields import (
    FieldContext,
    FieldText,
    apply_field,
    key_words,
)
from egress_gateway.detection.findings import (
    Finding,
    FindingsCache,
    TextResult,
    merge_findings,
)
from egress_gateway.detection.rewrite import rewrite
from egress_gateway.detection.settings import DetectionSettings, HashOperator

logger = logging.getLogger(__name__)

# (entity, value) -> the restore token that replaces it (pseudonyms.vault)
Tokenize = Callable[[str, str], str]

_engines: dict[tuple, DetectionEngine] = {}  # per (settings JSON, scan worker pool)
_engines_lock = threading.Lock()
_pseudonyms: ops.PseudonymStore | None = None


def analysis_running() -> bool:
    """True once this process analyses anything: the scan workers run, or (with
    ``gateway_scan_workers=0``) an engine was built here. Until then (a policy that scans
    nothing) checks of incidental values use `shapes` instead of starting analysis for them."""
    if workers.running() is not None:
        return True
    if workers.size() > 0:
        return False
    with _engines_lock:
        return bool(_engines)


class DetectionEngine:
    """Detection and redaction under one ``DetectionSettings``.

    ``DetectionEngine.get(settings)`` returns a cached engine. Its heavy half (recognizers,
    Presidio, spaCy: `chunkanalysis.ChunkAnalyzer`) runs in this process, or in the scan
    worker processes while a pool runs (``workers.py``); the findings cache, planning, merging
    and rewriting stay here. Safe to call from a thread pool.
    """

    @classmethod
    def get(cls, settings: DetectionSettings | None = None) -> DetectionEngine:
        settings = settings or DetectionSettings()
        pool = workers.current()
        key = (settings.model_dump_json(), pool.generation if pool is not None else 0)
        with _engines_lock:
            engine = _engines.get(key)
        if engine is None:
            engine = cls(settings, pool)
            with _engines_lock:
                engine = _engines.setdefault(key, engine)
                while len(_engines) > 16:  # policy reloads: keep the newest few
                    _engines.pop(next(iter(_engines)))
        return engine

    def __init__(self, settings: DetectionSettings,
                 pool: workers.WorkerPool | None = None) -> None:
        global _pseudonyms
        self.settings = settings
        self.cache = FindingsCache()
        self.entities = settings.active_entities()
        self._ner_entities = sorted(self.entities & NER_ENTITIES)
        # PERSON/LOCATION/NRP need an upper-case letter; DATE_TIME ("tomorrow") does not
        self._names_only = "DATE_TIME" not in self.entities
        if pool is None:  # Presidio and spaCy in this process
            from egress_gateway.detection.chunkanalysis import ChunkAnalyzer

            self._backend = ChunkAnalyzer(settings)
        else:  # in the scan worker processes (built there now)
            self._backend = _Remote(pool, settings)
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

    @property
    def _heavy(self):
        """The spaCy model and Presidio NLP engine analysis uses here (in-process only)."""
        return self._backend._heavy

    # -- analysis -------------------------------------------------------------------------

    def _use_ner(self, chunk: str, prose: bool | None) -> bool:
        if not self._ner_entities or self.settings.ner == "never" or prose is False:
            return False  # prose=False: the caller's "no NER" (field modes), even with "always"
        if self._names_only and not may_hold_name(chunk):
            return False  # NER could only find entities that its recognizer drops
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
            spend_fresh(sum(len(texts[i]) for i in todo))
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
        where: list[tuple[int, int]] = []  # per job: (text index, offset of its chunk)
        jobs: list[tuple] = []  # chunkanalysis.Job: (chunk, NER text, NER?, context words)
        for i, text in enumerate(texts):
            context = tuple(key_words(fields[i].key)) if fields[i] else None
            for off, c in split_chunks(text, s.chunk_size, s.chunk_overlap):
                headline = headline_copy(c) if self._use_ner(c, True) and prose is None else None
                jobs.append((c, headline or c, bool(headline) or self._use_ner(c, prose), context))
                where.append((i, off))
        pem_idx = ([i for i, t in enumerate(texts) if "PRIVATE KEY" in t]
                   if "PEM_PRIVATE_KEY" in self.entities else [])
        raw: list[list[Finding]] = [[] for _ in texts]
        if jobs or pem_idx:
            found, pem = self._backend.run(jobs, [texts[i] for i in pem_idx])
            for (i, off), got in zip(where, found, strict=True):
                raw[i] += [Finding(e, a + off, b + off, score) for e, a, b, score in got]
            for i, got in zip(pem_idx, pem, strict=True):
                raw[i] += [Finding(*f) for f in got]
        for j, (i, v) in enumerate(views):
            raw[i] += [Finding(f.entity_type, *v.span(f.start, f.end), f.score) for f in raw[n + j]]
        texts, fields, raw = texts[:n], fields[:n], raw[:n]
        for i, ctx in enumerate(fields):
            if ctx is not None and texts[i].strip().casefold() not in self._allow_ci:
                raw[i] = apply_field(texts[i], raw[i], ctx, self.entities)
        return [merge_findings(r) for r in raw]

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
        rewriters = {
            e: ops.rewriter(e, self.settings, self._key, get_table, self._pseudonyms.lock)
            if tokenize is None or ops.is_blocking(e, self.settings)
            else ops.token_rewriter(e, tokenize)
            for e in present
        }
        return TextResult(
            text=rewrite(text, findings, rewriters),
            findings=findings,
            counts=dict(Counter(f.entity_type for f in findings)),
            blocked={e for e in present if ops.is_blocking(e, self.settings)},
        )


class _Remote:
    """`ChunkAnalyzer.run` in the scan worker processes. If its pool was stopped (the worker
    count changed), the next call registers with the current pool, or analyses here."""

    def __init__(self, pool: workers.WorkerPool, settings: DetectionSettings) -> None:
        self.settings = settings
        self.pool = pool
        self.eid = pool.register(settings.model_dump_json())
        self._local = None

    def run(self, jobs: list, pem_texts: list[str]) -> tuple[list, list]:
        if self.pool.closed:
            pool = workers.current()
            if pool is None:
                if self._local is None:
                    from egress_gateway.detection.chunkanalysis import ChunkAnalyzer

                    self._local = ChunkAnalyzer(self.settings)
                return self._local.run(jobs, pem_texts)
            self.eid, self.pool = pool.register(self.settings.model_dump_json()), pool
        return self.pool.run(self.eid, jobs, pem_texts)
