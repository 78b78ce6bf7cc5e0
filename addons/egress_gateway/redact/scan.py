"""Scanning one message (pure, no flow access; runs on a worker): plan, redact, rebuild, decide."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from egress_gateway.detection.engine import TextOverBudget
from egress_gateway.net import codecs
from egress_gateway.redact import bodies
from egress_gateway.redact import provider as provider_check
from egress_gateway.redact.provider import ProviderPolicy
from egress_gateway.redact.settings import DirectionRules
from egress_gateway.redact.walker import TextJob

INLINE_MAX_BYTES = 64 * 1024  # larger messages always go to the pool (parsing takes time)
DEFAULT_BODY_LIMIT = 10 * 1024 * 1024
DEFAULT_WORKERS = 2  # scan worker processes (0: analysis on threads of the gateway process)


def scan_threads(workers: int) -> int:
    """Threads of the gateway's scan pool: they parse, plan and rewrite, and wait for the worker
    processes' analysis (8 per process keep each process's 4 analysis threads busy)."""
    return 2 if workers == 0 else 8 * workers


DEFAULT_TIMEOUT = 30.0
# Scans admitted at once (running or waiting for a worker); more are refused (503 overloaded).
DEFAULT_QUEUE = 64
# New (uncached) characters one message may make the engine analyse. Analysis runs at roughly
# 100 KB/s per core here (200 KB of PII-dense prose: 2.05 s in one process, 1.1 s split across
# two worker processes): 512 Ki characters is ~5 s of one core (<3 s on two workers), inside the
# 30 s budget either way; a bigger fresh body is answered at once instead of burning a worker.
DEFAULT_MAX_TEXT = 512 * 1024


class CacheMiss(Exception):
    """A text is not in the findings cache: the message needs the worker pool."""


@dataclass(frozen=True)
class ScanOptions:
    body_limit: int = DEFAULT_BODY_LIMIT
    workers: int = DEFAULT_WORKERS
    timeout: float = DEFAULT_TIMEOUT
    queue: int = DEFAULT_QUEUE
    max_text: int = DEFAULT_MAX_TEXT


def parse_options(body_limit, workers, timeout, queue=DEFAULT_QUEUE,
                  max_text=DEFAULT_MAX_TEXT) -> ScanOptions:
    """Validate the addon's options; raise ValueError naming the bad one."""
    if not isinstance(body_limit, int) or body_limit < 1024:
        raise ValueError(f"gateway_body_limit must be at least 1024 bytes, got {body_limit!r}")
    if not isinstance(workers, int) or not 0 <= workers <= 64:
        raise ValueError(f"gateway_scan_workers must be between 0 (analysis in the gateway "
                         f"process) and 64 worker processes, got {workers!r}")
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"gateway_scan_timeout must be a number of seconds, got {timeout!r}") from None
    if not 0 < timeout <= 3600:
        raise ValueError(f"gateway_scan_timeout must be > 0 and <= 3600 seconds, got {timeout!r}")
    if not isinstance(queue, int) or not 1 <= queue <= 100_000:
        raise ValueError(f"gateway_scan_queue must be between 1 and 100000, got {queue!r}")
    if not isinstance(max_text, int) or max_text < 1024:
        raise ValueError(f"gateway_scan_max_text must be at least 1024 characters, "
                         f"got {max_text!r}")
    return ScanOptions(body_limit, workers, float(timeout), queue, max_text)


# --- the work done on a worker thread ---------------------------------------------------------------
@dataclass
class Outcome:
    """What scanning one message decided. Never holds found values, only counts and types."""

    body: bytes | None = None  # new raw body; None: forward the original bytes
    query: str | None = None  # new query string; None: unchanged
    path: str | None = None  # new URL path (without the query); None: unchanged
    text: str | None = None  # new WebSocket text; None: unchanged
    counts: Counter = field(default_factory=Counter)
    refusal: tuple[str, str, dict] | None = None  # (code, reason, details)
    unscanned: str | None = None  # why (part of) the message was passed unscanned
    notes: list[str] = field(default_factory=list)


def policy_refusal(what: str, action: str, code: str, reason: str, out: Outcome) -> Outcome | None:
    if action == "block":
        out.refusal = (code, reason, {})
        return out
    out.unscanned = f"{what}: {reason}"
    return None


def blocked_refusal(blocked: set[str]) -> tuple[str, str, dict]:
    """The refusal for a message carrying entities whose operator is ``block`` (types only)."""
    names = sorted(blocked)
    return ("sensitive_data", f"the message carries data the policy blocks: {', '.join(names)}",
            {"entities": names})


def field_refusal(refused: list[tuple[str, str]], entities: set[str]) -> tuple[str, str, dict]:
    """The refusal for signed or fixed-format fields that carried something (never values)."""
    names = sorted({f or "(unnamed)" for f, _ in refused})
    why = "; ".join(f"{f or '(unnamed)'}: {w}" for f, w in refused[:5])
    details: dict = {"fields": names}
    if entities:
        details["entities"] = sorted(entities)
    return ("sensitive_data", "fields that cannot be rewritten (signed or of a fixed format) "
            f"carry something else: {why}", details)


