"""Addon tests (taddons/tflow): holding, deciding, timeouts, unattended, edits, the option guard."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from egress_gateway.approvals.addon import Approvals
from egress_gateway.approvals.webguard import install_option_guard
from egress_gateway.core import Core
from egress_gateway.egress.addon import Egress
from egress_gateway.policy import parse_policy
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

HOST = "api.example.com"


def make_policy(*rules: dict):
    doc = {"version": 1, "egress": {"allow": [{"host": HOST}, {"host": "db.internal.example.com"}],
                                    "resolve": {HOST: "93.184.216.34"}},  # no DNS in tests
           "approve": list(rules)}
    return parse_policy(yaml.safe_dump(doc))


ADMIN = {"name": "admin", "host": HOST, "methods": ["POST", "DELETE"], "path": "/admin/*",
         "reason": "admin writes need a human", "timeout": 5}


def make(*rules, attended=True):
    core = Core()
    core.policy = make_policy(*(rules or (ADMIN,)))
    egress = Egress(core)
    return core, egress, Approvals(core, egress, None, attended=attended)


def flow(method="POST", path="/admin/users", host=HOST, body=b'{"a": 1}', peer="127.0.0.1"):
    f = tflow.tflow()
    f.request.method, f.request.scheme, f.request.host, f.request.port = method, "https", host, 443
    f.request.path = path
    f.request.headers["Host"] = host
    f.request.content = body
    f.client_conn.sni = None
    f.client_conn.peername = (peer, 50000)
    return f


def refusal(f) -> dict:
    assert f.response is not None and f.response.status_code == 403
    assert f.response.headers["X-Egress-Gateway"] == "denied"
    return json.loads(f.response.content)


async def hold_then(appr, f, action, settle=0.1):
    """Run the request hook, apply `action` while the flow is held, return the hook's duration."""
    task = asyncio.create_task(appr.request(f))
    for _ in range(200):
        if f.id in appr.held:
            break
        await asyncio.sleep(0.005)
    assert f.intercepted and f.id in appr.held
    assert "admin writes need a human" in f.comment
    await asyncio.sleep(settle)
    assert not task.done()  # really held
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    action()
    await asyncio.wait_for(task, 5)
    return loop.time() - t0


def run(coro):
    return asyncio.run(coro)


def test_non_matching_request_is_not_held():
    async def go():
        _, _, appr = make()
        with taddons.context():
            for f in (flow("GET"), flow(path="/public"), flow(host="other.example.com")):
                await asyncio.wait_for(appr.request(f), 1)
                assert f.response is None and not f.intercepted
                assert "approval" not in f.metadata.get("gateway", {})
    run(go())


def test_gateway_stopping_ends_holds_503_audited_denied_by_shutdown():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            latency = await hold_then(appr, f, lambda: appr.end_holds("shutdown"))
        assert latency < 0.2 and not appr.held
        assert f.response.status_code == 503
        assert json.loads(f.response.content) == {
            "error": "gateway_unavailable", "reason": "gateway stopping", "rule": "admin"}
        st = f.metadata["gateway"]
        assert st["approval"]["outcome"] == "denied" and st["approval"]["decided_by"] == "shutdown"
        assert st["shutdown"] == "refused" and f.comment.startswith("DENIED (gateway stopping)")
    run(go())


def test_approve_by_command():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            latency = await hold_then(appr, f, lambda: appr.approve(f.id[:8]))
        assert latency < 0.2
        assert f.response is None and not f.intercepted and f.live
        a = f.metadata["gateway"]["approval"]
        assert a["rule"] == "admin" and a["outcome"] == "approved"
        assert a["decided_by"] == "reviewer:command" and a["wait_seconds"] >= 0.1
        assert f.comment.startswith("APPROVED")
        assert appr.held == {}
    run(go())


