"""In-place redaction of PII and secrets in both directions (policy section ``redact:``).

Modules: `settings` (the policy section), `paths` (JSON path syntax), `walker` (JSON walker and
batching), `bodies` (content types), `codecs` (bounded decompression), `addon` (the Redactor).
Kept free of imports here so that `policy.py` can import `redact.settings` without cycles.
"""
