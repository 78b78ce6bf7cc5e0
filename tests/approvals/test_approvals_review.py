"""The policy's review section (webhook URL rules) and the webhook's message (no values)."""

from __future__ import annotations

import asyncio

import pytest
from egress_gateway.approvals.notify import Notifier, message
from egress_gateway.approvals.settings import ReviewSettings, parse_webhook
from egress_gateway.egress.allowlist import Decision


@pytest.mark.parametrize("url,want", [
    pytest.param("https://hooks.slack.com/services/T/B/x", ("https", "hooks.slack.com", 443,
                                                            "/services/T/B/x"), id="https"),
    pytest.param("http://Hooks.Test.Example:8000/h?k=v", ("http", "hooks.test.example", 8000,
                                                          "/h?k=v"), id="http-port-query"),
])
def test_webhook_urls(url, want):
    assert parse_webhook(url) == want


@pytest.mark.parametrize("doc,problem", [
    pytest.param({"webhook": "ftp://h/x"}, "http:// or https://", id="scheme"),
    pytest.param({"webhook": "https://u:p@h/x"}, "no user or password", id="userinfo"),
    pytest.param({"webhook": "https://h/x", "webhook_env": "X"}, "not both", id="both"),
    pytest.param({"webhook_env": "BAD-NAME"}, "environment variable", id="env-name"),
])
def test_bad_review_settings(doc, problem):
    with pytest.raises(ValueError, match=problem):
        ReviewSettings(**doc)


SUMMARY = {"id": "f-123", "rule": "card-data", "reason": "card data leaving", "method": "POST",
           "host": "api.example.com", "port": 443, "path": "/pay/4111111111111111",
           "detected": {"CREDIT_CARD": 1}, "session": "s-1", "waiting_seconds": 0.0,
           "timeout": 30.0, "on_timeout": "deny"}


def test_message_names_the_rule_and_counts_never_the_path():
    text = message(SUMMARY, "gw-b", "./run_gateway.sh approvals approve f-123")["text"]
    assert "gw-b" in text and "card-data" in text and "CREDIT_CARD x1" in text
    assert "approvals approve f-123" in text
    assert "/pay/" not in text and "4111" not in text


class _RefusingEgress:
    calls: list = []

    async def resolve_checked(self, host, port):
        self.calls.append((host, port))
        return Decision(False, f"{host} resolved to 127.0.0.1 (loopback)"), None


def test_webhook_refused_by_the_ssrf_rules_is_not_dialled(caplog):
    egress = _RefusingEgress()
    n = Notifier(egress)

    async def go():
        n.notify(ReviewSettings(webhook="http://hooks.test.example:9/secret-path"), {"text": "x"})
        await asyncio.gather(*n.tasks)

    asyncio.run(go())
    assert egress.calls == [("hooks.test.example", 9)]
    assert "refused" in caplog.text and "secret-path" not in caplog.text
