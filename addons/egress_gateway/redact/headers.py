"""Headers, trailers, the method, URL keys and fragments, and wildcard host labels: scanned too.

Patterns and secret recognizers only (``prose=False``: no NER; header values are not prose).
Per message, in the direction's rules (``redact.request|response``, ``headers: true``):

- every header *value* (and trailer value) except the few whose format is validated elsewhere
  (``Host``/``:authority``: the egress checks; ``Content-Length``: digits) and those named in
  ``skip_headers``: a finding is rewritten with the entity's operator (``block``: refused);
- header *names*, the method token, URL query keys, parameters without ``=``, a fragment in
  the request-target, and the labels of a host allowed by a wildcard (``<data>.example.com``):
  these cannot be rewritten without changing what the request means, so a finding refuses the
  request (403 ``sensitive_data``, ``where``: ``header_name``, ``method``, ``query_key``,
  ``fragment`` or ``host``); the host label check runs before any DNS lookup.

A header section (request-target, names and values; or the trailers) of more than
``SCAN_LIMIT`` characters is refused at once (431 ``headers_too_large``): real servers refuse
far less (8-16 KB), and scanning 300 KB of one header would take seconds.

Trailers towards an HTTP/1 peer are dropped after scanning (mitmproxy's HTTP/1 sender cannot
send them). Counts and entity types only are recorded, never values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from mitmproxy import http

from egress_gateway.detection.budget import deadline
from egress_gateway.flowstate import HEADER, refuse, settled, state
from egress_gateway.net import hosts
from egress_gateway.session import session_of

log = logging.getLogger(__name__)

# Header values validated by their format elsewhere (never free text an agent can fill).
FORMAT_CHECKED = {"host", ":authority", "content-length"}

# Characters of one header section (or trailer section) the scanner reads; more is refused.
SCAN_LIMIT = 32 * 1024


def _decode(s: str) -> str:
    try:
        return unquote_plus(s, errors="strict")
    except UnicodeDecodeError:
        return unquote_plus(s, errors="replace")


def url_parts(path: str) -> list[tuple[str, str]]:
    """The parts of a request-target that value scanning does not see: ``(where, text)`` for
    each query key, parameter without ``=`` and the fragment (percent-decoded)."""
    out: list[tuple[str, str]] = []
    target, hash_, fragment = path.partition("#")
    _, q, query = target.partition("?")
    if q and query:
        for pair in query.split("&"):
            key, _eq, _value = pair.partition("=")
            if key:
                out.append(("query_key", _decode(key)))
    if hash_ and fragment:
        out.append(("fragment", _decode(fragment)))
    return out


def wildcard_labels(host: str, patterns: list[str]) -> str | None:
    """The labels of `host` below the wildcard allow pattern it matches (``a.b`` of
    ``a.b.example.com`` under ``*.example.com``), as written; None when no wildcard matches."""
    try:
        norm = hosts.normalize_host(host)
    except ValueError:
        return None
    for p in patterns:
        if p.startswith("*.") and hosts.host_matches(p, norm):
            labels = norm.count(".") - p[2:].count(".")  # labels below the pattern
            raw = host.rstrip(".")
            return ".".join(raw.split(".")[:labels]) if labels > 0 else None
    return None


SAFE_NAMES = frozenset({"host", "content-length", "content-type", "accept", "connection"})


def withhold(req: http.Request, where: str) -> None:
    """Take the refused part out of a refused request, so that it reaches neither the flow
    line, mitmweb, the recording nor the audit line (the request is never forwarded)."""
    if where == "method":
        req.method = "WITHHELD"
    elif where in ("header_name", "header", "trailer", "headers", "trailers"):
        req.headers.fields = tuple(f for f in req.headers.fields
                                   if f[0].decode("latin-1").lower() in SAFE_NAMES)
        req.trailers = None
    elif where in ("query_key", "fragment"):
        req.path = req.path.split("#", 1)[0].split("?", 1)[0]
    elif where == "url":
        req.path = "/withheld"
    elif where == "host":
        name = "withheld." + req.host.split(".", 1)[-1] if "." in req.host else "withheld"
        req.host = name
        if "host" in req.headers:
            req.headers["host"] = f"{name}:{req.port}" if ":" in req.headers["host"] else name
        if req.method == "CONNECT":
            req.authority = f"{name}:{req.port}"


@dataclass
class HeaderPlan:
    """Which texts of a header list are scanned (pure)."""

    fields: list[tuple[bytes, bytes]]
    values: list[int] = field(default_factory=list)  # indices of scanned values
    texts: list[str] = field(default_factory=list)  # values, then names
    names: list[int] = field(default_factory=list)


def plan_headers(fields, skip: set[str]) -> HeaderPlan:
    """The values and names of `fields` ((name, value) bytes pairs) to scan."""
    plan = HeaderPlan(list(fields))
    for i, (name, value) in enumerate(plan.fields):
        n = name.decode("latin-1").lower()
        if n in FORMAT_CHECKED and (n != "content-length" or value.strip().isdigit()):
            continue
        if n in skip:
            continue
        if len(value) >= 3:
            plan.values.append(i)
            plan.texts.append(value.decode("utf-8", "surrogateescape"))
    for i, (name, _) in enumerate(plan.fields):
        if len(name) >= 3:
            plan.names.append(i)
            plan.texts.append(name.decode("utf-8", "surrogateescape").replace("-", " "))
    return plan


@dataclass
class HeaderOutcome:
    fields: list[tuple[bytes, bytes]] | None = None  # rewritten fields; None: unchanged
    counts: dict[str, int] = field(default_factory=dict)
    refusal: tuple[str, str] | None = None  # (where, entity list) when refused


def apply_plan(plan: HeaderPlan, results: list) -> HeaderOutcome:
    """Rewrite values with findings; a finding in a name or a blocked entity refuses."""
    out = HeaderOutcome()
    blocked: set[str] = set()
    new = list(plan.fields)
    changed = False
    nvals = len(plan.values)
    for k, r in enumerate(results):
        for e, n in (r.counts or {}).items():
            out.counts[e] = out.counts.get(e, 0) + n
        if not r.findings:
            continue
        if k >= nvals:
            out.refusal = ("header_name", ", ".join(sorted(r.counts)))
            return out
        blocked |= set(r.blocked or ())
        i = plan.values[k]
        new[i] = (new[i][0], r.text.encode("utf-8", "surrogateescape"))
        changed = True
    if blocked:
        out.refusal = ("header", ", ".join(sorted(blocked)))
        return out
    out.fields = new if changed else None
    return out


class HeaderScanner:
    """Scans headers, trailers, the method, URL keys/fragments and wildcard host labels."""

    def __init__(self, core, redactor) -> None:
        self.core = core
        self.redactor = redactor

    # --- running the engine ------------------------------------------------------------------
    async def _redact(self, flow, direction: str, texts: list[str]) -> list | None:
        """Redact `texts` with the direction's engine (no NER); None when not scanned."""
        scanning = self.redactor._scanning(flow, direction)
        if scanning is None or not texts:
            return None
        rt, idx, rules = scanning
        if not getattr(rules, "headers", True):
            return None
        engine = rt.engine(idx, direction)
        session = session_of(flow)
        hit = engine.redact_many_cached(texts, session=session, prose=False)
        if hit is not None:
            return hit
        return await self.redactor._run(
            lambda: engine.redact_many(texts, session=session, prose=False))

    def _skip(self, flow, direction: str) -> set[str]:
        scanning = self.redactor._scanning(flow, direction)
        if scanning is None:
            return set()
        return {h.lower() for h in getattr(scanning[2], "skip_headers", [])}

    def _refuse(self, flow, direction: str, where: str, entities: str) -> None:
        refuse(flow, "sensitive_data", f"the {direction}'s {where.replace('_', ' ')} carries "
               f"data the policy does not let leave: {entities}", direction=direction,
               where=where, entities=entities.split(", "))
        if direction == "request":
            withhold(flow.request, where)
        log.info(f"egress gateway refused the {direction} to {flow.request.pretty_host}: "
                 f"sensitive_data in the {where} ({entities})")

    def _within_limit(self, flow, direction: str, where: str, texts: list[str]) -> bool:
        """False (and the flow refused) when `texts` exceed what one section may hold."""
        size = sum(len(t) for t in texts)
        if size <= SCAN_LIMIT or self.redactor._scanning(flow, direction) is None:
            return True
        refuse(flow, "headers_too_large", f"the {direction}'s {where} holds {size} characters; "
               f"the gateway scans at most {SCAN_LIMIT}", direction=direction, where=where)
        if direction == "request":
            withhold(flow.request, where)
        return False

    def _record(self, flow, direction: str, counts: dict[str, int]) -> None:
        if counts:
            from egress_gateway.redact.scan import Outcome

            self.redactor._record(flow, direction, Outcome(counts=dict(counts)))

    async def _scan_fields(self, flow, direction: str, headers: http.Headers,
                           what: str) -> bool:
        """Scan one header list in place. False when the flow was refused."""
        plan = plan_headers(headers.fields, self._skip(flow, direction))
        if not self._within_limit(flow, direction, what, plan.texts):
            return False
        results = await self._redact(flow, direction, plan.texts)
        if results is None:
            return True
        out = apply_plan(plan, results)
        if out.refusal:
            where, entities = out.refusal
            self._refuse(flow, direction, where if what == "headers" else "trailer", entities)
            return False
        self._record(flow, direction, out.counts)
        if out.fields is not None:
            headers.fields = tuple(out.fields)
        return True

    async def _scan_request_line(self, flow) -> bool:
        """Method, query keys, bare parameters, fragment, wildcard host labels: refuse on a find."""
        req = flow.request
        if not self._within_limit(flow, "request", "url", [req.method, req.path]):
            return False
        parts = [("method", req.method)] if len(req.method) >= 3 else []
        parts += url_parts(req.path)
        parts += [("host", t) for t in self._labels(req.host)]
        if not parts:
            return True
        results = await self._redact(flow, "request", [t for _, t in parts])
        if results is None:
            return True
        for (where, _), r in zip(parts, results, strict=True):
            if r.findings:
                self._refuse(flow, "request", where, ", ".join(sorted(r.counts)))
                return False
        return True

    async def _request(self, flow) -> None:
        if not await self._scan_request_line(flow):
            return
        await self._scan_fields(flow, "request", flow.request.headers, "headers")

    # --- hooks ---------------------------------------------------------------------------------
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT to a wildcard-allowed name: its labels, before any dial or lookup."""
        if flow.response or flow.error:
            return
        try:
            labels = self._labels(flow.request.host)
            if labels:
                results = await self._redact(flow, "request", labels)
                for r in results or []:
                    if r.findings:
                        self._refuse(flow, "request", "host", ", ".join(sorted(r.counts)))
                        return
        except Exception as e:
            self.redactor._fail(flow, "request", e)

    def _labels(self, host: str) -> list[str]:
        labels = wildcard_labels(host, [r.host for r in self.core.require_policy().egress.allow
                                        if r.host])
        return [labels, labels.replace(".", " ").upper()] if labels else []

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before anything is dialled or looked up (a streamed body sends the headers next)."""
        await self._guard(flow, "request", self._request(flow))

    async def request(self, flow: http.HTTPFlow) -> None:
        """Again (an addon or reviewer may have changed them; cached: cheap), and trailers."""
        await self._guard(flow, "request", self._request_final(flow))

    async def _request_final(self, flow) -> None:
        await self._request(flow)
        if settled(flow) or not flow.request.trailers:
            return
        if await self._scan_fields(flow, "request", flow.request.trailers, "trailers"):
            if flow.server_conn.alpn != b"h2":
                flow.request.trailers = None  # an HTTP/1 upstream cannot receive them

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Response headers (and Set-Cookie), before a streamed answer sends them."""
        if flow.response is None or state(flow).refused:
            return
        await self._guard(flow, "response", self._scan_fields(
            flow, "response", flow.response.headers, "headers"))

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        st = state(flow)
        if st.refused:
            if HEADER not in flow.response.headers and st.code:
                # refused at responseheaders: mitmproxy then read the upstream's body into the
                # replaced response; the refusal is made again, whole
                refuse(flow, st.code, st.reason or "refused", **(st.details or {}))
            return
        await self._guard(flow, "response", self._response_final(flow))

    async def _response_final(self, flow) -> None:
        if not flow.response.trailers:
            return
        if await self._scan_fields(flow, "response", flow.response.trailers, "trailers"):
            if flow.client_conn.alpn != b"h2" and flow.response.trailers is not None:
                flow.response.trailers = None  # an HTTP/1 client cannot receive them

    async def _guard(self, flow, direction: str, work) -> None:
        if direction == "request" and settled(flow):
            work.close()
            return
        try:
            if self.redactor._scanning(flow, direction) is None:
                work.close()  # this direction is not scanned: nothing to parse either
                return
            await work
        except Exception as e:  # TimeoutError included: refuse, never forward
            work.close()
            self.redactor._fail(flow, direction, e)


class SessionIdCheck:
    """A session id an agent chose (``Proxy-Authorization`` user, ``X-Agent-Session``) lands in
    audit lines, recording file names and mitmweb: one carrying PII or a secret is replaced by
    ``withheld-<12 hex>`` (a keyed digest, stable for the life of the process)."""

    MAX_CACHE = 4096
    CHECK_SECONDS = 0.5

    def __init__(self, core) -> None:
        import os

        self.core = core
        self._key = os.urandom(16)
        self._cache: dict[str, str] = {}

    def __call__(self, sid: str) -> str:
        hit = self._cache.get(sid)
        if hit is not None:
            return hit
        found = self._carries_data(sid)
        out = sid if found is False else self._withheld(sid)
        if found is not None:  # a check that could not finish is tried again next time
            if len(self._cache) >= self.MAX_CACHE:
                self._cache.clear()
            self._cache[sid] = out
        return out

    def _carries_data(self, sid: str) -> bool | None:
        """Patterns on the id, on the event loop: bounded by `CHECK_SECONDS`; None when the
        check could not finish in time (the id is withheld: fail closed)."""
        compiled = self.core.compiled
        if compiled is None or "redact" not in compiled:
            return False
        from egress_gateway.detection import shapes
        from egress_gateway.detection.engine import analysis_running

        if not analysis_running():  # a policy that scans nothing: never start analysis here
            return not shapes.plain_id(sid)  # (on the event loop: that would block it)
        engine = compiled["redact"].engine(-1, "request")
        texts = [sid, sid.replace("_", " ")]
        try:
            with deadline(self.CHECK_SECONDS, patience=0):
                return any(engine.analyze_many(texts, prose=False))
        except Exception as e:  # noqa: BLE001 - a busy or failed scan worker
            log.warning(f"egress gateway: could not check a session id for data in time "
                        f"({type(e).__name__}); it is withheld")
            return None

    def _withheld(self, sid: str) -> str:
        import hashlib
        import hmac

        return "withheld-" + hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()[:12]
