"""Header, trailer, method, URL-key, fragment and host-label scanning: the pure parts and the
addon with mitmproxy's test flows and a fake engine."""

from __future__ import annotations

import asyncio

import pytest
from egress_gateway.detection.findings import Finding, TextResult
from egress_gateway.redact.headers import (
    SCAN_LIMIT,
    HeaderScanner,
    apply_plan,
    plan_headers,
    url_parts,
    wildcard_labels,
    withhold,
)
from mitmproxy.test import tflow

URL_CASES = [
    ("plain path", "/v1/messages", []),
    ("value only scanned elsewhere", "/q?a=1", [("query_key", "a")]),
    ("bare parameter", "/q?a=1&flag", [("query_key", "a"), ("query_key", "flag")]),
    ("percent-decoded key", "/q?jane%40x.com=1", [("query_key", "jane@x.com")]),
    ("plus in key", "/q?a+b=1", [("query_key", "a b")]),
    ("fragment", "/q#frag%20x", [("fragment", "frag x")]),
    ("query and fragment", "/q?k=v#f", [("query_key", "k"), ("fragment", "f")]),
    ("empty query", "/q?", []),
    ("empty pairs", "/q?&&=x", []),
    ("bad utf-8 replaced", "/q?%ff=1", [("query_key", "\ufffd")]),
]


@pytest.mark.parametrize("path,expected", [c[1:] for c in URL_CASES], ids=[c[0] for c in URL_CASES])
def test_url_parts(path, expected):
    assert url_parts(path) == expected


LABEL_CASES = [
    ("one label below", "219-09-9999.wild.example", ["*.wild.example"], "219-09-9999"),
    ("two labels below", "a.b.wild.example", ["*.wild.example"], "a.b"),
    ("as written (case kept)", "AKIAX.wild.example", ["*.wild.example"], "AKIAX"),
    ("trailing dot", "a.wild.example.", ["*.wild.example"], "a"),
    ("exact rule: nothing to scan", "api.example", ["api.example"], None),
    ("not matched", "a.other.example", ["*.wild.example"], None),
    ("the domain itself", "wild.example", ["*.wild.example"], None),
    ("invalid host", "a..b", ["*.b"], None),
]


@pytest.mark.parametrize("host,patterns,expected", [c[1:] for c in LABEL_CASES],
                         ids=[c[0] for c in LABEL_CASES])
def test_wildcard_labels(host, patterns, expected):
    assert wildcard_labels(host, patterns) == expected


def test_plan_headers_skips_format_checked_and_named_headers():
    fields = [(b"Host", b"api.example"), (b"Content-Length", b"12"), (b"X-Key", b"secret"),
              (b"Content-Length", b"12 219-09-9999"), (b"X-Skip", b"anything"), (b"A", b"xy")]
    plan = plan_headers(fields, {"x-skip"})
    # values: X-Key and the non-numeric Content-Length; short values (< 3) are not scanned
    assert plan.values == [2, 3]
    assert plan.texts[:2] == ["secret", "12 219-09-9999"]
    # names (dashes as spaces), except names shorter than 3
    assert plan.texts[2:] == ["Host", "Content Length", "X Key", "Content Length", "X Skip"]


def _res(text: str, found: str | None = None, blocked: bool = False) -> TextResult:
    if not found:
        return TextResult(text=text)
    return TextResult(text=f"<{found}>", findings=[Finding(found, 0, len(text), 1.0)],
                      counts={found: 1}, blocked={found} if blocked else set())


APPLY_CASES = [
    ("nothing found", [_res("v1"), _res("X Key")], None, None, {}),
    ("value redacted", [_res("v1", "US_SSN"), _res("X Key")], [(b"X-Key", b"<US_SSN>")], None,
     {"US_SSN": 1}),
    ("name refuses", [_res("v1"), _res("X Key", "US_SSN")], None, ("header_name", "US_SSN"),
     {"US_SSN": 1}),
    ("blocked entity refuses", [_res("v1", "PEM", blocked=True), _res("X Key")], None,
     ("header", "PEM"), {"PEM": 1}),
]


@pytest.mark.parametrize("results,fields,refusal,counts", [c[1:] for c in APPLY_CASES],
                         ids=[c[0] for c in APPLY_CASES])
def test_apply_plan(results, fields, refusal, counts):
    plan = plan_headers([(b"X-Key", b"v1!")], set())
    out = apply_plan(plan, results)
    assert out.fields == fields and out.refusal == refusal and out.counts == counts


WITHHOLD_CASES = [
    ("method", "method", lambda r: r.method == "WITHHELD"),
    ("query key", "query_key", lambda r: r.path == "/path"),
    ("fragment", "fragment", lambda r: r.path == "/path"),
    ("header name", "header_name", lambda r: "X-Data" not in r.headers and "host" in r.headers),
    ("host", "host", lambda r: r.host == "withheld.com" and "219" not in r.headers["host"]),
]


@pytest.mark.parametrize("where,check", [c[1:] for c in WITHHOLD_CASES],
                         ids=[c[0] for c in WITHHOLD_CASES])
def test_withhold_takes_the_refused_part_out(where, check):
    f = tflow.tflow()
    f.request.host = "219-09-9999.com"
    f.request.headers["host"] = "219-09-9999.com"
    f.request.path = "/path?219-09-9999=1#x"
    f.request.headers["X-Data"] = "1"
    withhold(f.request, where)
    assert check(f.request)


