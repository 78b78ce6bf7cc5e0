"""Helpers of the credential unit tests: a policy entry, a policy, a request."""

from __future__ import annotations

import yaml
from egress_gateway.policy import parse_policy
from mitmproxy.test import tflow

REAL = "sk-real-value-0123456789abcdef"
PH = "gateway-placeholder-x"


def entry(**kw) -> dict:
    base = {"name": "api", "host": "api.example.com", "header": "x-api-key",
            "env": "CRED_TEST_KEY", "placeholder": PH}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def policy(*entries: dict):
    doc = {"version": 1, "egress": {"allow": [{"host": "api.example.com"}]},
           "credentials": list(entries)}
    return parse_policy(yaml.safe_dump(doc), "p.yaml")


def req(host="api.example.com", method="POST", path="/v1/messages", headers=None, body=b""):
    f = tflow.tflow()
    r = f.request
    r.scheme, r.host, r.port, r.method, r.path = "https", host, 443, method, path
    r.headers.clear()
    r.headers["Host"] = host
    for k, v in (headers or {}).items():
        r.headers[k] = v
    r.raw_content = body
    return r
