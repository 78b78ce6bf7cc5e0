"""Streamed bodies of every shape redacted while they stream.

- ``keywords.py``: where a keyword or header (``password: ``, ``aws_secret_access_key = ``,
  ``-----BEGIN PRIVATE KEY-----``) means "hold until the value is complete";
- ``paths.py``: the string leaves of a JSON event and the run key that continues them;
- ``generic.py``: reassembly by JSON path across consecutive events (SSE and NDJSON).

The Messages API's ``content_block_delta`` handling stays in ``redact/stream.py``.
"""