def test_resume_in_mitmweb_approves():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            await hold_then(appr, f, f.resume)
        assert f.response is None
        assert f.metadata["gateway"]["approval"]["decided_by"] == "reviewer:mitmweb"
    run(go())


def test_kill_in_mitmweb_becomes_403_denied():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            latency = await hold_then(appr, f, f.kill)
        assert latency < 0.2
        doc = refusal(f)
        assert doc["error"] == "denied" and doc["rule"] == "admin"
        assert "admin writes need a human" in doc["reason"] and "reviewer denied" in doc["reason"]
        assert f.error is None and f.live  # the kill became our answer
        a = f.metadata["gateway"]["approval"]
        assert (a["outcome"], a["decided_by"]) == ("denied", "reviewer:mitmweb")
        assert f.metadata["gateway"]["code"] == "denied"
    run(go())


def test_deny_by_command():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            await hold_then(appr, f, lambda: appr.deny(f.id))
        refusal(f)
        assert not f.intercepted
        assert f.metadata["gateway"]["approval"]["decided_by"] == "reviewer:command"
    run(go())


@pytest.mark.parametrize("on_timeout,denied", [("deny", True), ("allow", False)], ids=["deny", "allow"])
def test_timeout(on_timeout, denied):
    async def go():
        _, _, appr = make({**ADMIN, "timeout": 0.3, "on_timeout": on_timeout})
        f = flow()
        with taddons.context():
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.wait_for(appr.request(f), 3)
            waited = loop.time() - t0
        assert 0.3 <= waited < 0.6
        a = f.metadata["gateway"]["approval"]
        assert a["decided_by"] == "timeout"
        if denied:
            assert "no reviewer decided within 0.3s" in refusal(f)["reason"]
            assert a["outcome"] == "denied"
        else:
            assert f.response is None and a["outcome"] == "approved"
        assert not f.intercepted
    run(go())


@pytest.mark.parametrize("unattended,denied", [("deny", True), ("allow", False)], ids=["deny", "allow"])
def test_unattended(unattended, denied):
    async def go():
        _, _, appr = make({**ADMIN, "unattended": unattended}, attended=None)  # no mitmweb here
        f = flow()
        with taddons.context():
            await asyncio.wait_for(appr.request(f), 0.5)
        assert not f.intercepted and appr.held == {}
        a = f.metadata["gateway"]["approval"]
        assert a["decided_by"] == "unattended" and a["held"] is False
        if denied:
            assert "unattended" in refusal(f)["reason"]
        else:
            assert f.response is None
    run(go())


def test_approve_always_is_per_session_and_rule():
    async def go():
        _, _, appr = make()
        first = flow()
        with taddons.context():
            await hold_then(appr, first, lambda: appr.approve_always(first.id))
            assert first.metadata["gateway"]["approval"]["always"] is True
            again = flow(path="/admin/other")
            await asyncio.wait_for(appr.request(again), 0.5)
            assert again.response is None and not again.intercepted
            assert again.metadata["gateway"]["approval"]["decided_by"] == "always"
            other_session = flow(peer="127.0.0.2")
            task = asyncio.create_task(appr.request(other_session))
            await asyncio.sleep(0.1)
            assert other_session.id in appr.held  # another session is held again
            appr.deny(other_session.id)
            await task
            refusal(other_session)
    run(go())


def test_marked_then_resumed_approves_always():
    async def go():
        _, _, appr = make()
        f = flow()

        def mark_and_resume():
            f.marked = ":star:"
            f.resume()
        with taddons.context():
            await hold_then(appr, f, mark_and_resume)
            again = flow()
            await asyncio.wait_for(appr.request(again), 0.5)
        assert again.metadata["gateway"]["approval"]["decided_by"] == "always"
    run(go())


