"""The shutdown addon's pure parts and its seams into approvals and the redactor."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from egress_gateway import shutdown
from egress_gateway.flowstate import HEADER, peek
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow


@pytest.mark.parametrize("value, expected", [
    pytest.param("10", 10.0, id="default"),
    pytest.param("0", 0.0, id="no-grace"),
    pytest.param("2.5", 2.5, id="fraction"),
    pytest.param("3600", 3600.0, id="upper-bound"),
])
def test_parse_grace_accepts(value, expected):
    assert shutdown.parse_grace(value) == expected


@pytest.mark.parametrize("value", [
    pytest.param("", id="empty"), pytest.param("ten", id="word"), pytest.param("-1", id="negative"),
    pytest.param("3601", id="too-long"), pytest.param("nan", id="nan"),
])
def test_parse_grace_refuses(value):
    with pytest.raises(ValueError, match="gateway_shutdown_grace"):
        shutdown.parse_grace(value)


def test_a_bad_grace_is_an_options_error():
    s = shutdown.Shutdown(None, None, None, None)
    with taddons.context(s) as tctx:
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(s, gateway_shutdown_grace="soon")
        tctx.configure(s, gateway_shutdown_grace="3")
        assert s.grace == 3.0


def test_refuse_stopping_is_the_documented_refusal():
    flow = tflow.tflow()
    shutdown.refuse_stopping(flow, rule="r")
    r = flow.response
    assert r.status_code == 503 and r.headers[HEADER] == "gateway_unavailable"
    assert json.loads(r.content) == {"error": "gateway_unavailable", "reason": "gateway stopping",
                                     "rule": "r"}
    assert peek(flow).data["shutdown"] == "refused" and peek(flow).code == "gateway_unavailable"


@pytest.mark.parametrize("inner, sse, chunk, expected", [
    pytest.param(True, True, b"data: 1\n\n", [b"data: 1\n\n", shutdown.ERROR_EVENT, b""],
                 id="unredacted-sse"),
    pytest.param(lambda c: [c.upper()], True, b"data: a\n\n",
                 [b"DATA: A\n\n", shutdown.ERROR_EVENT, b""], id="wrapped-stream-still-runs"),
    pytest.param(lambda c: [], True, b"data: held", [shutdown.ERROR_EVENT, b""],
                 id="held-back-chunk"),
    pytest.param(True, False, b"raw", [b"raw", b""], id="not-sse-no-event"),
])
def test_end_stream_ends_at_the_next_chunk(inner, sse, chunk, expected):
    end = shutdown.EndStream(inner, sse)
    assert end(chunk) == expected and end.ended
    assert end(b"more") == [] and end(b"") == []  # nothing after the end


def test_error_event_is_one_sse_event():
    text = shutdown.ERROR_EVENT.decode()
    assert text.startswith("event: error\ndata: ") and text.endswith("\n\n")
    assert json.loads(text.split("data: ", 1)[1])["type"] == "error"


def test_abandon_scans_ends_a_scan_in_flight_and_refuses_later_ones():
    from egress_gateway.redact.addon import Redactor, ScansAbandoned

    class _Core:
        def add_compiler(self, name, build):
            pass

        def add_warmer(self, warm):
            pass

    red = Redactor(_Core())

    async def go():
        scan = asyncio.ensure_future(red._run(lambda: time.sleep(1.5)))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        red.abandon_scans()
        with pytest.raises(ScansAbandoned):
            await scan
        took = time.monotonic() - t0
        with pytest.raises(ScansAbandoned):
            await red._run(lambda: None)
        return took

    took = asyncio.new_event_loop().run_until_complete(go())
    assert took < 0.5  # not the 1.5 s of the scan
    red.done()
    flow = tflow.tflow()
    red._fail(flow, "request", ScansAbandoned())
    assert flow.response.status_code == 503 and peek(flow).reason == "gateway stopping"


def test_postgres_holds_end_all_denies_held_statements_by_shutdown():
    from types import SimpleNamespace

    from egress_gateway.postgres.holds import Holds

    holds = Holds(attended=True)
    flow = SimpleNamespace(error=None, intercepted=True)
    rule = SimpleNamespace(timeout=30, on_timeout="allow")

    async def go():
        waiting = asyncio.ensure_future(holds._wait(flow, rule, time.monotonic()))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        holds.end_all("shutdown")
        return await asyncio.wait_for(waiting, 1)

    assert asyncio.new_event_loop().run_until_complete(go()) == (False, "shutdown")
