"""Policy validation: each broken file under tests/data/policies gives its exact message."""

import json
from pathlib import Path

import pytest
from egress_gateway.policy import PolicyError, load_policy, parse_policy
from egress_gateway.policy import model as policy_mod

DATA = Path(__file__).resolve().parents[1] / "data" / "policies"
REPO = Path(__file__).resolve().parents[2]

BROKEN = [
    ("star_host", "egress.allow[3].host: '*' matches everything; name a domain"),
    ("unknown_key", "egress.allow[0].port: unknown key"),
    ("bad_version", "version: Input should be 1 (got 2)"),
    ("missing_version", "version: required key is missing"),
    ("host_and_cidr", "egress.allow[0]: give exactly one of 'host' or 'cidr'"),
    ("bad_cidr", "egress.allow[0].cidr: '10.20.1.0/16' is not an address block"),
    ("bad_port", "egress.allow[0].ports[0]: Input should be less than or equal to 65535"),
    ("bad_mode", "egress.mode: Input should be 'enforce' or 'report' (got 'audit')"),
    ("bad_resolve", "egress.resolve: db.internal.example.com: 'not-an-ip' is not an IP address"),
    ("duplicate_key", "line 5, column 1: invalid YAML: duplicate key 'egress'"),
    ("not_yaml", "invalid YAML"),
    ("top_level_list", "the policy must be a YAML mapping"),
    ("tld_wildcard", "egress.allow[0].host: '*.com' matches a whole top-level domain"),
    ("ip_as_host", "egress.allow[0].host: '10.0.0.1' is an IP address; use a 'cidr' entry"),
]


@pytest.mark.parametrize("name,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_policy_message(name, message):
    path = DATA / f"{name}.yaml"
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    text = str(e.value)
    assert text.startswith(f"{path}: "), text
    assert message in text, text


def test_every_problem_is_listed():
    with pytest.raises(PolicyError) as e:
        load_policy(DATA / "many_problems.yaml")
    problems = e.value.problems
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    for fragment in ("allow[0].host", "allow[1].cidr", "allow[2].ports[0]", "egress.extra"):
        assert fragment in joined


def test_missing_file():
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(DATA / "does-not-exist.yaml")


def test_default_policy_allows_only_anthropic():
    p = load_policy(REPO / "policies" / "default.yaml")
    assert p.egress.mode == "enforce"
    assert [r.host for r in p.egress.allow] == ["api.anthropic.com"]


def test_normalised_values():
    p = parse_policy(
        "version: 1\negress:\n  allow:\n    - host: API.Example.COM.\n    - cidr: 10.20.0.0/16\n"
        "      ports: [5432]\n  resolve:\n    DB.Example.com: 10.20.1.5\n"
    )
    assert p.egress.allow[0].host == "api.example.com"
    assert p.egress.allow[0].ports == [80, 443]
    assert p.egress.allow[1].ports == [5432]
    assert p.egress.resolve == {"db.example.com": "10.20.1.5"}


def test_committed_schema_is_current():
    committed = json.loads((REPO / "policies" / "policy.schema.json").read_text())
    assert committed == policy_mod.Policy.model_json_schema(), (
        "policies/policy.schema.json is stale: run ./run_gateway.sh schema > "
        "policies/policy.schema.json"
    )
