"""Unit tests of the pseudonyms package: tokens, the vault, the token matcher (issue 20)."""

from __future__ import annotations

import json
import threading

import pytest
from egress_gateway.pseudonyms import tokens
from egress_gateway.pseudonyms.keeper import VaultKeeper, parse_ttl
from egress_gateway.pseudonyms.restore import Restorer, restore_json, restore_message
from egress_gateway.pseudonyms.vault import MemoryVault

KEY = b"unit-test-key"


# --- tokens -----------------------------------------------------------------------------------
def test_token_format_and_determinism():
    t = tokens.derive(KEY, "s", "EMAIL_ADDRESS", "a@b.example")
    assert tokens.TOKEN_RE.fullmatch(t)
    assert t == tokens.derive(KEY, "s", "EMAIL_ADDRESS", "a@b.example")
    assert t != tokens.derive(KEY, "s2", "EMAIL_ADDRESS", "a@b.example")
    assert t != tokens.derive(b"other", "s", "EMAIL_ADDRESS", "a@b.example")
    assert t != tokens.derive(KEY, "s", "EMAIL_ADDRESS", "a@b.example", attempt=1)


@pytest.mark.parametrize("tail, expected", [
    ("<", True), ("<E", True), ("<EMAIL_", True), ("<EMAIL_ADDRESS_k7q", True),
    ("<EMAIL_ADDRESS_k7q2m4xd", True), ("<EMAIL_ADDRESS_k7q2m4xd>", False),
    ("<email", False), ("<EMAIL ADDRESS", False), ("<EMAIL_ADDRESS_k1", False),
    ("x<E", False), ("", False), ("<" + "A" * 60, False),
])
def test_could_start_token(tail, expected):
    assert tokens.could_start_token(tail) is expected


# --- the vault --------------------------------------------------------------------------------
def test_vault_same_value_same_token_normalised_and_first_spelling_restored():
    v = MemoryVault(KEY)
    t = v.tokenize("s", "EMAIL_ADDRESS", "Jane@Example.com")
    assert v.tokenize("s", "EMAIL_ADDRESS", " jane@example.COM ") == t
    assert v.lookup("s", t) == "Jane@Example.com"
    assert v.lookup("other", t) is None
    assert v.tokenize("s", "EMAIL_ADDRESS", "joe@example.com") != t


def test_vault_collision_takes_the_next_attempt(monkeypatch):
    v = MemoryVault(KEY)
    monkeypatch.setattr("egress_gateway.pseudonyms.vault.derive",
                        lambda key, s, e, n, attempt=0: f"<{e}_{'a' * 7}{'bcdefgh'[attempt]}>")
    a = v.tokenize("s", "PERSON", "Ann")
    b = v.tokenize("s", "PERSON", "Bob")
    assert a != b and v.lookup("s", a) == "Ann" and v.lookup("s", b) == "Bob"


def test_vault_bounds_per_session_and_total():
    v = MemoryVault(KEY, max_values=3, max_total=5)
    toks = [v.tokenize("s", "PERSON", f"name{i}") for i in range(5)]
    assert [v.lookup("s", t) for t in toks] == [None, None, "name2", "name3", "name4"]
    for i in range(3):
        v.tokenize("t", "PERSON", f"other{i}")
    assert v.stats()["values"] <= 5
    assert v.lookup("t", v.tokenize("t", "PERSON", "other2")) == "other2"


def test_vault_session_expires_after_ttl():
    now = [0.0]
    v = MemoryVault(KEY, ttl=10, clock=lambda: now[0])
    t = v.tokenize("s", "PERSON", "Ann")
    now[0] = 9
    assert v.lookup("s", t) == "Ann"  # a use renews the session
    now[0] = 18
    assert v.lookup("s", t) == "Ann"
    now[0] = 29
    assert v.lookup("s", t) is None
    assert v.stats() == {"sessions": 0, "values": 0}


