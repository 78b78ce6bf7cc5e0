"""Environment variables the credential unit tests read their secrets from."""

from __future__ import annotations

import pytest
from cred_helpers import REAL


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CRED_TEST_KEY", REAL)
    monkeypatch.setenv("CRED_TEST_EMPTY", "")
    monkeypatch.setenv("CRED_TEST_SHORT", "abc")
    monkeypatch.setenv("CRED_TEST_NEWLINE", "abc\r\ndefghijkl")
    monkeypatch.delenv("CRED_TEST_UNSET", raising=False)