def test_entities_from_redaction_metadata():
    rule = {"name": "card-out", "host_not": "*.internal.example.com", "entities": ["CREDIT_CARD"],
            "any_secret": True, "reason": "card data leaving", "timeout": 5}

    async def go():
        _, _, appr = make(rule)
        with taddons.context():
            inside = flow(host="db.internal.example.com")
            inside.metadata["gateway"] = {"redactions": {"request": {"CREDIT_CARD": 1}}}
            await asyncio.wait_for(appr.request(inside), 0.5)
            assert "approval" not in inside.metadata["gateway"]
            pii = flow()
            pii.metadata["gateway"] = {"redactions": {"request": {"EMAIL_ADDRESS": 2},
                                                      "response": {"CREDIT_CARD": 1}}}
            await asyncio.wait_for(appr.request(pii), 0.5)
            assert "approval" not in pii.metadata["gateway"]
            f = flow(body=b'{"card": "<CREDIT_CARD>"}')
            f.metadata["gateway"] = {"redactions": {"request": {"CREDIT_CARD": 1, "GITHUB_TOKEN": 2}}}
            f.comment = "request: CREDIT_CARD x1"
            task = asyncio.create_task(appr.request(f))
            await asyncio.sleep(0.1)
            listed = json.loads(appr.list_held())
            assert listed == [{**listed[0], "id": f.id, "rule": "card-out",
                               "detected": {"CREDIT_CARD": 1, "GITHUB_TOKEN": 2}, "path": "/admin/users"}]
            assert "CREDIT_CARD x1, GITHUB_TOKEN x2" in f.comment and "card data leaving" in f.comment
            assert f.comment.endswith("; request: CREDIT_CARD x1")  # redaction's note is kept
            appr.deny(f.id)
            await task
            refusal(f)
    run(go())


def test_held_list_carries_no_values():
    async def go():
        _, _, appr = make()
        f = flow(path="/admin/x?token=SEKRIT", body=b"password=hunter2")
        f.request.headers["Authorization"] = "Bearer SEKRIT2"
        with taddons.context():
            task = asyncio.create_task(appr.request(f))
            await asyncio.sleep(0.05)
            text = appr.list_held()
            appr.deny(f.id)
            await task
        assert "SEKRIT" not in text and "hunter2" not in text and '"/admin/x"' in text
    run(go())


def test_edited_request_is_checked_again_by_egress():
    async def go():
        _, _, appr = make()
        f = flow()

        def edit_and_resume():
            f.request.host = "evil.example.net"  # what mitmweb's flow editor does
            f.request.headers["Host"] = "evil.example.net"
            f.resume()
        with taddons.context():
            await hold_then(appr, f, edit_and_resume)
        assert f.response.status_code == 403 and f.response.headers["X-Egress-Gateway"] == "blocked"
        assert f.metadata["gateway"]["approval"]["edited"] is True
    run(go())


class FailingRescan:
    """A redactor that fails while scanning the edited request again."""

    async def rescan_request(self, f):
        raise RuntimeError("scanner down")


class WithRescan:
    def __init__(self):
        self.seen = []

    async def rescan_request(self, f):
        self.seen.append(f.request.content)


@pytest.mark.parametrize("peer,refused", [(FailingRescan, True), (WithRescan, False), (None, False)],
                         ids=["rescan-fails-closed", "redaction-rescans", "no-redaction"])
def test_edited_body_is_rescanned_or_refused(peer, refused):
    async def go():
        _, _, appr = make()
        red = peer() if peer else None
        appr.redactor = red
        f = flow()

        def edit_and_resume():
            f.request.content = b'{"a": "4111 1111 1111 1111"}'
            f.resume()
        with taddons.context():
            await hold_then(appr, f, edit_and_resume)
        if refused:
            assert f.response.status_code == 500
            assert f.response.headers["X-Egress-Gateway"] == "internal_error"
        else:
            assert f.response is None
        if isinstance(red, WithRescan):
            assert red.seen == [b'{"a": "4111 1111 1111 1111"}']
    run(go())