def test_vault_concurrent_sessions_stay_apart():
    v = MemoryVault(KEY)
    errors = []

    def worker(n: int):
        for i in range(200):
            value = f"user{n}-{i}@example.com"
            t = v.tokenize(f"s{n}", "EMAIL_ADDRESS", value)
            if v.lookup(f"s{n}", t) != value:
                errors.append((n, i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert v.stats() == {"sessions": 16, "values": 3200}


def test_vault_encrypted_persistence_round_trip(tmp_path):
    v = MemoryVault(KEY)
    t = v.tokenize("s", "EMAIL_ADDRESS", "jane@example.com")
    path = tmp_path / "vault.bin"
    v.save(str(path))
    assert b"jane" not in path.read_bytes() and b"EMAIL" not in path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    w = MemoryVault(KEY)
    assert w.load(str(path)) == 1
    assert w.lookup("s", t) == "jane@example.com"
    assert w.tokenize("s", "EMAIL_ADDRESS", "JANE@example.com") == t
    with pytest.raises(ValueError, match="cannot decrypt"):
        MemoryVault(b"another key").load(str(path))


def test_keeper_refuses_a_restore_policy_without_the_key(monkeypatch):
    class Opts:
        gateway_vault_key_env, gateway_vault_ttl, gateway_vault_file = "MY_VAULT_KEY", "60", ""

    monkeypatch.delenv("MY_VAULT_KEY", raising=False)
    k = VaultKeeper()
    k.configure(Opts, needed=False)  # no restore rule: no key needed
    with pytest.raises(ValueError, match="MY_VAULT_KEY"):
        k.configure(Opts, needed=True)
    monkeypatch.setenv("MY_VAULT_KEY", "k")
    k.configure(Opts, needed=True)
    assert k.vault is not None and k.vault.ttl == 60
    with pytest.raises(ValueError):
        parse_ttl("-1")


# --- the token matcher ------------------------------------------------------------------------
@pytest.fixture
def vault():
    return MemoryVault(KEY)


def _lookup(v, session="s"):
    return lambda token: v.lookup(session, token)


def test_restorer_at_every_split_point(vault):
    a = vault.tokenize("s", "EMAIL_ADDRESS", "jane@example.com")
    b = vault.tokenize("s", "PERSON", "Jane Roe")
    text = f"To {a}, dear {b}<{b}> x < y <EMAIL"
    want = "To jane@example.com, dear Jane Roe<Jane Roe> x < y <EMAIL"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            r = Restorer(_lookup(vault))
            out = r.push(text[:i]) + r.push(text[i:j]) + r.push(text[j:]) + r.flush()
            assert out == want, (i, j)
            assert r.restored == 3


def test_restorer_holds_back_only_a_possible_token_start(vault):
    r = Restorer(_lookup(vault))
    assert r.push("hello <EMA") == "hello "
    assert r.push("IL is not <a token") == "<EMAIL is not <a token"


@pytest.mark.parametrize("form", ["<{t}>", "\\u003c{t}\\u003e", "\\u003C{t}\\u003E"])
def test_json_fragment_context_escapes_the_value(vault, form):
    tok = vault.tokenize("s", "PERSON", 'Jo "Q" \\ Roe')
    frag = '{"to": "' + form.format(t=tok[1:-1]) + '"}'
    for i in range(len(frag) + 1):
        r = Restorer(_lookup(vault), "json")
        out = r.push(frag[:i]) + r.push(frag[i:]) + r.flush()
        assert json.loads(out) == {"to": 'Jo "Q" \\ Roe'}, i


def test_unknown_and_foreign_tokens_stay_and_are_counted(vault):
    mine = vault.tokenize("s", "PERSON", "Ann")
    theirs = vault.tokenize("other", "PERSON", "Bob")
    r = Restorer(_lookup(vault))
    out = r.restore(f"{mine} {theirs} <PERSON_aaaaaaaa>")
    assert out == f"Ann {theirs} <PERSON_aaaaaaaa>"
    assert (r.restored, r.unknown) == (1, 2)


def test_restore_json_keeps_signed_fields_and_escapes(vault):
    t = vault.tokenize("s", "PERSON", 'Ann "A"')
    doc = {"content": [
        {"type": "thinking", "thinking": f"about {t}", "signature": t},
        {"type": "redacted_thinking", "data": t},
        {"type": "text", "text": f"hi {t}"},
        {"type": "tool_use", "input": {"to": [t.replace("<", "\\u003c")]}}]}
    text = json.dumps(doc).replace("\\\\u003c", "\\u003c")
    new, restored, unknown = restore_json(text, _lookup(vault))
    out = json.loads(new)
    assert out["content"][0] == doc["content"][0]
    assert out["content"][1] == doc["content"][1]
    assert out["content"][2]["text"] == 'hi Ann "A"'
    assert out["content"][3]["input"]["to"] == ['Ann "A"']
    assert restored == 2


@pytest.mark.parametrize("kind, body, expected", [
    ("json", '{"a": "{t}"}', '{"a": "Ann"}'),
    ("ndjson", '{"a": "{t}"}\n{"b": "x {t}"}\n', '{"a": "Ann"}\n{"b": "x Ann"}\n'),
    ("sse", 'event: m\ndata: {"a": "{t}"}\n\ndata: [DONE]\n\n',
     'event: m\ndata: {"a": "Ann"}\n\ndata: [DONE]\n\n'),
    ("text", "hello {t}", "hello Ann"),
    ("binary", "{t}", None),
])
def test_restore_message_per_kind(vault, kind, body, expected):
    t = vault.tokenize("s", "PERSON", "Ann")
    new, _, _ = restore_message(body.replace("{t}", t), kind, _lookup(vault))
    assert new == expected
