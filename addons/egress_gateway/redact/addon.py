"""The Redactor addon: PII and secrets redacted in place, both directions, off the event loop.

Per flow and direction (policy ``redact:``, read per flow so edits apply to new flows):

- the body (JSON, NDJSON, forms, multipart, text, SSE; gzip/deflate/br/zstd decoded with a
  bounded decoder and re-encoded), the URL query values of requests, WebSocket text messages;
- found values are rewritten with the entity's operator; a body in which nothing is found is
  forwarded byte for byte; an entity whose operator is ``block`` refuses the flow
  (403 ``sensitive_data``, entity types named, never values);
- too large or unscannable bodies: the policy's ``too_large`` / ``unsupported`` action
  (413 ``too_large`` / 415 ``unsupported_content``, or pass, noted in the metadata);
- scans run on a thread pool of the gateway process; their analysis (spaCy NER, Presidio) in
  ``gateway_scan_workers`` worker processes (``detection/workers.py``; 0: on the threads),
  within ``gateway_scan_timeout`` seconds counted from when the scan was queued; an error or
  timeout refuses the flow (500 ``internal_error``), never forwards it; at most
  ``gateway_scan_queue`` scans wait or run at once, more are refused at once (503
  ``overloaded``); a message with more new text than ``gateway_scan_max_text`` characters is
  answered at once (the ``too_large`` action);
- response streams are analysed on the same pool (`streams.pooled`): each chunk within the
  budget from when it arrived, or the stream ends with its error event.

Visible, not leaky: ``flow.metadata["gateway"]["redactions"] = {"request": {ENTITY: n}, ...}``,
a flow comment (``request: 2 EMAIL_ADDRESS``), a log line; counts and types only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mitmproxy import ctx, exceptions, http

from egress_gateway.detection import workers
from egress_gateway.detection.engine import DeadlineExceeded, deadline
from egress_gateway.fleet.store import StoreDown
from egress_gateway.flowstate import refuse, settled, state
from egress_gateway.pseudonyms.keeper import VaultKeeper
from egress_gateway.pseudonyms.restore import restore_message
from egress_gateway.redact import bodies
from egress_gateway.redact.runtime import RedactRuntime
from egress_gateway.redact.scan import (
    DEFAULT_BODY_LIMIT,
    DEFAULT_MAX_TEXT,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
    INLINE_MAX_BYTES,
    CacheMiss,
    Outcome,
    ScanOptions,
    finish_message,
    merge_outcomes,
    parse_options,
    plan_message,
    policy_refusal,
    scan_event_stream,
    scan_message,
    scan_threads,
    scan_ws_text,
)
from egress_gateway.redact.stream import StreamRedactor
from egress_gateway.redact.streams.ndjson import NdjsonRedactor
from egress_gateway.redact.streams.pooled import PooledStream
from egress_gateway.session import session_of
from egress_gateway.shutdown import refuse_stopping

log = logging.getLogger(__name__)


def _default_engine_factory(settings):
    from egress_gateway.detection import DetectionEngine

    return DetectionEngine.get(settings)


class Overloaded(Exception):
    """Every scan slot (``gateway_scan_queue``) is taken: the flow is refused at once."""


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {e}" for e, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class ScansAbandoned(Exception):
    """The gateway is stopping: the scan's result is no longer awaited."""


