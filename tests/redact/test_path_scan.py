"""URL path segments are scanned too: PII in a path must not leave any more than in a query."""

from __future__ import annotations

import asyncio

import pytest
from egress_gateway.core import Core
from egress_gateway.policy import parse_policy
from egress_gateway.redact.addon import Redactor
from egress_gateway.redact.bodies import plan_path
from egress_gateway.redact.walker import TextJob
from mitmproxy.test import taddons, tflow
from redact_fakes import FakeEngine, fake_redact_many

PATHS = [
    ("plain e-mail", "/users/ann@example.com/profile", "/users/%3CEMAIL_ADDRESS%3E/profile"),
    ("encoded e-mail", "/users/ann%40example.com", "/users/%3CEMAIL_ADDRESS%3E"),
    ("nothing found", "/v1/models/claude-sonnet-4-5-20250929", None),
    ("encoded slash kept", "/a%2Fb/ann@example.com/", "/a%2Fb/%3CEMAIL_ADDRESS%3E/"),
    ("double slashes kept", "//x//ann@example.com", "//x//%3CEMAIL_ADDRESS%3E"),
    ("not utf-8", "/%ff%fe/ann@example.com", "/%ff%fe/%3CEMAIL_ADDRESS%3E"),
]


@pytest.mark.parametrize("path,expected", [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_plan_path(path, expected):
    job = TextJob()
    finish = plan_path(job, path)
    job.run(fake_redact_many)
    assert finish() == expected


def core_with(policy) -> Core:
    core = Core()
    core.policy = policy
    return core


def run_request(policy_text: str, path: str):
    core = core_with(parse_policy(policy_text))
    engine = FakeEngine()
    r = Redactor(core, engine_factory=lambda settings: engine)
    f = tflow.tflow()
    f.request.host, f.request.port, f.request.path = "api.example.com", 443, path
    f.request.method, f.request.raw_content = "GET", b""

    async def main():
        with taddons.context(r):
            await r.request(f)
            r.done()

    asyncio.run(main())
    return f


BASE = "version: 1\negress:\n  allow:\n    - host: api.example.com\n"


def test_request_path_and_query_redacted_together():
    f = run_request(BASE, "/mail/bob@example.org/send?cc=carol%40example.com&x=1")
    assert f.request.path == "/mail/%3CEMAIL_ADDRESS%3E/send?cc=%3CEMAIL_ADDRESS%3E&x=1"
    assert f.metadata["gateway"]["redactions"]["request"]["EMAIL_ADDRESS"] == 2


def test_path_scanning_can_be_switched_off():
    f = run_request(BASE + "redact:\n  request:\n    path: false\n", "/mail/bob@example.org/send")
    assert f.request.path == "/mail/bob@example.org/send"