def provider_fetches(job: TextJob, raw: bytes, content_type: str | None,
                     content_encoding: str | None, limit: int,
                     provider: ProviderPolicy) -> tuple[str, str, dict] | None:
    """Check what a model-provider request makes the provider fetch (`redact/provider.py`):
    the refusal, or None after adding each allowed URL's decoded parts to `job` (signed: a
    finding there refuses)."""
    if not raw:
        return None
    try:
        if len(raw) > limit:
            raise codecs.TooLarge(f"over {limit} bytes")
        data = codecs.decode(raw, codecs.parse_encodings(content_encoding), limit)
        if bodies.content_kind(content_type, data) != "json":
            raise ValueError("not JSON")
        doc = provider_check.parse(data.decode("utf-8"))
    except codecs.TooLarge:  # the check is an egress control: no too_large: pass here
        return ("too_large", "the body of a model-provider request is too large to check for "
                "fetches by the provider", {})
    except ValueError:
        return ("unsupported_content", "the body of a model-provider request must be JSON the "
                "gateway can check for fetches by the provider", {})
    try:
        for field, text in provider_check.check(doc, provider):
            job.add_signed(text, field)
    except provider_check.ProviderRefusal as e:
        return ("blocked", str(e), {"field": e.field})
    return None


@dataclass
class Planned:
    """A message parsed and its texts collected (`plan_message`), not analysed yet: finished
    by `finish_message`, on the event loop from the findings cache or on the pool."""

    out: Outcome
    job: TextJob
    opts: bodies.Options
    qfinish: Callable[[], str] | None
    pfinish: Callable[[], str] | None
    bplan: object | None


def plan_message(raw: bytes | None, content_type: str | None, content_encoding: str | None,
                 query: str | None, rules: DirectionRules, limit: int,
                 path: str | None = None,
                 provider: ProviderPolicy | None = None) -> Outcome | Planned:
    """Parse one HTTP message and collect its texts: an `Outcome` when it is decided without
    analysis (refused: too large, unsupported, a provider fetch), else its `Planned` state."""
    out = Outcome()
    job = TextJob()
    if rules.provider and raw and provider is not None:  # requests only
        refusal = provider_fetches(job, raw, content_type, content_encoding, limit, provider)
        if refusal is not None:
            out.refusal = refusal
            return out
    opts = bodies.Options(scope=rules.scope(), unsupported=rules.unsupported)
    qfinish = bodies.plan_urlencoded(job, query, opts) if query else None
    pfinish = bodies.plan_path(job, path) if path else None
    bplan = None
    if raw is None:  # streamed: the body never passes through the gateway's hooks
        if policy_refusal("too_large", rules.too_large, "too_large",
                           "the body is streamed and cannot be scanned", out):
            return out
    else:
        try:
            bplan = bodies.plan_body(job, raw, content_type, content_encoding, limit, opts)
        except codecs.TooLarge as e:
            if policy_refusal("too_large", rules.too_large, "too_large", str(e), out):
                return out
        except bodies.Unsupported as e:
            if policy_refusal("unsupported", rules.unsupported, "unsupported_content", str(e), out):
                return out
    return Planned(out, job, opts, qfinish, pfinish, bplan)


def finish_message(p: Planned, rules: DirectionRules, redact_many: Callable) -> Outcome:
    """Analyse a planned message's texts with `redact_many`, then rebuild and decide. If
    `redact_many` raises, `p` is unchanged and may be finished again (e.g. after a
    `CacheMiss`, on the pool)."""
    out, job, opts = p.out, p.job, p.opts
    try:
        job.run(redact_many)
    except TextOverBudget as e:  # refused (or passed, per policy) before anything was analysed
        out.notes = opts.notes
        policy_refusal("too_large", rules.too_large, "too_large", str(e), out)
        return out
    out.counts = job.counts
    out.notes = opts.notes
    if job.blocked:
        out.refusal = blocked_refusal(job.blocked)
        return out
    if job.refused:
        out.refusal = field_refusal(job.refused, job.refused_entities)
        return out
    if p.qfinish is not None:
        out.query = p.qfinish()
    if p.pfinish is not None:
        out.path = p.pfinish()
    if p.bplan is not None:
        out.body = p.bplan.finish()
    return out


def scan_message(raw: bytes | None, content_type: str | None, content_encoding: str | None,
                 query: str | None, rules: DirectionRules, limit: int,
                 redact_many: Callable, path: str | None = None,
                 provider: ProviderPolicy | None = None) -> Outcome:
    """Plan, redact and rebuild one HTTP message (pure: no flow access; runs on a worker).
    `provider`: the policy's provider-fetch lists, checked where the rules name a provider."""
    p = plan_message(raw, content_type, content_encoding, query, rules, limit, path, provider)
    return p if isinstance(p, Outcome) else finish_message(p, rules, redact_many)


def scan_event_stream(raw: bytes, stream) -> Outcome:
    """A whole SSE body (a request's) through a stream redactor (`redact.stream`): values split
    across events are reassembled as when it streams. A block operator refuses; an error raises."""
    out = Outcome()
    got = stream(raw)
    body = (b"".join(got) if isinstance(got, list) else got) + stream(b"")
    out.counts = Counter(stream.counts)
    if stream.failed:
        if stream.blocked:
            out.refusal = blocked_refusal(stream.blocked)
            return out
        raise RuntimeError(f"the event stream could not be scanned: {stream.failed}")
    if body != raw:
        out.body = body
    return out


def merge_outcomes(first: Outcome, second: Outcome) -> Outcome:
    """`first` (query and path) with `second`'s body, counts and refusal."""
    first.counts = Counter(first.counts) + Counter(second.counts)
    first.refusal = first.refusal or second.refusal
    if second.body is not None:
        first.body = second.body
    return first


def scan_ws_text(text: str, rules: DirectionRules, redact_many: Callable) -> Outcome:
    out = Outcome()
    job = TextJob()
    node = job.add_text(text, rules.scope())
    try:
        job.run(redact_many)
    except TextOverBudget as e:
        out.refusal = ("too_large", str(e), {})
        return out
    out.counts = job.counts
    if job.blocked:
        out.refusal = blocked_refusal(job.blocked)
        return out
    if job.refused:
        out.refusal = field_refusal(job.refused, job.refused_entities)
        return out
    out.text = job.result(node)
    return out
