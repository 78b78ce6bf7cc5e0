"""The vault on the fleet's store (`StoreVault`) over a fake sync connection: encryption bound
to (session, token), write-through cache, cold-cache lookups, collisions, store down."""

from __future__ import annotations

import pytest
from egress_gateway.fleet.store import StoreDown
from egress_gateway.pseudonyms.pgvault import StoreVault
from egress_gateway.pseudonyms.tokens import derive, normalise

KEY = b"unit-vault-key-0123456789"


class Cursor:
    def __init__(self, rows):
        self.rows = rows
        self.description = None if rows is None else ("value",)

    def fetchall(self):
        return self.rows


class FakeStore:
    """gateway_vault as a dict; `fail` makes the next N executes raise (a dead connection)."""

    def __init__(self):
        self.rows: dict[tuple[str, str], bytes] = {}
        self.queries: list[str] = []
        self.fail = 0
        self.connects = 0

    def connect(self):
        self.connects += 1
        return FakeConn(self)


class FakeConn:
    closed = broken = False

    def __init__(self, store: FakeStore):
        self.store = store

    def close(self):
        self.closed = True

    def execute(self, sql, args):
        st = self.store
        st.queries.append(sql.split()[0])
        if st.fail:
            st.fail -= 1
            raise OSError("server closed the connection unexpectedly")
        if sql.startswith("INSERT"):
            session, token, blob = args
            st.rows.setdefault((session, token), blob)
            return Cursor([(st.rows[(session, token)],)])
        if sql.startswith("SELECT"):
            row = st.rows.get((args[0], args[1]))
            return Cursor([] if row is None else [(row,)])
        if sql.startswith("DELETE"):
            if "session =" in sql:
                for k in [k for k in st.rows if k[0] == args[0]]:
                    del st.rows[k]
            return Cursor(None)
        raise AssertionError(sql)


@pytest.fixture
def store():
    return FakeStore()


def vault(store, up=lambda: True, key=KEY):
    return StoreVault(key, store.connect, "postgresql://u@127.0.0.1:5432/db", healthy=up)


def test_tokenize_writes_through_and_another_instance_restores(store):
    a, b = vault(store), vault(store)
    token = a.tokenize("s1", "EMAIL_ADDRESS", "Jane@Example.com")
    assert token == derive(KEY, "s1", "EMAIL_ADDRESS", normalise("Jane@Example.com"))
    assert list(store.rows) == [("s1", token)]
    n = len(store.queries)
    assert a.tokenize("s1", "EMAIL_ADDRESS", "jane@example.com") == token  # cached
    assert len(store.queries) == n
    assert b.lookup("s1", token) == "Jane@Example.com"  # cold cache: from the store
    assert b.tokenize("s1", "EMAIL_ADDRESS", "JANE@example.com") == token  # cached by lookup
    assert b.lookup("s2", token) is None  # another session


def test_the_stored_value_is_encrypted_and_bound_to_session_and_token(store):
    v = vault(store)
    token = v.tokenize("s1", "EMAIL_ADDRESS", "jane@example.com")
    blob = store.rows[("s1", token)]
    assert b"jane" not in blob and b"example" not in blob
    assert v.open("s1", token, blob) == "jane@example.com"
    assert v.open("s2", token, blob) is None  # a row copied to another session
    assert v.open("s1", "<EMAIL_ADDRESS_aaaaaaaa>", blob) is None  # to another token
    assert vault(store, key=b"another-key").open("s1", token, blob) is None


@pytest.mark.parametrize("token", ["<EMAIL_ADDRESS_aaaaaaaa>", "not a token", "<lower_abcdefgh>"],
                         ids=["unknown", "garbage", "bad-entity"])
def test_unknown_tokens_are_none(store, token):
    v = vault(store)
    assert v.lookup("s1", token) is None
    assert store.queries.count("SELECT") == (1 if token.startswith("<EMAIL") else 0)


def test_a_collision_takes_the_next_attempt(store):
    v = vault(store)
    first = derive(KEY, "s1", "EMAIL_ADDRESS", "b@example.com")
    store.rows[("s1", first)] = v.seal("s1", first, "someone.else@example.com")
    token = v.tokenize("s1", "EMAIL_ADDRESS", "b@example.com")
    assert token == derive(KEY, "s1", "EMAIL_ADDRESS", "b@example.com", 1)
    assert v.lookup("s1", first) == "someone.else@example.com"


def test_store_down_refuses_even_cached_values(store):
    up = [True]
    v = vault(store, up=lambda: up[0])
    token = v.tokenize("s1", "EMAIL_ADDRESS", "jane@example.com")
    up[0] = False
    with pytest.raises(StoreDown, match="unreachable"):
        v.tokenize("s1", "EMAIL_ADDRESS", "jane@example.com")
    with pytest.raises(StoreDown):
        v.lookup("s1", token)
    up[0] = True
    assert v.lookup("s1", token) == "jane@example.com"


def test_a_dead_connection_is_replaced_once_then_store_down(store):
    v = vault(store)
    v.tokenize("s1", "EMAIL_ADDRESS", "a@example.com")
    store.fail = 1  # the kept connection died with a store that is back
    assert v.tokenize("s1", "EMAIL_ADDRESS", "c@example.com")
    assert store.connects == 2
    store.fail = 2  # still down after a fresh connection
    with pytest.raises(StoreDown):
        v.tokenize("s1", "EMAIL_ADDRESS", "d@example.com")
    assert ("s1", derive(KEY, "s1", "EMAIL_ADDRESS", "d@example.com")) not in store.rows


def test_forget_drops_the_session_everywhere(store):
    a, b = vault(store), vault(store)
    token = a.tokenize("s1", "EMAIL_ADDRESS", "a@example.com")
    a.forget("s1")
    assert a.lookup("s1", token) is None and b.lookup("s1", token) is None
