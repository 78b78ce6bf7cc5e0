"""In-place redaction of PII and secrets in both directions (policy section ``redact:``).

Modules: `settings` (the policy section), `runtime` (the section compiled per policy),
`jsonpath` (JSON path syntax), `walker` (JSON walker and batching), `bodies` (content types),
`scan` (one message, pure), `stream` (SSE redacted while it streams), `addon` (the Redactor).
Kept free of imports here so that the policy model can import `redact.settings` without cycles.
"""
