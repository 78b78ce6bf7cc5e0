"""Reversible pseudonyms: values become ``<ENTITY_xxxxxxxx>`` tokens on the way to a model and
are put back on the way back (``redact.rules[i].restore``).

- ``tokens.py``: the token format and the keyed derivation (pure functions);
- ``vault.py``: the per-session mapping token -> value behind a small interface;
- ``restore.py``: tokens found in decoded text (whole or streamed in pieces) replaced back.
"""