# --- the addon, with a fake engine and redactor ---------------------------------------------------
class FakeEngine:
    """Finds 'SSN-LIKE' anywhere: replaced with <US_SSN>."""

    def redact_many_cached(self, texts, session="", prose=None):
        return None

    def redact_many(self, texts, session="", prose=None):
        assert prose is False  # header scanning never runs NER
        out = []
        for t in texts:
            if "SSN-LIKE" in t.upper().replace(" ", "-"):
                out.append(TextResult(text=t.replace("SSN-LIKE", "<US_SSN>"),
                                      findings=[Finding("US_SSN", 0, 1, 1.0)],
                                      counts={"US_SSN": 1}))
            else:
                out.append(TextResult(text=t))
        return out


class FakeRules:
    headers = True
    skip_headers = ["x-mine"]


class FakeRuntime:
    def engine(self, idx, direction):
        return FakeEngine()


class FakeRedactor:
    def __init__(self):
        self.recorded, self.failed = [], []

    def _scanning(self, flow, direction):
        return FakeRuntime(), -1, FakeRules()

    async def _run(self, fn):
        return fn()

    def _record(self, flow, direction, out):
        self.recorded.append((direction, dict(out.counts)))

    def _fail(self, flow, direction, e):
        self.failed.append(e)
        from egress_gateway.flowstate import refuse

        refuse(flow, "internal_error", "failed")


class FakeCore:
    class policy:  # noqa: N801
        class egress:  # noqa: N801
            allow = []

    def require_policy(self):
        return self.policy


def _scanner():
    red = FakeRedactor()
    return HeaderScanner(FakeCore(), red), red


def test_request_headers_redacted_and_skip_list_respected():
    hs, red = _scanner()
    f = tflow.tflow()
    f.request.headers["X-Note"] = "id SSN-LIKE"
    f.request.headers["X-Mine"] = "SSN-LIKE"
    asyncio.run(hs.requestheaders(f))
    assert f.response is None
    assert f.request.headers["X-Note"] == "id <US_SSN>" and f.request.headers["X-Mine"] == "SSN-LIKE"
    assert red.recorded == [("request", {"US_SSN": 1})]


@pytest.mark.parametrize("mutate,where", [
    (lambda f: f.request.headers.__setitem__("X-SSN-LIKE", "1"), "header_name"),
    (lambda f: setattr(f.request, "path", "/?SSN-LIKE"), "query_key"),
    (lambda f: setattr(f.request, "method", "SSN-LIKE"), "method"),
])
def test_request_line_and_names_refuse(mutate, where):
    hs, _ = _scanner()
    f = tflow.tflow()
    mutate(f)
    asyncio.run(hs.requestheaders(f))
    assert f.response.status_code == 403
    assert f.metadata["gateway"]["details"]["where"] == where


def test_response_header_refusal_at_responseheaders_is_completed_at_response():
    hs, _ = _scanner()
    f = tflow.tflow(resp=True)
    f.response.headers["X-SSN-LIKE"] = "1"
    asyncio.run(hs.responseheaders(f))
    assert f.response.status_code == 403
    f.response.content = b"upstream body read into the replaced response"
    f.response.headers.pop("X-Egress-Gateway")
    asyncio.run(hs.response(f))
    assert f.response.headers["X-Egress-Gateway"] == "sensitive_data"
    assert b"upstream body" not in f.response.content


def test_trailers_scanned_and_dropped_towards_http1():
    from mitmproxy import http

    hs, _ = _scanner()
    f = tflow.tflow()
    f.request.trailers = http.Headers([(b"x-trailer", b"SSN-LIKE")])
    asyncio.run(hs.request(f))
    assert f.response is None and f.request.trailers is None  # HTTP/1 upstream: dropped


def test_an_error_refuses():
    hs, red = _scanner()
    f = tflow.tflow()

    def boom(*a, **k):
        raise RuntimeError("x")

    red._scanning = boom
    asyncio.run(hs.requestheaders(f))
    assert f.response.status_code == 500 and red.failed


SIZE_CASES = [
    # name, mutate, direction, where (None: passes to the scanner)
    ("url at the limit", lambda f: setattr(f.request, "path", "/" + "p" * (SCAN_LIMIT - 10)),
     "request", None),
    ("url over the limit", lambda f: setattr(f.request, "path", "/" + "p" * SCAN_LIMIT),
     "request", "url"),
    ("query over the limit", lambda f: setattr(f.request, "path", "/?q=" + "p" * SCAN_LIMIT),
     "request", "url"),
    ("one huge header", lambda f: f.request.headers.__setitem__("X-Big", "a" * SCAN_LIMIT),
     "request", "headers"),
    ("many headers adding up", lambda f: [f.request.headers.add(f"X-{i}", "a" * 1024)
                                          for i in range(40)], "request", "headers"),
    ("huge response header", lambda f: f.response.headers.__setitem__("X-Big", "a" * SCAN_LIMIT),
     "response", "headers"),
]


@pytest.mark.parametrize("mutate,direction,where", [c[1:] for c in SIZE_CASES],
                         ids=[c[0] for c in SIZE_CASES])
def test_header_sections_over_the_limit_are_refused_before_any_scan(mutate, direction, where):
    hs, red = _scanner()
    scanned = []  # the longest text each scan read

    async def run(fn):
        results = fn()
        scanned.append(max(len(r.text) for r in results))
        return results

    red._run = run
    f = tflow.tflow(resp=direction == "response")
    mutate(f)
    hook = hs.requestheaders if direction == "request" else hs.responseheaders
    asyncio.run(hook(f))
    if where is None:
        assert f.response is None
        return
    assert f.response.status_code == 431 and all(n < 1000 for n in scanned)
    assert f.response.headers["X-Egress-Gateway"] == "headers_too_large"
    assert f.metadata["gateway"]["details"]["where"] == where
    if direction == "request":  # the refused part does not reach the recording
        assert len(f.request.path) < 100 and "X-Big" not in f.request.headers