class Redactor:
    """Redacts request and response bodies, query strings and WebSocket messages."""

    name = "egress_gateway_redact"

    def __init__(self, core, engine_factory: Callable | None = None) -> None:
        self.core = core
        self.engine_factory = engine_factory or _default_engine_factory
        self.options = ScanOptions()
        self.pool: ThreadPoolExecutor | None = None
        self._streams: dict[str, PooledStream] = {}  # flow id -> its stream redactor
        self._unredacted_streams: set[str] = set()
        self._warm = False
        self.abandoned = False  # the gateway is stopping: no scan is awaited any more
        self._abandon: asyncio.Future | None = None  # resolved by abandon_scans()
        self.vaults = VaultKeeper()
        self._admitted = 0  # scans queued or running on the pool
        self._admit_lock = threading.Lock()
        core.add_compiler("redact", lambda policy: RedactRuntime(policy, self.engine_factory))
        core.add_warmer(lambda compiled: self.prewarm(compiled["redact"]))

    # --- lifecycle ------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            "gateway_body_limit", int, DEFAULT_BODY_LIMIT,
            "Largest body the gateway scans, in bytes, before and after decompression; larger "
            "bodies follow the policy's redact.*.too_large action.",
        )
        loader.add_option(
            "gateway_scan_workers", int, DEFAULT_WORKERS,
            "Worker processes that analyse text for PII and secrets (spaCy NER and Presidio) "
            "beside the event loop; 0: analysis on threads of the gateway process.",
        )
        loader.add_option(
            # str: mitmproxy cannot parse float options given with --set
            "gateway_scan_timeout", str, f"{DEFAULT_TIMEOUT:g}",
            "Time budget in seconds for scanning one message, counted from when it is queued; "
            "past it the flow is refused (internal_error).",
        )
        loader.add_option(
            "gateway_scan_queue", int, DEFAULT_QUEUE,
            "Scans that may wait for or run on the workers at once; a message arriving when "
            "all are taken is refused at once (503 overloaded).",
        )
        loader.add_option(
            "gateway_scan_max_text", int, DEFAULT_MAX_TEXT,
            "New text (characters not in the findings cache) one message may make the detector "
            "analyse; more is answered at once with the policy's too_large action.",
        )
        self.vaults.load(loader)

    def configure(self, updated: set[str]) -> None:
        names = {"gateway_body_limit", "gateway_scan_workers", "gateway_scan_timeout",
                 "gateway_scan_queue", "gateway_scan_max_text"}
        if updated & names:
            try:
                opts = parse_options(ctx.options.gateway_body_limit,
                                     ctx.options.gateway_scan_workers,
                                     ctx.options.gateway_scan_timeout,
                                     ctx.options.gateway_scan_queue,
                                     ctx.options.gateway_scan_max_text)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
            if self.pool is None or opts.workers != self.options.workers:
                old = self.pool
                self.pool = self._new_pool(opts.workers)
                if old is not None:
                    old.shutdown(wait=False)
                if self.engine_factory is _default_engine_factory:  # real engines
                    workers.configure(opts.workers)  # they start with the first engine
            self.options = opts
        if (updated & {"gateway_policy", *VaultKeeper.OPTIONS}) and self.core.compiled is not None:
            try:
                self.vaults.configure(ctx.options, self.runtime().any_restore)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if "gateway_policy" in updated and self.core.compiled is not None:
            # Presidio and spaCy load here (~1-2 s), before the gateway says it is ready.
            try:
                self.prewarm()
            except Exception as e:
                raise exceptions.OptionsError(f"cannot load the detection engine: {e}") from None

    def done(self) -> None:
        self.vaults.done()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        if self.engine_factory is _default_engine_factory:
            workers.shutdown()

    @staticmethod
    def _new_pool(n_workers: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(scan_threads(n_workers), thread_name_prefix="gateway-scan")

    # --- the policy's compiled redact section --------------------------------------------
    def runtime(self) -> RedactRuntime:
        """The redact section of the current policy, compiled when it loaded."""
        self.core.require_policy()
        return self.core.compiled["redact"]

    def _scanning(self, flow: http.HTTPFlow, direction: str):
        """(runtime, rule index, rules) when this direction of `flow` is scanned, else None."""
        rt = self.runtime()
        if not rt.enabled:
            return None
        idx, rules = rt.for_flow(flow.request.host, flow.request.path, direction)
        return (rt, idx, rules) if rules.enabled else None

    def prewarm(self, rt: RedactRuntime | None = None) -> None:
        """Build the engines of every rule that scans (of `rt`, a reloaded policy's, or the
        current one), before the gateway says it is ready or the reloaded policy applies."""
        rt = rt or self.runtime()
        for idx, direction in rt.enabled_keys():
            engine = rt.engine(idx, direction)
            if not self._warm:
                # spaCy's first call initialises lazily (~150 ms): not on a real request
                engine.analyze("Warm-up: Jane Roe wrote to jane.roe@example.com today.",
                               prose=True)
                self._warm = True

    # --- running a scan ---------------------------------------------------------------------
    async def _run(self, fn: Callable[[], Outcome], max_text: int | None = None) -> Outcome:
        """Run ``fn()`` on the pool within the flow's budget, which covers the wait for a
        worker: a scan picked up after it has run out does not start, one that runs stops
        between analysis batches (`deadline`); ``max_text``: new characters it may analyse.
        A scan that cannot get a slot raises `Overloaded` at once; a slot is held until the
        worker is done with it (a timed-out scan holds one until it stops at its deadline)."""
        if self.abandoned:
            raise ScansAbandoned
        if self.pool is None:
            self.pool = self._new_pool(self.options.workers)
        with self._admit_lock:
            if self._admitted >= self.options.queue:
                raise Overloaded
            self._admitted += 1
        timeout = self.options.timeout
        at = time.monotonic() + timeout

        def job() -> Outcome:
            if time.monotonic() > at:  # picked up after the budget ran out (queued too long)
                raise DeadlineExceeded("scan not started: the time budget is spent")
            with deadline(at=at, max_fresh=max_text):
                return fn()

        cfut = self._submit_in_slot(job)
        loop = asyncio.get_running_loop()
        scan = asyncio.ensure_future(asyncio.wait_for(asyncio.wrap_future(cfut), timeout))
        if self._abandon is None:
            self._abandon = loop.create_future()
        try:
            await asyncio.wait([scan, self._abandon], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            scan.cancel()
            cfut.cancel()
            raise
        if scan.done():
            try:
                return scan.result()
            except TimeoutError:
                cfut.cancel()  # still queued: it never runs (and frees its slot now)
                raise
        scan.cancel()  # the worker itself ends within the scan's deadline
        cfut.cancel()
        raise ScansAbandoned

    def _submit(self, fn: Callable[[], None]):
        """A stream's job on the scan pool (`PooledStream`: one at a time per stream). It takes
        a scan slot while queued or running; with none left it raises `Overloaded` (the stream
        ends with its error event: nothing unscanned is released)."""
        if self.pool is None:
            self.pool = self._new_pool(self.options.workers)
        with self._admit_lock:
            if self._admitted >= self.options.queue:
                raise Overloaded
            self._admitted += 1
        return self._submit_in_slot(fn)

    def _submit_in_slot(self, fn: Callable):
        """`fn` on the pool, in a slot already taken: given back when it is done (or if the
        pool refuses it)."""
        try:
            fut = self.pool.submit(fn)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(lambda _: self._release())
        return fut

    def abandon_scans(self) -> None:
        """The gateway is stopping: scans in flight and later ones raise ScansAbandoned, and
        their flows are answered 503 gateway_unavailable ("gateway stopping")."""
        self.abandoned = True
        if self._abandon is not None and not self._abandon.done():
            self._abandon.set_result(None)

    def _release(self) -> None:
        with self._admit_lock:
            self._admitted -= 1

    def pending(self) -> int:
        """Scans queued or running, streams' jobs included (for a drain on shutdown)."""
        return self._admitted

    def _record(self, flow, direction: str, out: Outcome) -> None:
        st = state(flow)
        if out.counts:
            mine = st.sub("redactions").setdefault(direction, {})
            for e, n in out.counts.items():
                mine[e] = mine.get(e, 0) + n
            self._comment(flow)
            ms = (st.scan_ms or {}).get(direction)
            took = f" in {ms:g} ms" if ms is not None else ""
            log.info(f"egress gateway redacted the {direction} to {flow.request.pretty_host}"
                     f"{took}: {format_counts(out.counts)}")
        if out.unscanned:
            st.sub("unscanned")[direction] = out.unscanned
            log.warning(f"egress gateway passed the {direction} to {flow.request.pretty_host} "
                        f"unscanned (policy): {out.unscanned}")
        if out.notes:
            st.sub("redaction_notes")[direction] = out.notes[:10]

    def _comment(self, flow) -> None:
        st = state(flow)
        red = st.redactions or {}
        mine = "; ".join(f"{d}: {format_counts(red[d])}" for d in ("request", "response")
                         if red.get(d))
        prev = st.redaction_comment
        base = flow.comment or ""
        if prev and base.endswith(prev):
            base = base[: -len(prev)].rstrip("; ")
        flow.comment = f"{base}; {mine}" if base else mine
        st.redaction_comment = mine

    def _fail(self, flow, direction: str, e: BaseException) -> None:
        if isinstance(e, ScansAbandoned):
            refuse_stopping(flow, direction=direction)
            return
        if isinstance(e, Overloaded):
            reason = (f"the gateway is scanning as many messages as it can "
                      f"(gateway_scan_queue={self.options.queue}); retry later")
            log.warning(f"egress gateway: scan queue full; refusing the {direction} (overloaded)")
            refuse(flow, "overloaded", reason, direction=direction)
            return
        if isinstance(e, StoreDown):
            log.warning(f"egress gateway refused a restore flow: {e}")
            refuse(flow, "state_unavailable", f"{e}: the session's restore values live there; "
                   "retry when it is back", direction=direction)
            return
        if isinstance(e, TimeoutError):
            reason = (f"scanning the {direction} exceeded the time budget of "
                      f"{self.options.timeout:g} s")
            log.error(f"egress gateway: {reason}; refusing the flow")
        elif isinstance(e, workers.WorkerError):
            reason = f"the scan worker analysing the {direction} failed"
            log.error(f"egress gateway: {reason} ({e}); refusing the flow")
        else:
            reason = f"the gateway failed while scanning the {direction}"
            log.error(f"egress gateway: internal error while scanning the {direction}; refusing "
                      f"the flow", exc_info=e)
        refuse(flow, "internal_error", reason)

    async def _scan_http(self, flow: http.HTTPFlow, direction: str) -> None:
        scanning = self._scanning(flow, direction)
        if scanning is None:
            return
        rt, idx, rules = scanning
        msg = flow.request if direction == "request" else flow.response
        query = upath = None
        if direction == "request":
            path_part, _, query_part = flow.request.path.partition("?")
            if rules.query:
                query = query_part or None
            if getattr(rules, "path", False) and path_part.startswith("/") and path_part != "/":
                upath = path_part
        raw = msg.raw_content
        if raw is None and not msg.stream:
            raw = b""
        if not raw and not query and not upath:
            return
        session = session_of(flow)
        limit = self.options.body_limit
        ct, ce = msg.headers.get("content-type"), msg.headers.get("content-encoding")
        te = [c.strip() for c in msg.headers.get("transfer-encoding", "").split(",")
              if c.strip().lower() not in ("", "chunked", "identity")]
        if te:  # "Transfer-Encoding: gzip, chunked": mitmproxy undoes only the chunking
            ce = ", ".join([c for c in [ce] if c] + te)
        events = None  # an SSE body: reassembled like a stream (values split across events)
        if raw and not ce and len(raw) <= limit and bodies.content_kind(ct, raw) == "sse":
            events, raw = raw, b""

        provider = rt.provider if direction == "request" else None
        tokenize = (self.vaults.tokenizer(session)
                    if direction == "request" and rt.restores(idx) else None)
        extra = {"tokenize": tokenize} if tokenize is not None else {}

        t0 = time.perf_counter()
        engine = rt.engine(idx, direction)
        planned = self._plan_inline(rules, raw, ct, ce, query, upath, provider)
        out = planned if isinstance(planned, Outcome) else None
        if planned is not None and out is None:
            out = self._finish_inline(engine, rules, planned, session, extra)

        def redact_many(texts, **kw):
            return rt.engine(idx, direction).redact_many(texts, session=session, **extra, **kw)

        def work() -> Outcome:
            if planned is not None:  # parsed on the loop; its texts were not all cached
                return finish_message(planned, rules, redact_many)
            return scan_message(raw, ct, ce, query, rules, limit, redact_many, upath, provider)

        if out is None:
            out = await self._run(work, self.options.max_text)
        if events is not None and not out.refusal:
            engine = rt.engine(idx, direction)
            out = merge_outcomes(out, await self._run(lambda: scan_event_stream(
                events, self._stream_redactor(engine, rules, session, None, extra)),
                self.options.max_text))
        ms = round((time.perf_counter() - t0) * 1000, 1)
        state(flow).sub("scan_ms")[direction] = ms
        self._record(flow, direction, out)
        if tokenize is not None and out.counts:
            state(flow).count("pseudonyms", "tokenized", sum(out.counts.values()))
        if out.refusal:
            code, reason, details = out.refusal
            refuse(flow, code, reason, direction=direction, **details)
            log.info(f"egress gateway refused the {direction} to {flow.request.pretty_host}: "
                     f"{code}")
            return
        if out.query is not None or out.path is not None:
            old_path, sep, old_query = flow.request.path.partition("?")
            new_path = out.path if out.path is not None else old_path
            new_query = out.query if out.query is not None else old_query
            flow.request.path = new_path + (("?" + new_query) if sep else "")
        if out.body is not None:
            msg.raw_content = out.body
            if "transfer-encoding" not in msg.headers or "content-length" in msg.headers:
                msg.headers["content-length"] = str(len(out.body))

    def _plan_inline(self, rules, raw, ct, ce, query, upath=None, provider=None):
        """A small uncompressed message is parsed on the event loop (`plan_message`): an
        `Outcome` if that decides it, else its `Planned` state; None: too big, use the pool."""
        if raw is not None and len(raw) > INLINE_MAX_BYTES or ce:
            return None
        return plan_message(raw, ct, ce, query, rules, self.options.body_limit, upath, provider)

    def _finish_inline(self, engine, rules, planned, session, extra=None):
        """Finish a planned message on the event loop when all its texts are cached (a
        thread-pool round trip costs more than the work); None: they are not, use the pool
        (with the same plan: nothing is parsed twice)."""
        cached = getattr(engine, "redact_many_cached", None)
        if cached is None:
            return None

        def cached_only(texts, **kw):
            results = cached(texts, session=session, **(extra or {}), **kw)
            if results is None:
                raise CacheMiss
            return results

        try:
            return finish_message(planned, rules, cached_only)
        except CacheMiss:
            return None

    # --- hooks ------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse a declared over-limit body before mitmproxy buffers it."""
        if settled(flow):
            return
        try:
            rt = self.runtime()
            if not rt.enabled:
                return
            _, rules = rt.for_flow(flow.request.host, flow.request.path, "request")
            if not rules.enabled or rules.too_large != "block":
                return
            length = flow.request.headers.get("content-length")
            if length and length.strip().isdigit() and int(length) > self.options.body_limit:
                refuse(flow, "too_large", f"the request body of {int(length)} bytes exceeds the "
                       f"limit of {self.options.body_limit}", direction="request")
        except Exception as e:
            self._fail(flow, "request", e)

    def tcp_start(self, flow) -> None:
        """Raw TCP (non-HTTP inside a CONNECT) cannot be scanned: the destination's request
        rules decide, like any unscannable body: ``unsupported: block`` (the default for
        requests) refuses the connection before it is dialled; ``pass`` lets it through, noted."""
        self._raw_stream(flow, "TCP")

    def udp_start(self, flow) -> None:
        self._raw_stream(flow, "UDP")

    def _raw_stream(self, flow, what: str) -> None:
        try:
            rt = self.runtime()
            if not rt.enabled:
                return
            host = flow.server_conn.address[0] if flow.server_conn.address else ""
            _, rules = rt.for_flow(host, "", "request")
            if not rules.enabled:
                return
            st = state(flow)
            if rules.unsupported == "block":
                reason = (f"raw {what} cannot be scanned for PII and secrets; the policy blocks "
                          "unscannable content (redact.request.unsupported: block)")
                flow.server_conn.error = f"refused by the egress gateway: {reason}"
                st.decision, st.code, st.reason = "blocked", "unsupported_content", reason
                log.info(f"egress gateway refused raw {what} to {host}: unscannable")
            else:
                st.sub("unscanned")["request"] = f"raw {what} (policy: pass)"
                log.warning(f"egress gateway passes raw {what} to {host} unscanned (policy)")
        except Exception:
            log.exception(f"egress gateway: internal error checking raw {what}; refusing it")
            flow.server_conn.error = "egress gateway internal error"

    async def rescan_request(self, flow: http.HTTPFlow) -> None:
        """Scan a request again after a reviewer edited it (approvals): its counts are replaced,
        not added to the first scan's."""
        st = state(flow)
        (st.redactions or {}).pop("request", None)
        (st.scan_ms or {}).pop("request", None)
        await self.request(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            self._check_vault(flow)
            await self._scan_http(flow, "request")
        except Exception as e:  # TimeoutError included
            self._fail(flow, "request", e)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Server-sent events, and NDJSON sent without a length, are redacted while they stream
        (`redact.stream`, `redact.streams`).

        A buffered SSE response would turn time-to-first-token into time-to-last-token.
        Compressed streams are left to the buffered path (decoded with the bounded decoder).
        """
        if flow.response is None or state(flow).refused:
            return
        try:
            resp = flow.response
            mime, _ = bodies.parse_content_type(resp.headers.get("content-type"))
            if mime != "text/event-stream" and (mime not in bodies.NDJSON_TYPES
                                                or "content-length" in resp.headers):
                return  # NDJSON with a length is a document, scanned line by line when buffered
            if resp.headers.get("content-encoding", "identity").strip().lower() != "identity":
                return
            rt = self.runtime()
            idx, rules = rt.for_flow(flow.request.host, flow.request.path, "response")
            restore = rt.enabled and rt.restores(idx)
            if (not rt.enabled or not rules.enabled) and not restore:
                resp.stream = True  # not redacted for this host: stream it as it comes
                self._unredacted_streams.add(flow.id)
                return
            session = session_of(flow)
            restorer = (lambda context: self.vaults.restorer(session, context)) if restore else None
            kind = StreamRedactor if mime == "text/event-stream" else NdjsonRedactor
            engine = rt.engine(idx, "response") if rules.enabled else None
            self._streams[flow.id] = stream = PooledStream(
                self._stream_redactor(engine, rules, session, restorer, {}, kind),
                self._submit, self.options.timeout)
            resp.stream = stream
            if "content-length" in resp.headers:  # the redacted stream has another length
                del resp.headers["content-length"]
                if not (resp.is_http2 or resp.is_http3):
                    resp.headers["transfer-encoding"] = "chunked"
        except Exception as e:
            self._fail(flow, "response", e)

    @staticmethod
    def _stream_redactor(engine, rules, session: str, restorer, extra: dict,
                         kind=StreamRedactor):
        """A stream redactor over `engine` (None: nothing redacted, restore only). Every
        analysis goes through ``engine.analyze`` / ``apply`` / ``redact_many`` (the seam for
        scan workers). `extra`: ``{"tokenize": fn}`` for a restore rule's request."""
        if engine is None:
            return kind(lambda text: [], lambda text, findings: (text, {}, set()),
                        lambda data: (data, {}, set()), restorer=restorer)
        scope = rules.scope()

        def apply(text: str, findings: list):
            r = engine.apply(text, findings, session=session, **extra)
            return r.text, r.counts, r.blocked

        def redact_data(data: str):
            return bodies.redact_sse_data(
                data, lambda texts, **kw: engine.redact_many(texts, session=session, **extra,
                                                             **kw), scope)

        return kind(engine.analyze, apply, redact_data, restorer=restorer)

    def _stream_done(self, flow: http.HTTPFlow, stream: PooledStream) -> None:
        out = Outcome(counts=Counter(stream.counts))
        self._record(flow, "response", out)
        st = state(flow)
        self._record_restore(flow, stream.restored, stream.unknown_tokens)
        st.streamed = {"events": stream.events}
        if stream.failed:
            st.stream_stopped = stream.failed
            log.error(f"egress gateway stopped the event stream from {flow.request.pretty_host}: "
                      f"{stream.failed}")

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or state(flow).refused:
            return  # the gateway's own answer
        stream = self._streams.pop(flow.id, None)
        if stream is not None:  # redacted while it streamed; the stored body is what was sent
            self._stream_done(flow, stream)
            return
        if flow.id in self._unredacted_streams:
            self._unredacted_streams.discard(flow.id)
            return  # SSE streamed as it came: this host's responses are not redacted
        try:
            await self._scan_http(flow, "response")
            if not state(flow).refused:
                await self._restore_response(flow)
        except Exception as e:
            self._fail(flow, "response", e)

    # --- reversible pseudonyms ----------------------------------------------------------
    def _check_vault(self, flow: http.HTTPFlow) -> None:
        """A flow under a restore rule (either way) while the store holding the vault is
        unreachable: StoreDown (refused before it leaves, not after the answer came back)."""
        if not self.vaults.shared:
            return
        rt = self.runtime()
        if rt.enabled and any(rt.restores(rt.for_flow(flow.request.host, flow.request.path, d)[0])
                              for d in ("request", "response")):
            self.vaults.check()

    def _record_restore(self, flow, restored: int, unknown: int) -> None:
        st = state(flow)
        if restored:
            st.count("pseudonyms", "restored", restored)
        if unknown:
            st.count("pseudonyms", "unknown", unknown)
            log.info(f"egress gateway left {unknown} unknown restore token(s) in the response "
                     f"from {flow.request.pretty_host}")

    async def _restore_response(self, flow: http.HTTPFlow) -> None:
        """A restore rule's buffered response: the session's tokens replaced by its values
        (after redaction: a restored value is never masked again)."""
        rt = self.runtime()
        if not rt.enabled or not rt.restores(rt.for_flow(flow.request.host, flow.request.path,
                                                         "response")[0]):
            return
        resp = flow.response
        raw = resp.raw_content
        if not raw:
            return
        text = resp.get_text(strict=False)
        if text is None:
            return
        kind = bodies.content_kind(resp.headers.get("content-type"), raw)
        lookup = self.vaults.lookup(session_of(flow))
        if self.vaults.shared:  # lookups may ask the store: off the event loop
            new, restored, unknown = await self._run(lambda: restore_message(text, kind, lookup))
        else:
            new, restored, unknown = restore_message(text, kind, lookup)
        self._record_restore(flow, restored, unknown)
        if new is not None:
            resp.text = new

    def error(self, flow: http.HTTPFlow) -> None:
        self._unredacted_streams.discard(flow.id)
        stream = self._streams.pop(flow.id, None)
        if stream is not None:
            self._stream_done(flow, stream)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or not flow.websocket.messages:
            return
        msg = flow.websocket.messages[-1]
        if msg.dropped:
            return
        direction = "request" if msg.from_client else "response"
        try:
            scanning = self._scanning(flow, direction)
            if scanning is None:
                return
            rt, idx, rules = scanning
            out = Outcome()
            if not msg.is_text and not bodies.binary_is_text(msg.content):
                if policy_refusal("unsupported", rules.unsupported, "unsupported_content",
                                   "binary WebSocket message", out):
                    msg.drop()
                self._record(flow, direction, out)
                return
            if len(msg.content) > self.options.body_limit:
                if policy_refusal("too_large", rules.too_large, "too_large",
                                   "WebSocket message over the body limit", out):
                    msg.drop()
                self._record(flow, direction, out)
                return
            text = msg.content.decode("utf-8", errors="replace")
            session = session_of(flow)

            def work() -> Outcome:
                engine = rt.engine(idx, direction)
                return scan_ws_text(text, rules, lambda texts, **kw: engine.redact_many(
                    texts, session=session, **kw))

            out = await self._run(work, self.options.max_text)
            self._record(flow, direction, out)
            if out.refusal:
                msg.drop()
                state(flow).count("websocket_dropped", direction)
                log.info(f"egress gateway dropped a WebSocket message ({direction}): "
                         f"{out.refusal[0]}")
            elif out.text is not None:
                msg.content = out.text.encode("utf-8")
        except Exception as e:
            msg.drop()
            if isinstance(e, Overloaded):
                log.warning("egress gateway: scan queue full; dropped a WebSocket message")
            elif isinstance(e, ScansAbandoned):
                log.info("egress gateway: stopping; dropped a WebSocket message not yet scanned")
            elif isinstance(e, TimeoutError):
                log.error("egress gateway: scanning a WebSocket message timed out; dropped it")
            else:
                log.error("egress gateway: internal error while scanning a WebSocket message; "
                          "dropped it", exc_info=e)