def test_unedited_request_is_not_rescanned():
    async def go():
        _, _, appr = make()
        appr.redactor = FailingRescan()
        f = flow()
        with taddons.context():
            await hold_then(appr, f, f.resume)
        assert f.response is None and "edited" not in f.metadata["gateway"]["approval"]
    run(go())


def test_internal_error_fails_closed():
    class Broken:
        @property
        def policy(self):
            raise RuntimeError("boom")

    async def go():
        appr = Approvals(Broken(), None, None, attended=True)
        f = flow()
        with taddons.context():
            await appr.request(f)
        assert f.response.status_code == 500
        assert f.response.headers["X-Egress-Gateway"] == "internal_error"
    run(go())


def test_requestheaders_disables_request_streaming_for_candidates():
    _, _, appr = make()
    with taddons.context():
        f = flow()
        f.request.stream = True
        appr.requestheaders(f)
        assert f.request.stream is False
        g = flow("GET")
        g.request.stream = True
        appr.requestheaders(g)
        assert g.request.stream is True


def test_commands_reject_unknown_and_ambiguous_ids():
    _, _, appr = make()
    with pytest.raises(exceptions.CommandError, match="no request is held"):
        appr.approve("nope")


def test_option_guard():
    from mitmproxy.addons.intercept import Intercept
    from mitmproxy.addons.script import ScriptLoader

    with taddons.context(ScriptLoader(), Intercept()) as tctx:
        opts = tctx.options
        install_option_guard(opts)
        install_option_guard(opts)  # idempotent
        before = list(opts.scripts)
        with pytest.raises(exceptions.OptionsError, match="'scripts' is protected"):
            opts.update(scripts=["/tmp/evil.py"])
        with pytest.raises(exceptions.OptionsError, match="protected"):
            opts.set("ignore_hosts=.*")
        with pytest.raises(exceptions.OptionsError, match="protected"):
            opts.update(allow_hosts=["example.com"])
        with pytest.raises(exceptions.OptionsError):
            opts.reset()
        assert list(opts.scripts) == before and opts.ignore_hosts == []
        opts.update(scripts=before)  # unchanged values pass
        opts.update(intercept="~q")  # the reviewer's own options still work
        assert opts.intercept == "~q"


def test_bundle_order():
    from egress_gateway.bundle import make_addons

    addons = make_addons()
    names = [type(a).__name__ for a in addons]
    i = names.index("Approvals")
    assert names.index("Egress") < i
    for before in ("Redactor",):
        if before in names:
            assert names.index(before) < i, names
    for after in ("Credentials", "CredentialInjector", "Recorder", "Audit"):
        if after in names:
            assert names.index(after) > i, names
    assert addons[i].redactor is addons[names.index("Redactor")]  # an explicit reference
    assert not hasattr(addons[i], "peers")



def test_approve_always_memory_is_bounded():
    async def go():
        _, _, appr = make()
        appr.always.limit = 1
        a, b = flow(peer="127.0.0.3"), flow(peer="127.0.0.4")
        with taddons.context():
            await hold_then(appr, a, lambda: appr.approve_always(a.id))
            await hold_then(appr, b, lambda: appr.approve_always(b.id))
            assert len(appr.always) == 1  # the oldest decision was forgotten
            again = flow(peer="127.0.0.3")
            task = asyncio.create_task(appr.request(again))
            await asyncio.sleep(0.1)
            assert again.id in appr.held  # session a is asked again
            appr.deny(again.id)
            await task
    run(go())


def test_client_disconnect_ends_the_hold():
    async def go():
        _, _, appr = make()
        f = flow()
        with taddons.context():
            task = asyncio.create_task(appr.request(f))
            await asyncio.sleep(0.1)
            assert f.id in appr.held
            appr.client_disconnected(f.client_conn)
            await asyncio.wait_for(task, 1)
        assert f.id not in appr.held
        a = f.metadata["gateway"]["approval"]
        assert a["outcome"] == "denied" and a["decided_by"] == "client disconnected"
    run(go())
